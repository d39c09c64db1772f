"""Pairwise distances and minimum-spanning-tree edge lengths: the H0 persistence of a point cloud.

For the Vietoris–Rips filtration of a finite metric space, every point is born at scale 0 and
the finite ``H0`` bars die exactly at the edge lengths of a minimum spanning tree of the
complete distance graph (Kruskal's algorithm merges components in the same order as the
filtration). So total ``H0`` persistence needs no TDA library: ``E_alpha = sum_e |e|^alpha``
over the MST edges ``e`` (Birdal et al., NeurIPS 2021; Andreeva et al. 2024). The MST is
scipy's ``minimum_spanning_tree`` on the dense distance matrix.

Metrics:

* ``"euclidean"``: ``||a - b||_2`` (points centred first and computed in float64, in row
  chunks with ``torch.cdist``, to avoid cancellation between close points far from 0);
* ``"loss"``: the data-dependent pseudo-metric of Dupuis, Deligiannidis & Şimşekli (ICML 2023),
  ``rho_S(w, w') = (1/n) sum_j |l(w, z_j) - l(w', z_j)|``, on the rows of per-example loss
  vectors ``(l(w, z_1), ..., l(w, z_n))``;
* a callable ``metric(a (m, D), b (p, D)) -> (m, p)`` distances.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.sparse.csgraph import minimum_spanning_tree

from sharpdim.errors import SharpdimError

Metric = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS = ("euclidean", "loss")


def as_points(points: Any) -> torch.Tensor:
    """An ``(N, D)`` float64 tensor from a tensor, numpy array or memmap (checked finite)."""
    if isinstance(points, np.ndarray):
        points = torch.from_numpy(np.asarray(points))
    pts = torch.as_tensor(points).detach().cpu()
    if pts.ndim != 2 or pts.shape[0] < 2 or not pts.is_floating_point():
        raise SharpdimError(
            f"points must be a floating (N, D) array with N >= 2, got shape {tuple(pts.shape)}"
        )
    if not torch.isfinite(pts).all():
        raise SharpdimError("points hold NaN or inf: drop diverged iterates first")
    return pts


def pairwise_distances(
    points: Any, metric: Metric = "euclidean", *, chunk_size: int = 1024
) -> torch.Tensor:
    """The dense ``(N, N)`` float64 distance matrix of ``points`` under ``metric``.

    Rows are computed ``chunk_size`` at a time (peak extra memory ``chunk_size x N`` plus
    one float64 chunk of the points).
    """
    pts = as_points(points)
    n = pts.shape[0]
    if isinstance(metric, str) and metric not in METRICS:
        raise SharpdimError(f"unknown metric {metric!r}: use one of {METRICS} or a callable")
    if metric == "euclidean":
        pts = pts - pts.mean(dim=0, dtype=torch.float64).to(pts.dtype)
    full = pts.to(torch.float64)
    out = torch.empty(n, n, dtype=torch.float64)
    for i in range(0, n, chunk_size):
        rows = full[i : i + chunk_size]
        if metric == "euclidean":
            block = torch.cdist(rows, full, p=2.0)
        elif metric == "loss":
            block = torch.cdist(rows, full, p=1.0) / full.shape[1]
        else:
            assert callable(metric)
            block = torch.as_tensor(metric(rows, full), dtype=torch.float64)
            if block.shape != (rows.shape[0], n):
                raise SharpdimError(
                    f"the metric returned shape {tuple(block.shape)} for "
                    f"({rows.shape[0]}, {n}) pairs: return a (m, p) distance matrix"
                )
        out[i : i + chunk_size] = block
    out.fill_diagonal_(0.0)
    if metric == "euclidean" or metric == "loss":
        out = torch.maximum(out, out.T)  # exact symmetry despite rounding
    if (out < 0).any() or not torch.isfinite(out).all():
        raise SharpdimError("the metric gave negative or non-finite distances: fix the metric")
    return out


def mst_edge_lengths(distances: torch.Tensor) -> torch.Tensor:
    """Edge lengths of a minimum spanning tree of a dense distance matrix, ascending.

    Always ``N - 1`` lengths: scipy treats zero entries as missing edges, so zero distances
    between distinct points (duplicates) are replaced by a tiny positive sentinel (``1e-6``
    times the smallest positive distance) before the MST and mapped back to exact zeros.

    Args:
        distances: ``(N, N)`` symmetric, non-negative.

    Returns:
        ``(N - 1,)`` float64: the finite ``H0`` death times of the Rips filtration.
    """
    d = torch.as_tensor(distances, dtype=torch.float64)
    n = d.shape[0]
    if d.ndim != 2 or d.shape[1] != n:
        raise SharpdimError(f"distances must be square, got shape {tuple(d.shape)}")
    if n < 2:
        return torch.zeros(0, dtype=torch.float64)
    dense = d.numpy().copy()
    positive = dense[dense > 0]
    tiny = float(positive.min()) * 1e-6 if positive.size else 1.0  # scipy drops denormals
    dense[dense == 0] = tiny
    np.fill_diagonal(dense, 0.0)
    tree = minimum_spanning_tree(dense)
    lengths = np.sort(np.asarray(tree.data, dtype=np.float64))
    lengths[lengths <= tiny] = 0.0
    if lengths.size != n - 1:
        raise SharpdimError("the distance graph is disconnected: distances must be finite")
    return torch.from_numpy(lengths)


def lifetime_sum(lengths: torch.Tensor, alpha: float) -> float:
    """``E_alpha = sum_e |e|^alpha`` over MST edge lengths (``alpha > 0``)."""
    if not alpha > 0:
        raise SharpdimError(f"alpha={alpha}: the alpha-weighted lifetime sum needs alpha > 0")
    return float((lengths**alpha).sum())
