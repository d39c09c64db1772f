"""PH0 dimension of a point cloud (Birdal, Lou, Guibas & Şimşekli, NeurIPS 2021).

For ``n`` points sampled from a set of (upper box / persistent homology) dimension ``d``, the
alpha-weighted total ``H0`` persistence of the Vietoris–Rips filtration grows like

    E_alpha(n) = sum_{e in MST(n points)} |e|^alpha  ~  C n^{(d - alpha) / d}    (d > alpha)

(Schweinhart 2019/2020; Adams et al. 2020). Fitting ``log E_alpha(n) = s log n + c`` over
random subsamples of increasing size gives ``s = 1 - alpha / d``, hence

    dim_PH0 = alpha / (1 - s);    for alpha = 1:  dim_PH0 = 1 / (1 - s).

Birdal et al. apply this to the last iterates of SGD as a generalization measure; Dupuis et al.
(ICML 2023) replace the Euclidean distance by the data-dependent pseudo-metric
``rho_S(w, w') = (1/n) sum_j |l(w, z_j) - l(w', z_j)|`` (``metric="loss"``, the points being
per-example loss vectors, see :func:`sharpdim.training.trajectory.per_example_losses`).
``H0`` persistence is computed as MST edge lengths (:mod:`sharpdim.dimension.mst`). The
estimate needs ``d > alpha``; a slope ``>= 1`` gives ``inf``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sharpdim.checks import check_count, check_number, check_size, default_generator
from sharpdim.dimension.mst import (
    Metric,
    as_points,
    lifetime_sum,
    pairwise_distances,
    symmetric_mst_edge_lengths,
)
from sharpdim.errors import SharpdimError, ZeroPersistenceError


@dataclass(frozen=True)
class PHDimensionResult:
    """PH0 dimension and the fit it comes from.

    Attributes:
        dimension: ``alpha / (1 - slope)`` (``inf`` if ``slope >= 1``).
        slope, intercept: least-squares fit of ``log E_alpha`` against ``log n``.
        r_squared: coefficient of determination of that fit (``nan`` with two sizes, which any
            line fits exactly).
        sizes: ``(m,)`` subsample sizes; lifetime_sums: ``(m,)`` mean ``E_alpha`` at each.
        alpha: the weight; metric: its name (``"callable"`` for a function).
        num_points: points available; num_repeats: subsamples per size.
    """

    dimension: float
    slope: float
    intercept: float
    r_squared: float
    sizes: torch.Tensor
    lifetime_sums: torch.Tensor
    alpha: float
    metric: str
    num_points: int
    num_repeats: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension if math.isfinite(self.dimension) else None,
            "slope": self.slope,
            "intercept": self.intercept,
            "r_squared": self.r_squared if math.isfinite(self.r_squared) else None,
            "sizes": self.sizes.tolist(),
            "lifetime_sums": self.lifetime_sums.tolist(),
            "alpha": self.alpha,
            "metric": self.metric,
            "num_points": self.num_points,
            "num_repeats": self.num_repeats,
        }


def _fit(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    xc, yc = x - x.mean(), y - y.mean()
    slope = float((xc * yc).sum() / (xc * xc).sum())
    intercept = float(y.mean() - slope * x.mean())
    ss_res = float(((yc - slope * xc) ** 2).sum())
    ss_tot = float((yc * yc).sum())
    if x.numel() < 3:  # a line through two points fits them exactly: no goodness of fit
        return slope, intercept, math.nan
    return slope, intercept, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


def ph_dimension(
    points: Any,
    metric: Metric = "euclidean",
    *,
    alpha: float = 1.0,
    min_points: int | None = None,
    max_points: int | None = None,
    num_sizes: int = 10,
    num_repeats: int = 1,
    generator: torch.Generator | None = None,
    chunk_size: int = 1024,
) -> PHDimensionResult:
    """PH0 dimension of ``points`` from the growth of ``E_alpha`` with the sample size.

    The distance matrix of a pool of ``max_points`` points (a random subset when there are
    more) is computed once; each of ``num_sizes`` log-spaced sizes ``n`` in
    ``[min_points, max_points]`` gets ``num_repeats`` random subsets of the pool, whose mean
    ``E_alpha`` enters the fit ``log E = s log n + c``; ``dim = alpha / (1 - s)``.

    Args:
        points: ``(N, D)`` tensor or array (e.g. iterates of a training run), or per-example
            loss vectors for ``metric="loss"``.
        metric: ``"euclidean"``, ``"loss"`` (Dupuis et al. 2023) or a callable
            ``metric(a, b) -> (len(a), len(b))`` distances.
        alpha: the weight (a finite number ``> 0``; the dimension must exceed it).
        min_points: smallest subsample (default ``max(10, max_points // 10)``).
        max_points: largest subsample (default ``N``).
        num_sizes: number of sizes (``>= 2``).
        num_repeats: subsamples averaged per size (``>= 1``).
        generator: draws the subsets (default seed 0).
        chunk_size: rows of the distance matrix computed at a time.

    Returns:
        A :class:`PHDimensionResult`.

    Example (points on a segment: ``E_1`` is the segment's length whatever ``n``):
        >>> g = torch.Generator().manual_seed(0)
        >>> pts = torch.rand(400, 1, generator=g, dtype=torch.float64) * torch.ones(1, 3)
        >>> round(ph_dimension(pts, generator=g).dimension, 1)
        1.0
    """
    alpha = check_number(alpha, "alpha", "> 0", "1.0")
    num_sizes = check_size(num_sizes, "num_sizes", 2)
    num_repeats = check_count(num_repeats, "num_repeats")
    chunk_size = check_count(
        chunk_size, "chunk_size", hint="the rows computed at a time, e.g. 1024"
    )
    if min_points is not None:
        min_points = check_count(min_points, "min_points", 2, "a sample size, or None")
    if max_points is not None:
        max_points = check_count(max_points, "max_points", 2, "a sample size, or None")
    pts = as_points(points)
    n_all = pts.shape[0]
    hi = n_all if max_points is None else max_points
    lo = max(10, hi // 10) if min_points is None else min_points
    if not 2 <= lo < hi <= n_all:
        given = "" if min_points is not None else " (the default, max(10, max_points // 10))"
        raise SharpdimError(
            f"min_points={lo}{given}, max_points={hi} with {n_all} points: need "
            f"2 <= min_points < max_points <= {n_all}; pass more points or a smaller min_points"
        )
    gen = default_generator(generator)
    pool = torch.randperm(n_all, generator=gen)[:hi] if hi < n_all else torch.arange(n_all)
    dist = pairwise_distances(pts[pool], metric, chunk_size=chunk_size)
    sizes = np.unique(np.round(np.geomspace(lo, hi, num_sizes)).astype(np.int64))
    if sizes.size < 2:
        raise SharpdimError("fewer than 2 distinct sizes: widen [min_points, max_points]")
    sums = []
    for size in sizes.tolist():
        values = []
        for _ in range(num_repeats):
            idx = torch.randperm(hi, generator=gen)[:size] if size < hi else torch.arange(hi)
            sub = dist[idx][:, idx].numpy()
            values.append(lifetime_sum(symmetric_mst_edge_lengths(sub), alpha))
        sums.append(sum(values) / len(values))
    e = torch.tensor(sums, dtype=torch.float64)
    if not (e > 0).all():
        size = int(sizes[int(torch.nonzero(e <= 0)[0])])
        raise ZeroPersistenceError(
            f"the subsamples of {size} points have zero total persistence (all their points "
            "coincide: the cloud is mostly repeated points, e.g. a frozen trajectory); drop "
            "the repeated points or raise min_points"
        )
    size_t = torch.from_numpy(sizes).to(torch.float64)
    slope, intercept, r2 = _fit(size_t.log(), e.log())
    dim = alpha / (1.0 - slope) if slope < 1 else math.inf
    return PHDimensionResult(
        dimension=dim,
        slope=slope,
        intercept=intercept,
        r_squared=r2,
        sizes=torch.from_numpy(sizes),
        lifetime_sums=e,
        alpha=alpha,
        metric=metric if isinstance(metric, str) else "callable",
        num_points=n_all,
        num_repeats=num_repeats,
    )
