"""Figures of Hessian spectra (matplotlib figures without pyplot; imports core, never the
reverse)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from sharpdim.checks import described, plain_scalar, real_tensor
from sharpdim.errors import SharpdimError
from sharpdim.report.figure_file import legend_if_any, save_figure


def _mark_threshold(ax: Any, threshold: float, lo: float, hi: float) -> None:
    """``threshold`` as a dashed line where it lies near the grid; far off it (a small step
    size puts ``2/eta`` far right of the spectrum), an arrow at that edge of the axes, so the
    x-axis stays on the density instead of squeezing it into a sliver."""
    label = f"stability threshold {threshold:.3g}"
    margin = 0.25 * max(hi - lo, abs(hi), abs(lo), 1e-300)
    if lo - margin <= threshold <= hi + margin:
        ax.axvline(threshold, color="k", ls="--", lw=1.0, label=label)
        return
    right = threshold > hi
    ax.annotate(
        f"{label} ->" if right else f"<- {label}",
        xy=(0.98 if right else 0.02, 0.04), xycoords="axes fraction",
        ha="right" if right else "left", va="bottom", fontsize=8,
    )  # fmt: skip


def plot_spectrum_density(
    grid: torch.Tensor,
    density: torch.Tensor,
    path: str | Path,
    *,
    top_eigenvalues: Sequence[float] = (),
    threshold: float | None = None,
    title: str = "Hessian spectral density (SLQ, Gaussian KDE)",
) -> Path:
    """Save a log-scale spectral density with the top eigenvalues and ``2/eta`` marked.

    Args:
        grid: eigenvalue grid ``(g,)`` (a tensor of any real dtype, an array or a list).
        density: density on the grid ``(g,)`` (integrates to 1).
        path: output PNG path (parent folders are created).
        top_eigenvalues: Lanczos eigenvalues to mark as vertical lines.
        threshold: the optimizer's stability threshold (e.g. ``2/eta``), drawn dashed.
        title: axes title.
    """
    # (float64 copies: numpy has no bfloat16; arrays and lists are taken too; complex and
    # bool data are refused, not drawn as their real part or as 0/1)
    grid, density = (real_tensor(t, name) for t, name in ((grid, "grid"), (density, "density")))
    top_eigenvalues = [  # (each entry flattened: [tensor([4.0]), 3.0] mixes shapes)
        v for e in top_eigenvalues for v in real_tensor(e, "top_eigenvalues").reshape(-1).tolist()
    ]
    if threshold is not None:
        threshold = _threshold_number(threshold)
    if grid.ndim != 1 or grid.shape != density.shape or grid.numel() == 0:
        raise SharpdimError(
            f"grid {tuple(grid.shape)} and density {tuple(density.shape)} must be equal, "
            "non-empty vectors: pass the (grid, density) of kde_density"
        )
    if not (torch.isfinite(density).all() and torch.isfinite(grid).all()):
        raise SharpdimError(
            "the density or its grid holds NaN or inf (nothing to draw): check the SLQ "
            "nodes and weights it came from"
        )
    if not all(math.isfinite(float(lam)) for lam in top_eigenvalues):
        raise SharpdimError(
            f"top_eigenvalues hold NaN or inf ({list(top_eigenvalues)}): pass finite values"
        )
    peak = float(density.max())
    floor = peak * 1e-8 if peak > 0 else 1e-12  # (relative: a density of 1e-30 stays visible)
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    ax = fig.subplots()
    ax.semilogy(grid.cpu().numpy(), density.clamp_min(floor).cpu().numpy(), color="C0")
    for i, lam in enumerate(top_eigenvalues):
        ax.axvline(lam, color="C3", lw=0.8, alpha=0.7, label="top eigenvalues" if i == 0 else None)
    if threshold is not None:
        _mark_threshold(ax, float(threshold), float(grid.min()), float(grid.max()))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(title)
    legend_if_any(ax, loc="upper right", fontsize=8)
    return save_figure(fig, path)


def _threshold_number(threshold: Any) -> float:
    """``threshold`` as a finite float: a bool (drawn as "stability threshold 1"), a string
    (``"2"`` was drawn as 2), NaN or inf is refused in one line."""
    value = plain_scalar(threshold)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        got = "a bool" if isinstance(value, bool) else described(threshold)
        raise SharpdimError(f"threshold must be a number, got {got}: pass e.g. 2 / lr, or None")
    try:
        number = float(value)
    except OverflowError:  # (an int such as 10**400)
        number = math.inf
    if math.isnan(number):
        raise SharpdimError("threshold is NaN: pass a number (or None for no mark)")
    if math.isinf(number):
        raise SharpdimError(
            f"threshold {described(threshold)} is not finite: pass a finite number (or None "
            "for no mark)"
        )
    return number
