"""Weighted point measures ``sum_j m_j delta_{v_j}``: checks, quantiles, KDE bandwidth.

Shared by the spectral densities of :mod:`sharpdim.curvature.density` and the SD estimators
of :mod:`sharpdim.dimension.sd_estimators` (Tuci et al., arXiv 2604.19740, App. C).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sharpdim.checks import real_tensor
from sharpdim.errors import SharpdimError


def flat_measure(values: Any, masses: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The atoms and masses as flat float64 tensors, checked (finite, masses >= 0 with a
    positive total, same size)."""
    v = real_tensor(values, "values").reshape(-1)
    m = real_tensor(masses, "masses").reshape(-1)
    if v.shape != m.shape or v.numel() == 0:
        raise SharpdimError(
            "values and masses must be non-empty and of equal size: pass one mass per value"
        )
    if not (torch.isfinite(v).all() and torch.isfinite(m).all()) or (m < 0).any():
        raise SharpdimError(
            "the measure holds NaN/inf or negative masses: pass finite values and masses >= 0"
        )
    total = float(m.sum())
    if not total > 0:
        raise SharpdimError("the masses sum to 0: pass a measure with positive total mass")
    if total == math.inf:  # (finite masses near 1e308: the CDF was NaN, a quantile wrong)
        raise SharpdimError(
            "the masses sum to inf: pass masses whose total is finite (e.g. divided by the largest)"
        )
    return v, m


def weighted_quantiles(values: Any, masses: Any, levels: Any) -> torch.Tensor:
    """Lower quantiles ``inf{x : P(X <= x) >= q}`` of a weighted measure, for ``q`` in ``levels``
    (a tensor, array or list of numbers)."""
    v, m = flat_measure(values, masses)
    q = real_tensor(levels, "levels")
    if not bool(((q >= 0) & (q <= 1)).all()):  # (NaN included: it returned the largest atom)
        raise SharpdimError(
            f"levels must lie in [0, 1], got {q.tolist()[:5]}: pass probabilities, e.g. 0.5"
        )
    order = torch.argsort(v)
    v, cdf = v[order], torch.cumsum(m[order], 0)
    cdf = cdf / cdf[-1]
    idx = torch.searchsorted(cdf, q)
    return v[idx.clamp(max=v.numel() - 1)]


def equal_mass_cell_means(values: Any, masses: Any, num_cells: int) -> torch.Tensor:
    """Means of the measure over ``num_cells`` equal-mass cells, largest first.

    With the atoms sorted in descending order laid end to end on ``[0, total]`` (atom ``j`` an
    interval of length ``m_j``), cell ``i`` is ``[(i-1) T/M, i T/M]`` and its mean is the
    exact integral of the descending quantile function over it divided by ``T/M``. So the
    running sums of the ``M`` cell means (each of mass ``T/M``) equal the measure's at every
    cell edge, whereas a quantile at the cell's midpoint stands in for the whole cell (on a
    cell holding atoms 1.0 and 0.2 of equal mass, 0.2 instead of 0.6). Unit atoms with
    ``M`` equal to their number come back as they are, sorted.
    """
    v, m = flat_measure(values, masses)
    if isinstance(num_cells, bool) or not isinstance(num_cells, int) or num_cells < 1:
        raise SharpdimError(f"num_cells must be an integer >= 1, got {num_cells!r}")
    order = torch.argsort(v, descending=True)
    v, m = v[order], m[order]
    top = float(v.abs().max())
    scale = math.ldexp(1.0, math.frexp(top)[1] - 1) if top > 2.0**1000 else 1.0  # sums finite
    v = v / scale
    shift = -math.frexp(float(m.sum()))[1]  # exact scaling to a total in [1/2, 1), in two
    m = m * math.ldexp(1.0, shift // 2) * math.ldexp(1.0, shift - shift // 2)  # (2^1074 > max)
    total = float(m.sum())
    ends = torch.cumsum(m, 0).clamp(max=total)  # atom i ends at ends[i]
    ends[-1] = total
    # interior cell edges j T / M (exact where j T is: unit atoms meet the edges exactly)
    inner = torch.arange(1, num_cells, dtype=torch.float64) * total / num_cells
    # the ends and edges merged in order (an end before an equal edge), without a sort
    n = v.numel()
    at_end = torch.arange(n) + torch.searchsorted(inner, ends)
    at_edge = torch.arange(num_cells - 1) + torch.searchsorted(ends, inner, right=True)
    points = torch.empty(n + num_cells - 1, dtype=torch.float64)
    is_end = torch.zeros(points.numel(), dtype=torch.long)
    points[at_end], points[at_edge], is_end[at_end] = ends, inner, 1
    starts = torch.cat([points.new_zeros(1), points[:-1]])  # piece k is [starts[k], points[k]]
    atom = torch.cumsum(is_end, 0) - is_end  # atoms ended before piece k
    cell = torch.cumsum(1 - is_end, 0) - (1 - is_end)  # edges passed before piece k
    edges = torch.cat([points.new_zeros(1), inner, points.new_full((1,), total)])
    width = edges[1:] - edges[:-1]
    share = (points - starts) / width[cell]  # of its cell's mass
    means = torch.zeros(num_cells, dtype=torch.float64).index_add_(0, cell, share * v[atom])
    # each mean lies among its cell's atoms, so they descend: round-off can break that by an
    # ulp (and push a mean past the largest atom), which the clamp and cummin undo
    means = torch.cummin(means.clamp(float(v[-1]), float(v[0])), 0).values
    return means * scale


def silverman_bandwidth(values: Any, masses: Any) -> float:
    """Silverman's robust rule ``0.9 min(std, IQR/1.34) n_eff^{-1/5}`` for a weighted measure."""
    v, m = flat_measure(values, masses)
    top = float(v.abs().max())
    if top == 0:
        return 0.0
    # on values scaled by a power of two near max|v| (exact): squares neither overflow
    # (1e160) nor underflow (1e-300)
    scale = math.ldexp(1.0, math.frexp(top)[1] - 1)
    return _silverman_unit(v / scale, m) * scale


def _silverman_unit(v: torch.Tensor, m: torch.Tensor) -> float:
    """Silverman's rule for atoms ``v`` of magnitude at most 2."""
    p = m / m.sum()
    mean = float((p * v).sum())
    std = math.sqrt(max(float((p * (v - mean) ** 2).sum()), 0.0))
    q = weighted_quantiles(v, m, torch.tensor([0.25, 0.75], dtype=torch.float64))
    iqr = float(q[1] - q[0]) / 1.34
    spread = min(std, iqr) if iqr > 0 else std
    n_eff = 1.0 / float((p * p).sum())
    return 0.9 * spread * n_eff ** (-0.2)
