"""Closed-form one-step singular values against the SVD of the real optimizer's Jacobian."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
import pytest
import torch
from torch import nn

from sharpdim.curvature.dense import dense_hessian
from sharpdim.curvature.operator import DenseOperator
from sharpdim.curvature.params import set_flat_params
from sharpdim.dynamics.jacobian_spectra import (
    StepMatrixOperator,
    StepSpectrumConfig,
    block_singular_values,
    sgd_exponent,
    singular_values_2x2,
    step_log_singular_values,
    step_matrix,
)
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError
from tests.dynamics.real_optim import in_parameter_units


def _setup() -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (16,), generator=gen)
    return model, [(x[:8], y[:8]), (x[8:], y[8:])]


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def test_singular_values_2x2_match_svd() -> None:
    gen = torch.Generator().manual_seed(0)
    m = (
        torch.randn(500, 2, 2, generator=gen, dtype=torch.float64)
        * torch.rand(500, 1, 1, generator=gen, dtype=torch.float64)
        * 10
    )
    s1, s2 = singular_values_2x2(m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1])
    ref = torch.linalg.svdvals(m)
    torch.testing.assert_close(torch.stack([s1, s2], 1), ref, rtol=1e-12, atol=1e-12)


def _decimal_singular_values(p: Decimal, q: Decimal, r: Decimal, s: Decimal) -> list[float]:
    """Both singular values of ``[[p, q], [r, s]]`` in 60-digit decimal arithmetic."""
    plus = ((p + s) ** 2 + (q - r) ** 2).sqrt()
    minus = ((p - s) ** 2 + (q + r) ** 2).sqrt()
    return [float((plus + minus) / 2), float(abs(plus - minus) / 2)]


@pytest.mark.parametrize(
    ("optimizer", "lr", "a"),
    [("momentum", 0.1, 1e8), ("nesterov", 0.1, 1e8), ("adam", 1e-3, 1e10), ("adamw", 1e-3, 1e8)],
)
def test_block_singular_values_keep_relative_accuracy_at_large_curvature(
    optimizer: str, lr: float, a: float
) -> None:
    """sigma_2 << sigma_1: the difference of square roots lost 17% (momentum) or all of it
    (Adam, sigma_2 = 0); the closed-form determinant keeps it, against 60-digit decimals."""
    mu, b1, wd, step = 0.9, 0.9, 0.01, 5
    config = StepSpectrumConfig(
        optimizer=optimizer, lr=lr, momentum=mu, betas=(b1, 0.999), weight_decay=wd, step=step
    )
    got = block_singular_values(torch.tensor([a], dtype=torch.float64), config).tolist()
    with localcontext() as ctx:
        ctx.prec = 60
        lr_, mu_, a_, b1_, wd_ = (Decimal(x) for x in (lr, mu, a, b1, wd))
        if optimizer == "momentum":  # second state in parameter units (lr v, (lr/c1) m)
            block = (1 - lr_ * a_, -mu_, lr_ * a_, mu_)
        elif optimizer == "nesterov":
            block = (1 - lr_ * (1 + mu_) * a_, -mu_ * mu_, lr_ * a_, mu_)
        else:
            decay = lr_ * wd_ if optimizer == "adamw" else Decimal(0)
            size = lr_ / (1 - b1_**step)
            block = (1 - decay - size * (1 - b1_) * a_, -b1_, size * (1 - b1_) * a_, b1_)
        want = _decimal_singular_values(*block)
    assert got == pytest.approx(want, rel=1e-12)


def test_sgd_exponent_and_guard() -> None:
    assert float(sgd_exponent(torch.tensor(3.0), 0.9)) == pytest.approx(math.log(1.7))
    assert float(sgd_exponent(torch.tensor(2.0), 0.5)) == pytest.approx(math.log(1e-12))
    assert float(sgd_exponent(torch.tensor(2.0), 0.5, eps=1e-6)) == pytest.approx(math.log(1e-6))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_sgd_momentum_blocks_equal_brute_force_svd(optimizer: str, weight_decay: float) -> None:
    model, batches = _setup()
    lr, mu = 2.5, 0.7
    phi = TrainingMap(
        model,
        _ce,
        batches,
        optimizer=optimizer,
        lr=lr,
        momentum=mu,
        weight_decay=weight_decay,
        mode="eval",
    )
    x = phi.initial_state()
    if phi.num_blocks == 2:  # the Jacobian does not depend on v: any v
        x[phi.num_params :] = torch.randn(
            phi.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
        )
    config = StepSpectrumConfig(optimizer=optimizer, lr=lr, momentum=mu, weight_decay=weight_decay)
    for t, batch in enumerate(batches):
        jac = in_parameter_units(phi.jacobian(x, t), phi.num_params, lr)  # (w, lr v)
        brute = torch.sort(
            torch.log(torch.linalg.svdvals(jac) + config.eps), descending=True
        ).values
        alpha = torch.linalg.eigvalsh(step_matrix(dense_hessian(model, _ce, batch), config))
        closed = step_log_singular_values(alpha, config)
        assert closed.shape == brute.shape
        torch.testing.assert_close(closed, brute, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("optimizer", "weight_decay"), [("adam", 0.0), ("adam", 0.05), ("adamw", 0.1)]
)
def test_adam_frozen_preconditioner_equals_brute_force(optimizer: str, weight_decay: float) -> None:
    """Jacobian of the real Adam step with v' held constant, in coordinates (P^1/2 w, P^-1/2 m)."""
    model, batches = _setup()
    lr, betas, adam_eps, t = 0.05, (0.85, 0.99), 1e-8, 1
    phi = TrainingMap(
        model,
        _ce,
        batches,
        optimizer=optimizer,
        lr=lr,
        betas=betas,
        eps=adam_eps,
        weight_decay=weight_decay,
        mode="eval",
        step_offset=2,
    )
    x = phi.initial_state()
    x = phi.step(phi.step(x, 0), 1)  # non-trivial m and v
    d = phi.num_params
    jac = phi.jacobian(x, t, freeze_second_moment=True)[: 2 * d, : 2 * d]
    s = phi.step_offset + t + 1  # the step number of this call
    _, g, _ = phi.loss_and_grad(x[:d], t)
    if optimizer == "adam":
        g = g + weight_decay * x[:d]
    v_new = betas[1] * x[2 * d :] + (1 - betas[1]) * g * g
    p = (v_new / (1 - betas[1] ** s)).sqrt() + adam_eps
    c1 = 1 - betas[0] ** s
    # S = diag(D^1/2, (c1/lr) D^-1/2), D = 1/P: coordinates (D^-1/2 w, (lr/c1) D^1/2 m)
    scale = torch.cat([p.rsqrt(), (c1 / lr) * p.sqrt()])
    jac_pre = jac * scale[None, :] / scale[:, None]  # S^-1 J S
    config = StepSpectrumConfig(
        optimizer=optimizer, lr=lr, betas=betas, weight_decay=weight_decay, step=s
    )
    brute = torch.sort(
        torch.log(torch.linalg.svdvals(jac_pre) + config.eps), descending=True
    ).values
    set_flat_params(list(model.parameters()), x[:d])  # the Hessian at the current iterate
    h = dense_hessian(model, _ce, batches[t])
    closed = step_log_singular_values(torch.linalg.eigvalsh(step_matrix(h, config, p)), config)
    torch.testing.assert_close(closed, brute, rtol=0, atol=1e-9)
    # the eigenvalues of J (autograd) are those of the 2x2 blocks [[rho - k (1 - b1) a, -k b1],
    # [(1 - b1) a, b1]] of J in the coordinates (D^-1/2 w, D^1/2 m), k = lr / c1, over the
    # eigenvalues a of the step matrix (rho = 1 - lr wd for AdamW's decoupled decay, else 1)
    a = torch.linalg.eigvalsh(step_matrix(h, config, p))
    rho = 1 - lr * weight_decay if optimizer == "adamw" else 1.0
    k, b1, one = lr / c1, betas[0], torch.ones_like(a)
    blocks = torch.stack(
        [
            torch.stack([rho - k * (1 - b1) * a, -k * b1 * one], -1),
            torch.stack([(1 - b1) * a, b1 * one], -1),
        ],
        -2,
    )
    ev_ref = torch.linalg.eigvals(blocks).reshape(-1)
    ev = torch.linalg.eigvals(jac)
    for part in (torch.abs, torch.real):
        torch.testing.assert_close(
            torch.sort(part(ev)).values, torch.sort(part(ev_ref)).values, rtol=1e-8, atol=1e-10
        )


def test_step_matrix_operator_matches_dense() -> None:
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    h = b + b.T
    p = torch.rand(7, generator=gen, dtype=torch.float64) + 0.1
    for config, pre in [
        (StepSpectrumConfig(optimizer="sgd", lr=0.1, weight_decay=0.3), None),
        (StepSpectrumConfig(optimizer="adam", lr=0.1, weight_decay=0.3), p),
        (StepSpectrumConfig(optimizer="adamw", lr=0.1, weight_decay=0.3), p),
    ]:
        op = StepMatrixOperator(DenseOperator(h), config, pre)
        torch.testing.assert_close(op.dense(), step_matrix(h, config, pre))
    assert torch.allclose(
        step_matrix(h, StepSpectrumConfig(optimizer="adamw", lr=0.1, weight_decay=0.3), p),
        p.rsqrt()[:, None] * h * p.rsqrt()[None, :],
    )


def test_heavy_ball_block_determinant_is_mu() -> None:
    a = torch.linspace(-3, 30, 50, dtype=torch.float64)
    sig = block_singular_values(
        a, StepSpectrumConfig(optimizer="momentum", lr=0.2, momentum=0.6)
    ).view(-1, 2)
    torch.testing.assert_close(sig.prod(1), torch.full((50,), 0.6, dtype=torch.float64))


def test_bad_config() -> None:
    with pytest.raises(SharpdimError, match="unknown optimizer"):
        StepSpectrumConfig(optimizer="rmsprop")
    with pytest.raises(SharpdimError, match="lr"):
        StepSpectrumConfig(lr=-1.0)
    with pytest.raises(SharpdimError, match="momentum"):
        StepSpectrumConfig(momentum=1.0)
    for wd in (-0.1, float("nan")):
        with pytest.raises(SharpdimError, match="weight_decay must be a finite number >= 0"):
            StepSpectrumConfig(weight_decay=wd)
    with pytest.raises(SharpdimError, match="preconditioner"):
        step_matrix(torch.eye(3), StepSpectrumConfig(optimizer="adam"))
    with pytest.raises(SharpdimError, match="shape"):
        step_matrix(torch.eye(3), StepSpectrumConfig(optimizer="adam"), torch.ones(2))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", "0.1", "lr must be a finite number > 0"),
        ("momentum", None, "momentum must be a finite number in"),
        ("betas", (0.9,), "betas must be a pair"),
        ("betas", (0.9, "x"), "betas must be a finite number"),
        ("weight_decay", "0", "weight_decay must be a finite number >= 0"),
        ("eps", float("inf"), "eps must be a finite number >= 0"),
        ("step", True, "step must be an integer >= 1"),
        ("step", 2.5, "step must be an integer >= 1"),
    ],
)
def test_config_values_of_the_wrong_type_are_one_line_errors(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(SharpdimError, match=message):
        StepSpectrumConfig(**{field: value})  # type: ignore[arg-type]


def test_a_preconditioner_with_a_non_adam_optimizer_is_refused() -> None:
    with pytest.raises(SharpdimError, match="a preconditioner is Adam's"):
        step_matrix(torch.eye(3), StepSpectrumConfig(optimizer="sgd"), torch.ones(3))


def test_config_takes_numbers_as_torch_and_numpy_give_them() -> None:
    # what a live optimizer holds: tensor betas, a float or tensor step count
    plain = StepSpectrumConfig(optimizer="adam", lr=0.1, betas=(0.5, 0.75), step=5)
    for config in (
        StepSpectrumConfig(optimizer="adam", lr=np.float64(0.1), betas=(0.5, 0.75), step=5.0),
        StepSpectrumConfig(
            optimizer="adam",
            lr=torch.tensor(0.1, dtype=torch.float64),
            betas=torch.tensor([0.5, 0.75]),
            step=torch.tensor(5.0),
        ),
        StepSpectrumConfig(optimizer="adam", lr=0.1, betas=np.array([0.5, 0.75]), step=np.int64(5)),
    ):
        a = torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64))
        p = torch.tensor([2.0, 0.5], dtype=torch.float64)
        torch.testing.assert_close(step_matrix(a, config, p), step_matrix(a, plain, p))
        assert config == plain


def test_step_matrix_needs_a_square_matrix() -> None:
    config = StepSpectrumConfig()
    for bad, message in [
        (torch.ones(3, 2, dtype=torch.float64), r"must be square, got shape \(3, 2\)"),
        (torch.ones(3, dtype=torch.float64), r"square 2-D tensor, got \(3,\)"),
        ([[1.0]], r"square 2-D tensor, got list"),
    ]:
        with pytest.raises(SharpdimError, match=message):
            step_matrix(bad, config)


def test_complex_and_bool_inputs_are_one_line_errors() -> None:
    """Complex eigenvalues (torch.linalg.eigvals) lost their imaginary part with only a
    warning, a complex preconditioner raised NotImplementedError, bools were read as 1."""
    sgd, adam = StepSpectrumConfig(lr=0.5), StepSpectrumConfig(optimizer="adam", lr=0.5)
    eigvals = torch.linalg.eigvals(torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))
    for bad in (eigvals, torch.tensor([True, False]), np.array([0.5 + 1j])):
        with pytest.raises(SharpdimError, match=r"^the eigenvalues a must be real"):
            block_singular_values(bad, sgd)
        with pytest.raises(SharpdimError, match=r"^the eigenvalues a must be real"):
            step_log_singular_values(bad, sgd)
        with pytest.raises(SharpdimError, match=r"^alpha must be real"):
            sgd_exponent(bad, 0.5)
    for hessian in (torch.eye(2, dtype=torch.complex128), torch.eye(2, dtype=torch.bool)):
        with pytest.raises(SharpdimError, match=r"^the Hessian must be real, got a torch\.(c|b)"):
            step_matrix(hessian, sgd)
    for p in (torch.tensor([1 + 1j, 1]), torch.tensor([True, True])):
        with pytest.raises(SharpdimError, match=r"^the preconditioner must be real, got a "):
            step_matrix(torch.eye(2, dtype=torch.float64), adam, p)
        with pytest.raises(SharpdimError, match=r"^the preconditioner must be real, got a "):
            StepMatrixOperator(DenseOperator(torch.eye(2, dtype=torch.float64)), adam, p)
    for p in (np.array([1 + 1j, 1]), np.array([True, True]), [True, True]):  # were read as 1
        with pytest.raises(SharpdimError, match=r"^the preconditioner must be real numbers"):
            step_matrix(torch.eye(2, dtype=torch.float64), adam, p)
    with pytest.raises(SharpdimError, match=r"^preconditioner of type str is not numeric"):
        step_matrix(torch.eye(2, dtype=torch.float64), adam, "1, 1")


def test_eigenvalues_given_as_python_floats_are_read_in_float64() -> None:
    """A list of Python floats went through torch's float32 default: 0.1 became
    0.10000000149, so sigma = |1 - a| was off by 1.5e-9."""
    sgd = StepSpectrumConfig(lr=1.0)
    assert block_singular_values([0.1, 0.7], sgd).tolist() == [1 - 0.1, 1 - 0.7]
    assert sgd_exponent([0.1], 1.0).tolist() == [math.log(1 - 0.1 + 1e-12)]


def test_training_side_optimizer_names_are_aliases() -> None:
    """The names "gd" and "heavy_ball" (make_optimizer's, TrainConfig's) were refused."""
    assert StepSpectrumConfig(optimizer="gd").optimizer == "sgd"  # type: ignore[arg-type]
    config = StepSpectrumConfig(optimizer="heavy_ball", momentum=0.5)  # type: ignore[arg-type]
    assert config == StepSpectrumConfig(optimizer="momentum", momentum=0.5)
    with pytest.raises(SharpdimError, match=r"^unknown optimizer \['sgd'\]: use one of sgd"):
        StepSpectrumConfig(optimizer=["sgd"])  # type: ignore[arg-type]
