"""TrainingMap equals torch.optim's step; its JVP equals the autograd Jacobian."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sharpdim.curvature.params import get_flat_params
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError
from tests.dynamics.real_optim import real_step_fn, real_step_jacobian


def _model(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)


def _batches(dtype: torch.dtype = torch.float64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 2, (12,), generator=gen)
    return [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


CASES: list[tuple[str, dict, Callable]] = [
    ("sgd", {"weight_decay": 0.01}, lambda p: torch.optim.SGD(p, lr=0.3, weight_decay=0.01)),
    (
        "momentum",
        {"momentum": 0.8, "weight_decay": 0.01},
        lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.8, weight_decay=0.01),
    ),
    (
        "nesterov",
        {"momentum": 0.8},
        lambda p: torch.optim.SGD(p, lr=0.3, momentum=0.8, nesterov=True),
    ),
    (
        "adam",
        {"weight_decay": 0.01, "betas": (0.8, 0.95)},
        lambda p: torch.optim.Adam(p, lr=0.3, weight_decay=0.01, betas=(0.8, 0.95)),
    ),
    ("adamw", {"weight_decay": 0.1}, lambda p: torch.optim.AdamW(p, lr=0.3, weight_decay=0.1)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_step_equals_torch_optim(
    name: str, kwargs: dict, make: Callable, dtype: torch.dtype
) -> None:
    """Bit for bit over 60 steps: Adam's moments written as ``b1 m + (1 - b1) g`` instead of
    torch's ``lerp`` / ``addcmul`` drifted by 1e-5 in float32 (1e-14 in float64) and the test
    allowed 1e-13."""
    model, batches = _model(dtype), _batches(dtype)
    phi = TrainingMap(model, _ce, batches, optimizer=name, lr=0.3, **kwargs)
    x = phi.initial_state()
    ref = _model(dtype)
    opt = make(list(ref.parameters()))
    for t in range(60):
        x = phi.step(x, t)
        opt.zero_grad()
        _ce(ref, batches[t % 3]).backward()
        opt.step()
    params = list(ref.parameters())
    torch.testing.assert_close(phi.params(x), get_flat_params(params), rtol=0, atol=0)
    d = phi.num_params
    state = [opt.state[p] for p in params]
    if name in ("momentum", "nesterov"):
        buf = torch.cat([s["momentum_buffer"].reshape(-1) for s in state])
        torch.testing.assert_close(x[d:], buf, rtol=0, atol=0)
    if name in ("adam", "adamw"):
        m = torch.cat([s["exp_avg"].reshape(-1) for s in state])
        v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in state])
        torch.testing.assert_close(x[d : 2 * d], m, rtol=0, atol=0)
        torch.testing.assert_close(x[2 * d :], v, rtol=0, atol=0)
    # the model itself was not modified by the map
    torch.testing.assert_close(
        get_flat_params(list(model.parameters())), phi.params(phi.initial_state())
    )


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_jvp_equals_autograd_jacobian(name: str, kwargs: dict, make: Callable) -> None:
    phi = TrainingMap(_model(), _ce, _batches(), optimizer=name, lr=0.3, **kwargs)
    x = phi.initial_state()
    for t in range(3):  # a state with non-zero optimizer buffers
        x = phi.step(x, t)
    jac = phi.jacobian(x, 1)
    assert jac.shape == (phi.state_dim, phi.state_dim)
    tangents = torch.randn(
        phi.state_dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    x_next, jt = phi.jvp(x, 1, tangents)
    assert torch.equal(x_next, phi.step(x, 1))  # the same operations: the same orbit
    torch.testing.assert_close(jt, jac @ tangents, rtol=1e-9, atol=1e-10)
    _, jv = phi.jvp(x, 1, tangents[:, 0])
    torch.testing.assert_close(jv, jt[:, 0])


def test_sgd_jacobian_is_identity_minus_lr_hessian() -> None:
    model, batches = _model(), _batches()
    phi = TrainingMap(model, _ce, batches, lr=0.7, mode="eval")
    x = phi.initial_state()
    hess = torch.autograd.functional.hessian(lambda w: _loss_at(model, w, batches[2]), x)
    eye = torch.eye(phi.num_params, dtype=torch.float64)
    torch.testing.assert_close(phi.jacobian(x, 2), eye - 0.7 * hess, rtol=1e-10, atol=1e-12)


def _loss_at(
    model: nn.Module, w: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    chunks = w.split([int(torch.Size(s).numel()) for s in shapes])
    params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
    return _ce_functional(model, params, batch)


def _ce_functional(
    model: nn.Module, params: dict, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    out = torch.func.functional_call(model, params, (batch[0],))
    return nn.functional.cross_entropy(out, batch[1])


def test_callable_batches_and_step_offset() -> None:
    batches = _batches()
    phi = TrainingMap(
        _model(), _ce, lambda t: batches[t % 3], lr=0.1, optimizer="adam", step_offset=5
    )
    psi = TrainingMap(_model(), _ce, batches, lr=0.1, optimizer="adam", step_offset=5)
    x = phi.initial_state()
    torch.testing.assert_close(phi.step(x, 4), psi.step(x, 4))
    assert phi.state_dim == 3 * phi.num_params


def test_bad_input() -> None:
    with pytest.raises(SharpdimError, match="unknown optimizer"):
        TrainingMap(_model(), _ce, _batches(), optimizer="lion", lr=0.1)
    with pytest.raises(SharpdimError, match="lr"):
        TrainingMap(_model(), _ce, _batches(), lr=0.0)
    with pytest.raises(SharpdimError, match="empty"):
        TrainingMap(_model(), _ce, [], lr=0.1)
    phi = TrainingMap(_model(), _ce, _batches(), lr=0.1)
    with pytest.raises(SharpdimError, match="rows"):
        phi.jvp(phi.initial_state(), 0, torch.zeros(3, 2, dtype=torch.float64))


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_jacobian_equals_jacobian_of_real_torch_optim_step(
    name: str, kwargs: dict, make: Callable
) -> None:
    """autograd through torch.optim itself (differentiable=True) gives the same Jacobian."""
    model, batches = _model(), _batches()
    phi = TrainingMap(model, _ce, batches, optimizer=name, lr=0.3, mode="eval", **kwargs)
    x = phi.initial_state()
    for t in range(3):  # non-zero optimizer buffers; Adam's step count is then 4 at t = 3
        x = phi.step(x, t)
    real = real_step_fn(model, _ce, batches[0], name, lr=0.3, step_number=4, **kwargs)
    torch.testing.assert_close(real(x).detach(), phi.step(x, 3), rtol=0, atol=1e-13)
    jac = real_step_jacobian(model, _ce, batches[0], name, x, lr=0.3, step_number=4, **kwargs)
    torch.testing.assert_close(phi.jacobian(x, 3), jac, rtol=1e-10, atol=1e-12)


def _layernorm_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(3, 5),
        nn.LayerNorm(5),
        nn.Tanh(),
        nn.Linear(5, 5),
        nn.LayerNorm(5),
        nn.Linear(5, 2),
    ).double()


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_jvp_on_layernorm_model_equals_jacobian_of_real_torch_optim_step(name: str) -> None:
    """Double backward through LayerNorm is exact (vmapped torch.func double backward is not)."""
    model, batches = _layernorm_model(), _batches()
    phi = TrainingMap(model, _ce, batches, optimizer=name, lr=0.3, mode="eval")
    x = phi.initial_state()
    for t in range(3):
        x = phi.step(x, t)
    jac = real_step_jacobian(model, _ce, batches[0], name, x, lr=0.3, step_number=4)
    tangents = torch.randn(
        phi.state_dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    x_next, jt = phi.jvp(x, 3, tangents)
    torch.testing.assert_close(
        x_next,
        real_step_fn(model, _ce, batches[0], name, lr=0.3, step_number=4)(x).detach(),
        rtol=0,
        atol=1e-13,
    )
    torch.testing.assert_close(jt, jac @ tangents, rtol=1e-9, atol=1e-11)


def test_tied_parameters_and_model_left_untouched() -> None:
    """A parameter shared by two layers gets one block of the state; the model is restored."""
    torch.manual_seed(5)
    first, second = nn.Linear(3, 3, bias=False), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, nn.Tanh(), second, nn.Linear(3, 2)).double()
    batches = _batches()
    phi = TrainingMap(model, _ce, batches, lr=0.2)
    assert phi.num_params == 9 + 3 + 6 + 2
    x = phi.initial_state() + 0.1
    jac = phi.jacobian(x, 0)
    tangents = torch.randn(phi.state_dim, 2, dtype=torch.float64)
    _, jt = phi.jvp(x, 0, tangents)
    torch.testing.assert_close(jt, jac @ tangents, rtol=1e-9, atol=1e-12)
    assert model[2].weight is model[0].weight
    assert all(
        isinstance(p, nn.Parameter | None) for m in model.modules() for p in m._parameters.values()
    )
    torch.testing.assert_close(phi.initial_state() + 0.1, x)


def _dropout_model() -> nn.Module:
    torch.manual_seed(6)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 2)).double()


def test_dropout_step_is_a_fixed_map_and_leaves_the_global_rng() -> None:
    model, batches = _dropout_model(), _batches()
    phi = TrainingMap(model, _ce, batches, lr=0.3)  # mode="train": dropout on
    x = phi.initial_state()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = phi.step(x, 1)
    assert torch.equal(phi.step(x, 1), first)
    torch.testing.assert_close(
        phi.jvp(x, 1, torch.ones(phi.state_dim, dtype=torch.float64))[0], first, rtol=0, atol=1e-15
    )
    assert torch.equal(torch.get_rng_state(), before)
    # the masks are real (eval mode differs) and come from the map's seed
    assert not torch.allclose(
        TrainingMap(model, _ce, batches, lr=0.3, mode="eval").step(x, 1), first
    )
    assert not torch.allclose(TrainingMap(model, _ce, batches, lr=0.3, seed=1).step(x, 1), first)
    assert torch.equal(TrainingMap(model, _ce, batches, lr=0.3).step(x, 1), first)


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_dropout_jvp_equals_jacobian_and_finite_differences(
    name: str, kwargs: dict, make: Callable
) -> None:
    """JVP, Jacobian and the step itself see the same dropout mask at step ``t``."""
    phi = TrainingMap(_dropout_model(), _ce, _batches(), optimizer=name, lr=0.3, **kwargs)
    x = phi.initial_state()
    for t in range(3):
        x = phi.step(x, t)
    tangents = torch.randn(
        phi.state_dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    _, jt = phi.jvp(x, 1, tangents)
    torch.testing.assert_close(jt, phi.jacobian(x, 1) @ tangents, rtol=1e-9, atol=1e-10)
    if name in ("adam", "adamw"):  # sqrt(v') is not differentiable where a dropped unit
        return  # leaves g = v = 0: finite differences do not apply there
    h = 1e-6  # central differences: truncation O(h^2), rounding O(1e-16 / h)
    fd = torch.stack(
        [(phi.step(x + h * v, 1) - phi.step(x - h * v, 1)) / (2 * h) for v in tangents.T], 1
    )
    torch.testing.assert_close(jt, fd, rtol=1e-6, atol=1e-7)


def test_non_finite_loss_gives_a_nan_state() -> None:
    """A diverged orbit is a NaN state (recorded by the callers), not an error."""

    def overflow(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return _ce(m, b) * 1e300 * 1e300  # inf at a finite state

    phi = TrainingMap(_model(), overflow, _batches(), lr=0.1, optimizer="momentum")
    x = phi.initial_state()
    assert torch.isnan(phi.step(x, 0)).all()
    x_next, jt = phi.jvp(x, 0, torch.ones(phi.state_dim, 2, dtype=torch.float64))
    assert torch.isnan(x_next).all() and torch.isnan(jt).all() and jt.shape == (phi.state_dim, 2)
    # the dense Jacobian agrees: it was finite ([[I, -lr mu I], [0, mu I]], the Hessian dropped)
    for name in ("sgd", "momentum", "adam"):
        other = TrainingMap(_model(), overflow, _batches(), lr=0.1, optimizer=name)
        jac = other.jacobian(other.initial_state(), 0)
        assert jac.shape == (other.state_dim, other.state_dim) and torch.isnan(jac).all()
    bad = TrainingMap(_model(), lambda m, b: m(b[0]).sum(1), _batches(), lr=0.1)
    with pytest.raises(SharpdimError, match="scalar"):
        bad.step(bad.initial_state(), 0)


def _linear_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Linear in the parameters: a constant gradient, zero Hessian."""
    return model(batch[0]).mean()


def test_jvp_of_a_loss_linear_in_the_parameters() -> None:
    """Zero Hessian: SGD's Jacobian is I, heavy ball's ``[[(1 - lr wd) I, -lr mu I], [wd I, mu
    I]]``."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.zeros(8, 1, dtype=torch.float64))
    tangents = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    sgd = TrainingMap(model, _linear_loss, [batch], lr=0.1)
    x = sgd.initial_state()
    x_next, jt = sgd.jvp(x, 0, tangents[:4])
    torch.testing.assert_close(x_next, sgd.step(x, 0), rtol=0, atol=0)
    torch.testing.assert_close(jt, tangents[:4], rtol=0, atol=0)
    hb = TrainingMap(
        model, _linear_loss, [batch], optimizer="momentum", lr=0.1, momentum=0.8, weight_decay=0.5
    )
    dw, dv = tangents[:4], tangents[4:]
    dv_next = 0.8 * dv + 0.5 * dw
    _, jt = hb.jvp(hb.step(hb.initial_state(), 0), 1, tangents)
    torch.testing.assert_close(jt, torch.cat([dw - 0.1 * dv_next, dv_next]), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(("name", "kwargs", "make"), CASES, ids=[c[0] for c in CASES])
def test_jvp_of_a_linear_loss_equals_autograd_jacobian(
    name: str, kwargs: dict, make: Callable
) -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    batch = (torch.randn(8, 3, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.float64))
    phi = TrainingMap(model, _linear_loss, [batch], optimizer=name, lr=0.3, **kwargs)
    x = phi.step(phi.step(phi.initial_state(), 0), 1)
    tangents = torch.randn(
        phi.state_dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    x_next, jt = phi.jvp(x, 2, tangents)
    torch.testing.assert_close(x_next, phi.step(x, 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(jt, phi.jacobian(x, 2) @ tangents, rtol=1e-12, atol=1e-14)


def test_jvp_through_fused_attention_equals_the_dense_jacobian() -> None:
    # nn.MultiheadAttention calls F.scaled_dot_product_attention, whose fused CPU kernel
    # has no double backward: the map must build its gradient with the math backend
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(4, 2, batch_first=True).double()
    head = nn.Linear(4, 1).double()
    model = nn.ModuleDict({"attention": attention, "head": head})

    def loss(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        out, _ = m["attention"](x, x, x, need_weights=False)
        return ((m["head"](out).mean(1) - y) ** 2).mean()

    batch = (torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 1, dtype=torch.float64))
    phi = TrainingMap(model, loss, [batch], optimizer="sgd", lr=0.1, mode="eval")
    x = phi.initial_state()
    tangents = torch.randn(
        phi.state_dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    _, jt = phi.jvp(x, 0, tangents)
    torch.testing.assert_close(jt, phi.jacobian(x, 0) @ tangents, rtol=1e-10, atol=1e-12)


BAD_SETTINGS = [
    (
        {"optimizer": "adam", "step_offset": -1},
        "step_offset must be an integer >= 0, got -1: pass the number of Adam steps already "
        "taken (0 for a fresh optimizer)",
    ),
    (
        {"optimizer": "adam", "betas": (1.0, 0.999)},
        "betas must be a finite number in [0, 1), got 1.0: pass e.g. (0.9, 0.999)",
    ),
    (
        {"optimizer": "adam", "betas": (0.9, 1.0)},
        "betas must be a finite number in [0, 1), got 1.0: pass e.g. (0.9, 0.999)",
    ),
    (
        {"optimizer": "momentum", "momentum": -1.0},
        "momentum must be a finite number in (0, 1), got -1.0: pass e.g. 0.9 (momentum 0 is "
        "optimizer='sgd')",
    ),
    ({"weight_decay": -1.0}, "weight_decay must be a finite number >= 0, got -1.0: pass e.g. 0.0"),
    (
        {"optimizer": "adam", "eps": -1.0},
        "eps must be a finite number >= 0, got -1.0: pass e.g. 1e-08",
    ),
    ({"lr": float("inf")}, "lr must be a finite number > 0, got inf: pass e.g. 0.1"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_SETTINGS, ids=[str(b[0]) for b in BAD_SETTINGS])
def test_bad_optimizer_settings_are_one_line_errors(kwargs: dict, message: str) -> None:
    # before: ZeroDivisionError (step_offset=-1, b1=1), a NaN state (b2=1), or accepted
    settings = {"lr": 0.1, **kwargs}
    with pytest.raises(SharpdimError) as err:
        TrainingMap(_model(), _ce, _batches(), **settings)
    assert str(err.value) == message


def test_settings_given_as_whole_floats_and_tensors_are_accepted() -> None:
    batches = _batches()
    ref = TrainingMap(
        _model(), _ce, batches, optimizer="adam", lr=0.1, betas=(0.8, 0.9), step_offset=2
    )
    phi = TrainingMap(
        _model(),
        _ce,
        batches,
        optimizer="adam",
        lr=torch.tensor(0.1, dtype=torch.float64),
        betas=torch.tensor([0.8, 0.9], dtype=torch.float64),
        step_offset=2.0,
    )
    assert phi.betas == (0.8, 0.9) and phi.step_offset == 2 and type(phi.lr) is float
    x = ref.initial_state()
    torch.testing.assert_close(phi.step(x, 2), ref.step(x, 2), rtol=0, atol=0)


def test_a_state_of_the_wrong_length_names_initial_state() -> None:
    from sharpdim.dynamics.divergence import trajectory_divergence
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum

    phi = TrainingMap(_model(), _ce, _batches(), optimizer="momentum", lr=0.1)
    w = phi.params(phi.initial_state())  # the parameters only: 26 of the 52 entries
    message = (
        "the state has shape (26,), the momentum map's has (52,) (parameters, then the "
        "optimizer's buffers): start from initial_state()"
    )
    calls = [
        lambda: phi.step(w, 0),
        lambda: phi.jvp(w, 0, torch.zeros(26, 1, dtype=torch.float64)),
        lambda: phi.jacobian(w, 0),
        lambda: lyapunov_spectrum(phi, w, 1, 2),  # said "tangents have 26 rows" before
        lambda: trajectory_divergence(phi, w, 2),  # a raw RuntimeError before
    ]
    for call in calls:
        with pytest.raises(SharpdimError) as err:
            call()
        assert str(err.value) == message


def test_a_state_of_another_dtype_than_the_model_is_a_one_line_error() -> None:
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum

    torch.manual_seed(0)
    model = nn.Linear(2, 1)  # float32
    batch = (torch.randn(4, 2), torch.randn(4, 1))
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], lr=0.1)
    x = phi.initial_state().double()
    message = (
        "the state is torch.float64, the model's parameters torch.float32: make them match "
        "(model.to(torch.float64) with batches of that dtype, or state.to(torch.float32))"
    )
    for call in (lambda: phi.step(x, 0), lambda: lyapunov_spectrum(phi, x, 1, 2)):
        with pytest.raises(SharpdimError) as err:  # a raw dtype RuntimeError before
            call()
        assert str(err.value) == message


def test_settings_the_update_rule_does_not_use_are_not_checked() -> None:
    """As TrainConfig: momentum only for momentum/nesterov, betas only for Adam/AdamW."""
    batches = _batches()
    ref = TrainingMap(_model(), _ce, batches, optimizer="sgd", lr=0.1)
    phi = TrainingMap(
        _model(), _ce, batches, optimizer="sgd", lr=0.1, momentum=1.0, betas=(1.0, 0.999)
    )
    x = ref.initial_state()
    torch.testing.assert_close(phi.step(x, 0), ref.step(x, 0), rtol=0, atol=0)
    TrainingMap(_model(), _ce, batches, optimizer="adam", lr=0.1, momentum=5.0)
    TrainingMap(_model(), _ce, batches, optimizer="sgd", lr=0.1, momentum=None, betas=None)


def test_the_seed_is_a_checked_whole_number():
    """A seed of 1.5 was truncated to 1 without a word."""
    assert TrainingMap(_model(), _ce, _batches(), lr=0.3, seed=4.0).seed == 4
    for bad in (1.5, -1, "3"):
        with pytest.raises(SharpdimError, match=r"^seed must be"):
            TrainingMap(_model(), _ce, _batches(), lr=0.3, seed=bad)


def test_unknown_modes_negative_steps_and_odd_inputs_are_one_line_errors() -> None:
    """'Train' ran in eval mode without a word; Adam's step(x, -1) divided by 1 - b1^0 = 0."""
    with pytest.raises(SharpdimError, match=r"^unknown mode 'Train'"):
        TrainingMap(_model(), _ce, _batches(), lr=0.3, mode="Train")
    with pytest.raises(SharpdimError, match=r"^batches must be a list of batches or a function"):
        TrainingMap(_model(), _ce, None, lr=0.3)
    adam = TrainingMap(_model(), _ce, _batches(), optimizer="adam", lr=0.1)
    x = adam.initial_state()
    with pytest.raises(SharpdimError, match=r"^the step t must be an integer >= 0, got -1"):
        adam.step(x, -1)
    with pytest.raises(SharpdimError, match=r"^the state must be a tensor, got list"):
        adam.step(x.tolist(), 0)


def test_whole_number_steps_of_any_type_give_the_same_step() -> None:
    """t = 2.0 or tensor(2) passed check_count, then crashed in the step's seed and batch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5), nn.Linear(2, 1)).double()
    batches = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64))]
    batches = batches * 3
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batches, lr=0.1)
    x = phi.initial_state()
    want = phi.step(x, 2)
    for t in (2.0, torch.tensor(2), torch.tensor(2.0)):
        assert torch.equal(phi.step(x, t), want)
        assert torch.equal(phi.jvp(x, t, torch.ones_like(x))[0], want)


def test_adam_jacobian_is_finite_where_a_gradient_and_its_second_moment_are_zero() -> None:
    """An embedding row absent from the batch (g = v = 0): autograd's d sqrt(v) = inf made
    whole columns of jacobian() NaN; the map's derivative there is the one jvp gives."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(3, 2), nn.Flatten(), nn.Linear(4, 1)).double()
    batch = (torch.tensor([[0, 1], [1, 0]]), torch.tensor([[1.0], [-1.0]], dtype=torch.float64))
    phi = TrainingMap(
        model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], optimizer="adam", lr=0.01
    )
    x = phi.initial_state()
    for t in range(3):
        x = phi.step(x, t)
    jac = phi.jacobian(x, 3)
    _, jvp = phi.jvp(x, 3, torch.eye(phi.state_dim, dtype=torch.float64))
    assert not jac.isnan().any()
    torch.testing.assert_close(jac, jvp, rtol=1e-12, atol=1e-12)


def test_bad_tangents_and_a_detached_loss_are_one_line_errors() -> None:
    phi = TrainingMap(_model(), _ce, _batches(), optimizer="momentum", momentum=0.5, lr=0.1)
    x = phi.initial_state()
    n = phi.state_dim
    for bad, message in [
        ([0.0] * n, r"^tangents must be a floating tensor .* got list"),
        (torch.zeros(n, 2, 1, dtype=torch.float64), rf"got Tensor \({n}, 2, 1\)"),
        (torch.zeros(n, dtype=torch.int64), r"^tangents must be a floating tensor"),
    ]:
        with pytest.raises(SharpdimError, match=message):
            phi.jvp(x, 0, bad)

    def detached(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return _ce(model, batch).detach()

    frozen = TrainingMap(_model(), detached, _batches(), lr=0.1)
    with pytest.raises(SharpdimError, match=r"^the loss does not depend on the model's param"):
        frozen.step(frozen.initial_state(), 0)


def test_one_batch_passed_as_a_tuple_of_tensors_is_refused() -> None:
    """TrainingMap(..., (x, y)) read one batch as two (step 0 used x as its batch, step 1 y):
    a wrong step, then a shape error from the model."""
    model = nn.Linear(2, 1, bias=False).double()
    data = (torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))

    def mse(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    with pytest.raises(SharpdimError) as err:
        TrainingMap(model, mse, data, lr=0.5)
    assert str(err.value) == (
        "batches is a tuple of tensors: one (x, y) batch or several one-tensor batches? pass a "
        "list: [(x, y)] for one batch, [(x1, y1), (x2, y2), ...] or [b1, b2, ...]"
    )
    phi = TrainingMap(model, mse, [data], lr=0.5)  # H = I: w' = w - 0.5 w
    x0 = phi.initial_state()
    assert torch.equal(phi.step(x0, 1), 0.5 * x0)
    # a list of one-tensor batches (a loss of the inputs alone) stays a list of batches
    batches = [torch.eye(2, dtype=torch.float64), 2 * torch.eye(2, dtype=torch.float64)]
    psi = TrainingMap(model, lambda m, b: (m(b) ** 2).mean(), batches, lr=0.25)
    assert torch.equal(psi.step(x0, 0), 0.75 * x0)  # H = I at t = 0, 4 I at t = 1
    assert torch.equal(psi.step(x0, 1), 0.0 * x0)


def test_a_once_differentiable_layer_is_refused_by_the_step_jacobian() -> None:
    """TrainingMap.jvp took H v through a @once_differentiable tanh as zero: I - lr H read as
    the identity, and the Lyapunov exponents as those of a map that never moves."""
    from tests.curvature.test_hessian import _Activation

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), _Activation(True), nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(8, 3, generator=g, dtype=torch.float64),
             torch.randn(8, 1, generator=g, dtype=torch.float64))  # fmt: skip
    phi = TrainingMap(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], lr=0.5)
    x0 = phi.initial_state()
    phi.step(x0, 0)  # a first-order step is fine
    with pytest.raises(SharpdimError, match=r"^the loss passes through _OnceDifferentiableTanh"):
        phi.jvp(x0, 0, torch.eye(phi.state_dim, dtype=torch.float64)[:, :2])


def test_a_sparse_embedding_steps_like_its_dense_twin() -> None:
    """The swapped-in views of the state gave nn.Embedding(sparse=True) sparse gradients that
    could not be reshaped: step, jvp and every Lyapunov tool raised a raw RuntimeError."""
    from tests.curvature.test_hessian import sparse_embedding_twins

    sparse, twin, batch, ce = sparse_embedding_twins()
    ours, reference = (TrainingMap(m, ce, [batch], lr=0.3) for m in (sparse, twin))
    x0 = ours.initial_state()
    assert torch.equal(ours.step(x0, 0), reference.step(x0, 0))
    dx = torch.eye(ours.state_dim, dtype=torch.float64)[:, :3]
    torch.testing.assert_close(ours.jvp(x0, 0, dx)[1], reference.jvp(x0, 0, dx)[1])
    assert sparse.embed.sparse  # restored after the step


def test_the_swap_restores_each_embeddings_own_sparse_flag() -> None:
    """The sparse embeddings were listed when the map was built and set sparse again after
    every step, even one the user had since made dense: the map changed the model."""
    from tests.curvature.test_hessian import sparse_embedding_twins

    sparse, _, batch, ce = sparse_embedding_twins()
    phi = TrainingMap(sparse, ce, [batch], lr=0.3)
    sparse.embed.sparse = False
    phi.step(phi.initial_state(), 0)
    assert sparse.embed.sparse is False


def test_a_torch_functional_loss_is_refused_when_the_map_is_built() -> None:
    """The map computes its loss before checking it, so F.cross_entropy raised torch's
    TypeError ('argument input must be Tensor, not Linear') at the first step."""
    model = nn.Linear(2, 2).double()
    batch = (torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 0]))
    with pytest.raises(SharpdimError, match=r"^loss_fn is F.cross_entropy, which takes"):
        TrainingMap(model, F.cross_entropy, [batch], lr=0.1)
