"""E_alpha against brute-force minimum spanning trees."""

import itertools
import math

import numpy as np
import pytest
import torch

from sharpdim.dimension.lifetime_sum import alpha_weighted_lifetime_sum
from sharpdim.dimension.mst import mst_edge_lengths, pairwise_distances
from sharpdim.dimension.ph_dimension import ph_dimension
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


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_alpha_must_be_a_finite_positive_number(alpha: object) -> None:
    with pytest.raises(SharpdimError, match="alpha must be a finite number > 0") as err:
        alpha_weighted_lifetime_sum(torch.rand(5, 2), alpha=alpha)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def prim(dist: torch.Tensor) -> list[float]:
    """Prim's algorithm written out with Python loops on a dense distance matrix."""
    d = dist.tolist()
    n = len(d)
    in_tree = [True] + [False] * (n - 1)
    key = list(d[0])
    out = []
    for _ in range(n - 1):
        j = min((k for k in range(n) if not in_tree[k]), key=lambda k: key[k])
        out.append(key[j])
        in_tree[j] = True
        key = [min(key[k], d[j][k]) for k in range(n)]
    return sorted(out)


def test_tiny_and_zero_edges_are_kept() -> None:
    # scipy's dense MST input drops |d| < 1e-8 as "no edge": the tiny edges must survive
    three = alpha_weighted_lifetime_sum(torch.tensor([[0.0], [0.0], [1e-3]], dtype=F64))
    assert three.lifetimes[0].item() == 0.0
    assert three.lifetimes[1].item() == pytest.approx(1e-3, rel=1e-12)
    close = alpha_weighted_lifetime_sum(torch.tensor([[0.0], [1e-9], [1.0]], dtype=F64))
    np.testing.assert_allclose(close.lifetimes.numpy(), [1e-9, 1.0 - 1e-9], rtol=1e-12)
    dist = torch.tensor([[0.0, 1e-20, 1.0], [1e-20, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    assert mst_edge_lengths(dist).tolist() == [1e-20, 1.0]
    assert mst_edge_lengths(torch.zeros(4, 4, dtype=F64)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("scale", [1e-9, 1e9, 1e-200, 1e-160, 1e160, 1e200])
def test_lifetime_sum_is_scale_invariant(scale: float) -> None:
    """Squared coordinates underflowed below ~1e-154 and overflowed above ~1e154: a 1e-200
    cloud had E = 0 and a 1e160 one was 'negative or non-finite distances'."""
    triangle = torch.tensor([[0.0, 0.0], [3.0, 0.0], [3.0, 4.0]], dtype=F64)
    assert alpha_weighted_lifetime_sum(triangle * scale).value == pytest.approx(
        7 * scale, rel=1e-14
    )
    u = torch.rand(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    e = alpha_weighted_lifetime_sum(u).value
    assert e == pytest.approx(sum(kruskal(u.numpy())), rel=1e-12)
    assert alpha_weighted_lifetime_sum(u * scale).value == pytest.approx(scale * e, rel=1e-9)


def test_the_loss_metric_of_no_examples_is_named() -> None:
    with pytest.raises(SharpdimError, match=r"^the loss metric needs per-example losses of at"):
        alpha_weighted_lifetime_sum(torch.zeros(6, 0, dtype=F64), metric="loss")


def test_ph_dimension_of_a_tiny_cloud_is_that_of_the_cloud() -> None:
    u = torch.rand(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = ph_dimension(u, generator=torch.Generator().manual_seed(0)).dimension
    tiny = ph_dimension(u * 1e-8, generator=torch.Generator().manual_seed(0)).dimension
    assert tiny == pytest.approx(ref, rel=1e-9)


def test_duplicated_cloud_adds_zero_length_bars() -> None:
    u = torch.rand(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    r = alpha_weighted_lifetime_sum(torch.cat([u, u]))
    assert r.lifetimes.numel() == 399 and int((r.lifetimes == 0).sum()) == 200
    assert r.value == pytest.approx(sum(kruskal(u.numpy())), rel=1e-12)
    # the MST of the distinct points, 200 zeros below it
    np.testing.assert_allclose(r.lifetimes[200:].numpy(), np.sort(kruskal(u.numpy())), rtol=1e-12)


def test_mst_equals_brute_force_prim() -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(60, 4, generator=g, dtype=F64) * 10.0 + 50.0
    near = base[:10] + 1e-9 * torch.randn(10, 4, generator=g, dtype=F64)
    pts = torch.cat([base, base[10:20], near, base[:1] * 1e-6])  # duplicates, close pairs
    dist = pairwise_distances(pts)
    lengths = mst_edge_lengths(dist)
    assert lengths.tolist() == prim(dist)  # the sorted MST weights are unique
    assert int((lengths == 0).sum()) == 10


def test_duplicate_and_close_distances_are_exact() -> None:
    # > 25 rows: torch.cdist's default matmul form gave duplicates ~1e-7 apart
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 5, generator=g, dtype=F64) * 10.0
    step = torch.randn(5, generator=g, dtype=F64)
    close = base[:1] + 1.7e-9 * step / step.norm()
    dist = pairwise_distances(torch.cat([base, base, close]))
    assert (dist[torch.arange(40), torch.arange(40) + 40] == 0).all()
    ref = math.dist(base[0].tolist(), close[0].tolist())
    assert ref == pytest.approx(1.7e-9, rel=1e-6)
    assert dist[0, 80].item() == pytest.approx(ref, rel=1e-12)
    assert dist[40, 80].item() == pytest.approx(ref, rel=1e-12)
    far = (base[:, None, :] - base[None, :, :]).square().sum(-1).sqrt()
    torch.testing.assert_close(dist[:40, :40], far, rtol=1e-12, atol=0.0)


def test_disconnected_or_invalid_distances() -> None:
    inf = math.inf
    dist = torch.tensor([[0.0, 1.0, inf], [1.0, 0.0, inf], [inf, inf, 0.0]], dtype=F64)
    with pytest.raises(SharpdimError, match="disconnected"):
        mst_edge_lengths(dist)
    dist[0, 2] = dist[2, 0] = 2.0  # connected: the inf edge is just not used
    assert mst_edge_lengths(dist).tolist() == [1.0, 2.0]
    with pytest.raises(SharpdimError, match="NaN or negative"):
        mst_edge_lengths(torch.tensor([[0.0, math.nan], [math.nan, 0.0]], dtype=F64))


_CLOUD = torch.rand(12, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("chunk_size", [-1, 0, 2.5, "8", True])
@pytest.mark.parametrize(
    "call",
    [
        lambda c: pairwise_distances(_CLOUD, chunk_size=c),
        lambda c: alpha_weighted_lifetime_sum(_CLOUD, chunk_size=c),
        lambda c: ph_dimension(_CLOUD, min_points=4, chunk_size=c),
    ],
    ids=["pairwise_distances", "alpha_weighted_lifetime_sum", "ph_dimension"],
)
def test_chunk_size_must_be_a_positive_integer(call: object, chunk_size: object) -> None:
    # chunk_size=-1 used to leave uninitialised memory as distances (a silently wrong E_alpha)
    with pytest.raises(SharpdimError, match="chunk_size must be an integer >= 1") as err:
        call(chunk_size)  # type: ignore[operator]
    assert "\n" not in str(err.value)


def test_whole_float_chunk_size_equals_int() -> None:
    torch.testing.assert_close(
        pairwise_distances(_CLOUD, chunk_size=5.0),  # type: ignore[arg-type]
        pairwise_distances(_CLOUD, chunk_size=5),
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize("points", ["points.npy", None, [["a", "b"], ["c", "d"]]])
def test_points_that_are_not_an_array_are_a_one_line_error(points: object) -> None:
    with pytest.raises(SharpdimError, match=r"points must be an \(N, D\) tensor or array") as err:
        alpha_weighted_lifetime_sum(points)
    assert "\n" not in str(err.value) and "numpy" in str(err.value)


def test_integer_points_are_coordinates_and_bad_shapes_say_so() -> None:
    """Integer points were refused with a complaint about their (fine) shape; a 0-dim
    distance matrix raised IndexError."""
    from sharpdim.dimension.mst import as_points, mst_edge_lengths, pairwise_distances

    grid = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    assert as_points(grid).dtype == torch.float64
    assert mst_edge_lengths(pairwise_distances(grid)).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(SharpdimError, match=r"^points must be real numbers, got torch.complex64"):
        as_points(torch.ones(3, 2, dtype=torch.complex64))
    with pytest.raises(SharpdimError, match=r"^points must be an \(N, D\) array with N >= 2"):
        as_points(torch.ones(3))
    with pytest.raises(SharpdimError, match=r"^distances must be a square \(N, N\) matrix"):
        mst_edge_lengths(torch.tensor(1.0))


def test_an_asymmetric_metric_is_refused() -> None:
    """The MST reads one triangle: a KL-like dissimilarity gave E_1 = 17.03 / 16.95 / 17.05
    for the same points in three orders."""
    g = torch.Generator().manual_seed(0)
    points = torch.rand(12, 3, generator=g, dtype=torch.float64) + 0.1

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a[:, None, :] * (a[:, None, :] / b[None, :, :]).log()).sum(-1).abs()

    with pytest.raises(SharpdimError, match=r"^the metric is not symmetric \(d\(a, b\)"):
        alpha_weighted_lifetime_sum(points, 1.0, kl)

    def symmetric(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (kl(a, b) + kl(b, a).T) / 2

    orders = [alpha_weighted_lifetime_sum(points[p], 1.0, symmetric).value for p in (
        torch.arange(12), torch.randperm(12, generator=g)
    )]  # fmt: skip
    assert orders[0] == pytest.approx(orders[1], rel=1e-12)
    with pytest.raises(SharpdimError, match=r"^the distance matrix is not symmetric .* inf\)"):
        mst_edge_lengths(torch.tensor([[0.0, 1.0], [math.inf, 0.0]]))


def test_an_accepted_matrix_gives_the_same_tree_both_ways() -> None:
    """Small distances far below the tolerance's scale (the largest distance) passed the
    check as given, and Prim, reading rows, gave [1e-9, 1e3] or [3e-9, 1e3] by orientation."""
    d = torch.tensor([[0.0, 1e-9, 1e3], [3e-9, 0.0, 1e3], [1e3, 1e3, 0.0]], dtype=torch.float64)
    assert torch.equal(mst_edge_lengths(d), mst_edge_lengths(d.T))
    assert mst_edge_lengths(d).tolist() == [3e-9, 1e3]


def _rounded_cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``cdist`` with an asymmetry of rounding size (1e-11 absolute) made explicit: whether
    torch.cdist itself is symmetric depends on the BLAS (it is not with this machine's)."""
    return torch.cdist(a, b) + 1e-9 * (a[:, :1] - b[:, 0]).clamp(min=0)


def test_rounding_asymmetry_is_accepted() -> None:
    """torch.cdist(x, x) of late iterates (far from 0, close together) is asymmetric by
    rounding (5e-11 of 0.14 here): a 1e-12 tolerance refused it, as a matrix and as a metric."""
    g = torch.Generator().manual_seed(0)
    x = 10 + 1e-2 * torch.randn(200, 50, generator=g, dtype=torch.float64)
    d = _rounded_cdist(x, x).fill_diagonal_(0.0)
    assert 1e-12 * float(d.max()) < float((d - d.T).abs().max()) < 1e-9 * float(d.max())
    exact = mst_edge_lengths(torch.maximum(d, d.T))
    torch.testing.assert_close(mst_edge_lengths(d), exact, rtol=1e-9, atol=0)
    value = alpha_weighted_lifetime_sum(x, 1.0, _rounded_cdist).value
    assert value == pytest.approx(float(exact.sum()), rel=1e-9)


def test_bad_metrics_and_matrices_are_one_line_errors():
    """A non-callable metric hit an assert, a metric returning None a TypeError, a learned
    metric (output needing grad) a RuntimeError; a ragged matrix a ValueError; complex
    distances lost their imaginary part."""
    pts = torch.randn(30, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cases = [
        (lambda: ph_dimension(pts, metric=None), r"^metric must be one of .* got NoneType"),
        (
            lambda: alpha_weighted_lifetime_sum(pts, metric=lambda a, b: None),
            r"^the metric's result must be real numbers",
        ),
        (lambda: mst_edge_lengths([[0, 1], [1]]), r"^distances must be real numbers .* list"),
        (
            lambda: mst_edge_lengths(torch.tensor([[0, 1j], [1j, 0]])),
            r"^distances must be real numbers .* got torch.complex64",
        ),
    ]
    for call, message in cases:
        with pytest.raises(SharpdimError, match=message):
            call()
    w = torch.eye(2, dtype=torch.float64, requires_grad=True)  # a learned (identity) metric
    learned = alpha_weighted_lifetime_sum(pts, metric=lambda a, b: torch.cdist(a @ w, b @ w))
    assert learned.value == pytest.approx(alpha_weighted_lifetime_sum(pts).value, rel=1e-12)


def test_float32_distances_are_symmetric_up_to_float32_rounding() -> None:
    """torch.cdist(x, x) of float32 points is asymmetric by a float32 rounding step (4.8e-7
    of 8.4 here); the tolerance was float64's sqrt(eps), so the most natural matrix was
    refused, as a matrix and from a float32 metric. A real float32 asymmetry still is."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 10, generator=g)
    d = torch.cdist(x, x)
    assert float((d - d.T).abs().max()) > 1e-8 * float(d.max())
    exact = mst_edge_lengths(torch.maximum(d, d.T))
    torch.testing.assert_close(mst_edge_lengths(d), exact, rtol=0, atol=0)
    value = alpha_weighted_lifetime_sum(x, 1.0, lambda a, b: torch.cdist(a.float(), b.float()))
    assert value.value == pytest.approx(alpha_weighted_lifetime_sum(x).value, rel=1e-6)
    skewed = d.clone()
    skewed[0, 1] += 1e-2
    with pytest.raises(SharpdimError, match=r"^the distance matrix is not symmetric"):
        mst_edge_lengths(skewed)
    with pytest.raises(SharpdimError, match=r"^the metric is not symmetric"):
        alpha_weighted_lifetime_sum(x, 1.0, lambda a, b: torch.cdist(a, b) + 1e-2 * a[:, :1])


def test_reversed_and_big_endian_arrays_are_read() -> None:
    """numpy views with negative strides (np.sort(x)[::-1]) and big-endian arrays were refused
    as 'not numbers': torch cannot wrap them, and the error was reworded."""
    rng = np.random.default_rng(0)
    points = rng.random((60, 2))
    expected = alpha_weighted_lifetime_sum(points[::-1].copy()).value
    assert alpha_weighted_lifetime_sum(points[::-1]).value == expected
    assert alpha_weighted_lifetime_sum(points.astype(">f8")).value == pytest.approx(
        alpha_weighted_lifetime_sum(points).value, rel=1e-12
    )
    line = np.abs(np.subtract.outer(np.arange(5.0), np.arange(5.0)))
    assert mst_edge_lengths(line[::-1, ::-1]).tolist() == [1.0, 1.0, 1.0, 1.0]
    assert mst_edge_lengths(line.astype(">f4")).tolist() == [1.0, 1.0, 1.0, 1.0]
    fit = ph_dimension(points.astype(">f8"), num_sizes=4)
    assert fit.dimension == ph_dimension(points, num_sizes=4).dimension


def test_one_point_has_no_lifetimes() -> None:
    """E_alpha of one point is the empty sum (no H0 bar dies): it was refused, while
    mst_edge_lengths of a 1 x 1 matrix already returned no edges."""
    result = alpha_weighted_lifetime_sum([[0.0, 1.0]], alpha=2.0)
    assert result.value == 0.0 and result.lifetimes.numel() == 0 and result.num_points == 1
    assert result.to_dict()["max_lifetime"] == 0.0
    with pytest.raises(SharpdimError, match=r"^points must be an \(N, D\) array with N >= 2"):
        ph_dimension([[0.0, 1.0]])
