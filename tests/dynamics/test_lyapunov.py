"""Lyapunov spectra against maps with known exponents."""

import math
from typing import Any

import pytest
import torch
from torch.autograd.function import once_differentiable

from sharpdim.dynamics.lyapunov import FunctionMap, lyapunov_spectrum
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError

F64 = torch.float64


def henon(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([1 - 1.4 * x[0] ** 2 + x[1], 0.3 * x[0]])


def test_henon_exponents_and_exact_sum() -> None:
    r = lyapunov_spectrum(
        henon, torch.tensor([0.1, 0.1], dtype=F64), 2, 3000, warmup=100, jvp_mode="reverse"
    )
    # reference values (0.41922, -1.62319); the finite-time error is a few stderr
    assert abs(r.exponents[0].item() - 0.41922) < 0.02
    assert abs(r.exponents[1].item() - (-1.62319)) < 0.02
    # det J = -0.3 at every point, so the sum is ln 0.3 up to rounding
    assert abs(r.exponents.sum().item() - math.log(0.3)) < 1e-6
    assert 1.2 < r.kaplan_yorke < 1.3  # KY dimension of the Henon attractor ~ 1.26
    assert r.finite_time.shape == (3000, 2) and r.num_steps == 3000


def test_forward_and_reverse_jvp_agree() -> None:
    x0 = torch.tensor([0.1, 0.1], dtype=F64)
    a = lyapunov_spectrum(henon, x0, 2, 20, jvp_mode="forward")
    b = lyapunov_spectrum(henon, x0, 2, 20, jvp_mode="reverse")
    c = lyapunov_spectrum(henon, x0, 2, 20, vectorize=False)
    torch.testing.assert_close(a.log_stretches, b.log_stretches, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.log_stretches, c.log_stretches, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("vectorize", [True, False])
def test_forward_mode_takes_a_float32_map_of_scalar_elements(vectorize: bool) -> None:
    """torch's jvp of ``1.4 * x[0]`` (a 0-dim float32 tensor) is float64: forward mode, the
    default, refused the float32 Henon map as returning tangents of the wrong dtype."""
    x0 = torch.tensor([0.1, 0.1], dtype=torch.float32)
    a = lyapunov_spectrum(henon, x0, 2, 200, jvp_mode="forward", vectorize=vectorize)
    b = lyapunov_spectrum(henon, x0, 2, 200, jvp_mode="reverse")
    assert torch.equal(a.log_stretches, b.log_stretches)
    assert abs(a.exponents.sum().item() - math.log(0.3)) < 1e-5


def test_logistic_map_ln2() -> None:
    r = lyapunov_spectrum(
        lambda x: 4 * x * (1 - x), torch.tensor([0.3], dtype=F64), 1, 3000, jvp_mode="reverse"
    )
    assert abs(r.largest - math.log(2)) < 0.02


def test_linear_map_log_moduli() -> None:
    g = torch.Generator().manual_seed(1)
    evals = torch.tensor([1.5, -0.9, 0.5, 0.2], dtype=F64)
    basis = torch.randn(4, 4, generator=g, dtype=F64)
    a = basis @ torch.diag(evals) @ torch.linalg.inv(basis)
    r = lyapunov_spectrum(lambda x: a @ x, torch.ones(4, dtype=F64), 3, 400, warmup=50)
    expected = torch.log(evals.abs())[:3]
    torch.testing.assert_close(r.exponents, expected, atol=5e-3, rtol=0)


def test_gd_on_quadratic_exact() -> None:
    a, eta = torch.tensor([3.0, 1.0, 0.1], dtype=F64), 0.9
    # GD on 0.5 x^T diag(a) x: J = I - eta diag(a) everywhere, the QR is exact after 1 step
    r = lyapunov_spectrum(
        lambda x: x - eta * a * x,
        torch.ones(3, dtype=F64),
        3,
        5,
        initial_vectors=torch.eye(3, dtype=F64),
    )
    expected = torch.log((1 - eta * a).abs())
    torch.testing.assert_close(r.exponents, expected, atol=1e-12, rtol=0)
    assert abs(r.kaplan_yorke - 2.18949) < 1e-5


def test_complex_pair_rotation() -> None:
    # rotation scaled by 0.8: both exponents ln 0.8
    c, s = math.cos(1.0), math.sin(1.0)
    m = 0.8 * torch.tensor([[c, -s], [s, c]], dtype=F64)
    r = lyapunov_spectrum(lambda x: m @ x, torch.ones(2, dtype=F64), 2, 20)
    torch.testing.assert_close(r.exponents, torch.full((2,), math.log(0.8), dtype=F64))


def _tiny_problem() -> tuple[torch.nn.Module, list, object]:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
    ).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    batches = [
        (torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 2, generator=g, dtype=F64))
        for _ in range(3)
    ]

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return 0.5 * ((m(b[0]) - b[1]) ** 2).sum(dim=1).mean()

    return model, batches, mse


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_training_map_matches_dense_qr(optimizer: str) -> None:
    model, batches, mse = _tiny_problem()
    phi = TrainingMap(model, mse, batches, optimizer=optimizer, lr=0.3)
    x0 = phi.initial_state()
    k, steps = 4, 8
    q0 = torch.linalg.qr(
        torch.randn(phi.state_dim, k, generator=torch.Generator().manual_seed(3), dtype=F64)
    )[0]
    r = lyapunov_spectrum(phi, x0, k, steps, initial_vectors=q0)
    # dense reference: the same QR recursion with full Jacobians
    x, q, logs = x0, q0, []
    for t in range(steps):
        jac = phi.jacobian(x, t)
        qn, rr = torch.linalg.qr(jac @ q)
        sign = torch.sign(torch.diagonal(rr))
        q, x = qn * sign, phi.step(x, t)
        logs.append(torch.log(torch.diagonal(rr).abs()))
    torch.testing.assert_close(r.log_stretches, torch.stack(logs), rtol=1e-8, atol=1e-10)


def test_divergence_is_recorded() -> None:
    r = lyapunov_spectrum(lambda x: x * x * 10, torch.tensor([2.0], dtype=F64), 1, 50)
    assert r.diverged_at is not None and r.num_steps == r.diverged_at


@pytest.mark.parametrize(
    ("k", "steps"),
    [(0, 10), (3, 10), (1, 0)],
)
def test_bad_input(k: int, steps: int) -> None:
    with pytest.raises(SharpdimError):
        lyapunov_spectrum(henon, torch.zeros(2, dtype=F64), k, steps)


def test_function_map_bad_mode() -> None:
    with pytest.raises(SharpdimError):
        FunctionMap(henon, jvp_mode="sideways")


def test_to_dict_round_trip() -> None:
    r = lyapunov_spectrum(henon, torch.tensor([0.1, 0.1], dtype=F64), 2, 30)
    d = r.to_dict()
    assert d["k"] == 2 and len(d["finite_time"]) == 30 and len(d["stderr"]) == 2


def _overflowing_gd() -> TrainingMap:
    """GD on ``L(w) = mean_i (3 w_i)^2 = 4.5 |w|^2`` (Hessian ``9 I``) with ``lr = 5``."""
    model = torch.nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0]]))
    x, y = 3 * torch.eye(2, dtype=F64), torch.zeros(2, 1, dtype=F64)

    def mse(m: torch.nn.Module, b: tuple) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    return TrainingMap(model, mse, [(x, y)], lr=5.0)


def test_training_map_overflow_is_recorded_not_raised() -> None:
    # w_t = (1 - 5 * 9)^t e_1 = (-44)^t e_1; the loss at w_t first overflows where
    # (3 w_t)^2 = 9 * 44^(2t) > float64 max: step 94 (w_94 itself is finite)
    t_star = math.ceil((math.log(torch.finfo(F64).max) - math.log(9)) / (2 * math.log(44)))
    assert t_star == 94
    phi = _overflowing_gd()
    r = lyapunov_spectrum(phi, phi.initial_state(), 1, 2000)
    assert r.diverged_at == t_star and r.num_steps == t_star
    assert torch.isfinite(r.log_stretches).all()
    torch.testing.assert_close(r.exponents, torch.tensor([math.log(44)], dtype=F64))
    expected = torch.tensor([(-44.0) ** t_star, 0.0], dtype=F64)
    torch.testing.assert_close(r.final_state, expected, rtol=1e-12, atol=0)


def test_a_map_that_changes_the_state_shape_is_refused() -> None:
    # before: ran, with final_state of shape (16,) and state_dim 2
    with pytest.raises(SharpdimError) as err:
        lyapunov_spectrum(lambda x: torch.cat([x, x]), torch.ones(2, dtype=F64), 2, 3)
    assert str(err.value) == (
        "step_fn maps a state of shape (2,) to one of shape (4,) at step 0: it must return "
        "a state of the shape it was given"
    )


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_constant_map_has_zero_jacobian_in_both_modes(mode: str) -> None:
    # J = 0: every stretch is floored at the smallest normal float64 (reverse mode crashed)
    r = lyapunov_spectrum(
        lambda x: torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64), 1, 2, jvp_mode=mode
    )
    assert r.exponents.tolist() == [math.log(torch.finfo(F64).tiny)]
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)  # constant in x, not in scale
    r = lyapunov_spectrum(
        lambda x: scale * torch.ones(2, dtype=F64), torch.ones(2, dtype=F64), 1, 2, jvp_mode=mode
    )
    assert r.exponents.tolist() == [math.log(torch.finfo(F64).tiny)]


def test_whole_float_counts_are_accepted_and_others_refused() -> None:
    x0 = torch.ones(2, dtype=F64)
    ref = lyapunov_spectrum(lambda x: 2 * x, x0, 2, 3)
    r = lyapunov_spectrum(lambda x: 2 * x, x0, 2.0, 3.0, warmup=1.0)  # type: ignore[arg-type]
    assert (r.k, r.num_steps, r.warmup) == (2, 3, 1)
    assert r.exponents.tolist() == ref.exponents.tolist() == [math.log(2)] * 2
    bad = [
        ({"k": 1.5}, "k must be an integer >= 1, got 1.5: pass the number of exponents"),
        ({"num_steps": True}, "num_steps must be an integer >= 1, got True: pass e.g. 100"),
        ({"warmup": -1}, "warmup must be an integer >= 0, got -1: pass e.g. 0"),
    ]
    for kwargs, message in bad:
        args = {"k": 1, "num_steps": 3, **kwargs}
        with pytest.raises(SharpdimError) as err:  # a TypeError before
            lyapunov_spectrum(lambda x: 2 * x, x0, **args)
        assert str(err.value) == message


def test_jvp_mode_is_checked_for_step_maps_too() -> None:
    model = torch.nn.Linear(2, 1).double()
    batch = (torch.ones(1, 2, dtype=F64), torch.zeros(1, 1, dtype=F64))
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], lr=0.1)
    with pytest.raises(SharpdimError) as err:  # ignored before
        lyapunov_spectrum(phi, phi.initial_state(), 1, 2, jvp_mode="sideways")
    assert str(err.value) == "unknown jvp_mode 'sideways': use 'forward' or 'reverse'"


class _SwitchingScale:
    """``x -> s_t x`` in one dimension: local stretch ``ln s_t`` = 0 before step 10, 10 after."""

    def _scale(self, t: int) -> float:
        return 1.0 if t < 10 else math.exp(10.0)

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x * self._scale(t)

    def jvp(self, x: torch.Tensor, t: int, tangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x * self._scale(t), tangents * self._scale(t)


@pytest.mark.parametrize("steps", [19, 20])
def test_batch_means_stderr_uses_every_step(steps: int) -> None:
    """19 steps in 10 blocks: the last 9 steps (the stretched ones) were dropped, stderr 0."""
    r = lyapunov_spectrum(
        _SwitchingScale(),
        torch.ones(1, dtype=F64),
        1,
        steps,
        num_blocks=10,
        initial_vectors=torch.ones(1, 1, dtype=F64),
    )
    logs = [0.0] * 10 + [10.0] * (steps - 10)
    mean = sum(logs) / steps
    sizes = [2] * (steps - 10) + [1] * (20 - steps)  # numpy's array_split of `steps` into 10
    blocks, start = [], 0
    for size in sizes:
        blocks.append((size, sum(logs[start : start + size]) / size))
        start += size
    want = math.sqrt(sum(n * (m - mean) ** 2 for n, m in blocks) / (9 * steps))
    assert r.exponents.item() == pytest.approx(mean, rel=1e-14)
    assert r.stderr.item() == pytest.approx(want, rel=1e-12)
    if steps == 20:  # equal blocks: std of the block means / sqrt(10)
        means = torch.tensor([m for _, m in blocks], dtype=F64)
        assert r.stderr.item() == pytest.approx(float(means.std() / math.sqrt(10)), rel=1e-12)


def test_the_tangent_block_is_built_on_the_state_device() -> None:
    """The random (or given) tangents stayed on the CPU for a state on another device (a GPU);
    a 'meta' state stands in for one here."""
    seen: list[tuple[str, str]] = []

    class Devices:
        def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
            return x

        def jvp(self, x: torch.Tensor, t: int, tangents: torch.Tensor) -> tuple:
            seen.append((x.device.type, tangents.device.type))
            raise RuntimeError("stop after the first step")

    x0 = torch.zeros(4, dtype=torch.float64, device="meta")
    for start in (None, torch.eye(4, 2, dtype=torch.float64)):
        with pytest.raises(RuntimeError, match="stop after the first step"):
            lyapunov_spectrum(Devices(), x0, 2, 3, initial_vectors=start)
    assert seen == [("meta", "meta"), ("meta", "meta")]


def test_a_run_continued_from_its_final_state_and_vectors_is_the_whole_run() -> None:
    """final_state, final_vectors and start_step continue a run: 4 + 4 steps = 8 steps."""
    model, batches, mse = _tiny_problem()
    phi = TrainingMap(model, mse, batches, optimizer="momentum", lr=0.3, momentum=0.9)
    x0 = phi.initial_state()
    q0 = torch.eye(x0.numel(), 3, dtype=F64)
    whole = lyapunov_spectrum(phi, x0, 3, 8, initial_vectors=q0)
    a = lyapunov_spectrum(phi, x0, 3, 4, initial_vectors=q0)
    b = lyapunov_spectrum(phi, a.final_state, 3, 4, initial_vectors=a.final_vectors, start_step=4)
    joined = torch.cat([a.log_stretches, b.log_stretches])
    torch.testing.assert_close(joined, whole.log_stretches, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b.final_state, whole.final_state, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_a_map_returning_a_scalar_is_refused_before_its_jvp(mode: str) -> None:
    # an IndexError inside the JVP before
    with pytest.raises(SharpdimError) as err:
        lyapunov_spectrum(lambda x: x.sum(), torch.ones(2, dtype=F64), 2, 5, jvp_mode=mode)
    assert str(err.value) == (
        "step_fn maps a state of shape (2,) to one of shape () at step 0: it must return "
        "a state of the shape it was given"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_states_are_refused(dtype: torch.dtype) -> None:
    # "geqrf_cpu" not implemented for 'Half' from the QR before
    with pytest.raises(SharpdimError) as err:
        lyapunov_spectrum(lambda x: 0.5 * x, torch.ones(2, dtype=dtype), 2, 5)
    assert str(err.value) == (
        f"x0 is {dtype}, too coarse for Lyapunov exponents (sums of log-stretches in it mean "
        "nothing): pass a float32 or float64 x0 and map"
    )


@pytest.mark.parametrize(
    ("mode", "vectorize"), [("forward", True), ("forward", False), ("reverse", True)]
)
def test_a_map_working_in_place_leaves_x0_and_the_orbit_alone(mode: str, vectorize: bool) -> None:
    # forward mode gave final_state [64, 64] and overwrote x0; reverse mode raised
    x0 = torch.ones(2, dtype=F64)
    r = lyapunov_spectrum(
        lambda x: x.mul_(2),
        x0,
        2,
        3,
        initial_vectors=torch.eye(2, dtype=F64),
        jvp_mode=mode,
        vectorize=vectorize,
    )
    assert r.final_state.tolist() == [8.0, 8.0] and x0.tolist() == [1.0, 1.0]
    assert r.exponents.tolist() == [math.log(2)] * 2
    assert r.final_state.data_ptr() != x0.data_ptr()


def test_non_finite_or_non_tensor_starts_are_refused() -> None:
    x0 = torch.ones(2, dtype=F64)
    nan = torch.tensor([math.nan, 1.0], dtype=F64)
    bad: list[tuple[dict, str]] = [  # a divergence at step 0, or an AttributeError, before
        ({"x0": nan}, "x0 holds NaN or inf: pass a finite starting state"),
        ({"x0": torch.tensor([math.inf, 1.0], dtype=F64)}, "x0 holds NaN or inf"),
        (
            {"initial_vectors": torch.full((2, 2), math.nan, dtype=F64)},
            "initial_vectors hold NaN or inf: pass a finite block",
        ),
        (
            {"initial_vectors": [[1.0, 0.0], [0.0, 1.0]]},
            "initial_vectors must be a real tensor of shape (2, 2), got list: pass e.g. "
            "torch.eye(n, k, dtype=x0.dtype)",
        ),
        (
            {"initial_vectors": torch.eye(2, dtype=torch.complex128)},
            "initial_vectors must be a real tensor of shape (2, 2), got torch.complex128",
        ),
        (  # (said "got float64", as if the dtype were the problem)
            {"initial_vectors": torch.eye(2, dtype=F64).numpy()},
            "initial_vectors must be a real tensor of shape (2, 2), got ndarray",
        ),
    ]
    for kwargs, message in bad:
        args: dict = {"x0": x0, **kwargs}
        with pytest.raises(SharpdimError) as err:
            lyapunov_spectrum(lambda x: 0.5 * x, k=2, num_steps=5, **args)
        assert str(err.value).startswith(message)


def test_a_map_that_changes_the_dtype_is_refused() -> None:
    a = torch.tensor([[2.0, 0.0], [0.0, -0.5]], dtype=F64)
    # went on silently in float32 before
    for mode in ("forward", "reverse"):
        with pytest.raises(SharpdimError) as err:
            lyapunov_spectrum(
                lambda x: (a @ x.double()).float(), torch.ones(2, dtype=F64), 2, 20, jvp_mode=mode
            )
        assert str(err.value) == (
            "step_fn maps a torch.float64 state to a torch.float32 one at step 0: it must "
            "return a state of the dtype it was given (compute in torch.float64, or pass an x0 "
            "of torch.float32)"
        )


class _BadTangents:
    """A step map whose ``jvp`` returns the block ``bad(tangents)`` instead of ``tangents``."""

    def __init__(self, bad: object) -> None:
        self.bad = bad

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x

    def jvp(self, x: torch.Tensor, t: int, tangents: torch.Tensor) -> tuple:
        return x, self.bad(tangents)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("bad", "got"),
    [
        (lambda v: v[:, :1], "(3, 1) torch.float64"),
        (lambda v: v.T, "(2, 3) torch.float64"),
        (lambda v: v.float(), "(3, 2) torch.float32"),
        (lambda v: v.tolist(), "list"),
    ],
)
def test_a_jvp_returning_a_wrong_tangent_block_is_refused(bad: object, got: str) -> None:
    # a raw RuntimeError / QR error (or float32 tangents on a float64 orbit) before
    with pytest.raises(SharpdimError) as err:
        lyapunov_spectrum(_BadTangents(bad), torch.ones(3, dtype=F64), 2, 3)
    assert str(err.value) == (
        f"step_fn's jvp returned tangents {got} at step 0: it must return J_t applied to each "
        "tangent column, a (3, 2) block of torch.float64"
    )


def test_warmup_is_the_steps_run_when_the_orbit_diverges_inside_it() -> None:
    # x -> 10 x^2 from 2 overflows at step 7 (x_8 = inf); the requested 100 warmup steps were reported
    blowup, x0 = (lambda x: x * x * 10), torch.tensor([2.0], dtype=F64)
    r = lyapunov_spectrum(blowup, x0, 1, 5, warmup=100)
    assert (r.diverged_at, r.warmup, r.num_steps) == (7, 7, 0)
    assert r.to_dict()["warmup"] == 7 and math.isnan(r.largest)
    r = lyapunov_spectrum(blowup, x0, 1, 50, warmup=3)  # past the warmup: all of it ran
    assert (r.diverged_at, r.warmup, r.num_steps) == (7, 3, 4)
    assert lyapunov_spectrum(lambda x: 0.5 * x, x0, 1, 5, warmup=4).warmup == 4


_SYMMETRIC_A = torch.tensor([[2.0, -1.0], [-1.0, 2.0]], dtype=F64)


class _OnceDifferentiableMatmul(torch.autograd.Function):
    """``(x, a) -> a x`` whose backward has no graph (``once_differentiable``) and no
    ``setup_context``: old-style, first order only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        ctx.a = a
        return a @ x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return ctx.a.T @ g, None


class _NumpyBackwardMatmul(torch.autograd.Function):
    """``x -> A x`` whose backward goes through numpy (so it has no graph either)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _SYMMETRIC_A @ x

    @staticmethod
    def setup_context(ctx: object, inputs: tuple, output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_SYMMETRIC_A.T.numpy() @ g.detach().numpy())


class _TwiceDifferentiableMatmul(_NumpyBackwardMatmul):
    """``x -> A x`` with a differentiable backward and a ``jvp``: both modes work."""

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        return _SYMMETRIC_A.T @ g

    @staticmethod
    def jvp(ctx: object, v: torch.Tensor) -> torch.Tensor:
        return _SYMMETRIC_A @ v


def test_a_backward_that_cannot_be_differentiated_again_is_refused() -> None:
    """jvp_mode='reverse' read the missing second-order graph of a once_differentiable (or
    numpy) backward as J = 0: exponents ln(tiny) = -708.4 instead of ln 3, ln 1; forward mode
    raised torch's multi-line RuntimeError for such a Function."""
    x0 = torch.tensor([0.1, 0.2], dtype=F64)
    # (A's J^T 1 is (1, 1); that of [[1, -1], [-1, 1]] is 0, though its J is not)
    cancelling = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)
    maps = [
        lambda x: _OnceDifferentiableMatmul.apply(x, _SYMMETRIC_A),
        lambda x: _OnceDifferentiableMatmul.apply(x, cancelling),
        _NumpyBackwardMatmul.apply,
    ]
    once = r"^step_fn passes through _OnceDifferentiableMatmul, a custom autograd.Function whose"
    numpy = r"^step_fn's backward cannot be differentiated "  # (no marker: found by a probe)
    for step, message in zip(maps, [once, once, numpy], strict=True):
        with pytest.raises(SharpdimError, match=message):
            lyapunov_spectrum(step, x0, 2, 3, jvp_mode="reverse")
    for step, vectorize in [(maps[0], True), (maps[2], False)]:  # no setup_context, no jvp
        with pytest.raises(SharpdimError, match=r"^step_fn uses a custom autograd.Function that"):
            lyapunov_spectrum(step, x0, 2, 3, vectorize=vectorize)
    eig = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=F64) / math.sqrt(2)  # A's eigenvectors
    for mode in ("forward", "reverse"):  # a twice differentiable Function: ln 3, ln 1
        r = lyapunov_spectrum(
            _TwiceDifferentiableMatmul.apply, x0, 2, 20, initial_vectors=eig, jvp_mode=mode
        )
        assert r.exponents.tolist() == pytest.approx([math.log(3), 0.0], rel=0, abs=1e-12)


def test_maps_not_depending_on_their_input_keep_a_zero_jacobian_in_reverse_mode() -> None:
    """The check for a backward without a graph must not refuse a Jacobian that is really 0
    (round) or 0 in some directions only (a map of the first coordinate)."""
    tiny = math.log(torch.finfo(F64).tiny)
    x0, q0 = torch.tensor([0.13, 0.27], dtype=F64), torch.eye(2, dtype=F64)
    for mode in ("forward", "reverse"):
        r = lyapunov_spectrum(lambda x: torch.round(10 * x), x0, 2, 3, jvp_mode=mode)
        assert r.exponents.tolist() == pytest.approx([tiny, tiny], rel=0, abs=1e-12)
        r = lyapunov_spectrum(
            lambda x: torch.stack([2 * x[0], 0 * x[0] + 1]),
            x0,
            2,
            3,
            initial_vectors=q0,
            jvp_mode=mode,
        )
        assert r.exponents.tolist() == pytest.approx([math.log(2), tiny], rel=0, abs=1e-12)


def test_one_block_for_the_standard_error_is_refused() -> None:
    """num_blocks=1 was accepted and the standard error then always NaN (the docstring
    promises NaN only with fewer than 2 steps)."""
    with pytest.raises(SharpdimError) as err:
        lyapunov_spectrum(lambda x: 2 * x, torch.ones(2, dtype=F64), 1, 10, num_blocks=1)
    assert str(err.value) == (
        "num_blocks must be an integer >= 2, got 1: pass 2 or more, e.g. 10 (one block has no "
        "spread to estimate an error from)"
    )
    r = lyapunov_spectrum(henon, torch.tensor([0.1, 0.1], dtype=F64), 1, 4, num_blocks=2)
    logs = r.log_stretches[:, 0]
    means = torch.stack([logs[:2].mean(), logs[2:].mean()])
    assert float(r.stderr[0]) == pytest.approx(float(means.std() / math.sqrt(2)), rel=1e-12)


@pytest.mark.parametrize("jvp_mode", ["forward", "reverse"])
def test_a_map_that_leaves_torch_is_a_one_line_error(jvp_mode: str) -> None:
    """Through numpy a map has no Jacobian: torch's raw RuntimeError ('Cannot access data
    pointer of Tensor that doesn't have storage' / 'Can't call numpy() on Tensor that requires
    grad') reached the user."""
    x0 = torch.tensor([0.3, 0.2], dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"^step_fn leaves torch \(e.g. through .numpy\(\)\)"):
        lyapunov_spectrum(lambda x: torch.from_numpy(x.numpy() * 2), x0, 2, 5, jvp_mode=jvp_mode)


def test_an_op_without_a_forward_derivative_is_named():
    """cdist has no forward-mode formula: torch's NotImplementedError reached the user."""
    x0 = torch.rand(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5

    def pairwise(x: torch.Tensor) -> torch.Tensor:
        return torch.cdist(x.view(2, 2), x.view(2, 2) + 1).reshape(-1)

    with pytest.raises(SharpdimError, match=r"^step_fn uses _cdist_forward, which forward mode"):
        lyapunov_spectrum(pairwise, x0, 2, 2)


def test_reverse_mode_names_a_map_that_overwrites_what_its_backward_needs() -> None:
    """Autograd's multi-line 'modified by an inplace operation' RuntimeError; forward mode
    differentiates the same map."""

    def henon_in_place(x: torch.Tensor) -> torch.Tensor:
        a = x[0].clone()
        x[0] = 1 - 1.4 * x[0] ** 2 + x[1]
        x[1] = 0.3 * a
        return x

    x0 = torch.tensor([0.1, 0.1], dtype=F64)
    ref = lyapunov_spectrum(henon, x0, 2, 50, jvp_mode="forward")
    same = lyapunov_spectrum(henon_in_place, x0, 2, 50, jvp_mode="forward")
    torch.testing.assert_close(same.log_stretches, ref.log_stretches, rtol=1e-12, atol=1e-12)
    with pytest.raises(SharpdimError, match=r"^step_fn overwrites in place a value its backward"):
        lyapunov_spectrum(henon_in_place, x0, 2, 50, jvp_mode="reverse")
