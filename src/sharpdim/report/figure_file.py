"""Saving a finished figure: its format checked up front, final layout, atomic write.

Figures are plain :class:`matplotlib.figure.Figure` objects, never pyplot's: importing the
report modules leaves the user's backend alone (``%matplotlib inline`` keeps working), and a
figure that fails midway is garbage like any object, with no global registry to close it in.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path
from typing import Any

from matplotlib.backend_bases import FigureCanvasBase
from matplotlib.figure import Figure

from sharpdim.atomic import save_figure_atomic
from sharpdim.errors import SharpdimError


def check_figure_format(path: str | Path, flag: str) -> Path:
    """``path`` if matplotlib can write its format (its suffix; none means PNG), else a
    one-line error naming ``flag``: call it before the work whose figure it is."""
    out, fmt = _known_format(path, flag)
    problem = _cannot_render(fmt)
    if problem:
        raise SharpdimError(
            f"{flag} {out}: matplotlib cannot write {fmt!r} figures on this machine "
            f"({problem}): end it in .png, .svg or .pdf"
        )
    return out


def _known_format(path: str | Path, flag: str) -> tuple[Path, str]:
    """``(path, format)`` if matplotlib knows the format of ``path``'s suffix (none means
    PNG), else a one-line error naming ``flag``."""
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise SharpdimError(
            f"{flag} {out}: matplotlib cannot write {fmt!r} figures: end it in one of "
            f"{', '.join('.' + f for f in sorted(supported))}"
        )
    return out, fmt


@functools.cache
def _cannot_render(fmt: str) -> str:
    """Why a tiny figure cannot be saved as ``fmt`` here ('' if it can): some formats need
    outside programs (pgf: a LaTeX engine) that only saving reveals."""
    fig = Figure(figsize=(1, 1))
    try:
        fig.add_subplot().plot([0, 1])
        fig.savefig(io.BytesIO(), format=fmt)
    except Exception as exc:  # whatever the backend raises (RuntimeError, OSError, ...)
        return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    return ""


def save_figure(fig: Figure, path: str | Path, *, dpi: int | None = None) -> Path:
    """The suffix checked (a format matplotlib knows; :func:`check_figure_format` also tries
    one, before the work), ``tight_layout``, then :func:`~sharpdim.atomic.save_figure_atomic`
    to ``path`` (parent folders created)."""
    _known_format(path, "figure path")
    fig.tight_layout()
    return save_figure_atomic(fig, path, **({} if dpi is None else {"dpi": dpi}))


def legend_if_any(ax: Any, **kwargs: Any) -> None:
    """``ax.legend(**kwargs)`` when something on ``ax`` has a label (an empty legend warns)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)
