"""Reproduction 2 of :mod:`sharpdim.training.eos_experiments`: the minimalist example.

Zhu, Wang, Wang, Zhou & Ge, "Understanding edge-of-stability training dynamics with a
minimalist example" (ICLR 2023): GD on ``0.5 (1 - xyzw)^2``, vectorised over step sizes (the
maths is in :mod:`sharpdim.training.eos_minimalist`). Two sweeps: the EoS ratios from the
paper's unbalanced start, and a bifurcation diagram over a fine grid of step sizes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.training.eos_minimalist import (
    PAPER_INIT,
    MinimalistSummary,
    MinimalistSweep,
    minimalist_sweep,
    summarize_minimalist,
)

BIFURCATION_INIT: tuple[float, ...] = (1.5, 0.6, 1.5, 0.6)


@dataclass(frozen=True)
class MinimalistExperiment:
    """Reproduction 2: EoS ratios and the bifurcation diagram of the minimalist example.

    Attributes:
        ratios: sweep from ``ratio_init`` (default ``(2, 0.3, 2, 0.3)``) over ``ratio_lrs``,
            with a sharpness trace for a few step sizes; ratio_summary: its classification
            (the EoS step sizes and final sharpness / (2/eta)).
        bifurcation: sweep over a fine grid of step sizes from ``bifurcation_init`` (a less
            unbalanced start, which survives large step sizes long enough to show period
            doubling and chaos); bifurcation_summary: its classification.
        wall_time_s: seconds for both sweeps.
    """

    ratios: MinimalistSweep
    ratio_summary: MinimalistSummary
    bifurcation: MinimalistSweep
    bifurcation_summary: MinimalistSummary
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": self.ratio_summary.to_dict(),
            "ratio_init": list(self.ratios.init),
            "ratio_steps": self.ratios.steps,
            "bifurcation": self.bifurcation_summary.to_dict(),
            "bifurcation_init": list(self.bifurcation.init),
            "bifurcation_steps": self.bifurcation.steps,
            "bifurcation_num_lrs": int(self.bifurcation.lrs.numel()),
            "wall_time_s": self.wall_time_s,
        }


def minimalist_experiment(
    *,
    ratio_lrs: Sequence[float] | None = None,
    bifurcation_lrs: Sequence[float] | None = None,
    steps: int = 20_000,
    late: int = 300,
    ratio_init: Sequence[float] = PAPER_INIT,
    bifurcation_init: Sequence[float] = BIFURCATION_INIT,
    trace_lrs: Sequence[float] = (0.05, 0.3, 0.45),
    progress: Callable[[int, int], None] | None = None,
) -> MinimalistExperiment:
    """Reproduction 2 (Zhu et al., ICLR 2023), vectorised over step sizes.

    Args:
        ratio_lrs: step sizes of the ratio sweep (default 0.02, 0.03, ..., 0.54).
        bifurcation_lrs: step sizes of the bifurcation diagram (default 451 values in
            [0.2, 1.1]).
        steps, late: GD steps, and late iterates kept per step size.
        ratio_init, bifurcation_init: the two initial points.
        trace_lrs: step sizes whose sharpness is traced over training (ratio sweep).
        progress: ``progress(done, total)``, counting the GD steps of both sweeps, called
            every 1,000 steps.
    """
    ratio_grid = torch.arange(2, 55, dtype=torch.float64) / 100 if ratio_lrs is None else ratio_lrs
    bif_grid = (
        torch.linspace(0.2, 1.1, 451, dtype=torch.float64)
        if bifurcation_lrs is None
        else bifurcation_lrs
    )
    start = time.perf_counter()

    def part(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, 2 * steps)

    ratios = minimalist_sweep(
        ratio_grid,
        init=ratio_init,
        steps=steps,
        late=late,
        trace_lrs=trace_lrs,
        trace_every=max(1, steps // 4000),
        callback=part(0),
    )
    bifurcation = minimalist_sweep(
        bif_grid, init=bifurcation_init, steps=steps, late=late, callback=part(steps)
    )
    return MinimalistExperiment(
        ratios=ratios,
        ratio_summary=summarize_minimalist(ratios),
        bifurcation=bifurcation,
        bifurcation_summary=summarize_minimalist(bifurcation),
        wall_time_s=time.perf_counter() - start,
    )
