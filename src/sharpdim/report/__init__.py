"""Figures and reports (matplotlib, Agg). Imports the core; the core never imports it."""
