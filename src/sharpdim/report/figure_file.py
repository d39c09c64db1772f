"""Saving a finished figure: its format checked up front, final layout, atomic write, release
from pyplot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase

from sharpdim.atomic import save_figure_atomic
from sharpdim.errors import SharpdimError


def check_figure_format(path: str | Path, flag: str) -> Path:
    """``path`` if matplotlib can write its format (its suffix; none means PNG), else a
    one-line error naming ``flag``: call it before the work whose figure it is."""
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise SharpdimError(
            f"{flag} {out}: matplotlib cannot write {fmt!r} figures: end it in one of "
            f"{', '.join('.' + f for f in sorted(supported))}"
        )
    return out


def save_and_close(fig: Any, path: str | Path, *, dpi: int | None = None) -> Path:
    """``tight_layout``, then :func:`~sharpdim.atomic.save_figure_atomic` to ``path`` (parent
    folders created); the figure is closed even when writing fails."""
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path, **({} if dpi is None else {"dpi": dpi}))
    finally:
        plt.close(fig)
