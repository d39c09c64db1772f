"""The HTML report: escaping and figures inlined with their own media type."""

from __future__ import annotations

import base64
from pathlib import Path

from sharpdim.report.html_report import ReportSection, render_html_report


def test_figures_carry_their_media_type_and_text_is_escaped(tmp_path: Path) -> None:
    """An SVG figure was labelled data:image/png and showed as a broken image."""
    svg = tmp_path / "curve.svg"
    svg.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    png = tmp_path / "density.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    page = render_html_report(
        "a <b> & c", [ReportSection("h<1>", "x < y", {"k&": 1 / 3}, [svg, png])]
    )
    svg_data = base64.b64encode(svg.read_bytes()).decode()
    png_data = base64.b64encode(png.read_bytes()).decode()
    assert f"src='data:image/svg+xml;base64,{svg_data}'" in page
    assert f"src='data:image/png;base64,{png_data}'" in page
    assert "<title>a &lt;b&gt; &amp; c</title>" in page and "<h2>h&lt;1&gt;</h2>" in page
    assert "<p>x &lt; y</p>" in page and "<th>k&amp;</th><td>0.333333</td>" in page


def test_a_figure_a_browser_cannot_show_inline_is_refused(tmp_path: Path) -> None:
    """A .pdf was embedded as image/png: a silently broken image in the report."""
    import pytest

    from sharpdim.errors import SharpdimError

    for name in ("f.pdf", "f.eps", "f.tif", "f.svgz"):
        (tmp_path / name).write_bytes(b"data")
        with pytest.raises(SharpdimError, match=r"is not a format a browser shows inline"):
            render_html_report("t", [ReportSection("h", figures=[tmp_path / name])])
    (tmp_path / "f.avif").write_bytes(b"data")
    page = render_html_report("t", [ReportSection("h", figures=[tmp_path / "f.avif"])])
    assert "data:image/avif;base64," in page


def test_a_row_key_that_is_not_a_string_is_written_as_text() -> None:
    """An int key raised AttributeError ('int' object has no attribute 'replace')."""
    page = render_html_report("t", [ReportSection("h", rows={3: "<x>"})])  # type: ignore[dict-item]
    assert "<th>3</th><td>&lt;x&gt;</td>" in page


def test_one_path_as_figures_is_refused_in_one_line(tmp_path: Path) -> None:
    """A string was read a character at a time: 'figure / is not a format a browser shows'."""
    import pytest

    from sharpdim.errors import SharpdimError

    for one in (str(tmp_path / "plot.png"), tmp_path / "plot.png"):
        with pytest.raises(SharpdimError, match=r"^figures must be a list of paths, got the one"):
            ReportSection("h", figures=one)  # type: ignore[arg-type]


def test_a_figure_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    """A missing figure raised a bare FileNotFoundError (review)."""
    import pytest

    from sharpdim.errors import SharpdimError

    (tmp_path / "folder.png").mkdir()
    for name, reason in (("missing.png", "No such file"), ("folder.png", "Is a directory")):
        with pytest.raises(SharpdimError, match=rf"{name} cannot be read \({reason}") as err:
            render_html_report("t", [ReportSection("h", figures=[tmp_path / name])])
        assert "\n" not in str(err.value)


def test_a_figure_path_with_a_nul_is_one_line(tmp_path: Path) -> None:
    import pytest

    from sharpdim.errors import SharpdimError

    with pytest.raises(SharpdimError, match=r"cannot be read \(embedded null byte"):
        render_html_report("t", [ReportSection("h", figures=[str(tmp_path / "a\0b.png")])])
