"""Figures and reports (matplotlib figures without pyplot: the user's backend is left alone).
Imports the core; the core never imports it."""

from sharpdim.report.chaos_figures import plot_chaos_comparison
from sharpdim.report.eos_figures import plot_eos_runs, plot_fractal, plot_minimalist
from sharpdim.report.html_report import ReportSection, render_html_report, write_html_report
from sharpdim.report.spectrum_figures import plot_spectrum_density

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
