"""Densities of a weighted point measure, e.g. the SLQ estimate of a spectral density.

An SLQ result (:func:`~sharpdim.curvature.slq.slq_spectrum`) is a discrete measure
``(1/R) sum_{r,l} tau_{r,l} delta_{theta_{r,l}}``. Two ways to draw it as a density:

* :func:`histogram_density`: the mass of each bin divided by the bin width;
* :func:`kde_density`: Gaussian smoothing ``sum_j p_j N(x; theta_j, h^2)`` (Ghorbani, Krishnan
  & Xiao, ICML 2019, use the same construction), bandwidth by default Silverman's robust rule
  on the weighted atoms (:func:`~sharpdim.curvature.measure.silverman_bandwidth`; the SD-KDE
  estimator of Tuci et al., arXiv 2604.19740, App. C, starts from it and caps it near its
  crossing exponent).

Both are normalised to integrate to 1: the histogram exactly, the KDE with the trapezoid rule
on its grid (the mass of the kernels' tails beyond the grid is put back by that rescaling).
The KDE's value at a grid point is the mixture's mean over the grid cell around it, so a
kernel narrower than the cells (an outlier eigenvalue beside a wide bulk) keeps its mass in
its own cell instead of falling between grid points.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from sharpdim.checks import check_number, check_size, real_tensor
from sharpdim.curvature.measure import silverman_bandwidth
from sharpdim.errors import SharpdimError


def _real_vector(values: Any, name: str) -> torch.Tensor:
    """``values`` as a flat float64 CPU tensor (:func:`~sharpdim.checks.real_tensor`)."""
    return real_tensor(values, name).reshape(-1)


def _measure(nodes: Any, weights: Any) -> tuple[torch.Tensor, torch.Tensor]:
    v = _real_vector(nodes, "nodes")
    p = _real_vector(weights, "weights")
    if v.shape != p.shape or v.numel() == 0:
        raise SharpdimError(
            f"nodes ({v.numel()}) and weights ({p.numel()}) must be non-empty and of equal "
            "size: pass an SLQ result's nodes and weights"
        )
    if not (torch.isfinite(v).all() and torch.isfinite(p).all()) or bool((p < 0).any()):
        raise SharpdimError("nodes/weights hold NaN/inf or negative weights: check the input")
    total = float(p.sum())
    if not 0 < total < math.inf:
        raise SharpdimError(
            f"the weights sum to {total:g}: pass weights with a positive, finite total mass"
        )
    # atoms without mass (SLQ nodes a probe does not see, padding) must not set the default
    # range, grid or scale: one at 1000 beside mass on [0, 2] made the KDE grid cells 2 wide
    keep = p > 0
    return v[keep], p[keep] / total


def histogram_density(
    nodes: Any, weights: Any, bins: int = 100, range: tuple[float, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram density of a weighted point measure.

    Args:
        nodes, weights: the atoms and their (non-negative) weights, any shape (flattened);
            the weights are normalised to total mass 1.
        bins: number of equal bins.
        range: finite ``(low, high)`` of the bins; default the nodes' range (widened by
            ``max(0.5, 1e-6 |x|)`` on both sides if it is a single point ``x``). Mass outside
            the range is dropped before the normalisation.

    Returns:
        ``(edges, density)``: ``bins + 1`` edges and ``bins`` densities with
        ``sum(density * diff(edges)) = 1``.
    """
    v, p = _measure(nodes, weights)
    bins = check_size(bins, "bins", hint="a number of bins, e.g. 100")
    lo, hi = (float(v.min()), float(v.max())) if range is None else _range(range)
    if range is None and _one_point(lo, hi):  # (nodes equal up to rounding, e.g. SLQ of c I)
        # relative to the magnitude: 0.5 alone is below the spacing of floats beyond 4.5e15
        pad = max(0.5, 1e-6 * max(abs(lo), abs(hi)))
        lo, hi = max(lo - pad, -sys.float_info.max), min(hi + pad, sys.float_info.max)
    if not hi > lo:
        raise SharpdimError(f"range ({lo}, {hi}) is empty: pass low < high")
    if math.isinf(hi - lo):
        raise SharpdimError(
            f"range ({lo}, {hi}) is wider than float64 holds (high - low overflows): pass "
            "a narrower range" + (", or rescale the nodes" if range is None else "")
        )
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    if not bool((edges.diff() > 0).all()):
        raise SharpdimError(
            f"range ({lo}, {hi}) is too narrow for {bins} bins in float64: widen it or pass "
            "fewer bins"
        )
    inside = (v >= lo) & (v <= hi)
    if not bool(inside.any()) or float(p[inside].sum()) == 0:
        raise SharpdimError(f"no mass falls in range ({lo}, {hi}): widen the range")
    idx = torch.bucketize(v[inside], edges[1:-1], right=True)
    mass = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, p[inside])
    return edges, mass / mass.sum() / edges.diff()


def kde_density(
    nodes: Any,
    weights: Any,
    grid: torch.Tensor | None = None,
    bandwidth: float | None = None,
    *,
    grid_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian kernel density of a weighted point measure on a grid.

    ``rho(x) = sum_j p_j exp(-(x - theta_j)^2 / (2 h^2)) / (h sqrt(2 pi))`` averaged over the
    cell ``[a_i, b_i]`` of each grid point ``x_i``, ``(F(b_i) - F(a_i)) / (b_i - a_i)`` with
    ``F`` the mixture's distribution function, then rescaled so that its trapezoid integral
    over the grid is 1. Where the grid resolves ``h`` (gaps at most ``h``) the cells are
    centred on the points and this is ``rho(x_i)`` up to ``O((dx/h)^2)``, on unequal gaps too;
    across a gap wider than ``h`` the two cells meet at its midpoint, so a kernel there keeps
    its mass in one of them (a plain evaluation at the grid points would lose a narrow outlier
    between two of them). On a uniform grid the cells are those between midpoints.

    Args:
        nodes, weights: the atoms and their (non-negative) weights, any shape (flattened).
        grid: ascending evaluation points; default ``grid_size`` points spanning the nodes
            plus ``3 h`` (and at least two grid cells) on each side.
        bandwidth: kernel standard deviation ``h`` (default Silverman's robust rule; if that
            is 0, as for a single atom, or below 1e-10 of the nodes' scale, as for atoms that
            differ only by rounding, 1e-3 of the nodes' scale, at least 1e-12).
        grid_size: points of the default grid.

    Returns:
        ``(grid, density)``, both float64 of the grid's length.
    """
    v, p = _measure(nodes, weights)
    if bandwidth is None:
        h = silverman_bandwidth(v, p)
        scale = float(v.abs().max())
        if not h > 1e-10 * scale:
            h = max(1e-3 * scale, 1e-12)
    else:
        h = check_number(bandwidth, "bandwidth", "> 0", "0.1, or None for Silverman's rule")
    if grid is None:
        grid_size = check_size(grid_size, "grid_size", 2, "a number of grid points, e.g. 512")
        # 3 h beyond the atoms, and two cells: no atom's mass lies in an end cell, which the
        # trapezoid rule counts half
        cell = (float(v.max() - v.min()) + 6 * h) / (grid_size - 1)
        pad = max(3 * h, 2 * cell)
        lo, hi = float(v.min()) - pad, float(v.max()) + pad
        grid = torch.linspace(lo, hi, grid_size, dtype=torch.float64)
        wide = math.isfinite(hi - lo)  # (else the overflow is named below)
        if wide and not bool((grid.diff() > 0).all()):  # cells below float64 spacing: 0/0
            least = grid_size * math.ulp(max(abs(lo), abs(hi)))
            raise SharpdimError(
                f"bandwidth {h:g} is below float64 resolution at the nodes (|x| up to "
                f"{max(abs(lo), abs(hi)):g}) for {grid_size} grid points: use bandwidth >= "
                f"{least:.2g}, fewer grid points, or bandwidth=None (Silverman's rule)"
            )
    else:
        grid = _real_vector(grid, "grid")
        if grid.numel() < 2 or not bool((grid.diff() > 0).all()):
            raise SharpdimError("grid must hold at least 2 strictly increasing points")
    dens = _cell_means(grid, v, p, h)
    area = float(torch.trapezoid(dens, grid))
    if not math.isfinite(area):
        raise SharpdimError(
            f"the density is not finite on this grid (bandwidth {h:g}): the nodes' magnitudes "
            "overflow float64; rescale them"
        )
    if area <= 0:
        raise SharpdimError("the grid misses all the mass of the kernels: widen the grid")
    return grid, dens / area


def _range(value: Any) -> tuple[float, float]:
    """A histogram's ``range`` as ``(low, high)`` floats, or a one-line error."""
    try:
        lo, hi = (_float(x) for x in value)
    except (TypeError, ValueError):
        raise SharpdimError(f"range must be a pair (low, high) of numbers, got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise SharpdimError(
            f"range ({lo}, {hi}) is not finite: pass finite limits, e.g. (0, 10), or None for "
            "the nodes' range"
        )
    return lo, hi


def _float(x: Any) -> float:
    """``float(x)``, with ``±inf`` for an int beyond float64 (``10**400``)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _one_point(lo: float, hi: float) -> bool:
    """Whether ``[lo, hi]`` is a single point up to float64 rounding."""
    return hi - lo <= 1e-12 * max(abs(lo), abs(hi))


_CHUNK = 2**20  # grid cells x atoms per block: 8 MiB of float64 per temporary


def _cell_means(grid: torch.Tensor, v: torch.Tensor, p: torch.Tensor, h: float) -> torch.Tensor:
    """Mean of ``sum_j p_j N(x; v_j, h^2)`` over each grid point's cell, in blocks of grid
    points and atoms (memory bounded at any grid and measure size).

    Each side of a cell reaches the midpoint to the neighbour where the gap there is wider
    than ``h`` (so a kernel between the two points stays in one of their cells), and half the
    point's smaller gap elsewhere (a centred cell where the grid resolves ``h``: second-order
    accurate on unequal gaps too). On a uniform grid both are the midpoint cells, whose shared
    edges need one tail each.
    """
    gaps = grid.diff()
    if float(gaps.max() - gaps.min()) <= 1e-9 * float(gaps.max()):  # uniform
        mid = (grid[1:] + grid[:-1]) / 2
        edges = torch.cat([2 * grid[:1] - mid[:1], mid, 2 * grid[-1:] - mid[-1:]])
        low, high = edges[:-1], edges[1:]
    else:
        left, right = torch.cat([gaps[:1], gaps]), torch.cat([gaps, gaps[-1:]])
        half = torch.minimum(left, right) / 2
        low = grid - torch.where(left > h, left / 2, half)
        high = grid + torch.where(right > h, right / 2, half)
        edges = None
    rows = max(1, _CHUNK // v.numel())
    cols = min(v.numel(), _CHUNK)
    mass = torch.zeros_like(grid)
    for i in range(0, grid.numel(), rows):
        stop = min(i + rows, grid.numel())
        for j in range(0, v.numel(), cols):
            mu = v[j : j + cols]
            if edges is not None:  # one tail per shared edge
                tail, after = _tails(edges[i : stop + 1], mu, h)
                cells = _between(tail[:-1], after[:-1], tail[1:], after[1:])
            else:
                cells = _between(*_tails(low[i:stop], mu, h), *_tails(high[i:stop], mu, h))
            mass[i:stop] += cells @ p[j : j + cols]
    return mass / (high - low)


def _tails(edges: torch.Tensor, mu: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``X ~ N(mu_j, h^2)``: the mass beyond each edge on the side away from each atom,
    ``erfc(|z| / sqrt 2) / 2``, and whether the edge lies right of the atom; shape
    ``(len(edges), len(mu))``."""
    z = (edges[:, None] - mu[None, :]) / (h * math.sqrt(2))
    return 0.5 * torch.erfc(z.abs()), z >= 0


def _between(
    t_a: torch.Tensor, right_a: torch.Tensor, t_b: torch.Tensor, right_b: torch.Tensor
) -> torch.Tensor:
    """``P(a < X < b)`` from the tails at ``a < b``: a difference of two tails on one side of
    the atom (``t_a - t_b`` or ``t_b - t_a``: no cancellation of two values near 1 far from
    the atom) or ``1 - t_a - t_b`` for the cell holding it."""
    return torch.where(right_a, t_a - t_b, torch.where(right_b, 1 - t_a - t_b, t_b - t_a))
