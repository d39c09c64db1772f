"""Divergence of nearby trajectories with known growth rates."""

import math

import pytest
import torch

from sharpdim.dynamics.divergence import trajectory_divergence
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError

F64 = torch.float64


def test_linear_expansion_rate_exact() -> None:
    a = torch.diag(torch.tensor([1.5, 0.5], dtype=F64))
    r = trajectory_divergence(lambda x: a @ x, torch.zeros(2, dtype=F64), 30)
    # a random direction: the distance is dominated by the 1.5 axis after a few steps
    assert abs(r.growth_rate - math.log(1.5)) < 0.02


def test_contraction_rate() -> None:
    r = trajectory_divergence(lambda x: 0.5 * x, torch.ones(3, dtype=F64), 20)
    assert abs(r.growth_rate - math.log(0.5)) < 1e-9
    assert not r.saturated and r.fit_stop == 21


def test_logistic_rate_and_saturation() -> None:
    r = trajectory_divergence(
        lambda x: 4 * x * (1 - x), torch.tensor([0.3], dtype=F64), 80, delta=1e-12
    )
    assert r.saturated and r.fit_stop < 60
    assert abs(r.growth_rate - math.log(2)) < 0.1


def test_training_map_gd_quadratic() -> None:
    # GD on 0.5 * sum a_i w_i^2 (a linear model on e_i rows): distance factor |1 - eta a_max|
    model = torch.nn.Linear(2, 1, bias=False).double()
    x = torch.diag(torch.tensor([2.0, 0.5], dtype=F64).sqrt()) * math.sqrt(2)
    batch = (x, torch.zeros(2, 1, dtype=F64))

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return 0.5 * ((m(b[0]) - b[1]) ** 2).sum(dim=1).mean()

    phi = TrainingMap(model, mse, [batch], lr=1.5)  # Hessian diag(2, 0.5): factors 2, 0.25
    r = trajectory_divergence(phi, phi.initial_state(), 25)
    assert abs(r.growth_rate - math.log(2.0)) < 1e-3


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        trajectory_divergence(lambda x: x, torch.ones(2, dtype=F64), 0)
    with pytest.raises(SharpdimError):  # delta not resolvable in float32 around 1e4
        trajectory_divergence(lambda x: x, torch.full((2,), 1e4), 5, delta=1e-9)
    assert trajectory_divergence(lambda x: x, torch.ones(2, dtype=F64), 3).to_dict()["num_steps"]


def _ls_slope(y: torch.Tensor) -> float:
    t = torch.arange(y.numel(), dtype=F64)
    tc = t - t.mean()
    return float((tc * (y - y.mean())).sum() / (tc * tc).sum())


def _slow_growth(num_steps: int = 30, **kwargs: object) -> tuple:
    """diag(1.05, 0.5) from the direction (1, 1): ``d_t^2 = delta^2 (1.05^2t + 0.25^t) / 2``,
    3x growth over 30 steps (below the 10x of ``saturation_fraction = 0.1``)."""
    a = torch.diag(torch.tensor([1.05, 0.5], dtype=F64))
    r = trajectory_divergence(
        lambda x: a @ x,
        torch.zeros(2, dtype=F64),
        num_steps,
        direction=torch.tensor([1.0, 1.0]),
        **kwargs,  # type: ignore[arg-type]
    )
    t = torch.arange(num_steps + 1, dtype=F64)
    exact = math.log(1e-8) + 0.5 * torch.log((1.05 ** (2 * t) + 0.25**t) / 2)
    return r, exact


def test_slow_growth_is_not_cut_as_saturation() -> None:
    r, exact = _slow_growth()
    torch.testing.assert_close(r.log_distance, exact, rtol=0, atol=1e-12)
    assert not r.saturated and (r.fit_start, r.fit_stop) == (0, 31)
    assert abs(r.growth_rate - _ls_slope(exact)) < 1e-12
    assert abs(r.growth_rate - math.log(1.05)) < 0.005  # the transient of the 0.5 axis
    a = torch.diag(torch.tensor([1.05, 0.5], dtype=F64))
    e1 = trajectory_divergence(
        lambda x: a @ x, torch.zeros(2, dtype=F64), 30, direction=torch.tensor([1.0, 0.0])
    )
    assert not e1.saturated and e1.fit_stop == 31
    assert abs(e1.growth_rate - math.log(1.05)) < 1e-12


def _doubling_to_one(**kwargs: object) -> object:
    """``x -> min(2x, 1)`` from 0 and ``2^-20``: ``d_t = 2^(t - 20)`` up to ``d_20 = 1``; it
    first reaches 0.1 at ``t = 17``."""
    return trajectory_divergence(
        lambda x: torch.clamp(2 * x, max=1.0),
        torch.zeros(1, dtype=F64),
        30,
        delta=2.0**-20,
        direction=torch.tensor([1.0]),
        **kwargs,  # type: ignore[arg-type]
    )


def test_saturation_cut_at_the_first_step_reaching_the_level() -> None:
    r = _doubling_to_one()
    assert r.saturated and (r.fit_start, r.fit_stop) == (0, 18)  # type: ignore[attr-defined]
    assert abs(r.growth_rate - math.log(2)) < 1e-12  # type: ignore[attr-defined]
    r = _doubling_to_one(fit_start=5)
    assert r.saturated and (r.fit_start, r.fit_stop) == (5, 18)  # type: ignore[attr-defined]
    assert abs(r.growth_rate - math.log(2)) < 1e-12  # type: ignore[attr-defined]


def test_user_fit_window_is_respected() -> None:
    r, exact = _slow_growth(fit_start=5)
    assert (r.fit_start, r.fit_stop) == (5, 31) and not r.saturated
    assert abs(r.growth_rate - _ls_slope(exact[5:])) < 1e-12
    r, exact = _slow_growth(fit_start=28, fit_stop=30)
    assert (r.fit_start, r.fit_stop) == (28, 30)
    assert abs(r.growth_rate - float(exact[29] - exact[28])) < 1e-12


@pytest.mark.parametrize(
    ("start", "stop"), [(-1, None), (30, None), (5, 6), (5, 32), (3, 2)], ids=str
)
def test_invalid_fit_window_raises(start: int, stop: int | None) -> None:
    with pytest.raises(SharpdimError, match="fit_st"):
        _slow_growth(fit_start=start, fit_stop=stop)


def test_fit_start_past_saturation_raises() -> None:
    with pytest.raises(SharpdimError, match="saturates at step 17"):
        _doubling_to_one(fit_start=17)


def test_training_map_overflow_is_recorded_not_raised() -> None:
    # GD on mean_i (3 w_i)^2 (Hessian 9 I), lr = 5: w_t = (-44)^t w_0 from w_0 = e_1; the loss
    # at w_t first overflows (9 * 44^(2t) > float64 max) at step 94, see test_lyapunov
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
    batch = (3 * torch.eye(2, dtype=F64), torch.zeros(2, 1, dtype=F64))

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    phi = TrainingMap(model, mse, [batch], lr=5.0)
    r = trajectory_divergence(phi, phi.initial_state(), 2000)
    assert r.diverged_at == 94 and r.num_steps == 94
    assert r.log_distance.numel() == 95 and torch.isfinite(r.log_distance).all()
    steps = torch.arange(95, dtype=F64)
    torch.testing.assert_close(
        r.log_distance, r.log_distance[0] + steps * math.log(44), rtol=0, atol=1e-6
    )


def test_dropout_orbits_follow_the_tangent_map() -> None:
    """Both orbits see the same dropout masks: ``d_t`` is ``delta |J_{t-1} ... J_0 u|``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2)
    ).double()
    gen = torch.Generator().manual_seed(1)
    batch = (
        torch.randn(16, 4, generator=gen, dtype=F64),
        torch.randn(16, 2, generator=gen, dtype=F64),
    )

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    phi = TrainingMap(model, mse, [batch], lr=0.05)  # mode="train": dropout on
    x = phi.initial_state()
    u = torch.randn(phi.num_params, generator=gen, dtype=F64)
    r = trajectory_divergence(phi, x, 20, delta=1e-8, direction=u)
    # reference: the tangent u / |u| pushed through the JVPs along the orbit (linearization;
    # its error relative to d_t is O(delta))
    v, ref = u / u.norm(), [math.log(1e-8)]
    for t in range(20):
        x, v = phi.jvp(x, t, v)
        ref.append(math.log(1e-8) + math.log(float(v.norm())))
    torch.testing.assert_close(r.log_distance, torch.tensor(ref, dtype=F64), rtol=0, atol=1e-6)
    assert r.growth_rate < 0.01


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_start_is_a_one_line_error(bad: float) -> None:
    x0 = torch.tensor([0.1, bad], dtype=torch.float64)
    with pytest.raises(SharpdimError, match="x0 holds NaN or inf"):
        trajectory_divergence(lambda x: 2 * x, x0, 10)


def test_a_delta_below_the_float32_resolution_is_refused() -> None:
    # float32 spacing on [0.125, 0.25) is 2^-26 = 1.49e-8: 0.2 + 8e-9 rounds up one spacing,
    # so the realised start is 2^-26 away, 1.86 delta (before: fit on that silently)
    x0 = torch.tensor([0.2], dtype=torch.float32)
    with pytest.raises(SharpdimError) as err:
        trajectory_divergence(lambda x: 2 * x, x0, 5, delta=8e-9, direction=torch.ones(1))
    assert str(err.value) == (
        "delta=8e-09 is below the resolution of torch.float32 states (the perturbed start is "
        "1.49e-08 away): use float64 states or a delta of at least ~1e-07"
    )
    with pytest.raises(SharpdimError) as err:  # float64 states: only a larger delta helps
        trajectory_divergence(lambda x: 2 * x, torch.tensor([1e10], dtype=torch.float64), 5)
    assert str(err.value).endswith(
        "(the perturbed start is 0 away): use a delta of at least ~9e-06"
    )
    with pytest.raises(SharpdimError, match=r"or a delta of at least ~1e-38$"):  # not ~0
        trajectory_divergence(lambda x: 2 * x, torch.zeros(3), 5, delta=1e-50)
    with pytest.raises(SharpdimError, match="start is 0 away"):  # 1 + 1e-8 rounds to 1
        trajectory_divergence(lambda x: 2 * x, torch.ones(1), 5, direction=torch.ones(1))
    # 1e-6 is 67.1 spacings: rounded to 67, within delta / 2; doubling is exact
    r = trajectory_divergence(lambda x: 2 * x, x0, 3, delta=1e-6, direction=torch.ones(1))
    d0 = 67 * 2.0**-26
    assert r.log_distance.tolist() == pytest.approx(
        [math.log(d0 * 2**t) for t in range(4)], rel=0, abs=1e-12
    )


def test_training_map_float32_with_the_default_delta_is_refused() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    gen = torch.Generator().manual_seed(3)
    batch = (torch.randn(6, 3, generator=gen), torch.randn(6, 2, generator=gen))
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], lr=0.1)
    with pytest.raises(SharpdimError, match=r"below the resolution of torch\.float32 states"):
        trajectory_divergence(phi, phi.initial_state(), 10)  # realised start 2.1e-9 away


def test_the_fit_window_ends_where_the_orbits_coincide() -> None:
    # halving, then 0 once |x| < 1e-3: x_t = 2^-t and y_t = (1 + delta) 2^-t both reach the
    # dead zone at t = 10, so d_t = d_0 2^-t for t <= 10 and d_11 = 0 (ln d = -inf)
    def halve(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x.abs() < 1e-3, torch.zeros_like(x), 0.5 * x)

    r = trajectory_divergence(halve, torch.ones(1, dtype=F64), 15, direction=torch.ones(1))
    assert math.isinf(r.log_distance[11]) and torch.isfinite(r.log_distance[:11]).all()
    assert (r.fit_start, r.fit_stop) == (0, 11)  # was 16: the -inf steps were dropped silently
    assert r.growth_rate == pytest.approx(-math.log(2), rel=1e-12)


def test_an_object_with_only_step_is_a_map() -> None:
    """step(x, t) is all the divergence needs (such objects were refused for lacking jvp, and
    a callable one was run through __call__, dropping t)."""

    class Alternating:
        def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
            return (4.0 if t % 2 == 0 else 0.25 * 2.0) * x  # x2 every two steps

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return 5.0 * x

    x0 = torch.zeros(1, dtype=torch.float64)
    result = trajectory_divergence(Alternating(), x0, 20, direction=torch.ones(1), fit_stop=21)
    log_d = result.log_distance
    assert float(log_d[20] - log_d[0]) == pytest.approx(10 * math.log(2), rel=1e-12)
    assert float(log_d[1] - log_d[0]) == pytest.approx(math.log(4), rel=1e-12)  # t = 0 first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fit_start": 2.5}, r"^fit_start must be an integer >= 0, got 2.5"),
        ({"fit_start": True}, r"^fit_start must be an integer >= 0, got True"),
        ({"fit_stop": "5"}, r"^fit_stop must be an integer >= 0, got '5'"),
        ({"perturb_dims": 1.5}, r"^perturb_dims must be an integer >= 1, got 1.5"),
        ({"start_step": -1}, r"^start_step must be an integer >= 0, got -1"),
        ({"saturation_fraction": "x"}, r"^saturation_fraction must be a finite number > 0"),
    ],
)
def test_window_and_dimension_arguments_are_checked(kwargs: dict, message: str) -> None:
    with pytest.raises(SharpdimError, match=message):
        trajectory_divergence(lambda x: 2 * x, torch.zeros(2, dtype=torch.float64), 10, **kwargs)


def test_whole_float_window_arguments_are_ints() -> None:
    x0 = torch.zeros(2, dtype=torch.float64)
    result = trajectory_divergence(lambda x: 2 * x, x0, 10, fit_start=1.0, fit_stop=6.0)
    assert (result.fit_start, result.fit_stop) == (1, 6) and type(result.fit_start) is int
    assert result.growth_rate == pytest.approx(math.log(2), rel=1e-12)


def test_a_training_map_perturbs_and_measures_only_the_parameters_from_start_step() -> None:
    """Against two orbits stepped by hand: the perturbation and the distance live in the first
    num_params coordinates (not the momentum buffer), and step t is start_step + i."""
    from tests.dynamics.test_lyapunov import _tiny_problem

    model, batches, mse = _tiny_problem()
    phi = TrainingMap(model, mse, batches, optimizer="momentum", lr=0.3, momentum=0.9)
    x0 = phi.initial_state()
    n = phi.num_params
    u = torch.randn(n, generator=torch.Generator().manual_seed(3), dtype=F64)
    result = trajectory_divergence(phi, x0, 6, direction=u, start_step=1)
    x, y = x0.clone(), x0.clone()
    y[:n] += 1e-8 * u / u.norm()
    expected = [float((y - x)[:n].norm().log())]
    for i in range(6):
        x, y = phi.step(x, 1 + i), phi.step(y, 1 + i)
        expected.append(float((y - x)[:n].norm().log()))
    assert result.log_distance.tolist() == pytest.approx(expected, abs=1e-9)


def test_growth_rate_stderr_is_the_least_squares_standard_error() -> None:
    """On ln d_t = (0, ln 4, ln 2, ln 8, ...) of the alternating map: sqrt(SSR / (n - 2) / Sxx)."""

    class Alternating:
        def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
            return (4.0 if t % 2 == 0 else 0.5) * x

    r = trajectory_divergence(
        Alternating(), torch.zeros(1, dtype=F64), 6, direction=torch.ones(1), fit_stop=7
    )
    t = torch.arange(7, dtype=F64)
    y = r.log_distance
    tc = t - t.mean()
    slope = float((tc * (y - y.mean())).sum() / (tc**2).sum())
    resid = y - y.mean() - slope * tc
    stderr = math.sqrt(float((resid**2).sum()) / (7 - 2) / float((tc**2).sum()))
    assert r.growth_rate == pytest.approx(slope, rel=1e-12)
    assert r.growth_rate_stderr == pytest.approx(stderr, rel=1e-12)


def test_bad_directions_and_step_maps_are_one_line_errors():
    """A list direction was an AttributeError, an inf one a NaN start ending in an unrelated
    RuntimeError, a NaN one "zero"; a map returning the wrong shape was fit silently."""
    x0 = torch.zeros(2, dtype=torch.float64)
    A = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
    cases = [
        ({"direction": [1.0, 0.0]}, r"^direction must be a real tensor, got <class 'list'>"),
        ({"direction": torch.tensor([1j, 0])}, r"^direction must be a real tensor, got torch.com"),
        ({"direction": torch.tensor([True, False])}, r"^direction must be a real tensor"),
        ({"direction": torch.tensor([math.inf, 0.0])}, r"direction holds NaN or inf"),
        ({"direction": torch.tensor([math.nan, 0.0])}, r"direction holds NaN or inf"),
        ({"direction": torch.tensor([0.0, 0.0])}, r"direction is zero"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SharpdimError, match=message):
            trajectory_divergence(lambda x: A @ x, x0, 5, **kwargs)
    with pytest.raises(SharpdimError, match=r"returned a state of shape \(1,\) for one of shape"):
        trajectory_divergence(lambda x: x[:1], x0, 5)
    for direction in (torch.tensor([1.0, 0.0]), torch.tensor([1, 0])):  # integers are fine
        ok = trajectory_divergence(lambda x: A @ x, x0, 5, direction=direction)
        assert ok.growth_rate == pytest.approx(math.log(2), abs=1e-12)


def test_a_float32_perturbation_that_keeps_its_length_but_not_its_direction_is_refused() -> None:
    """Only the length of the realised perturbation was checked: rounding that dropped half of
    the direction (or, on a float32 MLP, 171 of 178 coordinates) kept it within delta / 2 of
    delta and the run went on along another direction than u."""
    # delta u = 5e-9 (1, 1, 1, 1): below half the float32 spacing 2^-24 at 0.5, so the first
    # two coordinates are rounded away, the other two kept: realised length delta / sqrt(2)
    # (within delta / 2 of delta), but delta / sqrt(2) from the intended x0 + delta u
    x0 = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float32)
    with pytest.raises(SharpdimError) as err:
        trajectory_divergence(lambda x: 2 * x, x0, 3, direction=torch.ones(4))
    assert str(err.value) == (
        "delta=1e-08 is below the resolution of torch.float32 states (the perturbed start is "
        "7.07e-09 away, 7.07e-09 from x0 + delta u): use float64 states or a delta of at "
        "least ~3e-07"
    )
    # the advised size works: 5e-7 is 8.39 spacings at 0.5, rounded to 8; exact at 0
    r = trajectory_divergence(lambda x: 2 * x, x0, 3, delta=1e-6, direction=torch.ones(4))
    kept = float(torch.tensor(5e-7, dtype=torch.float32))
    d0 = math.sqrt(2 * (8 * 2.0**-24) ** 2 + 2 * kept**2)
    assert r.log_distance.tolist() == pytest.approx(
        [math.log(d0 * 2**t) for t in range(4)], rel=0, abs=1e-12
    )
    # the reviewer's case: a float32 MLP at the default delta (realised start 5.8e-9 away)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    batch = (torch.randn(32, 8), torch.randn(32, 2))
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], lr=0.1)
    with pytest.raises(SharpdimError, match=r"float32 states .* from x0 \+ delta u\): use float6"):
        trajectory_divergence(phi, phi.initial_state(), 5)


def test_a_step_returning_another_dtype_or_no_tensor_is_a_one_line_error() -> None:
    """Only the shape of a plain map's output was checked: a float32 output of a float64 state
    gave NaN and -inf silently, a numpy array or list an AttributeError; both orbits are
    checked."""
    x0 = torch.tensor([0.3, 0.4], dtype=F64)
    e1 = torch.tensor([1.0, 0.0])
    cases = [
        (lambda x: (2.0 * x).float(), r"^step_fn maps a torch.float64 state to a torch.float32 "),
        (lambda x: (2 * x).numpy(), r"^step_fn returned a ndarray at step 0: it must return a "),
        (lambda x: [float(v) for v in 2 * x], r"^step_fn returned a list at step 0"),
    ]
    for step, message in cases:
        with pytest.raises(SharpdimError, match=message):
            trajectory_divergence(step, x0, 3, direction=e1)

    def wrong_off_zero(x: torch.Tensor) -> torch.Tensor:  # only the perturbed orbit leaves 0
        return 2 * x if bool((x == 0).all()) else (2 * x).float()

    with pytest.raises(SharpdimError, match=r"^step_fn maps a torch.float64 state to a torch.fl"):
        trajectory_divergence(wrong_off_zero, torch.zeros(2, dtype=F64), 3, direction=e1)
    with pytest.raises(SharpdimError, match=r"at step 4: it must return a state of the dtype"):
        trajectory_divergence(lambda x: (2 * x).float(), x0, 3, start_step=4, direction=e1)


class _DoublingInPlace:
    """``x -> 2 x`` computed in place (a user's step object may work so)."""

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x.mul_(2.0)

    def jvp(self, x: torch.Tensor, t: int, tangents: torch.Tensor):
        return x.mul_(2.0), 2 * tangents


def test_an_in_place_step_leaves_the_callers_x0_alone():
    """x0.detach() shared x0's storage: the caller's x0 came back as the final state (32)."""
    x0 = torch.ones(3, dtype=torch.float64)
    result = trajectory_divergence(_DoublingInPlace(), x0, 5, delta=1e-3)
    assert x0.tolist() == [1.0, 1.0, 1.0]
    assert math.isclose(result.growth_rate, math.log(2.0), rel_tol=1e-9)
