"""The minimalist example of Zhu et al. (ICLR 2023): derivatives, analytic facts, GD sweeps."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset
from sharpdim.training.eos_minimalist import (
    PAPER_INIT,
    detect_periods,
    minimalist_gradient,
    minimalist_hessian,
    minimalist_loss,
    minimalist_sharpness,
    minimalist_sweep,
    summarize_minimalist,
)
from sharpdim.training.loop import TrainConfig, train
from sharpdim.training.models import DeepScalarLinear


def _points() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g, dtype=torch.float64) * 1.3


def test_gradient_and_hessian_match_autograd():
    for theta in _points():
        grad = torch.autograd.functional.jacobian(minimalist_loss, theta)
        hess = torch.autograd.functional.hessian(minimalist_loss, theta)
        torch.testing.assert_close(minimalist_gradient(theta), grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(minimalist_hessian(theta), hess, rtol=1e-12, atol=1e-12)


def test_batched_and_other_depths():
    pts = _points()
    torch.testing.assert_close(
        minimalist_hessian(pts), torch.stack([minimalist_hessian(p) for p in pts])
    )
    theta = torch.tensor([0.7, -1.2, 2.0], dtype=torch.float64)  # d = 3, a zero-free point
    hess = torch.autograd.functional.hessian(minimalist_loss, theta)
    torch.testing.assert_close(minimalist_hessian(theta), hess, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        minimalist_sharpness(theta), torch.linalg.eigvalsh(hess)[-1], rtol=1e-12, atol=1e-12
    )


def test_minimum_manifold_sharpness_is_sum_of_inverse_squares():
    # On x*y*z*w = 1 the Hessian is q q^T with q_i = 1 / theta_i: one eigenvalue sum 1/theta_i^2.
    theta = torch.tensor([2.0, 0.5, 1.6, 0.625], dtype=torch.float64)
    assert float(theta.prod()) == pytest.approx(1.0, abs=1e-15)
    eig = torch.linalg.eigvalsh(minimalist_hessian(theta))
    expected = float((1.0 / theta**2).sum())
    assert float(eig[-1]) == pytest.approx(expected, rel=1e-12)
    assert eig[:-1].abs().max() < 1e-12
    assert float(minimalist_loss(theta)) == 0.0
    # The flattest minimum (AM-GM): all |theta_i| = 1 gives sharpness d = 4.
    assert float(minimalist_sharpness(torch.ones(4, dtype=torch.float64))) == pytest.approx(4.0)


def test_sharpness_keeps_nan_rows():
    theta = torch.tensor([[1.0, 1.0, 1.0, 1.0], [math.nan, 1.0, 1.0, 1.0]], dtype=torch.float64)
    out = minimalist_sharpness(theta)
    assert out[0] == pytest.approx(4.0) and math.isnan(float(out[1]))


def test_sweep_matches_training_loop_and_single_runs():
    steps = 300
    sweep = minimalist_sweep([0.05, 0.3], steps=steps, late=10)
    for row, lr in enumerate((0.05, 0.3)):
        net = DeepScalarLinear(PAPER_INIT)
        u, target = net.batch()
        data = Dataset("minimalist", u, target, u[:0], target[:0], num_classes=0)
        train(net, data, TrainConfig(optimizer="gd", lr=lr, steps=steps, keep_snapshots=False))
        torch.testing.assert_close(
            sweep.final_theta[row], net.theta.detach(), rtol=1e-10, atol=1e-12
        )
    single = minimalist_sweep([0.3], steps=steps, late=10)
    torch.testing.assert_close(single.final_theta[0], sweep.final_theta[1], rtol=0, atol=0)


def test_small_step_converges_to_sharp_minimum_and_eos_step_to_flat_one():
    sweep = minimalist_sweep([0.05, 0.3], steps=4000, late=50)
    small, eos = sweep.final_sharpness.tolist()
    assert float(sweep.final_loss.max()) < 1e-12
    assert sweep.periods.tolist() == [1, 1]
    assert small == pytest.approx(8.77, abs=0.02)  # gradient-flow-like limit
    assert small < 2.0 / 0.05
    assert small > 2.0 / 0.3  # eta = 0.3 cannot stay there: edge of stability
    ratio = eos / (2.0 / 0.3)
    assert 0.95 < ratio < 1.0  # converges just below 2/eta


def test_period_two_chaos_and_divergence():
    lrs = [0.55, 0.7, 1.2]
    sweep = minimalist_sweep(lrs, init=(1.5, 0.6, 1.5, 0.6), steps=3000, late=200)
    assert sweep.periods.tolist() == [2, 0, -1]
    assert sweep.lyapunov[0] < 0 < sweep.lyapunov[1]  # stable cycle, then chaos
    assert math.isnan(float(sweep.lyapunov[2])) and int(sweep.diverged_at[2]) > 0
    assert bool(sweep.diverged[2]) and not bool(sweep.diverged[0])
    # period 2: the product alternates around the minimum manifold p = 1
    late = sweep.late_products[0]
    assert torch.allclose(late[2:], late[:-2], atol=1e-9)
    assert float(late[::2].mean() - 1.0) * float(late[1::2].mean() - 1.0) < 0


@pytest.mark.parametrize("init", [PAPER_INIT, (1.5, 0.6, 1.5, 0.6)])
def test_lyapunov_of_a_period_two_orbit_is_exact(init):
    """On a period-2 orbit the exponent is ln rho(J_2 J_1) / 2. A tangent starting at
    (1, 1, 1, 1) stayed in the symmetric subspace of these starts (x = z, y = w): -0.109."""
    lr = 0.52
    sweep = minimalist_sweep([lr], init=init, steps=3000, late=200)
    assert int(sweep.periods[0]) == 2
    a = sweep.final_theta[0]
    b = a - lr * minimalist_gradient(a)
    eye = torch.eye(4, dtype=torch.float64)
    two_steps = (eye - lr * minimalist_hessian(b)) @ (eye - lr * minimalist_hessian(a))
    exact = math.log(float(torch.linalg.eigvals(two_steps).abs().max())) / 2
    assert float(sweep.lyapunov[0]) == pytest.approx(exact, abs=1e-6)


def test_summary_classifies_a_sweep():
    lrs = torch.tensor([0.05, 0.15, 0.3, 0.4, 0.56, 0.64, 0.655, 0.7, 1.2], dtype=torch.float64)
    sweep = minimalist_sweep(lrs, init=(1.5, 0.6, 1.5, 0.6), steps=6000, late=256)
    summary = summarize_minimalist(sweep)
    assert summary.reference_sharpness > 2.0 / 0.4
    assert summary.eos_lrs == (0.4,)
    assert 0.95 < summary.eos_ratios[0] < 1.0
    assert summary.first_period == {2: 0.56, 4: 0.64, 8: 0.655}
    assert summary.first_chaotic == 0.7 and summary.max_lyapunov > 0.1
    assert summary.first_diverged == 1.2
    d = summary.to_dict()
    assert d["first_period"] == {"2": 0.56, "4": 0.64, "8": 0.655}
    assert d["eos_ratio_stats"]["median"] == pytest.approx(summary.eos_ratios[0])
    assert set(sweep.to_dict()) >= {"lrs", "final_sharpness", "periods", "lyapunov"}


def test_trace_records_sharpness():
    sweep = minimalist_sweep([0.3], steps=100, late=5, trace_lrs=[0.3, 0.05], trace_every=10)
    assert sweep.trace_steps is not None and sweep.trace_sharpness is not None
    assert sweep.trace_steps.tolist() == list(range(0, 100, 10))
    assert sweep.trace_sharpness.shape == (2, 10)
    assert float(sweep.trace_sharpness[0, 0]) == pytest.approx(
        float(minimalist_sharpness(torch.tensor(PAPER_INIT, dtype=torch.float64)))
    )
    assert "trace_sharpness" in sweep.to_dict()


def test_detect_periods():
    t = torch.arange(12, dtype=torch.float64)
    series = torch.stack(
        [
            torch.full((12,), 3.0, dtype=torch.float64),
            (-1.0) ** t,
            torch.tensor([1.0, 2.0, 3.0] * 4, dtype=torch.float64),
            t,  # no period
            torch.cat([torch.ones(11, dtype=torch.float64), torch.tensor([math.nan])]),
        ]
    )
    assert detect_periods(series, max_period=5).tolist() == [1, 2, 3, 0, -1]


def test_one_late_sample_determines_no_period():
    """A window of one sample has no spread: it cannot tell a point from a 2-cycle or chaos
    (with late=1 every finite run read period 1, and the sweep's summary lost its period
    doubling and chaos: review). Two samples decide period 1 only."""
    one = torch.tensor([[0.3], [0.7], [math.inf]], dtype=torch.float64)
    assert detect_periods(one).tolist() == [0, 0, -1]
    two = torch.tensor([[0.3, 0.3], [0.2, 0.7]], dtype=torch.float64)
    assert detect_periods(two).tolist() == [1, 0]
    sweep = minimalist_sweep([0.55, 0.9], init=(1.5, 0.6, 1.5, 0.6), steps=2000, late=1)
    assert sweep.periods.tolist() == [0, 0]


def test_a_short_window_claims_no_chaos_and_one_sample_judges_convergence_by_the_loss():
    """late=1 made every finite run period 0, so nothing converged (reference sharpness NaN,
    no EoS step sizes) and a one-step Lyapunov estimate called eta=0.5 chaotic; late=3
    called the period-4 eta=0.63 chaotic (review of this session's diff)."""
    lrs = [0.05, 0.3, 0.5, 0.63, 0.9]
    init = (1.5, 0.6, 1.5, 0.6)
    full = summarize_minimalist(minimalist_sweep(lrs, init=init, steps=4000, late=300))
    assert full.first_chaotic == 0.9 and full.first_period[4] == 0.63
    for late in (1, 3, 64):
        short = summarize_minimalist(minimalist_sweep(lrs, init=init, steps=4000, late=late))
        assert math.isnan(short.first_chaotic), late
    eos = [0.02, 0.228, 0.332]  # from the paper's init: the last two converge through the EoS
    one = summarize_minimalist(minimalist_sweep(eos, steps=2000, late=1))
    whole = summarize_minimalist(minimalist_sweep(eos, steps=2000, late=300))
    assert one.reference_sharpness == whole.reference_sharpness
    assert one.eos_lrs == whole.eos_lrs == (0.228, 0.332)


def test_bad_input():
    with pytest.raises(SharpdimError):
        minimalist_sweep([])
    with pytest.raises(SharpdimError):
        minimalist_sweep([-0.1])
    with pytest.raises(SharpdimError):
        minimalist_sweep([0.1], steps=10, late=20)
    with pytest.raises(SharpdimError):
        minimalist_sweep([0.1], init=(1.0,))
    # were TypeError tracebacks
    with pytest.raises(SharpdimError, match=r"^lrs must be a list of step sizes, got '0.1'"):
        minimalist_sweep("0.1")
    with pytest.raises(SharpdimError, match=r"^steps must be an integer >= 1, got 10.5"):
        minimalist_sweep([0.1], steps=10.5)
    assert minimalist_sweep([0.05], steps=10.0, late=2.0).steps == 10
    # trace_lrs and init were not checked (a negative or NaN trace step size ran silently)
    for bad in ([-0.1], [math.nan], ["a"]):
        with pytest.raises(SharpdimError, match=r"^each of trace_lrs must be a finite number > 0"):
            minimalist_sweep([0.1], steps=4, late=2, trace_lrs=bad)
    with pytest.raises(SharpdimError, match=r"^each of init must be a finite number, got 'a'"):
        minimalist_sweep([0.1], init=(1.0, "a"))
    with pytest.raises(SharpdimError, match=r"^init must be a list of numbers, got 3"):
        minimalist_sweep([0.1], init=3)
    # bools and complex step sizes were read as 1.0 and as their real part
    for bad in ([True], np.array([True]), torch.tensor([0.1 + 0.7j])):
        with pytest.raises(SharpdimError, match=r"^lrs must be real numbers"):
            minimalist_sweep(bad, steps=4, late=2)


def test_an_init_given_as_a_generator_is_recorded() -> None:
    """The check used a generator up, and the record rebuilt from it was empty."""
    sweep = minimalist_sweep([0.1], init=(v for v in (2.0, 0.3, 2.0, 0.3)), steps=10, late=2)
    assert sweep.init == (2.0, 0.3, 2.0, 0.3) and sweep.to_dict()["init"] == [2.0, 0.3, 2.0, 0.3]


def test_ratio_stats_median_of_an_even_count_is_the_mean_of_the_middle_two():
    summary = summarize_minimalist(minimalist_sweep([0.05], steps=10, late=2))
    even = dataclasses.replace(summary, eos_ratios=(0.97, 0.99, 0.98, 0.995))
    assert even.ratio_stats() == {"min": 0.97, "median": pytest.approx(0.985), "max": 0.995}


def test_sweep_classification_options_are_checked() -> None:
    """blowup=-1 reported every run diverged at step 1, blowup=nan switched the check off,
    max_period=0 and period_tol=-1 switched period detection off, period_tol='x' raised
    TypeError."""
    bad = [
        ({"blowup": -1}, r"^blowup must be a finite number > 0, got -1"),
        ({"blowup": math.nan}, r"^blowup must be a finite number > 0, got nan"),
        ({"max_period": 0}, r"^max_period must be an integer >= 1, got 0"),
        ({"period_tol": -1}, r"^period_tol must be a finite number >= 0, got -1"),
        ({"period_tol": "x"}, r"^period_tol must be a finite number >= 0, got 'x'"),
    ]
    for options, message in bad:
        with pytest.raises(SharpdimError, match=message):
            minimalist_sweep([0.05, 0.3], steps=20, late=5, **options)
