"""Figures and reports (matplotlib figures without pyplot: the user's backend is left alone).
Imports the core; the core never imports it.

The plot functions are imported on first use (``sharpdim.report.plot_spectrum_density``), so
importing one report module does not load the others and the training stack they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (the names for type checkers and IDEs; imported lazily at run time)
    from sharpdim.report.chaos_figures import plot_chaos_comparison
    from sharpdim.report.eos_figures import plot_eos_runs, plot_fractal, plot_minimalist
    from sharpdim.report.html_report import (
        ReportSection,
        render_html_report,
        write_html_report,
    )
    from sharpdim.report.spectrum_figures import plot_spectrum_density

_HOMES = {
    "ReportSection": "html_report",
    "render_html_report": "html_report",
    "write_html_report": "html_report",
    "plot_chaos_comparison": "chaos_figures",
    "plot_eos_runs": "eos_figures",
    "plot_fractal": "eos_figures",
    "plot_minimalist": "eos_figures",
    "plot_spectrum_density": "spectrum_figures",
}

__all__ = [
    "ReportSection",
    "plot_chaos_comparison",
    "plot_eos_runs",
    "plot_fractal",
    "plot_minimalist",
    "plot_spectrum_density",
    "render_html_report",
    "write_html_report",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'sharpdim.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sharpdim.report.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
