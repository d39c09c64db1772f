"""Saving a finished figure: final layout, atomic write, release from pyplot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sharpdim.atomic import save_figure_atomic


def save_and_close(fig: Any, path: str | Path, *, dpi: int | None = None) -> Path:
    """``tight_layout``, then :func:`~sharpdim.atomic.save_figure_atomic` to ``path`` (parent
    folders created); the figure is closed even when writing fails."""
    fig.tight_layout()
    try:
        return save_figure_atomic(fig, path, **({} if dpi is None else {"dpi": dpi}))
    finally:
        plt.close(fig)
