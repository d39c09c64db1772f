"""The alpha-weighted lifetime sum ``E_alpha`` of a point cloud (Andreeva et al. 2024).

``E_alpha(W) = sum_{(b, d) in PH0(W)} (d - b)^alpha`` over the finite ``H0`` bars of the
Vietoris–Rips filtration of the iterates ``W``. All ``H0`` bars are born at 0 and die at the
edge lengths of a minimum spanning tree, so

    E_alpha(W) = sum_{e in MST(W)} |e|^alpha

(Andreeva, Dupuis, Sarkar, Birdal & Şimşekli, "Topological generalization bounds for
discrete-time stochastic optimization algorithms", 2024, who bound the generalization gap by
it; ``E_1`` is the total length of the MST). Shares the MST code with the PH0 dimension
(:mod:`sharpdim.dimension.mst`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_number
from sharpdim.dimension.mst import (
    Metric,
    as_points,
    lifetime_sum,
    pairwise_distances,
    symmetric_mst_edge_lengths,
)


@dataclass(frozen=True)
class LifetimeSumResult:
    """``E_alpha`` and the ``H0`` lifetimes it sums.

    Attributes:
        value: ``E_alpha``.
        alpha: the weight; metric: its name (``"callable"`` for a function).
        num_points: ``N``; lifetimes: ``(N - 1,)`` ascending MST edge lengths.
    """

    value: float
    alpha: float
    metric: str
    num_points: int
    lifetimes: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "alpha": self.alpha,
            "metric": self.metric,
            "num_points": self.num_points,
            "max_lifetime": float(self.lifetimes.max()) if self.lifetimes.numel() else 0.0,
        }


def alpha_weighted_lifetime_sum(
    points: Any, alpha: float = 1.0, metric: Metric = "euclidean", *, chunk_size: int = 1024
) -> LifetimeSumResult:
    """``E_alpha = sum_e |e|^alpha`` over the edges of a minimum spanning tree of ``points``.

    Args:
        points: ``(N, D)`` tensor or array (per-example loss vectors for ``metric="loss"``).
        alpha: the weight (a finite number ``> 0``).
        metric: ``"euclidean"``, ``"loss"`` (Dupuis et al. 2023) or a callable.
        chunk_size: rows of the distance matrix computed at a time.

    Example (three collinear points 0, 1, 3: the MST has edges 1 and 2):
        >>> pts = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
        >>> alpha_weighted_lifetime_sum(pts, alpha=2.0).value
        5.0
    """
    alpha = check_number(alpha, "alpha", "> 0", "1.0")
    pts = as_points(points, min_points=1)  # one point: no edge, E_alpha = 0
    lengths = symmetric_mst_edge_lengths(
        pairwise_distances(pts, metric, chunk_size=chunk_size).numpy()
    )
    return LifetimeSumResult(
        value=lifetime_sum(lengths, alpha),
        alpha=alpha,
        metric=metric if isinstance(metric, str) else "callable",
        num_points=int(pts.shape[0]),
        lifetimes=lengths,
    )
