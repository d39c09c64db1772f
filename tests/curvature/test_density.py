"""Histogram and Gaussian-KDE densities of a weighted measure: normalisation and shape."""

from __future__ import annotations

import math

import pytest
import torch

from sharpdim.curvature.density import histogram_density, kde_density
from sharpdim.curvature.measure import silverman_bandwidth
from sharpdim.curvature.slq import slq_spectrum
from sharpdim.errors import SharpdimError

F64 = torch.float64


def test_histogram_integrates_to_one_and_bins_mass() -> None:
    nodes = torch.tensor([0.1, 0.2, 0.7, 0.9], dtype=F64)
    weights = torch.tensor([1.0, 1.0, 2.0, 4.0], dtype=F64)
    edges, dens = histogram_density(nodes, weights, bins=2, range=(0.0, 1.0))
    assert edges.tolist() == [0.0, 0.5, 1.0]
    torch.testing.assert_close(dens, torch.tensor([0.5, 1.5], dtype=F64))  # masses 1/4, 3/4
    assert float((dens * edges.diff()).sum()) == pytest.approx(1.0)


def test_histogram_of_slq_measure() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(80, 80, generator=g, dtype=F64)
    res = slq_spectrum((a + a.T) / 2, num_runs=4, num_steps=20)
    edges, dens = histogram_density(res.nodes, res.weights, bins=30)
    assert edges.shape == (31,) and dens.shape == (30,)
    assert float((dens * edges.diff()).sum()) == pytest.approx(1.0, rel=1e-12)
    assert float(edges[0]) == float(res.nodes.min()) and float(edges[-1]) == float(res.nodes.max())


def test_histogram_single_point_and_range_cut() -> None:
    edges, dens = histogram_density(torch.tensor([2.0]), torch.tensor([1.0]), bins=4)
    assert float(edges[0]) == 1.5 and float(edges[-1]) == 2.5
    assert float((dens * edges.diff()).sum()) == pytest.approx(1.0)
    edges, dens = histogram_density(torch.tensor([0.0, 5.0]), torch.tensor([1.0, 1.0]), 5, (-1, 1))
    assert float((dens * edges.diff()).sum()) == pytest.approx(1.0)  # the atom at 5 is dropped


def test_kde_integrates_to_one_by_trapezoid() -> None:
    nodes = torch.tensor([[-1.0, 0.0, 2.0], [0.5, 1.0, 3.0]], dtype=F64)
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], dtype=F64)
    grid, dens = kde_density(nodes, weights, grid_size=400)
    assert grid.shape == dens.shape == (400,)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, rel=1e-12)
    assert bool((dens >= 0).all())
    # the mean and variance of the mixture (atoms' mean/variance plus h^2) come back from
    # the density by quadrature: it is the mixture, not only something of area 1 (up to the
    # kernels' tails beyond the grid's 3 h padding: 1.6e-3 in the mean, 0.5% in the variance
    # here; a shift by half a grid cell would be 8e-3)
    from sharpdim.curvature.measure import silverman_bandwidth as rule

    p = weights.reshape(-1) / weights.sum()
    v = nodes.reshape(-1)
    h = rule(v, p)
    mean = float((p * v).sum())
    var = float((p * (v - mean) ** 2).sum()) + h**2
    assert float(torch.trapezoid(dens * grid, grid)) == pytest.approx(mean, abs=3e-3)
    assert float(torch.trapezoid(dens * (grid - mean) ** 2, grid)) == pytest.approx(var, rel=1e-2)


def test_kde_matches_gaussian_mixture() -> None:
    """With a fixed bandwidth on a wide grid the KDE is the normal mixture's mean over each
    grid cell, and that is the mixture itself up to (dx/h)^2 / 24 relative."""
    from scipy.stats import norm

    nodes = torch.tensor([0.0, 1.0], dtype=F64)
    weights = torch.tensor([0.25, 0.75], dtype=F64)
    grid = torch.linspace(-4, 5, 2001, dtype=F64)
    _, dens = kde_density(nodes, weights, grid, bandwidth=0.3)
    dx = float(grid[1] - grid[0])
    x = grid.numpy()
    cells = sum(
        w * (norm.cdf(x + dx / 2, mu, 0.3) - norm.cdf(x - dx / 2, mu, 0.3)) / dx
        for w, mu in ((0.25, 0.0), (0.75, 1.0))
    )
    torch.testing.assert_close(dens, torch.from_numpy(cells), rtol=1e-9, atol=1e-12)

    def normal(x: torch.Tensor, mu: float) -> torch.Tensor:
        return torch.exp(-0.5 * ((x - mu) / 0.3) ** 2) / (0.3 * math.sqrt(2 * math.pi))

    expected = 0.25 * normal(grid, 0.0) + 0.75 * normal(grid, 1.0)
    # cell mean - value = dx^2/24 rho'' + O(dx^4), rho'' = sum w N (z^2 - 1) / h^2
    curvature = sum(
        w * normal(grid, mu) * (((grid - mu) / 0.3) ** 2 - 1).abs() / 0.09
        for w, mu in ((0.25, 0.0), (0.75, 1.0))
    )
    bound = 1.01 * dx**2 / 24 * curvature + 1e-6 * expected
    assert bool(((dens - expected).abs() <= bound).all())
    assert float((dens - expected).abs().max()) > 1e-3 * float((dx**2 / 24 * curvature).max())


def test_kde_keeps_a_narrow_outlier_on_a_coarse_grid() -> None:
    """A bulk of width 0.02 and outliers at 60, 170, 300 (a trained network's Hessian): the
    bandwidth (~0.002) is far below the default cells (~0.6); evaluated at the grid points the
    outliers fell between them (mass 0 near 60 and 170, 0.035 near 300 instead of 0.001)."""
    g = torch.Generator().manual_seed(0)
    bulk = torch.rand(397, generator=g, dtype=F64) * 0.02 - 0.005
    nodes = torch.cat([torch.tensor([300.0, 170.0, 60.0], dtype=F64), bulk])
    weights = torch.ones(400, dtype=F64) / 400
    grid, dens = kde_density(nodes, weights)
    cells = dens * (grid[1] - grid[0])
    assert float(grid[1] - grid[0]) > 100 * silverman_bandwidth(nodes, weights)
    for lo, hi, mass in ((-1, 1, 397 / 400), (50, 70, 1 / 400), (160, 180, 1 / 400)):
        inside = (grid >= lo) & (grid <= hi)
        assert float(cells[inside].sum()) == pytest.approx(mass, rel=1e-9)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, rel=1e-12)


def test_kde_blocks_of_grid_and_atoms_give_the_same_density(monkeypatch) -> None:
    """The grid is split into blocks too (only the atoms were: 1.9 GiB for 20,001 points)."""
    import sharpdim.curvature.density as density

    g = torch.Generator().manual_seed(2)
    nodes, weights = torch.randn(300, generator=g, dtype=F64), torch.rand(300, generator=g)
    grid, whole = kde_density(nodes, weights, grid_size=257)
    monkeypatch.setattr(density, "_CHUNK", 1000)  # blocks of 3 grid points x 300 atoms
    torch.testing.assert_close(kde_density(nodes, weights, grid)[1], whole, rtol=1e-13, atol=0)
    monkeypatch.setattr(density, "_CHUNK", 100)  # 1 grid point x 100 atoms
    torch.testing.assert_close(kde_density(nodes, weights, grid)[1], whole, rtol=1e-13, atol=0)


def test_nodes_equal_up_to_rounding_are_one_point() -> None:
    """SLQ of 0.3 I gives nodes 0.3 - 6e-17, 0.3, 0.3 + 6e-17: the histogram had 98 bins of
    width 0 (NaN density) and the KDE a bandwidth of 2e-17."""
    nodes = torch.tensor([0.29999999999999993, 0.3, 0.30000000000000004], dtype=F64)
    weights = torch.ones(3, dtype=F64)
    edges, hist = histogram_density(nodes, weights, bins=100)
    assert edges[0] == pytest.approx(-0.2) and edges[-1] == pytest.approx(0.8)
    assert bool(torch.isfinite(hist).all()) and float((hist * edges.diff()).sum()) == 1.0
    grid, dens = kde_density(nodes, weights)
    assert float(grid[1] - grid[0]) > 1e-6  # a bandwidth of 1e-3 * 0.3
    assert float(grid[dens.argmax()]) == pytest.approx(0.3, abs=1e-5)
    with pytest.raises(SharpdimError, match=r"too narrow for 100 bins"):
        histogram_density(nodes, weights, bins=100, range=(0.3, 0.30000000000000004))


def test_kde_default_bandwidth_is_silverman() -> None:
    import numpy as np

    g = torch.Generator().manual_seed(1)
    nodes = torch.randn(500, generator=g, dtype=F64)
    weights = torch.ones(500, dtype=F64)
    grid = torch.linspace(-6, 6, 801, dtype=F64)
    _, default = kde_density(nodes, weights, grid)
    # Silverman's robust rule by hand: 0.9 min(std, IQR / 1.34) n^(-1/5) (the module's own
    # function would compare the code with itself)
    x = nodes.numpy()
    iqr = np.quantile(x, 0.75, method="inverted_cdf") - np.quantile(x, 0.25, method="inverted_cdf")
    h = 0.9 * min(x.std(), iqr / 1.34) * 500 ** (-0.2)
    _, explicit = kde_density(nodes, weights, grid, bandwidth=float(h))
    torch.testing.assert_close(default, explicit, rtol=1e-12, atol=1e-14)
    # a standard normal sample: the KDE is close to the normal density
    normal = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    assert float((default - normal).abs().max()) < 0.06


def test_kde_single_atom() -> None:
    grid, dens = kde_density(torch.tensor([3.0]), torch.tensor([1.0]))
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0)
    assert float(grid[dens.argmax()]) == pytest.approx(3.0, abs=1e-2)


def test_atoms_without_mass_do_not_set_the_default_range() -> None:
    """An atom of weight 0 (an SLQ node its probe does not see) is no part of the measure:
    at 1000 beside mass on [0, 2] it made the KDE grid [-1.8, 1001.8] (cells 1.96 wide) and the
    histogram range [0, 1000]."""
    nodes, weights = [0.0, 1.0, 2.0, 1000.0], [1.0, 1.0, 1.0, 0.0]
    edges, dens = histogram_density(nodes, weights, bins=4)
    assert edges.tolist() == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert dens.tolist() == pytest.approx([2 / 3, 0.0, 2 / 3, 2 / 3])
    grid, _ = kde_density(nodes, weights)
    ref_grid, _ = kde_density(nodes[:3], weights[:3])
    assert torch.equal(grid, ref_grid)
    assert float(grid[-1]) < 10


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: histogram_density([1.0, 2.0], [1.0]), "equal"),
        (lambda: histogram_density([1.0], [-1.0]), "negative"),
        (lambda: histogram_density([1.0], [0.0]), "sum to 0"),
        (lambda: histogram_density([1.0], [1.0], bins=0), "bins"),
        (lambda: histogram_density([1.0], [1.0], range=(2.0, 2.0)), "empty"),
        (lambda: histogram_density([1.0], [1.0], range=(2.0, 3.0)), "no mass"),
        (lambda: kde_density([1.0], [1.0], bandwidth=-1.0), "bandwidth"),
        (lambda: kde_density([1.0], [1.0], grid=torch.tensor([1.0, 0.0])), "increasing"),
        (lambda: kde_density([1.0], [1.0], grid_size=1), "grid_size"),
        (lambda: kde_density([float("nan")], [1.0]), "NaN"),
    ],
)
def test_bad_input(call, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SharpdimError, match=match):
        call()


def test_the_default_kde_grid_reaches_three_bandwidths_past_the_nodes() -> None:
    """The documented span: nodes plus 3 h on each side (so the tails hold < 0.14% of mass)."""
    nodes = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    h = 0.4
    grid, _ = kde_density(nodes, weights, bandwidth=h)
    assert float(grid[0]) <= -3 * h + 1e-12 and float(grid[-1]) >= 4.0 + 3 * h - 1e-12


def test_kde_on_a_non_uniform_grid_is_second_order() -> None:
    """Cells bounded by the midpoints put a point off-centre in its cell on a grid of unequal
    gaps: the error was first order (halving with dx). Centred cells keep it second order."""
    from scipy.stats import norm

    errors = []
    for dx in (0.1, 0.05, 0.025):
        gaps = torch.tensor([dx, 3 * dx], dtype=F64).repeat(int(6 / dx))
        grid = torch.cat([torch.zeros(1, dtype=F64), gaps.cumsum(0)]) - 12.0
        grid = grid[grid <= 12.0]
        _, dens = kde_density(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64), grid, 1.0)
        exact = torch.from_numpy(norm.pdf(grid.numpy()))
        errors.append(float((dens - exact).abs().max()))
    assert errors[0] < 2e-3  # (1.2e-2 with cells bounded by the midpoints)
    assert errors[1] / errors[0] < 0.3 and errors[2] / errors[1] < 0.3  # ~ 1/4 per halving


def test_bad_density_inputs_are_one_line_errors() -> None:
    nodes = torch.tensor([0.0, 1.0], dtype=F64)
    weights = torch.tensor([1.0, 1.0], dtype=F64)
    cases = [
        (lambda: histogram_density(nodes, weights, range=(1.0,)), r"^range must be a pair"),
        (lambda: histogram_density(nodes, weights, range=(None, 2)), r"^range must be a pair"),
        (lambda: histogram_density("abc", weights), r"^nodes must be real numbers .* got str"),
        (lambda: kde_density(nodes, weights, grid="ab"), r"^grid must be real numbers"),
        (
            lambda: kde_density(torch.tensor([0.5 + 3j, 1.0]), weights),
            r"^nodes must be real numbers .* got torch.complex64",
        ),
        (
            lambda: kde_density(nodes, torch.tensor([1e308, 1e308], dtype=F64)),
            r"^the weights sum to inf: pass weights with a positive, finite total mass",
        ),
        (
            lambda: kde_density(torch.tensor([-1e308, 1e308], dtype=F64), weights),
            r"^the density is not finite on this grid",
        ),
    ]
    for call, message in cases:
        with pytest.raises(SharpdimError, match=message):
            call()


def test_kde_on_a_coarse_non_uniform_grid_keeps_every_kernels_mass() -> None:
    """Cells centred on the points leave gaps between them on unequal gaps: a kernel narrower
    than the grid there was lost (the atom of weight 1 at 1.75 on the grid [0, 1, 3]), and
    the rescaling gave its mass to the other atom."""
    grid = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    _, dens = kde_density(
        torch.tensor([0.0, 1.75], dtype=F64), torch.tensor([1e-3, 1.0], dtype=F64), grid, 0.01
    )
    # midpoint cells [-0.5, 0.5], [0.5, 2], [2, 4]: the mass 1e-3 / 1.001 in the first, the
    # rest in the second (width 1.5); the trapezoid rule weighs them 0.5 and 1.5
    masses = torch.tensor([1e-3, 1.0, 0.0], dtype=F64) / 1.001
    expected = masses / torch.tensor([1.0, 1.5, 2.0], dtype=F64)
    expected /= torch.trapezoid(expected, grid)
    torch.testing.assert_close(dens, expected, rtol=1e-9, atol=1e-12)


def test_one_wide_gap_leaves_the_rest_of_a_non_uniform_grid_second_order() -> None:
    """The cell rule was chosen for the whole grid: one empty point far away (a gap wider
    than h) put off-centre cells everywhere (error 6e-3 against 2e-5)."""
    from scipy.stats import norm

    gaps = torch.tensor([0.01, 0.03], dtype=F64).repeat(150)
    bulk = torch.cat([torch.zeros(1, dtype=F64), gaps.cumsum(0)]) - 3.0
    one = torch.ones(1, dtype=F64)
    errors = []
    inner = bulk[:-1]  # (the last bulk point's cell reaches into the wide gap)
    for grid in (bulk, torch.cat([bulk, 10 * one])):
        _, dens = kde_density(torch.zeros(1, dtype=F64), one, grid, 0.5)
        exact = torch.from_numpy(norm.pdf(inner.numpy(), scale=0.5))
        errors.append(float(((dens[: inner.numel()] - exact) / exact).abs().max()))
    assert errors[0] < 1e-3 and abs(errors[1] - errors[0]) < 1e-8  # (6e-3 apart before)


def test_histogram_single_point_is_widened_relative_to_its_magnitude() -> None:
    # +-0.5 is below the spacing of floats at 1e16: the range used to stay empty
    edges, dens = histogram_density(torch.full((3,), 1e16, dtype=F64), torch.ones(3), bins=4)
    assert edges.tolist() == [1e16 - 1e10, 1e16 - 5e9, 1e16, 1e16 + 5e9, 1e16 + 1e10]
    assert dens.tolist() == [0.0, 0.0, 1 / 5e9, 0.0]
    top = torch.full((2,), 1.7976931348623157e308, dtype=F64)  # widened up to float64's end
    edges, dens = histogram_density(top, torch.ones(2), bins=2)
    assert float(edges[-1]) == 1.7976931348623157e308 and float((dens * edges.diff()).sum()) == 1


@pytest.mark.parametrize(
    ("limits", "shown"),
    [
        ((0, math.inf), r"\(0.0, inf\)"),
        ((math.nan, 1), r"\(nan, 1.0\)"),
        ((0, 10**400), r"\(0.0, inf\)"),
    ],
)
def test_histogram_non_finite_range_is_refused(limits: tuple[float, float], shown: str) -> None:
    nodes = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(SharpdimError, match=rf"^range {shown}.* is not finite: pass finite"):
        histogram_density(nodes, torch.ones(2), range=limits)


def test_histogram_range_wider_than_float64_is_refused() -> None:
    nodes = torch.tensor([-1e308, 1e308], dtype=F64)
    with pytest.raises(SharpdimError, match=r"^range \(-1e\+308, 1e\+308\) is wider than float64"):
        histogram_density(torch.tensor([0.0, 1.0], dtype=F64), torch.ones(2), range=(-1e308, 1e308))
    with pytest.raises(SharpdimError, match=r"is wider than float64 .*, or rescale the nodes$"):
        histogram_density(nodes, torch.ones(2))


def test_a_bandwidth_below_float64_resolution_names_it() -> None:
    """Grid points repeated below float64 spacing gave 0/0 cell means, reported as nodes
    whose magnitudes overflow float64 (nothing overflows; rescaling does not help)."""
    with pytest.raises(
        SharpdimError,
        match=r"^bandwidth 1e-12 is below float64 resolution at the nodes \(\|x\| up to 100\) "
        r"for 512 grid points: use bandwidth >= 7.3e-12",
    ):
        kde_density(torch.tensor([100.0]), torch.tensor([1.0]), bandwidth=1e-12)
    grid, dens = kde_density(torch.tensor([100.0]), torch.tensor([1.0]), bandwidth=7.4e-12)
    assert math.isclose(float(torch.trapezoid(dens, grid)), 1.0, rel_tol=1e-12)
