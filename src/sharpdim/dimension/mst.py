"""Pairwise distances and minimum-spanning-tree edge lengths: the H0 persistence of a point cloud.

For the Vietoris–Rips filtration of a finite metric space, every point is born at scale 0 and
the finite ``H0`` bars die exactly at the edge lengths of a minimum spanning tree of the
complete distance graph (Kruskal's algorithm merges components in the same order as the
filtration). So total ``H0`` persistence needs no TDA library: ``E_alpha = sum_e |e|^alpha``
over the MST edges ``e`` (Birdal et al., NeurIPS 2021; Andreeva et al. 2024). The MST is
found by Prim's algorithm, ``O(N^2)`` on the dense distance matrix, so edges of any length,
zero included, are kept.

Metrics:

* ``"euclidean"``: ``||a - b||_2`` in float64, in row chunks with ``torch.cdist``: the fast
  matmul form ``||a||^2 + ||b||^2 - 2 a.b`` on points centred in float64, and, for the close
  pairs where that form cancels, the differences ``a - b`` themselves (duplicates are exactly
  0 apart, close pairs keep full relative precision);
* ``"loss"``: the data-dependent pseudo-metric of Dupuis, Deligiannidis & Şimşekli (ICML 2023),
  ``rho_S(w, w') = (1/n) sum_j |l(w, z_j) - l(w', z_j)|``, on the rows of per-example loss
  vectors ``(l(w, z_1), ..., l(w, z_n))``;
* a callable ``metric(a (m, D), b (p, D)) -> (m, p)`` distances.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sharpdim.checks import check_count, native_array, real_tensor
from sharpdim.errors import SharpdimError

Metric = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS = ("euclidean", "loss")
_CANCELLATION_RATIO = 1e-3  # d^2 / (|a|^2 + |b|^2) below which the matmul form is redone


def as_points(points: Any, min_points: int = 2) -> torch.Tensor:
    """An ``(N, D)`` floating tensor (integers become float64) from a tensor, numpy array or
    memmap, with ``N >= min_points``, checked finite."""
    try:
        if isinstance(points, np.ndarray):
            points = torch.from_numpy(native_array(np.asarray(points)))
        pts = torch.as_tensor(points).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise SharpdimError(
            f"points must be an (N, D) tensor or array of numbers, got {type(points).__name__}: "
            "pass a tensor or numpy array (load a file with numpy.load first)"
        ) from None
    if pts.ndim != 2 or pts.shape[0] < min_points:
        raise SharpdimError(
            f"points must be an (N, D) array with N >= {min_points}, got shape "
            f"{tuple(pts.shape)}: pass one row per point"
        )
    if pts.is_complex() or pts.dtype == torch.bool:
        raise SharpdimError(
            f"points must be real numbers, got {pts.dtype}: pass a float (or integer) array"
        )
    if not pts.is_floating_point():  # integer coordinates (a grid): exact in float64
        pts = pts.to(torch.float64)
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
    chunk_size = check_count(
        chunk_size, "chunk_size", hint="the rows computed at a time, e.g. 1024"
    )
    pts = as_points(points, min_points=1)
    n = pts.shape[0]
    if isinstance(metric, str) and metric not in METRICS:
        raise SharpdimError(f"unknown metric {metric!r}: use one of {METRICS} or a callable")
    if not (isinstance(metric, str) or callable(metric)):
        raise SharpdimError(
            f"metric must be one of {METRICS} or a callable (a, b) -> distances, got "
            f"{type(metric).__name__}"
        )
    full = pts.to(torch.float64)
    if metric == "loss" and full.shape[1] == 0:  # (0 / 0: "the metric gave ... non-finite")
        raise SharpdimError(
            "the loss metric needs per-example losses of at least one example, got (N, 0) "
            "points: pass losses of shape (N, num_examples)"
        )
    centred = full - full.mean(dim=0) if metric == "euclidean" else full
    unit = 1.0
    if metric == "euclidean" and centred.numel():
        # in units of the largest centred coordinate (in place: a fresh tensor): squares of
        # coordinates below ~1e-154 (above ~1e154) underflowed to 0 (overflowed to inf), and a
        # 1e-200-scale cloud had E = 0
        largest = max(float(centred.max()), -float(centred.min()))
        if 0.0 < largest < math.inf:
            unit = largest
            centred /= unit
    out = torch.empty(n, n, dtype=torch.float64)
    eps = rounding_unit(out)  # the coarsest precision a callable metric returned
    for i in range(0, n, chunk_size):
        rows = full[i : i + chunk_size]
        if metric == "euclidean":
            block = _euclidean_block(full, centred, unit, i, rows.shape[0])
        elif metric == "loss":
            block = torch.cdist(rows, full, p=1.0) / full.shape[1]
        else:
            assert callable(metric)
            raw = metric(rows, full)
            eps = max(eps, rounding_unit(raw))
            block = real_tensor(raw, "the metric's result")
            if block.shape != (rows.shape[0], n):
                raise SharpdimError(
                    f"the metric returned shape {tuple(block.shape)} for "
                    f"({rows.shape[0]}, {n}) pairs: return a (m, p) distance matrix"
                )
        out[i : i + chunk_size] = block
    out.fill_diagonal_(0.0)
    if (out < 0).any() or not torch.isfinite(out).all():
        raise SharpdimError("the metric gave negative or non-finite distances: fix the metric")
    if callable(metric):
        _check_symmetric(out.numpy(), "the metric", eps)
    return torch.maximum(out, out.T)  # exact symmetry despite rounding


def rounding_unit(values: Any) -> float:
    """Machine epsilon of ``values``' floating dtype (a tensor or numpy array); float64's for
    anything else (integers, lists of Python floats)."""
    dtype = getattr(values, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return float(torch.finfo(dtype).eps)
    if isinstance(dtype, np.dtype) and np.issubdtype(dtype, np.floating):
        return float(np.finfo(dtype).eps)
    return float(np.finfo(np.float64).eps)


def _check_symmetric(dense: np.ndarray, what: str, eps: float) -> None:
    """A one-line error if ``dense`` is not symmetric up to rounding, ``sqrt(eps)`` of its
    largest finite entry, ``eps`` that of the precision the distances were computed in (the
    MST reads one triangle: an asymmetric dissimilarity would make the result depend on the
    order of the points). Tiles of the upper triangle against their mirror images: no
    full-size copies."""
    all_finite = bool(np.isfinite(dense).all())
    finite = dense if all_finite else dense[np.isfinite(dense)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    worst, n, tile = 0.0, dense.shape[0], 512
    for i in range(0, n, tile):
        for j in range(i, n, tile):
            a, b = dense[i : i + tile, j : j + tile], dense[j : j + tile, i : i + tile].T
            if all_finite:
                worst = max(worst, float(np.abs(a - b).max()))
                continue
            with np.errstate(invalid="ignore"):
                gap = np.abs(a - b)
            gap[np.isinf(a) & np.isinf(b)] = 0.0  # a missing edge both ways
            worst = max(worst, float(np.nan_to_num(gap, nan=np.inf, posinf=np.inf).max()))
    if not worst <= math.sqrt(eps) * scale:
        raise SharpdimError(
            f"{what} is not symmetric (d(a, b) and d(b, a) differ by up to {worst:.3g}): pass a "
            "symmetric distance, e.g. the mean of both directions"
        )


def _euclidean_block(
    full: torch.Tensor, centred: torch.Tensor, unit: float, i: int, m: int
) -> torch.Tensor:
    """Rows ``i .. i+m`` of the Euclidean distance matrix, accurate for close pairs.

    Fast matmul form ``d^2 = |a|^2 + |b|^2 - 2 a.b`` on the centred points, whose rounding error
    is ``~ eps (|a|^2 + |b|^2)``; pairs with ``d^2 <= 1e-3 (|a|^2 + |b|^2)`` (duplicates and
    close pairs, where that error is not small against ``d^2``) are recomputed as
    ``||a - b||`` from the uncentred points: duplicates get exactly 0, close pairs full
    relative precision. ``centred`` is in units of ``unit``; the rows are in the points'.
    """
    sq = centred.square().sum(dim=1)
    block = torch.cdist(centred[i : i + m], centred, compute_mode="use_mm_for_euclid_dist")
    close = block.square() <= _CANCELLATION_RATIO * (sq[i : i + m, None] + sq[None, :])
    close[torch.arange(m), torch.arange(i, i + m)] = False  # the diagonal is set to 0 later
    block *= unit
    rows, cols = close.nonzero(as_tuple=True)
    step = max(1, 2**22 // max(1, full.shape[1]))  # pairs per batch of differences
    for s in range(0, rows.numel(), step):
        r, c = rows[s : s + step], cols[s : s + step]
        block[r, c] = _norms(full[i + r] - full[c])
    return block


def _norms(diff: torch.Tensor) -> torch.Tensor:
    """Row norms of ``diff``, each taken in units of its largest entry (torch's norm squares
    the entries as they are: 1e-200 gave 0)."""
    big = diff.abs().amax(dim=1, keepdim=True) if diff.shape[1] else diff.new_zeros(len(diff), 1)
    big = torch.where(big > 0, big, torch.ones_like(big))
    return big[:, 0] * torch.linalg.vector_norm(diff / big, dim=1)


def mst_edge_lengths(distances: torch.Tensor) -> torch.Tensor:
    """Edge lengths of a minimum spanning tree of a dense distance matrix, ascending.

    Prim's algorithm: grow the tree from vertex 0, each step adding the vertex ``j`` outside it
    with the smallest ``key_j = min_{i in tree} d_ij`` and recording ``key_j`` (``O(N^2)``).
    Always ``N - 1`` lengths; a zero distance (duplicate points) is an edge of length 0.

    Args:
        distances: ``(N, N)`` symmetric, non-negative (``inf`` marks a missing edge).

    Returns:
        ``(N - 1,)`` float64: the finite ``H0`` death times of the Rips filtration.
    """
    d = real_tensor(distances, "distances")
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise SharpdimError(
            f"distances must be a square (N, N) matrix, got shape {tuple(d.shape)}: pass "
            "pairwise_distances(points)"
        )
    n = d.shape[0]
    if n < 2:
        return torch.zeros(0, dtype=torch.float64)
    dense = d.detach().cpu().numpy()
    if np.isnan(dense).any() or (dense < 0).any():
        raise SharpdimError("distances hold NaN or negative values: fix the metric")
    _check_symmetric(dense, "the distance matrix", rounding_unit(distances))
    # symmetric up to rounding: made exactly so (Prim reads rows, so a small distance given
    # differently both ways would make the result depend on the orientation)
    return symmetric_mst_edge_lengths(np.maximum(dense, dense.T))


def symmetric_mst_edge_lengths(dense: np.ndarray) -> torch.Tensor:
    """:func:`mst_edge_lengths` of a checked matrix (``pairwise_distances``' output, already
    exactly symmetric): no checks, for the callers that build the matrix themselves."""
    n = dense.shape[0]
    if n < 2:
        return torch.zeros(0, dtype=torch.float64)
    key = dense[0].copy()  # key[j]: distance from j to the tree, while j is outside it
    outside = np.arange(1, n)
    lengths = np.empty(n - 1, dtype=np.float64)
    for step in range(n - 1):
        pick = int(np.argmin(key[outside]))
        j = int(outside[pick])
        lengths[step] = key[j]
        outside = np.delete(outside, pick)
        np.minimum(key, dense[j], out=key)
    if not np.isfinite(lengths).all():
        raise SharpdimError("the distance graph is disconnected: distances must be finite")
    return torch.from_numpy(np.sort(lengths))


def lifetime_sum(lengths: torch.Tensor, alpha: float) -> float:
    """``E_alpha = sum_e |e|^alpha`` over MST edge lengths (``alpha > 0``)."""
    if not alpha > 0:
        raise SharpdimError(f"alpha={alpha}: the alpha-weighted lifetime sum needs alpha > 0")
    return float((lengths**alpha).sum())
