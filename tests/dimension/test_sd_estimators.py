"""SD-SLQ / SD-KDE / SD-PS on exponent measures whose Kaplan–Yorke dimension is known."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch

from sharpdim.curvature.measure import silverman_bandwidth, weighted_quantiles
from sharpdim.dimension.kaplan_yorke import kaplan_yorke_dimension, kaplan_yorke_measure
from sharpdim.dimension.sd_estimators import (
    exponent_measure,
    sd_from_measure,
    sd_histogram,
    sd_kde,
    sd_quantiles,
)
from sharpdim.dynamics.jacobian_spectra import StepSpectrumConfig, step_log_singular_values
from sharpdim.errors import SharpdimError


def _spectrum(d: int = 40, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat(
        [
            torch.rand(d - 3, generator=gen, dtype=torch.float64) * 2 - 0.2,
            torch.tensor([4.5, 6.0, 8.0], dtype=torch.float64),
        ]
    )


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_exponent_measure_of_exact_eigenvalues(optimizer: str) -> None:
    alpha = _spectrum()
    d = alpha.numel()
    config = StepSpectrumConfig(optimizer=optimizer, lr=0.3, momentum=0.5)
    # one "run" holding every eigenvalue with weight 1/d: the exact spectral measure
    values, masses = exponent_measure(
        alpha[None], torch.full((1, d), 1.0 / d, dtype=torch.float64), d, config
    )
    s = config.states_per_param
    assert values.shape == (1, s * d) and float(masses.sum()) == pytest.approx(s * d)
    exact = kaplan_yorke_dimension(step_log_singular_values(alpha, config))
    assert sd_quantiles(values, masses).dimension == pytest.approx(exact.dimension, abs=1e-12)
    assert sd_histogram(values, masses, num_bins=100_000).dimension == pytest.approx(
        exact.dimension, abs=1e-9
    )
    kde = sd_kde(values, masses, bandwidth=1e-4, points_per_bandwidth=4).dimension
    assert kde == pytest.approx(exact.dimension, abs=1e-3)


def test_runs_pool_with_mass_d_over_r() -> None:
    nodes = torch.tensor([[1.0, 3.0], [2.0, 4.0]], dtype=torch.float64)
    weights = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    values, masses = exponent_measure(nodes, weights, 10, StepSpectrumConfig(lr=0.1))
    torch.testing.assert_close(
        masses, torch.tensor([[1.25, 3.75], [2.5, 2.5]], dtype=torch.float64)
    )
    torch.testing.assert_close(values, torch.log((1 - 0.1 * nodes).abs() + 1e-12))


def test_histogram_bins_keep_first_moment() -> None:
    # all atoms in one bin: the bin atom is the mass-weighted mean
    r = sd_histogram([0.3, -0.1], [1.0, 2.0], num_bins=1)
    assert r.exponents.tolist() == pytest.approx([0.1 / 3]) and r.dimension == 3.0
    r2 = sd_histogram([0.5, -1.0, -1.2], [1.0, 1.0, 1.0], num_bins=1000)
    assert r2.dimension == pytest.approx(
        kaplan_yorke_dimension([0.5, -1.0, -1.2]).dimension, abs=1e-12
    )


def test_quantiles_equal_mass_and_clipped() -> None:
    r = sd_quantiles([1.0, -2.0], [3.0, 1.0], num_quantiles=8)
    assert r.masses.tolist() == [0.5] * 8
    assert r.exponents.tolist() == [1.0] * 6 + [-2.0] * 2
    assert r.dimension == 4.0  # 3 - 2 = 1 >= 0: every partial sum non-negative
    assert 0 <= sd_quantiles([-1.0], [5.0]).dimension == 0.0


def test_weighted_quantiles() -> None:
    q = weighted_quantiles(
        [3.0, 1.0, 2.0], [1.0, 1.0, 2.0], torch.tensor([0.1, 0.25, 0.5, 0.74, 0.76, 1.0])
    )
    assert q.tolist() == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]


def test_kde_exact_and_trapezoid_agree_on_a_smooth_measure() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(3000, generator=gen, dtype=torch.float64) * 0.5 - 0.2
    m = torch.full_like(v, 1.0 / 30)  # mass 100
    a = sd_kde(v, m, integration="exact").dimension
    b = sd_kde(v, m, integration="trapezoid").dimension
    assert a == pytest.approx(b, abs=0.05)
    # against the density's own answer: N(-0.2, 0.5^2 + h^2) has int_l^inf u p(u) du = 0 at
    # mu * Phi((mu - l)/s) + s * phi((mu - l)/s) = 0
    h = silverman_bandwidth(v, m)
    s = math.sqrt(float(v.var()) + h * h)
    mu = float(v.mean())
    lo, hi = -10.0, mu
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        z = (mu - mid) / s
        val = mu * 0.5 * math.erfc(-z / math.sqrt(2)) + s * math.exp(-0.5 * z * z) / math.sqrt(
            2 * math.pi
        )
        lo, hi = (mid, hi) if val < 0 else (lo, mid)
    expected = 100 * 0.5 * math.erfc(-((mu - lo) / s) / math.sqrt(2))
    assert a == pytest.approx(expected, rel=0.01)


def test_silverman_bandwidth_normal_sample() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(10_000, generator=gen, dtype=torch.float64)
    h = silverman_bandwidth(v, torch.ones_like(v))
    assert h == pytest.approx(0.9 * 10_000 ** (-0.2), rel=0.05)


def test_measure_and_point_masses_consistency() -> None:
    assert kaplan_yorke_measure([0.2, -0.4], [1.0, 1.0]).dimension == pytest.approx(1.5)
    assert sd_kde([0.2], [1.0]).dimension == 1.0  # a single value: nothing to smooth


def test_bad_input() -> None:
    with pytest.raises(SharpdimError, match="unknown SD estimator"):
        sd_from_measure("hist", [0.0], [1.0])
    with pytest.raises(SharpdimError):
        exponent_measure(torch.zeros(2, 3), torch.zeros(2, 2), 5, StepSpectrumConfig())
    with pytest.raises(SharpdimError):
        sd_histogram([0.0], [1.0], num_bins=0)
    with pytest.raises(SharpdimError):
        sd_kde([0.0, 1.0], [1.0, 1.0], integration="simpson")
    with pytest.raises(SharpdimError):
        sd_kde([0.0, 1.0], [1.0, 1.0], bandwidth=-1.0)
    with pytest.raises(SharpdimError):
        sd_quantiles([0.0], [1.0], num_quantiles=0)


def test_kde_converges_with_the_grid_and_keeps_the_mass() -> None:
    gen = torch.Generator().manual_seed(2)
    v = torch.cat(
        [
            torch.randn(5000, generator=gen, dtype=torch.float64) * 0.3 - 0.4,
            torch.rand(500, generator=gen, dtype=torch.float64) * 1.5,
        ]
    )
    m = torch.rand(v.numel(), generator=gen, dtype=torch.float64)
    m = m * (800 / m.sum())
    coarse = sd_kde(v, m, points_per_bandwidth=4, grid_size=64)
    fine = sd_kde(v, m, points_per_bandwidth=64, grid_size=4096)
    assert fine.total_mass == pytest.approx(800) and float(fine.masses.sum()) == pytest.approx(800)
    assert coarse.dimension == pytest.approx(fine.dimension, abs=2e-3 * 800)
    for integration in ("exact", "trapezoid"):  # the two quadratures agree on a fine grid
        r = sd_kde(v, m, points_per_bandwidth=64, integration=integration)
        assert r.dimension == pytest.approx(fine.dimension, abs=1e-4 * 800)
    assert 0 < fine.dimension < 800


_FOUR_ATOMS = ([0.3, -0.1, -0.5, -2.0], [1.0] * 4)  # Def. 4.2: 2 + 0.2 / 0.5 = 2.4


@pytest.mark.parametrize("integration", ["exact", "trapezoid"])
@pytest.mark.parametrize("h", [1e-300, 1e-10, 1e-8, 1e-7, 1e-6])
def test_kde_with_a_bandwidth_below_the_grid_spacing_keeps_every_atom(
    h: float, integration: str
) -> None:
    # the default grid has cells of ~1.1e-6 here: the kernel cannot be resolved
    r = sd_kde(*_FOUR_ATOMS, bandwidth=h, integration=integration)
    assert r.dimension == pytest.approx(2.4, abs=1e-12)
    assert float(r.masses[r.exponents > 0.29].sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("estimator", [sd_histogram, sd_kde, sd_quantiles])
def test_a_measure_of_zero_mass_is_refused_alike(estimator: Any) -> None:
    """sd_kde raised ValueError (NaN bandwidth), sd_histogram said the values were empty."""
    with pytest.raises(SharpdimError, match="the masses sum to 0"):
        estimator([0.5, -1.0], [0.0, 0.0])
    with pytest.raises(SharpdimError, match="the masses sum to 0"):
        weighted_quantiles([0.5, -1.0], [0.0, 0.0], torch.tensor([0.5]))


def test_kde_with_a_grid_spacing_that_underflows_keeps_every_atom() -> None:
    """h / points_per_bandwidth = 1e-200 / 1e200 underflows to 0: ZeroDivisionError before."""
    r = sd_kde(*_FOUR_ATOMS, bandwidth=1e-200, points_per_bandwidth=1e200)
    assert r.dimension == pytest.approx(2.4, abs=1e-12)


def test_kde_on_a_coarse_grid_keeps_every_atom() -> None:
    # 64 nodes over 2.3 + 16h: cells of ~0.037 > h = 1e-3, unresolved
    coarse = sd_kde(*_FOUR_ATOMS, bandwidth=1e-3, max_grid=64)
    assert coarse.dimension == pytest.approx(2.4, abs=1e-12)
    # the smallest grid allowed still smooths a wide kernel (fine grid: 3.9051327)
    wide = sd_kde(*_FOUR_ATOMS, bandwidth=10.0, max_grid=64).dimension
    assert wide == pytest.approx(sd_kde(*_FOUR_ATOMS, bandwidth=10.0).dimension, abs=5e-4)
    for h in (1e-4, 1e-3):  # resolved: the smoothed measure, 2.4 + O(h)
        assert sd_kde(*_FOUR_ATOMS, bandwidth=h).dimension == pytest.approx(2.4, abs=h)


@pytest.mark.parametrize(
    ("estimator", "kwargs", "match"),
    [
        (sd_kde, {"max_grid": 2}, "max_grid must be an integer >= 64"),
        (sd_kde, {"max_grid": 63}, "max_grid must be an integer >= 64"),
        (sd_kde, {"max_grid": 64.5}, "max_grid must be an integer"),
        (sd_kde, {"grid_size": 2.5}, "grid_size must be an integer"),
        (sd_kde, {"grid_size": True}, "grid_size must be an integer"),
        (sd_kde, {"bandwidth": "a"}, "bandwidth must be a finite number"),
        (sd_kde, {"bandwidth": True}, "bandwidth must be a finite number"),
        (sd_kde, {"points_per_bandwidth": 0}, "points_per_bandwidth must be a finite number > 0"),
        (sd_kde, {"integration": None}, "unknown integration"),
        (sd_kde, {"integration": np.array(["exact", "trapezoid"])}, "unknown integration"),
        (sd_histogram, {"num_bins": 2.5}, "num_bins must be an integer"),
        (sd_histogram, {"num_bins": "10"}, "num_bins must be an integer"),
        (sd_histogram, {"num_bins": True}, "num_bins must be an integer"),
        (sd_quantiles, {"num_quantiles": 2.5}, "num_quantiles must be an integer"),
        (sd_quantiles, {"num_quantiles": True}, "num_quantiles must be an integer"),
    ],
)
def test_bad_estimator_options_are_one_line_errors(
    estimator: object, kwargs: dict, match: str
) -> None:
    with pytest.raises(SharpdimError, match=match) as err:
        estimator(*_FOUR_ATOMS, **kwargs)  # type: ignore[operator]
    assert "\n" not in str(err.value)


def test_exponent_measure_refuses_non_finite_curvature_and_overflow() -> None:
    w = torch.full((1, 2), 0.5, dtype=torch.float64)
    nodes = torch.tensor([[1.0, float("nan")]], dtype=torch.float64)
    with pytest.raises(SharpdimError, match="NaN or inf: second derivatives overflow"):
        exponent_measure(nodes, w, 2, StepSpectrumConfig(lr=0.1))
    nodes = torch.tensor([[1.0, 1e10]], dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"exponents overflow float64.*lower lr"):
        exponent_measure(nodes, w, 2, StepSpectrumConfig(lr=1e300))


@pytest.mark.parametrize(
    "config",
    [
        StepSpectrumConfig(optimizer="adam", betas=(0.0, 0.999), lr=0.1, eps=0.0),
        StepSpectrumConfig(lr=0.5, eps=0.0),  # |1 - 0.5 * 2| = 0
    ],
)
def test_exactly_singular_direction_with_eps_0_asks_for_eps(config: StepSpectrumConfig) -> None:
    """(Momentum 0, once a case here, is now refused: it is plain SGD.)"""
    nodes = torch.tensor([[0.5, 2.0]], dtype=torch.float64)
    w = torch.full((1, 2), 0.5, dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"exactly 0.*eps=0.*pass eps > 0") as err:
        exponent_measure(nodes, w, 2, config)
    assert "\n" not in str(err.value) and "overflow" not in str(err.value)
    values, _ = exponent_measure(nodes, w, 2, dataclasses.replace(config, eps=1e-12))
    assert float(values.min()) == math.log(1e-12)  # the default guard caps it at ln(1e-12)


def test_kde_bandwidth_stays_below_the_crossing_exponent() -> None:
    """Silverman's h (0.18 here, set by the -5 and +1 outliers) smoothed the 100 exponents at
    -0.02 across the crossing: SD-KDE gave 98.76 where Def. 4.2 gives 1 + 1/0.02 = 51."""
    from sharpdim.curvature.measure import silverman_bandwidth
    from sharpdim.dimension.sd_estimators import crossing_exponent, kde_bandwidth

    v = torch.tensor([1.0] + [-0.02] * 100 + [-5.0], dtype=torch.float64)
    m = torch.ones_like(v)
    assert crossing_exponent(v, m) == -0.02
    assert silverman_bandwidth(v, m) > 0.17 and kde_bandwidth(v, m) == pytest.approx(0.002)
    # bias ~ 0.4 (h / |l*|) x the mass at the crossing = 0.04 x 100
    assert 51.0 <= sd_kde(v, m).dimension <= 51.0 + 0.05 * 100
    assert kaplan_yorke_measure(v, m).dimension == pytest.approx(51.0)


def test_crossing_exponent_without_a_crossing_and_an_uncapped_bandwidth() -> None:
    from sharpdim.curvature.measure import silverman_bandwidth
    from sharpdim.dimension.sd_estimators import crossing_exponent, kde_bandwidth

    ones = torch.ones(3, dtype=torch.float64)
    assert crossing_exponent(torch.tensor([0.5, 0.2, -0.1]), ones) is None  # SD = d
    assert crossing_exponent(torch.tensor([-0.5, -0.2, -0.1]), ones) is None  # SD = 0
    # a zero-mass atom is not the crossing
    v, m = torch.tensor([1.0, -5.0, -2.0]), torch.tensor([1.0, 0.0, 1.0])
    assert crossing_exponent(v, m) == -2.0
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(400, generator=g, dtype=torch.float64) * 0.1 + 1.0
    w = torch.ones(401, dtype=torch.float64)
    for smooth in (bulk[:-1], torch.cat([bulk, torch.tensor([-1000.0], dtype=torch.float64)])):
        # no crossing, or one at -1000: Silverman's h (about 0.03) as it is
        h = silverman_bandwidth(smooth, w[: smooth.numel()])
        assert 0.01 < h < 0.1 and kde_bandwidth(smooth, w[: smooth.numel()]) == h


def test_kde_keeps_a_negative_spectrum_negative() -> None:
    """With every exponent below 0 (SD = 0) there is no crossing and the bandwidth was not
    capped: Silverman's h carried the cluster at -0.02 above 0, SD-KDE 94.7 instead of 0."""
    v = torch.tensor([-0.02] * 100 + [-5.0], dtype=torch.float64)
    m = torch.ones_like(v)
    assert kaplan_yorke_measure(v, m).dimension == 0.0
    assert sd_kde(v, m).dimension == 0.0


def test_quantile_cells_carry_their_mean() -> None:
    """Masses (1, 2) at (1, -3) in 4 cells of 3/4: the second cell holds 1/4 of the atom 1
    and 1/2 of -3, so its atom is (1/4 - 3/2) / (3/4) = -5/3 (a quantile at the cell's
    midpoint said -3, and D = 1); D = 3/4 + (3/4) * 1 / (5/3) = 1.2."""
    r = sd_quantiles([1.0, -3.0], [1.0, 2.0], num_quantiles=4)
    assert r.exponents.tolist() == pytest.approx([1.0, -5 / 3, -3.0, -3.0], abs=1e-15)
    assert r.dimension == pytest.approx(1.2, abs=1e-15)


def test_ps_equals_def_4_2_on_two_batches_whose_top_exponents_share_a_cell() -> None:
    """Review case: batches (1.0, -0.01 x 98, -5) and (0.2, -0.01 x 98, -5), pooled with mass
    1/2 each. The top cell holds 1.0 and 0.2: its mean 0.6 is the batch mean's lambda_1, and
    SD-PS equals Def. 4.2 on the batch-mean spectrum, 1 + 0.6 / 0.01 = 61 (the cell's
    midpoint quantile, 0.2, gave 21)."""
    one, two = [1.0] + [-0.01] * 98 + [-5.0], [0.2] + [-0.01] * 98 + [-5.0]
    values = torch.tensor(one + two, dtype=torch.float64)
    r = sd_quantiles(values, torch.full_like(values, 0.5))
    mean = kaplan_yorke_dimension([(a + b) / 2 for a, b in zip(one, two, strict=True)])
    assert mean.dimension == pytest.approx(61.0, abs=1e-9)
    assert r.dimension == pytest.approx(61.0, abs=1e-9)


def test_silverman_takes_the_iqr_branch_with_its_1_34() -> None:
    """std 5.05 > IQR / 1.34 = 2 / 1.34 here: h = 0.9 (2 / 1.34) 8^(-1/5)."""
    h = silverman_bandwidth([-10.0, -1, -1, 0, 0, 1, 1, 10], [1.0] * 8)
    assert h == pytest.approx(0.9 * (2 / 1.34) * 8 ** (-0.2), rel=1e-12)


def test_kde_of_equal_values_below_their_ulp_is_the_measure() -> None:
    """8 h below the values' ulp: a grid of width 0 (0 / 0 for its node count before)."""
    r = sd_kde([1.0, 1.0], [1.0, 1.0], bandwidth=1e-300)
    assert r.dimension == kaplan_yorke_measure([1.0, 1.0], [1.0, 1.0]).dimension


def test_estimators_refuse_text_complex_and_bool_measures() -> None:
    """Text was a TypeError; complex exponents lost their imaginary part (1.5 for
    [0.5+3j, -1]) and bool ones read True as 1 (2.0)."""
    for estimator in (sd_histogram, sd_kde, sd_quantiles):
        with pytest.raises(SharpdimError, match=r"^values must be real numbers .* got str"):
            estimator("a", [1.0])
        with pytest.raises(SharpdimError, match=r"^values must be real numbers .*complex64"):
            estimator(torch.tensor([0.5 + 3j, -1 + 0j]), [1.0, 1.0])
        with pytest.raises(SharpdimError, match=r"^values must be real numbers .*torch.bool"):
            estimator(torch.tensor([True, False]), [1.0, 1.0])


def test_estimators_take_mixed_lists_fractions_and_big_ints_as_before() -> None:
    from fractions import Fraction

    ref = sd_histogram([0.5, -1.0], [1.0, 1.0]).dimension
    grad = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    assert sd_histogram([grad, -1.0], [1.0, 1.0]).dimension == ref
    assert sd_histogram([Fraction(1, 2), Fraction(-1)], [1, 1]).dimension == ref
    big = sd_histogram([0.5, -1.0], [2**70, 2**70]).dimension  # (masses beyond int64)
    assert big == pytest.approx(ref * 2**70, rel=1e-12)


def test_none_and_text_among_numbers_are_refused_not_read_as_nan() -> None:
    for values in ([0.5, None], ["1.5", -1.0], [None]):
        with pytest.raises(SharpdimError, match=r"^values must be real numbers"):
            sd_histogram(values, [1.0] * len(values))


def test_the_coarse_crossing_bin_example_of_the_docs() -> None:
    """docs/sharpness_dimension.md quotes these figures for a heavy cluster just below 0 and a
    far atom; two of them (20,000 bins, SD-KDE) had drifted from what the code gives."""
    cluster = torch.linspace(-0.0012, -0.0001, 500, dtype=torch.float64)
    values = torch.cat([torch.tensor([0.3], dtype=torch.float64), cluster])
    far, near = (torch.cat([values, torch.tensor([a], dtype=torch.float64)]) for a in (-27.63, -3))
    ones = torch.ones_like(far)
    figures = [
        kaplan_yorke_dimension(far).dimension,
        sd_from_measure("slq", far, ones).dimension,
        sd_from_measure("slq", far, ones, num_bins=20_000).dimension,
        sd_from_measure("slq", near, ones).dimension,
        sd_from_measure("ps", far, ones).dimension,
        sd_from_measure("kde", far, ones).dimension,
    ]
    assert [round(f, 1) for f in figures] == [479.8, 462.5, 466.5, 467.7, 479.8, 481.4]


def test_bad_inputs_of_the_measure_helpers_are_one_line_errors() -> None:
    """sd_from_measure passed another estimator's option through (a raw TypeError), and
    exponent_measure read text as a dtype name (TypeError: new(): invalid data type)."""
    for call, message in [
        (
            lambda: sd_from_measure("slq", [1.0], [1.0], bandwidth=1.0),
            r"^estimator_options \['bandwidth'\] are not options of method='slq'",
        ),
        (lambda: sd_from_measure("x", [1.0], [1.0]), r"^unknown SD estimator 'x'"),
        (
            lambda: exponent_measure("a", "b", 3, StepSpectrumConfig(lr=0.1)),
            r"^nodes must be real numbers",
        ),
    ]:
        with pytest.raises(SharpdimError, match=message):
            call()
    assert sd_from_measure("ps", [1.0, -2.0], [1.0, 1.0], num_quantiles=2).dimension == 1.5
