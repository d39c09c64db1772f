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
  atoms, ``n_eff = (sum tau)^2 / sum tau^2``, capped at ``0.1 |l*|``, ``l*`` the crossing
  exponent of the unsmoothed measure: see :func:`kde_bandwidth`); ``N`` and ``S`` are
  integrated cell by cell on a uniform grid over ``[min - 8h, max + 8h]`` (spacing at most
  ``h/16``) — with the trapezoid rule on the density (``integration="trapezoid"``, the
  paper's quadrature) or exactly through the normal CDF (``"exact"``, the default). Atoms are linearly binned onto the grid first, so
  both integrals are discrete convolutions (fast for ``10^5`` atoms and bootstraps). A
  bandwidth below the grid spacing (a tiny Silverman ``h`` on a degenerate spectrum, or a
  small ``max_grid``) cannot be resolved: then the unsmoothed measure is used (error ``O(h)``).
* **SD-PS** (:func:`sd_quantiles`): ``M`` equal-mass quantile cells, each an atom of weight
  ``d_state / M`` at the measure's mean over the cell (the exact integral of the quantile
  function over it, so ``S`` is exact at every cell edge; a quantile at the cell's midpoint
  instead was biased where a cell holds distinct atoms: -1.06% of ``d`` on a trained MLP).
  Default ``M = d_state``: one cell per exponent, the estimated ``lambda_k``; the result lies
  in ``[0, d_state]`` by construction.

Pooling the runs estimates the quantile function of the batch-*mixture* spectrum, whereas the
exact method averages each batch's *sorted* exponents; the two differ at second order in the
batch-to-batch fluctuation of the spectrum.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sharpdim.checks import real_tensor
from sharpdim.curvature.measure import equal_mass_cell_means, silverman_bandwidth
from sharpdim.curvature.measure import flat_measure as _flat
from sharpdim.dimension.kaplan_yorke import KaplanYorkeResult, kaplan_yorke_measure
from sharpdim.dimension.sd_arguments import check_estimator_option, check_estimator_options
from sharpdim.dynamics.jacobian_spectra import (
    LOG_EPS,
    StepSpectrumConfig,
    block_singular_values,
)
from sharpdim.errors import SharpdimError

SD_METHODS: tuple[str, ...] = ("slq", "kde", "ps")

HESSIAN_NOT_FINITE = (
    "second derivatives overflow (use a float64 model) or are undefined there (e.g. sqrt or "
    "norm at 0) although the loss is finite: check the model and loss, or use other parameters"
)
EXPONENTS_NOT_FINITE = (
    "the one-step exponents overflow float64 (lr times the curvature is too large): "
    "lower lr or check the model's parameters"
)
SINGULAR_WITH_EPS_0 = (
    "a one-step singular value is exactly 0 (e.g. Adam's b1=0, or lr times a "
    "curvature of exactly 1), so ln(sigma + eps) = -inf with eps=0: pass eps > 0 (default "
    f"{LOG_EPS:g})"
)


def check_exponents(values: torch.Tensor, eps: float) -> None:
    """Refuse non-finite exponents ``ln(sigma + eps)``: ``-inf`` (``sigma = 0`` with ``eps = 0``)
    or an overflow, each with its own message."""
    if not torch.isfinite(values).all():
        singular = eps == 0 and bool(torch.isneginf(values).any())
        raise SharpdimError(SINGULAR_WITH_EPS_0 if singular else EXPONENTS_NOT_FINITE)


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
    nodes, weights = real_tensor(nodes, "nodes"), real_tensor(weights, "weights")
    if nodes.ndim != 2 or nodes.shape != weights.shape or nodes.numel() == 0:
        raise SharpdimError(
            f"nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} must be equal "
            "(runs, steps) arrays: pass SLQResult.nodes and SLQResult.weights"
        )
    if not (torch.isfinite(nodes).all() and torch.isfinite(weights).all()):
        raise SharpdimError(f"the SLQ measure holds NaN or inf: {HESSIAN_NOT_FINITE}")
    runs, s = nodes.shape[0], config.states_per_param
    sigma = block_singular_values(nodes.reshape(-1), config).reshape(runs, -1)
    values = torch.log(sigma + config.eps)
    check_exponents(values, config.eps)
    masses = (weights * (num_params / runs)).repeat_interleave(s, dim=1)
    return values, masses


def sd_histogram(values: Any, masses: Any, *, num_bins: int = 2000) -> KaplanYorkeResult:
    """SD-SLQ: Kaplan–Yorke dimension of the binned exponent measure (bin atoms at bin means)."""
    v, m = _flat(values, masses)
    num_bins = check_estimator_option("num_bins", num_bins)
    lo, hi = float(v.min()), float(v.max())
    if hi == lo:
        return kaplan_yorke_measure(v[:1], m.sum()[None])
    edges = torch.linspace(lo, hi, num_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(v, edges[1:-1], right=True)
    mass = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, m)
    first = torch.zeros(num_bins, dtype=torch.float64).index_add_(0, idx, m * v)
    full = mass > 0
    return kaplan_yorke_measure(first[full] / mass[full], mass[full])


def _kde_kernels(h: float, delta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cell kernels of a Gaussian ``N(0, h^2)`` on the cells ``[k delta, (k+1) delta]``.

    For ``|k| <= L`` (``L delta >= 8 h``, beyond which the mass is below ``1e-15``):
    ``P_k`` = the cell's mass, ``T_k = int (u - k delta) N(u) du`` = its first moment about
    the cell's left edge, and ``F_k = N(k delta)`` = the density at the node (trapezoid rule).
    """
    half = math.ceil(8 * h / delta) + 1
    k = torch.arange(-half, half + 1, dtype=torch.float64)
    z0, z1 = k * delta / h, (k + 1) * delta / h
    # cell mass without cancellation: upper tails on the right, lower tails on the left
    mass = torch.where(
        k >= 0,
        torch.special.ndtr(-z0) - torch.special.ndtr(-z1),
        torch.special.ndtr(z1) - torch.special.ndtr(z0),
    )
    pdf0 = torch.exp(-0.5 * z0 * z0) / math.sqrt(2 * math.pi)
    pdf1 = torch.exp(-0.5 * z1 * z1) / math.sqrt(2 * math.pi)
    first = h * (pdf0 - pdf1) - k * delta * mass
    return mass, first, pdf0 / h


def _convolve(w: torch.Tensor, kernel: torch.Tensor, count: int) -> torch.Tensor:
    """``out_i = sum_j w_j kernel_{i - j}`` for ``i = 0..count-1`` (``kernel`` centred on 0).

    By FFT (float64): the absolute round-off is about ``1e-16`` times the total mass.
    """
    half = (kernel.numel() - 1) // 2
    size = w.numel() + kernel.numel() - 1
    fft_size = 1 << (size - 1).bit_length()
    full = torch.fft.irfft(torch.fft.rfft(w, fft_size) * torch.fft.rfft(kernel, fft_size), fft_size)
    return full[half : half + count]


KDE_CROSSING_FRACTION = 0.1
"""The default SD-KDE bandwidth is at most this fraction of ``|l*|``, the exponent at which the
running sum of the unsmoothed measure turns negative."""


def crossing_exponent(values: Any, masses: Any) -> float | None:
    """The exponent ``l*`` of Def. 4.2's crossing: the atom at which the running sum of the
    descending exponents turns negative (``lambda_{j*+1}``); ``None`` when ``SD`` is 0 or
    ``d`` (no crossing)."""
    v, m = _flat(values, masses)
    keep = m > 0
    v, m = v[keep], m[keep]
    order = torch.argsort(v, descending=True, stable=True)
    v, m = v[order], m[order]
    negative = torch.nonzero(torch.cumsum(m * v, 0) < 0)
    if v.numel() == 0 or float(v[0]) < 0 or negative.numel() == 0:
        return None
    return float(v[int(negative[0])])


def kde_bandwidth(values: Any, masses: Any) -> float:
    """SD-KDE's default bandwidth: Silverman's rule, capped at ``KDE_CROSSING_FRACTION |l*|``.

    Silverman's ``h`` follows the spread of the whole spectrum; where many exponents lie near
    the crossing ``l*`` (full-batch GD: most Hessian eigenvalues tiny, their exponents near 0)
    it can exceed ``|l*|`` many times over, and smoothing then carries that mass across the
    crossing: SD 98.8 instead of 51 for ``[1, -0.02 x 100, -5]``, 269 instead of 126 (of 610)
    for a digits MLP after GD. With ``h <= 0.1 |l*|`` the bias is at most about
    ``0.4 h / |l*| <= 4%`` of the mass within a few ``h`` of the crossing (55.0 and 126.3).
    When every exponent is negative (SD = 0) the top one plays ``l*``: smoothing must not
    carry it above 0 (``[-0.02 x 100, -5]`` gave 94.7).
    """
    h = silverman_bandwidth(values, masses)
    level = crossing_exponent(values, masses)
    if level is None:  # SD = 0 (every exponent < 0): keep the top one on its side of 0
        v, m = _flat(values, masses)
        top = float(v[m > 0].max()) if bool((m > 0).any()) else 0.0
        level = top if top < 0 else None
    return h if level is None else min(h, KDE_CROSSING_FRACTION * abs(level))


def sd_kde(
    values: Any,
    masses: Any,
    *,
    bandwidth: float | None = None,
    grid_size: int = 4096,
    points_per_bandwidth: float = 16.0,
    max_grid: int = 2**18,
    integration: str = "exact",
) -> KaplanYorkeResult:
    """SD-KDE: Kaplan–Yorke dimension of the Gaussian-smoothed exponent measure.

    The measure is smoothed by ``N(0, h^2)`` and cut into the cells of a uniform grid over
    ``[min - 8h, max + 8h]`` with spacing ``delta = min(extent / grid_size, h /
    points_per_bandwidth)`` (at most ``max_grid`` nodes). Each cell becomes one atom at its
    mean exponent. The atoms are first *linearly binned* onto the grid nodes (each atom's mass
    split between its two neighbouring nodes so that mass and first moment are kept; this
    adds at most ``delta^2 / 4`` to the kernel's variance), so the cell masses and first
    moments are discrete convolutions: cost ``O(n + G * 16 h / delta)``, independent of the
    number of atoms times the grid.

    Args:
        values, masses: the exponent measure (e.g. from :func:`exponent_measure`).
        bandwidth: kernel standard deviation ``h``; default :func:`kde_bandwidth` (Silverman's
            rule, at most ``0.1 |l*|``).
        grid_size: minimum number of grid cells over the extent.
        points_per_bandwidth: grid cells per bandwidth (the spacing is at most ``h`` over it).
        max_grid: cap on the number of grid nodes, ``>= 64`` (then the spacing exceeds the
            above; if it exceeds ``h``, the measure is used unsmoothed).
        integration: ``"exact"`` (cell masses and first moments of the Gaussians through the
            normal CDF) or ``"trapezoid"`` (trapezoid rule on the density at the nodes, the
            paper's quadrature).

    Returns:
        :class:`KaplanYorkeResult` over the grid cells.
    """
    v, m = _flat(values, masses)
    grid_size = check_estimator_option("grid_size", grid_size)
    points_per_bandwidth = check_estimator_option("points_per_bandwidth", points_per_bandwidth)
    max_grid = check_estimator_option("max_grid", max_grid)
    integration = check_estimator_option("integration", integration)
    bandwidth = check_estimator_option("bandwidth", bandwidth)
    h = kde_bandwidth(v, m) if bandwidth is None else bandwidth
    if h == 0:  # nothing to smooth (a single value): the measure itself
        return kaplan_yorke_measure(v, m)
    total = float(m.sum())
    lo, hi = float(v.min()) - 8 * h, float(v.max()) + 8 * h
    delta = min((hi - lo) / grid_size, h / points_per_bandwidth)
    coarsest = (hi - lo) / (max_grid - 2)  # at most max_grid nodes
    if delta < coarsest:  # (h / points_per_bandwidth may even underflow to 0)
        delta = coarsest
    if not delta > 0 or h < delta:  # a kernel narrower than a cell (or than the values' ulp):
        # below the grid's resolution, no smoothing
        return kaplan_yorke_measure(v, m)
    nodes = math.ceil((hi - lo) / delta) + 1
    grid = lo + delta * torch.arange(nodes, dtype=torch.float64)
    pos = (v - lo) / delta
    k = pos.floor().clamp(0, nodes - 2)
    t = pos - k
    k_idx = k.long()
    w = torch.zeros(nodes, dtype=torch.float64)
    w.index_add_(0, k_idx, m * (1 - t)).index_add_(0, k_idx + 1, m * t)
    p_ker, t_ker, f_ker = _kde_kernels(h, delta)
    cells = nodes - 1
    if integration == "exact":
        mass_cells = _convolve(w, p_ker, cells)
        first_cells = grid[:-1] * mass_cells + _convolve(w, t_ker, cells)
    else:
        dens = _convolve(w, f_ker, nodes)
        mass_cells = 0.5 * delta * (dens[1:] + dens[:-1])
        first_cells = 0.5 * delta * (dens[1:] * grid[1:] + dens[:-1] * grid[:-1])
    keep = mass_cells > 1e-14 * total  # drop round-off noise of empty cells
    mass_cells, first_cells = mass_cells[keep], first_cells[keep]
    # a cell's mean lies inside the cell (clamp away round-off)
    mean = (first_cells / mass_cells).clamp(grid[:-1][keep], grid[1:][keep])
    mass_cells = mass_cells * (total / float(mass_cells.sum()))  # tails beyond 8h: mass d
    return kaplan_yorke_measure(mean, mass_cells)


def sd_quantiles(
    values: Any, masses: Any, *, num_quantiles: int | None = None
) -> KaplanYorkeResult:
    """SD-PS: Kaplan–Yorke dimension of ``M`` equal-mass quantile cells, each of weight ``d/M``.

    Each cell's atom is the measure's mean over the cell (:func:`equal_mass_cell_means`), so
    the running sums ``S(k)`` are exact at every cell edge. ``M`` defaults to the total mass
    rounded (one cell per exponent), so the cells estimate ``lambda_1 >= ... >= lambda_d``.
    """
    v, m = _flat(values, masses)
    total = float(m.sum())
    num_quantiles = check_estimator_option("num_quantiles", num_quantiles)
    num = max(1, round(total)) if num_quantiles is None else num_quantiles
    q = equal_mass_cell_means(v, m, num)
    return kaplan_yorke_measure(q, torch.full((num,), total / num, dtype=torch.float64))


def sd_from_measure(method: str, values: Any, masses: Any, **options: Any) -> KaplanYorkeResult:
    """Dispatch to :func:`sd_histogram` (``"slq"``), :func:`sd_kde` or :func:`sd_quantiles` (``"ps"``)."""
    if method not in SD_METHODS:
        raise SharpdimError(f"unknown SD estimator {method!r}: use one of {', '.join(SD_METHODS)}")
    options = check_estimator_options(method, options)
    if method == "slq":
        return sd_histogram(values, masses, **options)
    if method == "kde":
        return sd_kde(values, masses, **options)
    return sd_quantiles(values, masses, **options)
