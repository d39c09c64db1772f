"""Figures of the edge-of-stability reproductions (matplotlib figures without pyplot;
imports core, never the reverse).

Each function takes a result of :mod:`sharpdim.training.eos_experiments` (or
:mod:`sharpdim.training.eos_fractal`), writes one PNG (parent folders created) and returns
its path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from sharpdim.report.figure_file import legend_if_any, save_figure
from sharpdim.training.eos_experiments import EoSRunsResult
from sharpdim.training.eos_fractal import FractalResult, fractal_diverged, fractal_loss
from sharpdim.training.eos_minimalist_experiment import MinimalistExperiment


def _upper_limit(values: np.ndarray, default: float = 10.0) -> float:
    """1.3 times the largest finite value; ``default`` when none is finite (all diverged)."""
    finite = values[np.isfinite(values)]
    return 1.3 * float(finite.max()) if finite.size and finite.max() > 0 else default


def _any_positive(series: Iterable[Sequence[float]]) -> bool:
    """Whether some series holds a finite positive value (a log axis needs one: with NaN and
    +inf alone it cannot place a tick)."""
    return any(
        bool((np.isfinite(a) & (a > 0)).any()) for a in (np.asarray(v, dtype=float) for v in series)
    )


def _lone(values: np.ndarray) -> str:
    """A marker for a series with fewer than two finite values (a run that diverged before
    its second record), which a line alone would not show; none otherwise."""
    return "o" if int(np.isfinite(values).sum()) < 2 else ""


def plot_eos_runs(result: EoSRunsResult, path: str | Path, *, dpi: int = 100) -> Path:
    """Loss (top) and sharpness with each run's threshold dashed (bottom), per run.

    For Adam the bottom panel shows the preconditioned sharpness ``lambda_max(P^-1 H)``
    against ``(2 + 2 beta1)/(eta (1 - beta1))``; the shaded span is the late window whose
    median ratio is reported.
    """
    # a threshold near the float maximum (a tiny eta) overflows in the log axis: harmless
    with np.errstate(over="ignore"):
        fig = Figure(figsize=(6.4, 5.6))
        top, bottom = fig.subplots(2, 1, sharex=True)
        for i, run in enumerate(result.runs):
            color = f"C{i}"
            finite = np.isfinite(np.asarray(run.bounded, dtype=float)).any()
            outcome = (
                f"diverged at step {run.diverged_at}"
                if run.diverged_at is not None
                else f"ratio {run.late_median_ratio:.3f}"
                if finite
                else "no finite data"
            )
            label = f"{run.optimizer} $\\eta$={run.lr:g} ({outcome})"
            steps = np.asarray(run.steps)
            loss, bounded = np.asarray(run.loss, dtype=float), np.asarray(run.bounded, dtype=float)
            top.plot(steps, loss, color=color, lw=1.0, marker=_lone(loss), ms=4, label=label)
            bottom.plot(steps, bounded, color=color, lw=1.0, marker=_lone(bounded), ms=4)
            if math.isfinite(run.threshold):
                bottom.axhline(run.threshold, color=color, ls="--", lw=0.9)
        bottom.axvspan(
            (1 - result.late_fraction) * result.steps, result.steps, color="0.9", zorder=0
        )
        adaptive = any(r.optimizer in ("adam", "adamw") for r in result.runs)
        top.set_ylabel("train loss")
        if _any_positive(r.loss for r in result.runs):
            top.set_yscale("log")  # (not with nothing positive to draw)
        legend_if_any(top, fontsize=7)
        bottom.set_ylabel(
            "(preconditioned) sharpness" if adaptive else "sharpness $\\lambda_{max}(H)$"
        )
        bottom.set_xlabel("step")
        if _any_positive(r.bounded for r in result.runs):
            bottom.set_yscale("log")  # (not with nothing positive to draw)
        title = (
            "Progressive sharpening and EoS (GD, dashed: 2/$\\eta$)"
            if result.kind == "sharpening"
            else "EoS thresholds (dashed): momentum $(2+2\\mu)/\\eta$, Adam on $P^{-1}H$"
        )
        top.set_title(title, fontsize=10)
        return save_figure(fig, path, dpi=dpi)


def plot_minimalist(result: MinimalistExperiment, path: str | Path, *, dpi: int = 100) -> Path:
    """Three panels: sharpness traces, final sharpness vs ``2/eta``, bifurcation diagram."""
    fig = Figure(figsize=(13.5, 4.0))
    axes = fig.subplots(1, 3)
    sweep = result.ratios
    ax = axes[0]
    if sweep.trace_steps is not None and sweep.trace_sharpness is not None:
        for i, lr in enumerate(sweep.trace_lrs):
            ax.plot(
                sweep.trace_steps.numpy(),
                sweep.trace_sharpness[i].numpy(),
                color=f"C{i}",
                lw=1.0,
                label=f"$\\eta$={lr:g}",
            )
            ax.axhline(2.0 / lr, color=f"C{i}", ls="--", lw=0.8)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(left=0)
        top = _upper_limit(sweep.trace_sharpness.numpy())
        ax.set_ylim(0, top)
        for i, lr in enumerate(sweep.trace_lrs):  # a threshold above the panel: say where
            if 2.0 / lr > top:
                ax.annotate(
                    f"2/$\\eta$={2.0 / lr:.3g} above", xy=(0.98, 0.97 - 0.07 * i),
                    xycoords="axes fraction", ha="right", va="top", fontsize=7, color=f"C{i}",
                )  # fmt: skip
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("sharpness (dashed: 2/$\\eta$)")
    ax.set_title(f"GD from {tuple(sweep.init)}", fontsize=10)

    ax = axes[1]
    lrs = sweep.lrs.numpy()
    sharp = sweep.final_sharpness.numpy()
    settled = (sweep.periods == 1).numpy()
    ax.plot(lrs[settled], sharp[settled], "o", ms=3, label="final sharpness (converged)")
    ax.plot(
        lrs[~settled], sharp[~settled], "o", ms=3, mfc="none", color="0.5", label="not converged"
    )
    grid = np.linspace(lrs.min(), lrs.max(), 200)
    ax.plot(grid, 2.0 / grid, "k--", lw=0.9, label="2/$\\eta$")
    ax.set_ylim(0, _upper_limit(sharp))
    summary = result.ratio_summary.ratio_stats()
    ax.set_title(
        f"EoS ratios: median {summary['median']:.4f} (min {summary['min']:.4f})", fontsize=10
    )
    ax.set_xlabel("$\\eta$")
    ax.legend(fontsize=8)

    ax = axes[2]
    bif = result.bifurcation
    ok = ~bif.diverged
    xs = np.repeat(bif.lrs[ok].numpy(), bif.late_products.shape[1])
    ys = bif.late_products[ok].reshape(-1).numpy()
    ax.plot(xs, ys, ",", color="k", alpha=0.6)
    bsum = result.bifurcation_summary
    for period, lr in bsum.first_period.items():
        ax.axvline(lr, color="C1", lw=0.5, alpha=0.6)
        ax.text(lr, 1.02, str(period), color="C1", fontsize=7, transform=ax.get_xaxis_transform())
    ax.set_xlabel("$\\eta$")
    ax.set_ylabel("late xyzw")
    ax.set_title(f"bifurcation from {tuple(bif.init)}", fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def plot_fractal(result: FractalResult, path: str | Path, *, dpi: int = 100) -> Path:
    """Scatter of the final particles, coloured by sharpness relative to ``2/eta``."""
    fig = Figure(figsize=(5.6, 5.0))
    ax = fig.subplots()
    opts = {"amplitude": result.amplitude, "frequency": result.frequency}
    initial_loss = fractal_loss(result.initial, **opts)
    kept = ~fractal_diverged(result.final, result.final_loss, initial_loss)  # drawn
    pts = result.final[kept].numpy()
    ratio = (result.final_sharpness[kept] / result.threshold).numpy()
    sc = ax.scatter(pts[:, 0], pts[:, 1], s=0.3, c=ratio, cmap="coolwarm", vmin=0, vmax=2.5)
    fig.colorbar(sc, ax=ax, label="sharpness / (2/$\\eta$)")
    ax.set_aspect("equal")
    diverged = (
        f"\n{result.num_diverged:,} of {len(kept):,} particles diverged (not shown)"
        if result.num_diverged
        else ""
    )
    ax.set_title(
        f"A={result.amplitude:g}, k={result.frequency:g}, $\\eta$={result.lr:g}, "
        f"{result.steps} steps, $\\sigma$={result.noise_std:g}, n={len(kept)}{diverged}",
        fontsize=9,
    )
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return save_figure(fig, path, dpi=dpi)
