"""A self-contained HTML report: tables and figures (PNG, SVG, JPEG) embedded as base64, no
assets."""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sharpdim.atomic import write_text_atomic
from sharpdim.errors import SharpdimError

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:0.5rem 0}"
    "td,th{border:1px solid #ccc;padding:0.25rem 0.6rem;text-align:left}"
    "th{background:#f4f4f4}img{max-width:100%}"
)


_MIME = {
    ".png": "image/png",
    ".avif": "image/avif",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}
"""Media types of the figure files a browser shows inline; others (pdf, eps, tif, svgz, ...)
are refused rather than embedded under a wrong type as a broken image."""


@dataclass(frozen=True)
class ReportSection:
    """One section: a heading, an optional paragraph, key/value rows and figures."""

    heading: str
    text: str = ""
    rows: Mapping[str, object] = field(default_factory=dict)
    figures: Sequence[Path] = ()

    def __post_init__(self) -> None:
        if isinstance(self.figures, (str, Path)):  # (a string was read a character at a time)
            raise SharpdimError(
                f"figures must be a list of paths, got the one path {str(self.figures)!r}: "
                "pass figures=[path]"
            )


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_html_report(title: str, sections: Sequence[ReportSection]) -> str:
    """The report as one HTML string (figures inlined as ``data:`` URIs)."""
    parts = [
        "<!DOCTYPE html>",
        f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec.heading)}</h2>")
        if sec.text:
            parts.append(f"<p>{html.escape(sec.text)}</p>")
        if sec.rows:
            parts.append("<table>")
            for key, value in sec.rows.items():
                cells = f"<th>{html.escape(str(key))}</th><td>{html.escape(_format(value))}</td>"
                parts.append(f"<tr>{cells}</tr>")
            parts.append("</table>")
        for fig in sec.figures:
            mime = _MIME.get(Path(fig).suffix.lower())
            if mime is None:
                raise SharpdimError(
                    f"figure {fig} is not a format a browser shows inline: pass one of "
                    f"{', '.join(_MIME)} (e.g. save it as .png)"
                )
            try:
                raw = Path(fig).read_bytes()
            except (OSError, ValueError) as exc:  # (missing, a folder, unreadable, a NUL)
                reason = getattr(exc, "strerror", None) or str(exc)
                raise SharpdimError(
                    f"figure {fig} cannot be read ({reason}): save the figure first, or pass "
                    "the path it was saved to"
                ) from exc
            data = base64.b64encode(raw).decode("ascii")
            alt = html.escape(Path(fig).stem)
            parts.append(f"<p><img alt='{alt}' src='data:{mime};base64,{data}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(path: str | Path, title: str, sections: Sequence[ReportSection]) -> Path:
    """Write :func:`render_html_report` to ``path`` atomically (parent folders are created)."""
    return write_text_atomic(path, render_html_report(title, sections))
