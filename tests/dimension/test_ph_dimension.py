"""PH0 dimension of sets with known dimension."""

import math

import pytest
import torch

from sharpdim.dimension.ph_dimension import ph_dimension
from sharpdim.errors import SharpdimError

F64 = torch.float64


@pytest.mark.parametrize(("dim", "tol"), [(1, 0.05), (2, 0.15), (3, 0.35)])
def test_uniform_cubes(dim: int, tol: float) -> None:
    g = torch.Generator().manual_seed(dim)
    pts = torch.rand(1500, dim, generator=g, dtype=F64)
    r = ph_dimension(pts, min_points=150, generator=g)
    # E_1 ~ n^{(d-1)/d}; boundary effects bias small samples of the cube low
    assert abs(r.dimension - dim) < tol


def test_segment_embedded_in_high_dimension() -> None:
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(50, generator=g, dtype=F64)
    pts = torch.rand(800, 1, generator=g, dtype=F64) * direction + 3.0
    assert abs(ph_dimension(pts, generator=g).dimension - 1.0) < 0.05


def test_sierpinski_triangle() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]], dtype=F64)
    idx = torch.randint(0, 3, (1600,), generator=g)
    x, pts = torch.zeros(2, dtype=F64), []
    for i in range(1600):
        x = (x + v[idx[i]]) / 2
        if i >= 100:
            pts.append(x)
    r = ph_dimension(torch.stack(pts), min_points=150, generator=g)
    assert abs(r.dimension - math.log(3) / math.log(2)) < 0.1


def test_loss_metric_equals_scaled_l1() -> None:
    # per-example loss vectors on a line: the loss metric is |a - b| * mean |direction|
    g = torch.Generator().manual_seed(0)
    vecs = torch.rand(500, 1, generator=g, dtype=F64) * torch.rand(1, 20, generator=g)
    r = ph_dimension(vecs, "loss", generator=g)
    assert abs(r.dimension - 1.0) < 0.05 and r.metric == "loss"


def test_callable_metric_matches_euclidean() -> None:
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(300, 2, generator=g, dtype=F64)
    a = ph_dimension(pts, generator=torch.Generator().manual_seed(1))
    b = ph_dimension(
        pts, lambda u, w: torch.cdist(u, w), generator=torch.Generator().manual_seed(1)
    )
    assert abs(a.dimension - b.dimension) < 1e-9 and b.metric == "callable"
    assert a.to_dict()["sizes"][0] == 30


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        ph_dimension(torch.rand(10, 2), min_points=20)
    with pytest.raises(SharpdimError):
        ph_dimension(torch.rand(10))
    with pytest.raises(SharpdimError):
        ph_dimension(torch.rand(50, 2), metric="manhattan")
    with pytest.raises(SharpdimError):
        ph_dimension(torch.zeros(50, 2))


def test_mostly_repeated_points_are_named_not_called_all_equal() -> None:
    """19 equal points and one other: a subsample that misses the other one has no
    persistence, and the error said "all points equal", which they are not."""
    pts = torch.zeros(20, 2)
    pts[-1] = 1.0
    with pytest.raises(SharpdimError, match=r"subsamples of 12 points .* mostly repeated"):
        ph_dimension(pts, generator=torch.Generator().manual_seed(1))


def test_too_few_points_for_the_default_min_points_says_it_is_the_default() -> None:
    with pytest.raises(SharpdimError, match=r"^min_points=10 \(the default, .*pass more points"):
        ph_dimension(torch.rand(5, 2, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": "1"}, "alpha must be a finite number > 0"),
        ({"alpha": True}, "alpha must be a finite number > 0"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": math.inf}, "alpha must be a finite number > 0"),  # was "all points equal"
        ({"alpha": math.nan}, "alpha must be a finite number > 0"),
        ({"num_sizes": 2.5}, "num_sizes must be an integer >= 2"),
        ({"num_sizes": "5"}, "num_sizes must be an integer >= 2"),
        ({"num_sizes": 1}, "num_sizes must be an integer >= 2"),
        ({"num_sizes": True}, "num_sizes must be an integer >= 2"),
        ({"num_repeats": 0}, "num_repeats must be an integer >= 1"),
        ({"num_repeats": 1.5}, "num_repeats must be an integer >= 1"),
        ({"min_points": 2.5}, "min_points must be an integer >= 2"),
        ({"min_points": "10"}, "min_points must be an integer >= 2"),
        ({"max_points": "50"}, "max_points must be an integer >= 2"),
        ({"max_points": 50.5}, "max_points must be an integer >= 2"),
        ({"chunk_size": 0}, "chunk_size must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs: dict, match: str) -> None:
    pts = torch.rand(60, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(SharpdimError, match=match) as err:
        ph_dimension(pts, **kwargs)
    assert "\n" not in str(err.value)


def test_whole_float_counts_equal_ints() -> None:
    pts = torch.rand(60, 2, generator=torch.Generator().manual_seed(0), dtype=F64)

    def run(**kw: object) -> torch.Tensor:
        return ph_dimension(pts, generator=torch.Generator().manual_seed(0), **kw).lifetime_sums

    ints = run(min_points=10, max_points=50, num_sizes=4, num_repeats=2)
    floats = run(min_points=10.0, max_points=50.0, num_sizes=4.0, num_repeats=2.0)
    torch.testing.assert_close(floats, ints, rtol=0, atol=0)
    assert ph_dimension(pts, num_repeats=2.0).num_repeats == 2  # type: ignore[arg-type]


def test_a_two_size_fit_has_no_r_squared() -> None:
    """11 points give the sizes {10, 11}; any line fits two points, so r^2 was always 1.0."""
    g = torch.Generator().manual_seed(0)
    r = ph_dimension(torch.rand(11, 2, generator=g, dtype=torch.float64), generator=g)
    assert r.sizes.tolist() == [10, 11] and math.isnan(r.r_squared)
    assert r.to_dict()["r_squared"] is None
    many = ph_dimension(torch.rand(200, 2, generator=g, dtype=torch.float64), generator=g)
    assert len(many.sizes) >= 3 and 0 < many.r_squared <= 1


def test_alpha_enters_the_dimension() -> None:
    """E_alpha of n uniform points on a segment grows like n^(1 - alpha): slope 1/2 and
    dimension alpha / (1 - slope) = 1 at alpha = 1/2 (not 1 / (1 - slope) = 2)."""
    pts = torch.rand(800, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = ph_dimension(pts, alpha=0.5, generator=torch.Generator().manual_seed(1))
    assert abs(r.slope - 0.5) < 0.02
    assert abs(r.dimension - 1.0) < 0.05


def test_a_num_sizes_beyond_int64_is_refused_in_one_line() -> None:
    """np.geomspace(lo, hi, 2**63) returned nothing and an IndexError followed."""
    points = torch.rand(40, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"^num_sizes must be at most 2\*\*63 - 1"):
        ph_dimension(points, num_sizes=2**63)
