"""A one-call summary of a Hessian spectrum: both ends, the trace and the density.

Combines Lanczos (top-k largest algebraic eigenvalues, i.e. sharpness, and the smallest),
Hutch++ for the trace (Meyer, Musco, Musco & Woodruff, SOSA 2021) and stochastic Lanczos
quadrature (Ghorbani, Krishnan & Xiao, ICML 2019) smoothed by a Gaussian KDE for the density.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, check_number, default_generator
from sharpdim.curvature.density import kde_density
from sharpdim.curvature.lanczos import lanczos_eigenvalues
from sharpdim.curvature.operator import OperatorLike, as_operator
from sharpdim.curvature.slq import slq_spectrum
from sharpdim.curvature.trace import hutchpp_trace


@dataclass(frozen=True)
class SpectrumSummary:
    """Summary of the spectrum of a symmetric operator of dimension ``num_params``.

    Attributes:
        top_eigenvalues: the ``k`` largest algebraic eigenvalues, descending (float64).
        converged: per top eigenvalue, whether Lanczos met its tolerance.
        bottom_eigenvalue: the smallest algebraic eigenvalue.
        bottom_converged: whether it met ``bottom_tol`` within ``bottom_max_iter`` products
            (near 0 in an ill-conditioned spectrum it may not: reported, not hidden).
        trace: Hutch++ estimate of ``tr(H)``; trace_stderr its standard error.
        nodes, weights: the SLQ measure ``(runs, m)``, each run's weights summing to 1.
        grid, density: Gaussian-KDE density of the SLQ measure on an eigenvalue grid.
    """

    num_params: int
    top_eigenvalues: torch.Tensor
    converged: torch.Tensor
    bottom_eigenvalue: float
    bottom_converged: bool
    trace: float
    trace_stderr: float
    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_params": self.num_params,
            "top_eigenvalues": self.top_eigenvalues.tolist(),
            "converged": self.converged.tolist(),
            "bottom_eigenvalue": self.bottom_eigenvalue,
            "bottom_converged": self.bottom_converged,
            "trace": self.trace,
            "trace_stderr": self.trace_stderr,
        }


def spectrum_summary(
    hessian: OperatorLike,
    *,
    k: int = 5,
    num_runs: int = 10,
    num_steps: int = 80,
    trace_matvecs: int = 90,
    grid_size: int = 512,
    tol: float = 1e-6,
    bottom_tol: float = 1e-3,
    bottom_max_iter: int = 200,
    generator: torch.Generator | None = None,
) -> SpectrumSummary:
    """Top-``k`` and bottom eigenvalues, Hutch++ trace and SLQ/KDE density of ``hessian``.

    Args:
        hessian: a dense symmetric matrix or a :class:`LinearOperator` (e.g. HessianOperator).
        k: how many of the largest eigenvalues to return.
        num_runs, num_steps: SLQ runs (Rademacher probes) and Lanczos steps per run.
        trace_matvecs: matrix-vector products spent by Hutch++.
        grid_size: points of the density grid (spanning the SLQ nodes plus 3 bandwidths).
        tol: relative tolerance of the top eigenvalues.
        bottom_tol: relative tolerance of the smallest eigenvalue (often in a cluster near 0,
            where Lanczos converges slowly; it is reported, not optimised for).
        bottom_max_iter: most products spent on the smallest eigenvalue (a trained network's
            takes 20-40; an ill-conditioned one near 0 could take the solver's whole budget
            of 1,000 and more, most of the summary's cost): ``bottom_converged`` says
            whether it was reached.
        generator: the only source of randomness.
    """
    op = as_operator(hessian)
    gen = default_generator(generator)
    # every count and tolerance is checked before the first (possibly slow) product
    trace_matvecs = check_count(trace_matvecs, "trace_matvecs", 3)
    num_runs, num_steps = check_count(num_runs, "num_runs"), check_count(num_steps, "num_steps")
    grid_size = check_count(grid_size, "grid_size", 2)
    tol = check_number(tol, "tol", "> 0", "1e-6")
    bottom_tol = check_number(bottom_tol, "bottom_tol", "> 0", "1e-3")
    bottom_max_iter = check_count(bottom_max_iter, "bottom_max_iter", hint="e.g. 200")
    top = lanczos_eigenvalues(op, k=k, which="LA", tol=tol, generator=gen)
    bottom = lanczos_eigenvalues(
        op, k=1, which="SA", tol=bottom_tol, max_iter=bottom_max_iter, generator=gen
    )
    trace = hutchpp_trace(op, num_matvecs=trace_matvecs, generator=gen)
    slq = slq_spectrum(op, num_runs=num_runs, num_steps=num_steps, generator=gen)
    grid, density = kde_density(slq.nodes, slq.weights, grid_size=grid_size)
    return SpectrumSummary(
        num_params=op.num_params,
        top_eigenvalues=top.eigenvalues,
        converged=top.converged,
        bottom_eigenvalue=float(bottom.eigenvalues[0]),
        bottom_converged=bool(bottom.converged[0]),
        trace=float(trace.estimate),
        trace_stderr=float(trace.stderr),
        nodes=slq.nodes,
        weights=slq.weights,
        grid=grid,
        density=density,
    )
