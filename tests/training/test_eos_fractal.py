"""The toy fractal attractor (Tuci et al., Fig. 6): derivatives, the step, the particle run."""

import dataclasses
import math

import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.eos_fractal import (
    box_counting_dimension,
    fractal_attractor,
    fractal_diverged,
    fractal_gradient,
    fractal_hessian,
    fractal_loss,
    fractal_sharpness,
    fractal_step,
)


def _points() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return (2 * torch.rand(8, 2, generator=g, dtype=torch.float64) - 1) * 2.0


@pytest.mark.parametrize(("amplitude", "frequency"), [(2.0, 4.0), (0.7, 1.5), (-2.0, 4.0)])
def test_derivatives_match_autograd(amplitude, frequency):
    def loss(x):
        return fractal_loss(x, amplitude=amplitude, frequency=frequency)

    opts = {"amplitude": amplitude, "frequency": frequency}
    for x in _points():
        grad = torch.autograd.functional.jacobian(loss, x)
        hess = torch.autograd.functional.hessian(loss, x)
        torch.testing.assert_close(fractal_gradient(x, **opts), grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fractal_hessian(x, **opts), hess, rtol=1e-12, atol=1e-12)
        top = torch.linalg.eigvalsh(hess)[-1]
        torch.testing.assert_close(fractal_sharpness(x, **opts), top, rtol=1e-12, atol=1e-12)


def test_origin_is_too_sharp_for_the_step_size():
    zero = torch.zeros(2, dtype=torch.float64)
    assert float(fractal_sharpness(zero)) == pytest.approx(33.0)  # 1 + A k^2
    assert float(fractal_sharpness(zero)) > 2.0 / 0.15
    assert float(fractal_gradient(zero).abs().max()) == 0.0


def test_step_matches_autograd_gradient_descent():
    x = _points().requires_grad_(True)
    noise = 0.1 * torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (grad,) = torch.autograd.grad(fractal_loss(x).sum(), x)
    expected = x.detach() - 0.15 * grad + noise
    torch.testing.assert_close(fractal_step(x.detach(), noise, lr=0.15), expected)


def test_attractor_run_is_seeded_and_summarised():
    a = fractal_attractor(500, steps=40, generator=torch.Generator().manual_seed(3))
    b = fractal_attractor(500, steps=40, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.final, b.final, rtol=0, atol=0)
    assert a.final.shape == (500, 2) and a.initial.abs().max() <= 3.0
    assert a.threshold == pytest.approx(2.0 / 0.15)
    frac = float((fractal_sharpness(a.final) > a.threshold).double().mean())
    assert a.eos_fraction == pytest.approx(frac)
    assert a.mean_loss == pytest.approx(float(fractal_loss(a.final).mean()))
    middle = fractal_sharpness(a.final).sort().values[249:251]  # 500 particles: two middles
    assert a.median_sharpness == pytest.approx(float(middle.mean()), rel=1e-14)
    d = a.to_dict()
    assert d["num_particles"] == 500 and d["max_minimum_sharpness"] == pytest.approx(33.0)
    assert "final" not in d and len(a.to_dict(with_points=True)["final"]) == 500


def test_attractor_without_noise_replays_the_steps():
    gen = torch.Generator().manual_seed(4)
    res = fractal_attractor(50, steps=5, noise_std=0.0, generator=gen)
    x = res.initial.clone()
    for _ in range(5):
        x = fractal_step(x, torch.zeros_like(x))
    torch.testing.assert_close(res.final, x, rtol=0, atol=0)


def test_box_counting_dimension_of_a_line_and_a_square():
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    line = torch.stack([t, 0.5 * t], dim=1)
    sizes = (0.1, 0.05, 0.025, 0.0125)
    dim_line, counts = box_counting_dimension(line, sizes)
    assert dim_line == pytest.approx(1.0, abs=0.05) and counts[0] >= 10
    g = torch.Generator().manual_seed(5)
    square = torch.rand(200_000, 2, generator=g, dtype=torch.float64)
    dim_square, _ = box_counting_dimension(square, sizes)
    assert dim_square == pytest.approx(2.0, abs=0.05)
    assert math.isnan(box_counting_dimension(square, (0.1,))[0])


def test_bad_input():
    with pytest.raises(SharpdimError):
        fractal_attractor(0)
    with pytest.raises(SharpdimError):
        fractal_attractor(10, lr=0.0)
    with pytest.raises(SharpdimError):
        fractal_attractor(10, noise_std=-1.0)
    with pytest.raises(SharpdimError, match=r"^amplitude must be a finite number >= 0"):
        fractal_attractor(10, amplitude=-2.0)
    with pytest.raises(SharpdimError, match="finite 1 \\+ A k\\^2"):
        fractal_attractor(10, frequency=1e200)  # was: OverflowError


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_particles": 50.5}, r"^num_particles must be an integer >= 1, got 50.5"),
        ({"noise_std": float("nan")}, r"^noise_std must be a finite number >= 0, got nan"),
        ({"box_sizes": (0.0, 0.1)}, r"^a box size must be a finite number > 0, got 0.0"),
        ({"box_sizes": (-0.1,)}, r"^a box size must be a finite number > 0, got -0.1"),
        ({"box_sizes": ()}, r"^box_sizes is empty"),
        ({"steps": "5"}, r"^steps must be an integer >= 0, got '5'"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    """Were ZeroDivisionError, math domain error, TypeError, or NaN noise run as 'diverged'."""
    with pytest.raises(SharpdimError, match=message):
        fractal_attractor(**{"num_particles": 10, **kwargs})


def test_particles_whose_loss_is_not_finite_have_diverged():
    """From [-1e300, 1e300]^2 every loss is inf, which passed `loss <= 1e6 * inf`."""
    res = fractal_attractor(50, steps=1, init_range=1e300)
    assert res.status == "diverged" and res.num_diverged == 50


def test_diverged_particles_left_the_basin_or_are_not_finite():
    x = torch.tensor([[0.5, 0.5], [1e5, 0.0], [math.inf, 0.0], [math.nan, 1.0], [2.0, 2.0]])
    loss = torch.tensor([1.0, 5e9, math.inf, math.nan, 2e6 - 1])
    initial = torch.tensor([1.0, 3.0, 1.0, 1.0, 2.0])  # limit 1e6 * max(|L_0|, 1)
    assert fractal_diverged(x, loss, initial).tolist() == [False, True, True, True, False]
    assert fractal_diverged(x[:1], torch.tensor([1e6 + 1]), torch.tensor([-0.5])).tolist() == [True]


def test_a_diverged_run_has_nan_measures():
    res = fractal_attractor(40, steps=10, lr=1e10, generator=torch.Generator().manual_seed(6))
    assert res.status == "diverged" and res.num_diverged == 40 and res.diverged_fraction == 1.0
    assert torch.isfinite(res.final).all()  # |x| ~ 1e100: finite, but far out of the basin
    for value in (res.eos_fraction, res.mean_loss, res.median_sharpness, res.box_dimension):
        assert math.isnan(value)
    assert res.box_counts == ()
    d = res.to_dict()
    assert d["status"] == "diverged" and d["num_diverged"] == 40 and d["diverged_fraction"] == 1.0
    assert math.isnan(d["box_dimension"]) and d["box_counts"] == []
    overflow = fractal_attractor(5, steps=40, lr=1e10, generator=torch.Generator().manual_seed(6))
    assert not torch.isfinite(overflow.final).all() and overflow.num_diverged == 5


def test_a_bounded_run_is_done():
    res = fractal_attractor(200, steps=20, generator=torch.Generator().manual_seed(3))
    assert res.status == "done" and res.num_diverged == 0 and res.diverged_fraction == 0.0
    assert res.median_sharpness == pytest.approx(float(res.final_sharpness.quantile(0.5)))
    assert res.to_dict()["status"] == "done" and not math.isnan(res.box_dimension)


def test_median_sharpness_of_more_than_2_to_the_24_particles():
    """torch.quantile refuses inputs this large; the median of 0..n-1 (n even) is (n-1)/2."""
    n = 2**24 + 2
    small = fractal_attractor(4, steps=1)
    big = dataclasses.replace(small, final_sharpness=torch.arange(n, dtype=torch.float64))
    assert big.median_sharpness == (n - 1) / 2


@pytest.mark.parametrize("scale", [1e18, 1e100, 1e307])
def test_box_counts_of_far_apart_points_are_exact(scale):
    """floor(x / s).long() wrapped above 9.2e18: 1,000 points at |x| ~ 1e18 filled 801 boxes
    of side 0.05 (a negative slope), at 1e100 one box at every size."""
    g = torch.Generator().manual_seed(0)
    points = (2.0 * torch.rand(1000, 2, generator=g, dtype=torch.float64) - 1.0) * scale
    distinct = torch.unique(points, dim=0).shape[0]
    sizes = (0.4, 0.2, 0.1, 0.05, 1e-300)  # (1e307 / 1e-300 overflows float64: own boxes)
    dim, counts = box_counting_dimension(points, sizes)
    assert distinct == 1000 and counts == (1000,) * 5 and dim == 0.0
    _, counts = box_counting_dimension(points.to(torch.float32) if scale < 1e38 else points, sizes)
    assert counts == (1000,) * 5
    twice = torch.cat([points, points, torch.tensor([[math.inf, 0.0], [math.nan, 0.0]])])
    assert box_counting_dimension(twice, sizes)[1] == (1001,) * 5  # non-finite: one cell
    result = fractal_attractor(200, steps=1, init_range=scale, noise_std=0.0)
    if scale < 1e154:  # (beyond: 0.5 |x|^2 overflows float64, the run diverged)
        assert result.box_counts == (200,) * 4 and result.box_dimension == 0.0
    else:
        assert result.status == "diverged"


def test_no_points_and_an_integer_dtype_are_one_line_errors() -> None:
    """An empty cloud raised 'cannot reshape tensor of 0 elements'; dtype=torch.int64 raised
    NotImplementedError from torch.rand."""
    with pytest.raises(SharpdimError, match=r"^points must be a non-empty \(N, D\) tensor, got"):
        box_counting_dimension(torch.zeros(0, 2), (0.1, 0.2))
    with pytest.raises(SharpdimError, match=r"^points must be a non-empty \(N, D\) tensor, got"):
        box_counting_dimension(torch.zeros(5, 0), (0.1, 0.2))  # (was torch.unique's error)
    with pytest.raises(SharpdimError, match=r"^dtype must be a floating dtype, got torch.int64"):
        fractal_attractor(10, steps=2, dtype=torch.int64)
