"""E_alpha against brute-force minimum spanning trees."""

import itertools
import math

import numpy as np
import pytest
import torch

from sharpdim.dimension.lifetime_sum import alpha_weighted_lifetime_sum
from sharpdim.dimension.mst import mst_edge_lengths, pairwise_distances
from sharpdim.errors import SharpdimError

F64 = torch.float64


def kruskal(points: np.ndarray) -> list[float]:
    """Kruskal's algorithm with a union-find, on exact pairwise distances."""
    n = len(points)
    edges = sorted(
        (math.dist(points[i], points[j]), i, j) for i, j in itertools.combinations(range(n), 2)
    )
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    out = []
    for w, i, j in edges:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[ri] = rj
            out.append(w)
    return out


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_matches_kruskal(alpha: float) -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(40, 5, generator=g, dtype=F64) + 100.0  # far from 0: tests centring
    ref = kruskal(pts.numpy())
    r = alpha_weighted_lifetime_sum(pts, alpha=alpha)
    assert math.isclose(r.value, sum(w**alpha for w in ref), rel_tol=1e-10)
    np.testing.assert_allclose(r.lifetimes.numpy(), np.sort(ref), rtol=1e-10)


def test_e1_is_mst_length_of_a_path() -> None:
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [3.0, 5.0], [10.0, 5.0]], dtype=F64)
    assert alpha_weighted_lifetime_sum(pts).value == pytest.approx(5.0 + 1.0 + 7.0, abs=1e-12)


def test_duplicate_points_give_zero_edges() -> None:
    pts = torch.tensor([[0.0], [0.0], [1.0], [1.0], [3.0]], dtype=F64)
    lengths = mst_edge_lengths(pairwise_distances(pts))
    assert lengths.tolist() == [0.0, 0.0, 1.0, 2.0]


def test_loss_metric() -> None:
    vecs = torch.tensor([[0.0, 0.0], [1.0, 3.0], [1.0, 1.0]], dtype=F64)
    # rho = mean |difference|: d01 = 2, d02 = 1, d12 = 1 -> MST 1 + 1
    assert alpha_weighted_lifetime_sum(vecs, metric="loss").value == pytest.approx(2.0)


def test_chunked_distances_equal_unchunked() -> None:
    pts = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(pairwise_distances(pts, chunk_size=7), pairwise_distances(pts))


def test_bad_alpha() -> None:
    with pytest.raises(SharpdimError):
        alpha_weighted_lifetime_sum(torch.rand(5, 2), alpha=0.0)
    with pytest.raises(SharpdimError):
        alpha_weighted_lifetime_sum(torch.tensor([[0.0], [float("nan")]]))
