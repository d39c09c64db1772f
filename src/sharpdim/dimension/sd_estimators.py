"""SD-SLQ, SD-KDE and SD-PS: the sharpness dimension from a stochastic Lanczos quadrature measure.

Paper Sec. 5 and App. C (Tuci et al., arXiv 2604.19740). Stochastic Lanczos quadrature (one
Rademacher probe and one fresh minibatch ``B_r`` per run ``r = 1..R``, ``m`` Lanczos steps)
gives nodes ``alpha_{r,l}`` (Ritz values of the step matrix ``A_{B_r}``) with weights
``tau_{r,l} = (U_{1l})^2``, ``sum_l tau_{r,l} = 1``. The measure

    mu = (d / R) sum_{r,l} tau_{r,l} delta_{alpha_{r,l}}

has mass ``d`` and estimates the batch-averaged spectral measure of ``A_B``. Pushing it through
the map from eigenvalues to one-step exponents (SGD: ``g(alpha) = ln(|1 - eta alpha| + eps)``;
momentum/Adam: the two exponents of each ``2 x 2`` block, see
:mod:`sharpdim.dynamics.jacobian_spectra`) gives a measure ``nu`` of exponents of mass
``d_state`` (``d`` or ``2d``). Its Kaplan–Yorke dimension — the largest ``x`` with
``S(x) = int_0^x l(s) ds >= 0``, ``l`` the descending quantile function, i.e. the level where
``S(l) = d_state E_nu[g; g >= l]`` crosses 0, ``SD = N(l) + S(l)/|l|`` with
``N(l) = d_state P_nu(g >= l)`` (:func:`~sharpdim.dimension.kaplan_yorke.kaplan_yorke_measure`) —
is estimated three ways:

* **SD-SLQ** (:func:`sd_histogram`): the measure binned into a histogram of ``num_bins`` equal
  bins; each bin is one atom carrying its mass at its mean exponent (so ``N`` and ``S`` are
  exact at every bin edge and only the crossing inside one bin is interpolated).
* **SD-KDE** (:func:`sd_kde`): the measure smoothed by a Gaussian kernel of bandwidth ``h``
  (default: Silverman's robust rule ``0.9 min(std, IQR/1.34) n_eff^{-1/5}`` on the weighted
  atoms, ``n_eff = (sum tau)^2 / sum tau^2``); ``N`` and ``S`` are integrated cell by cell on a
  grid — with the trapezoid rule on the density (``integration="trapezoid"``, the paper's
  quadrature) or exactly through the normal CDF (``"exact"``, the default, free of grid error).
  The grid holds equal-mass quantiles of the atoms (fine where the mass is) and a uniform grid
  over ``[min - 6h, max + 6h]``.
* **SD-PS** (:func:`sd_quantiles`): ``M`` equal-mass quantiles at levels ``(i - 1/2)/M``, each an
  atom of weight ``d_state / M`` (default ``M = d_state``: one quantile per exponent, the
  estimated ``lambda_k``); the result lies in ``[0, d_state]`` by construction.

Pooling the runs estimates the quantile function of the batch-*mixture* spectrum, whereas the
exact method averages each batch's *sorted* exponents; the two differ at second order in the
batch-to-batch fluctuation of the spectrum.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sharpdim.dimension.kaplan_yorke import KaplanYorkeResult, kaplan_yorke_measure
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig, block_singular_values
from sharpdim.errors import SharpdimError

SD_METHODS: tuple[str, ...] = ("slq", "kde", "ps")


def exponent_measure(
    nodes: torch.Tensor, weights: torch.Tensor, num_params: int, config: StepSpectrumConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push an SLQ measure of the step matrix through the eigenvalue-to-exponent map.

    Args:
        nodes: Ritz values ``(R, m)`` (one row per Lanczos run).
        weights: quadrature weights ``(R, m)``, each row summing to 1.
        num_params: ``d``, the size of the step matrix.
        config: optimizer, learning rate and guard ``eps``.

    Returns:
        ``(values, masses)``, each ``(R, m * s)`` with ``s`` exponents per eigenvalue (1 for
        SGD, 2 otherwise); the masses sum to ``s * d`` over all runs.
    """
    nodes = torch.as_tensor(nodes).detach().to(torch.float64)
    weights = torch.as_tensor(weights).detach().to(torch.float64)
    if nodes.ndim != 2 or nodes.shape != weights.shape or nodes.numel() == 0:
        raise SharpdimError(
            f"nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} must be equal "
            "(runs, steps) arrays: pass SLQResult.nodes and SLQResult.weights"
        )
    runs, s = nodes.shape[0], config.states_per_param
    sigma = block_singular_values(nodes.reshape(-1), config).reshape(runs, -1)
    values = torch.log(sigma + config.eps)
    masses = (weights * (num_params / runs)).repeat_interleave(s, dim=1)
    return values, masses


def _flat(values: Any, masses: Any) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    m = torch.as_tensor(masses, dtype=torch.float64).reshape(-1)
    if v.shape != m.shape or v.numel() == 0:
        raise SharpdimError("values and masses must be non-empty and of equal size")
    if not (torch.isfinite(v).all() and torch.isfinite(m).all()) or (m < 0).any():
        raise SharpdimError("the exponent measure holds NaN/inf or negative masses")
    return v, m


def weighted_quantiles(values: Any, masses: Any, levels: torch.Tensor) -> torch.Tensor:
    """Lower quantiles ``inf{x : P(X <= x) >= q}`` of a weighted measure, for ``q`` in ``levels``."""
    v, m = _flat(values, masses)
    order = torch.argsort(v)
    v, cdf = v[order], torch.cumsum(m[order], 0)
    cdf = cdf / cdf[-1]
    idx = torch.searchsorted(cdf, levels.to(torch.float64).clamp(0, 1))
    return v[idx.clamp(max=v.numel() - 1)]


def sd_histogram(values: Any, masses: Any, *, num_bins: int = 2000) -> KaplanYorkeResult:
    """SD-SLQ: Kaplan–Yorke dimension of the binned exponent measure (bin atoms at bin means)."""
    v, m = _flat(values, masses)
    if num_bins < 1:
        raise SharpdimError(f"num_bins must be >= 1, got {num_bins}")
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return kaplan_yorke_measure(v[:1], m.sum()[None])
    edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(v, edges[1:-1], right=True)
    mass = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, m)
    first = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, m * v)
    full = mass > 0
    return kaplan_yorke_measure(first[full] / mass[full], mass[full])


def silverman_bandwidth(values: Any, masses: Any) -> float:
    """Silverman's robust rule ``0.9 min(std, IQR/1.34) n_eff^{-1/5}`` for a weighted measure."""
    v, m = _flat(values, masses)
    p = m / m.sum()
    mean = float((p * v).sum())
    std = math.sqrt(max(float((p * (v - mean) ** 2).sum()), 0.0))
    q = weighted_quantiles(v, m, torch.tensor([0.25, 0.75], dtype=torch.float64))
    iqr = float(q[1] - q[0]) / 1.34
    spread = min(std, iqr) if iqr > 0 else std
    n_eff = 1.0 / float((p * p).sum())
    return 0.9 * spread * n_eff ** (-0.2)


def _kde_grid(v: torch.Tensor, m: torch.Tensor, h: float, grid_size: int) -> torch.Tensor:
    levels = (torch.arange(grid_size, dtype=torch.float64) + 0.5) / grid_size
    quant = weighted_quantiles(v, m, levels)
    uniform = torch.linspace(
        float(v.min()) - 6 * h, float(v.max()) + 6 * h, grid_size, dtype=torch.float64
    )
    return torch.unique(torch.cat([quant, uniform]))  # sorted ascending


def sd_kde(
    values: Any,
    masses: Any,
    *,
    bandwidth: float | None = None,
    grid_size: int = 2048,
    integration: str = "exact",
) -> KaplanYorkeResult:
    """SD-KDE: Kaplan–Yorke dimension of the Gaussian-smoothed exponent measure.

    Args:
        values, masses: the exponent measure (e.g. from :func:`exponent_measure`).
        bandwidth: kernel standard deviation ``h``; default :func:`silverman_bandwidth`.
        grid_size: points of each of the two grids (quantile and uniform) that are merged.
        integration: ``"exact"`` (cell masses and first moments through the normal CDF) or
            ``"trapezoid"`` (trapezoid rule on the density at the grid points).

    Returns:
        :class:`KaplanYorkeResult` over the grid cells (each an atom at its mean exponent).
    """
    v, m = _flat(values, masses)
    if integration not in ("exact", "trapezoid"):
        raise SharpdimError(f"unknown integration {integration!r}: use 'exact' or 'trapezoid'")
    h = silverman_bandwidth(v, m) if bandwidth is None else float(bandwidth)
    if h < 0 or not math.isfinite(h):
        raise SharpdimError(f"bandwidth must be a finite number >= 0, got {bandwidth}")
    if h == 0:  # nothing to smooth (a single value): the measure itself
        return kaplan_yorke_measure(v, m)
    total = float(m.sum())
    grid = _kde_grid(v, m, h, grid_size)
    mass_cells = torch.empty(grid.numel() - 1, dtype=torch.float64)
    first_cells = torch.empty_like(mass_cells)
    if integration == "exact":
        # int_a^b N(x; v, h^2) dx and int_a^b x N(x; v, h^2) dx, summed over atoms in chunks
        cdf_sum = torch.zeros_like(grid)
        mom_sum = torch.zeros_like(grid)
        for start in range(0, v.numel(), 4096):
            vc, mc = v[start : start + 4096], m[start : start + 4096]
            z = (grid[:, None] - vc[None, :]) / h
            cdf = torch.special.ndtr(z)
            pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            cdf_sum += (cdf * mc).sum(1)
            mom_sum += ((vc * cdf - h * pdf) * mc).sum(1)
        mass_cells = cdf_sum.diff()
        first_cells = mom_sum.diff()
    else:
        dens = torch.zeros_like(grid)
        for start in range(0, v.numel(), 4096):
            vc, mc = v[start : start + 4096], m[start : start + 4096]
            z = (grid[:, None] - vc[None, :]) / h
            dens += (torch.exp(-0.5 * z * z) * mc).sum(1) / (h * math.sqrt(2 * math.pi))
        dx = grid.diff()
        mass_cells = 0.5 * dx * (dens[1:] + dens[:-1])
        first_cells = 0.5 * dx * (dens[1:] * grid[1:] + dens[:-1] * grid[:-1])
    keep = mass_cells > 0
    mass_cells, first_cells = mass_cells[keep], first_cells[keep]
    scale = total / float(mass_cells.sum())  # the tails beyond +-6h: renormalise to mass d
    mass_cells, first_cells = mass_cells * scale, first_cells * scale
    return kaplan_yorke_measure(first_cells / mass_cells, mass_cells)


def sd_quantiles(
    values: Any, masses: Any, *, num_quantiles: int | None = None
) -> KaplanYorkeResult:
    """SD-PS: Kaplan–Yorke dimension of ``M`` equal-mass quantiles, each of weight ``d/M``.

    ``M`` defaults to the total mass rounded (one quantile per exponent), so the sorted
    quantiles estimate ``lambda_1 >= ... >= lambda_d`` directly.
    """
    v, m = _flat(values, masses)
    total = float(m.sum())
    num = max(1, round(total)) if num_quantiles is None else int(num_quantiles)
    if num < 1:
        raise SharpdimError(f"num_quantiles must be >= 1, got {num_quantiles}")
    levels = (torch.arange(num, dtype=torch.float64) + 0.5) / num
    q = torch.flip(weighted_quantiles(v, m, levels), [0])
    return kaplan_yorke_measure(q, torch.full((num,), total / num, dtype=torch.float64))


def sd_from_measure(method: str, values: Any, masses: Any, **options: Any) -> KaplanYorkeResult:
    """Dispatch to :func:`sd_histogram` (``"slq"``), :func:`sd_kde` or :func:`sd_quantiles` (``"ps"``)."""
    if method == "slq":
        return sd_histogram(values, masses, **options)
    if method == "kde":
        return sd_kde(values, masses, **options)
    if method == "ps":
        return sd_quantiles(values, masses, **options)
    raise SharpdimError(f"unknown SD estimator {method!r}: use one of {', '.join(SD_METHODS)}")
