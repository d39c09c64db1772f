"""Figures of chaos measures (matplotlib figures without pyplot; imports core, never the
reverse)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sharpdim.report.figure_file import legend_if_any, save_figure

PH0_SLOPES = {"ph0_dimension": "ph0_slope", "ph0_dimension_loss": "ph0_slope_loss"}
"""The fitted slope stored beside each PH0 dimension of a ``chaos compare`` case."""


def ph0_missing_reason(case: dict[str, Any], key: str) -> str | None:
    """Why the measure ``key`` of ``case`` is stored as null, where that is known: ``"inf"``
    (a PH0 fit slope >= 1; JSON keeps inf as null) or ``"undefined"`` (PH0 of iterates, or
    of their loss vectors, that coincide); ``None`` otherwise."""
    value = case.get(key)
    if key in PH0_SLOPES and isinstance(value, float) and math.isinf(value):
        return "inf"  # (a case straight from run_case, before JSON made it null)
    if key not in PH0_SLOPES or value is not None:
        return None
    slope = case.get(PH0_SLOPES[key])
    if slope is not None and slope >= 1:
        return "inf"
    flag = "ph0_zero_persistence_loss" if key.endswith("_loss") else "ph0_zero_persistence"
    return "undefined" if case.get(flag) else None


def _missing_label(case: dict[str, Any], key: str) -> str:
    """The label of a missing bar: :func:`ph0_missing_reason` (shortened), else "n/a"."""
    return {"inf": "inf", "undefined": "undef."}.get(ph0_missing_reason(case, key) or "", "n/a")


def plot_chaos_comparison(cases: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Save a three-panel comparison of training runs (``sharpdim chaos compare`` output).

    Panels: finite-time largest Lyapunov exponent against steps (of the first seed; the legend
    gives the mean +- standard error over seeds when there are several); log distance of two runs
    ``delta`` apart against steps (fit window marked); a bar chart of the dimensions (Kaplan–
    Yorke of the top-k, SD, PH0 Euclidean and loss metric). A case whose training diverged
    (``status`` ``"diverged"``) only gets a legend entry saying so.

    Args:
        cases: name -> the dict of :func:`sharpdim.commands.chaos_cases.run_case`.
        path: output PNG path (parent folders are created; written atomically).
    """
    fig = Figure(figsize=(13.5, 3.8), dpi=100)
    axes = fig.subplots(1, 3)
    for i, (name, case) in enumerate(cases.items()):
        color = f"C{i}"
        label = f"{name} (lr={case['lr']:g})"
        if case.get("status") == "diverged":  # nothing measured: a legend entry only
            for ax in axes[:2]:
                ax.plot(
                    [], [], color=color, label=f"{label}: diverged at step {case['diverged_at']}"
                )
            continue
        ft = [row[0] for row in case["lyapunov"]["finite_time"]]
        mean, sem = case.get("largest_lyapunov_seed_mean"), case.get("largest_lyapunov_seed_stderr")
        per_seed = case.get("largest_lyapunov_per_seed") or []
        used = sum(1 for v in per_seed if v is not None and math.isfinite(v))
        seeds = f"{used} seeds" if used == len(per_seed) else f"{used} of {len(per_seed)} seeds"
        stat = (
            f": {mean:.2g} +- {sem:.1g} ({seeds})"
            if mean is not None and sem is not None and math.isfinite(sem)
            else ""
        )
        axes[0].plot(range(1, len(ft) + 1), ft, color=color, label=label + stat)
        div = case["divergence"]
        logd = [float("nan") if v is None else v for v in div["log_distance"]]
        axes[1].plot(range(len(logd)), logd, color=color, label=label)
        # (the fit window is half-open: its last step is fit_stop - 1)
        axes[1].axvspan(div["fit_start"], div["fit_stop"] - 1, color=color, alpha=0.08)
    axes[0].axhline(0.0, color="k", lw=0.6)
    axes[0].set(xlabel="step", ylabel="finite-time lambda_1", title="Largest Lyapunov exponent")
    axes[1].set(xlabel="step", ylabel="ln ||w_t - w'_t||", title="Divergence of nearby runs")
    keys = [
        ("KY (top-k)", "kaplan_yorke_top_k"),
        ("SD", "sd"),
        ("PH0", "ph0_dimension"),
        ("PH0 (loss)", "ph0_dimension_loss"),
    ]
    width = 0.8 / max(len(cases), 1)
    for i, (name, case) in enumerate(cases.items()):
        diverged = case.get("status") == "diverged"
        # a missing measure (None: not computed, or NaN stored as null) is no bar and "n/a",
        # never a bar of height 0, which would read as a dimension of 0
        vals = [
            math.nan if diverged or case[key] is None or not math.isfinite(case[key]) else case[key]
            for _, key in keys
        ]
        xs = [j + (i - (len(cases) - 1) / 2) * width for j in range(len(keys))]
        axes[2].bar(xs, vals, width=width, color=f"C{i}", label=name)
        for x, v, (_, key) in zip(xs, vals, keys, strict=True):
            if not diverged and not math.isfinite(v):
                axes[2].text(
                    x, 0.0, _missing_label(case, key), ha="center", va="bottom", fontsize=7,
                    color=f"C{i}",
                )  # fmt: skip
    axes[2].set_xticks(range(len(keys)), [k for k, _ in keys])
    axes[2].set_yscale("symlog", linthresh=1.0)
    axes[2].set(title="Dimensions")
    for ax in axes:
        legend_if_any(ax, fontsize=8)
    return save_figure(fig, path)
