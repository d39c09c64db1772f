"""HessianOperator against float64 dense references, analytic Hessians and bad input."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sharpdim.curvature.hessian import HessianOperator, batch_size
from sharpdim.curvature.params import flatten, get_flat_params, set_flat_params
from sharpdim.errors import SharpdimError
from tests.curvature.models import (
    DTYPE,
    assert_matches,
    assert_symmetric,
    ce_loss,
    classification_batch,
    lm_batch,
    lm_loss,
    make_mlp,
    make_transformer,
    mse_loss,
    reference_hessian,
    regression_batch,
    tiny_linear_problem,
)


def _random(*shape: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# -- dense references ------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_mlp_matches_reference(activation: str, bias: bool, loss: str) -> None:
    model = make_mlp([4, 6, 5, 3], activation, bias=bias)
    if loss == "mse":
        loss_fn, batch = mse_loss, regression_batch(12, 4, 3)
    else:
        loss_fn, batch = ce_loss, classification_batch(12, 4, 3)
    ref = reference_hessian(model, loss_fn, batch)
    op = HessianOperator(model, loss_fn, batch)
    assert op.num_params == ref.shape[0] == sum(p.numel() for p in model.parameters())
    assert_matches(op.dense(), ref)
    v, block = _random(op.num_params), _random(op.num_params, 3, seed=8)
    assert_matches(op @ v, ref @ v)
    assert_matches(op @ block, ref @ block)


def test_transformer_block_matches_reference() -> None:
    model, tokens = make_transformer(), lm_batch()
    ref = reference_hessian(model, lm_loss, tokens)
    op = HessianOperator(model, lm_loss, tokens)
    dense = op.dense()
    assert_symmetric(dense)
    assert_matches(dense, ref)
    block = _random(op.num_params, 2)
    assert_matches(op @ block, ref @ block)


def test_layernorm_mlp_matches_reference() -> None:
    # The model on which torch.func.hessian is visibly asymmetric under torch 2.13.
    model, batch = make_mlp([6, 9, 4], layernorm=True), regression_batch(10, 6, 4)
    ref = reference_hessian(model, mse_loss, batch)
    dense = HessianOperator(model, mse_loss, batch).dense()
    assert_symmetric(dense)
    assert_matches(dense, ref)


def test_parameter_subset_is_block_of_full_hessian() -> None:
    model, batch = make_mlp([4, 6, 3], "gelu"), classification_batch(10, 4, 3)
    full = reference_hessian(model, ce_loss, batch)
    layer = list(model[2].parameters())  # the second Linear: weight (3, 6) and bias (3,)
    start = sum(p.numel() for p in model[0].parameters())
    stop = start + sum(p.numel() for p in layer)
    op = HessianOperator(model, ce_loss, batch, params=model[2].parameters())
    assert op.num_params == stop - start
    assert_matches(op.dense(), full[start:stop, start:stop])
    assert_matches(op.dense(), reference_hessian(model, ce_loss, batch, params=layer))


def test_a_single_tensor_is_a_one_parameter_subset() -> None:
    model, batch = make_mlp([4, 6, 3], "tanh"), classification_batch(10, 4, 3)
    full = reference_hessian(model, ce_loss, batch)
    start = sum(p.numel() for p in model[0].parameters())
    stop = start + model[2].weight.numel()
    op = HessianOperator(model, ce_loss, batch, params=model[2].weight)
    assert_matches(op.dense(), full[start:stop, start:stop])
    assert float(op.dense().abs().max()) > 0


def test_loss_linear_in_parameters_has_zero_hessian() -> None:
    model = nn.Linear(3, 2).to(DTYPE)
    op = HessianOperator(model, lambda m, x: m(x).sum(), _random(5, 3))
    assert torch.equal(op.dense(), torch.zeros(8, 8, dtype=DTYPE))


class _UnevenUse(nn.Module):
    """A tanh layer, a parameter the loss never uses and one it uses only linearly."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).to(DTYPE)
        self.unused = nn.Parameter(torch.ones(4, dtype=DTYPE))
        self.shift = nn.Parameter(torch.ones(2, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


def test_unused_and_linear_parameters_get_zero_blocks() -> None:
    """Rows of a parameter outside the graph, or with a constant gradient, are exactly zero,
    and the others equal the reference, whichever order they come in."""
    model = _UnevenUse()
    batch = regression_batch(7, 3, 2)

    def loss_fn(m: _UnevenUse, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return mse_loss(m, b) + 3.0 * m.shift.sum()

    params = [model.unused, model.lin.weight, model.shift, model.lin.bias]
    op = HessianOperator(model, loss_fn, batch, params=params)
    block = _random(op.num_params, 3)
    out = op @ block
    # the linear term adds no curvature: the weight/bias block is that of the MSE alone
    ref = reference_hessian(model, mse_loss, batch, params=[model.lin.weight, model.lin.bias])
    live = torch.cat([torch.arange(4, 10), torch.arange(12, 14)])  # weight (6), bias (2)
    assert_matches(out[live], ref @ block[live])
    assert torch.equal(out[:4], torch.zeros(4, 3, dtype=DTYPE))  # unused
    assert torch.equal(out[10:12], torch.zeros(2, 3, dtype=DTYPE))  # shift: linear
    assert bool(out[live].abs().gt(0).all())


# -- analytic Hessians -----------------------------------------------------------------------


def test_linear_regression_hessian_is_analytic() -> None:
    x, y = _random(30, 5), _random(30, seed=3)
    model = nn.Linear(5, 1, bias=False).to(DTYPE)

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean()

    assert_matches(HessianOperator(model, loss_fn, (x, y)).dense(), 2 / 30 * x.T @ x)


def test_logistic_regression_hessian_is_analytic() -> None:
    x = _random(40, 4)
    y = (_random(40, seed=4) > 0).to(DTYPE)
    model = nn.Linear(4, 1, bias=False).to(DTYPE)

    def loss_fn(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(m(b[0]).squeeze(-1), b[1])

    p = torch.sigmoid(x @ model.weight.detach()[0])
    expected = x.T @ (x * (p * (1 - p))[:, None]) / 40
    assert_matches(HessianOperator(model, loss_fn, (x, y)).dense(), expected)


# -- full batch and weights ------------------------------------------------------------------


def test_batches_equal_hessian_of_concatenated_batch() -> None:
    model = make_mlp([4, 5, 3], "tanh")
    x, y = classification_batch(17, 4, 3)
    chunks = [(x[:5], y[:5]), (x[5:12], y[5:12]), (x[12:], y[12:])]  # unequal sizes
    op = HessianOperator(model, ce_loss, batches=chunks)
    assert op.weights == pytest.approx([5 / 17, 7 / 17, 5 / 17])
    ref = reference_hessian(model, ce_loss, (x, y))
    assert_matches(op.dense(), ref)
    v = _random(op.num_params)
    assert_matches(op @ v, ref @ v)


def test_weights_give_weighted_sum_of_batch_hessians() -> None:
    model = make_mlp([4, 5, 2], "gelu")
    b1, b2 = regression_batch(6, 4, 2, seed=1), regression_batch(9, 4, 2, seed=2)
    h1, h2 = (reference_hessian(model, mse_loss, b) for b in (b1, b2))
    op = HessianOperator(model, mse_loss, batches=[b1, b2], weights=[0.25, 2.0])
    assert_matches(op.dense(), 0.25 * h1 + 2.0 * h2)
    single = HessianOperator(model, mse_loss, b1, weights=[3.0])
    assert_matches(single.dense(), 3.0 * h1)
    loss, _ = single.loss_and_gradient()
    assert loss == pytest.approx(3.0 * float(mse_loss(model, b1).detach()), rel=1e-12)


def test_loss_and_gradient_equal_autograd() -> None:
    model = make_mlp([4, 6, 3], "relu")
    x, y = classification_batch(15, 4, 3)
    loss = ce_loss(model, (x, y))
    grad = flatten(torch.autograd.grad(loss, list(model.parameters())))
    for op in (
        HessianOperator(model, ce_loss, (x, y)),
        HessianOperator(model, ce_loss, batches=[(x[:4], y[:4]), (x[4:], y[4:])]),
    ):
        value, g = op.loss_and_gradient()
        assert value == pytest.approx(float(loss.detach()), rel=1e-12)
        assert_matches(g, grad)
    with torch.no_grad():  # the operator turns gradients on itself
        value, g = HessianOperator(model, ce_loss, (x, y)).loss_and_gradient()
    assert_matches(g, grad)


def test_batch_size_of_common_containers() -> None:
    t = torch.zeros(4, 2)
    assert batch_size(t) == batch_size((t, t)) == batch_size([t]) == batch_size({"x": t}) == 4
    assert batch_size(torch.tensor(1.0)) == 1
    with pytest.raises(SharpdimError, match="weights="):
        batch_size(object())


def test_single_batch_of_any_type_needs_no_size() -> None:
    class Batch:
        def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
            self.x, self.y = x, y

    model, (x, y) = make_mlp([3, 4, 2]), regression_batch(8, 3, 2)
    op = HessianOperator(model, lambda m, b: ((m(b.x) - b.y) ** 2).mean(), Batch(x, y))
    assert_matches(op.dense(), reference_hessian(model, mse_loss, (x, y)))


# -- train / eval mode -----------------------------------------------------------------------


def test_dropout_eval_mode_is_deterministic_and_restores_flags() -> None:
    model = make_mlp([4, 8, 3], "tanh", dropout=0.5)
    batch = regression_batch(10, 4, 3)
    model.train()
    model[2].eval()  # a mixed pattern of flags must come back exactly
    flags = [m.training for m in model.modules()]
    op = HessianOperator(model, mse_loss, batch)  # mode="eval" by default
    first, second = op.dense(), op.dense()
    assert torch.equal(first, second)
    assert_symmetric(first)
    assert_matches(first, reference_hessian(model, mse_loss, batch, train=False))
    assert [m.training for m in model.modules()] == flags


def test_dropout_train_mode_freezes_one_mask_per_graph() -> None:
    model = make_mlp([4, 8, 3], "tanh", dropout=0.5).eval()
    batch = regression_batch(10, 4, 3)
    op = HessianOperator(model, mse_loss, batch, mode="train")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first, second = op.dense(), op.dense()
    assert torch.equal(first, second)  # same reused graph, same mask
    assert_symmetric(first)
    assert not torch.allclose(first, reference_hessian(model, mse_loss, batch))
    assert not any(m.training for m in model.modules())


def test_dropout_train_mode_replays_the_mask_when_rebuilding() -> None:
    model = make_mlp([4, 8, 3], "tanh", dropout=0.5)
    x, y = regression_batch(10, 4, 3)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        reused = HessianOperator(model, mse_loss, (x, y), mode="train").dense()
        torch.manual_seed(1)
        op = HessianOperator(model, mse_loss, (x, y), mode="train", reuse_graph=False)
        rebuilt = torch.cat([op @ torch.eye(op.num_params, dtype=DTYPE)[:, j] for j in range(3)])
        state = torch.get_rng_state()
        _ = op @ torch.ones(op.num_params, dtype=DTYPE)  # a replay leaves the global RNG alone
        assert torch.equal(torch.get_rng_state(), state)
    assert_matches(rebuilt, reused[:, :3].T.reshape(-1))
    chunks = [(x[:4], y[:4]), (x[4:], y[4:])]
    full = HessianOperator(model, mse_loss, batches=chunks, mode="train")
    first = full.dense()
    assert_symmetric(first)  # every matvec sees the same two masks
    assert torch.equal(first, full.dense())
    _, g = full.loss_and_gradient()
    assert torch.equal(g, full.loss_and_gradient()[1])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batch_norm_mode_selects_statistics(mode: str) -> None:
    model = make_mlp([4, 6, 3], "tanh", batchnorm=True)
    x, y = regression_batch(12, 4, 3)
    with torch.no_grad():  # non-trivial running statistics
        model.train()(x + 0.5)
    model.eval()
    bn = model[1]
    buffers = {k: v.clone() for k, v in bn.state_dict().items()}
    op = HessianOperator(model, mse_loss, (x, y), mode=mode)
    ref = reference_hessian(model, mse_loss, (x, y), train=mode == "train")
    assert_matches(op.dense(), ref)
    other = reference_hessian(model, mse_loss, (x, y), train=mode != "train")
    assert not torch.allclose(ref, other)
    for k, v in bn.state_dict().items():  # curvature never changes the running statistics
        assert torch.equal(v, buffers[k]), k
    assert not model.training


def test_keep_mode_uses_current_flags() -> None:
    model = make_mlp([4, 6, 3], batchnorm=True)
    batch = regression_batch(12, 4, 3)
    model.train()
    op = HessianOperator(model, mse_loss, batch, mode="keep")
    assert_matches(op.dense(), reference_hessian(model, mse_loss, batch, train=True))
    assert model.training
    model.eval()  # the kept graph was built in train mode: it must be rebuilt
    assert_matches(op.dense(), reference_hessian(model, mse_loss, batch, train=False))


# -- graph reuse and in-place updates --------------------------------------------------------


def _sgd_step(model: nn.Module, loss_fn, batch) -> None:  # type: ignore[no-untyped-def]
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    opt.zero_grad()
    loss_fn(model, batch).backward()
    opt.step()


def test_operator_rebuilds_after_optimizer_step() -> None:
    model, batch = make_mlp([4, 6, 3], "tanh"), classification_batch(10, 4, 3)
    op = HessianOperator(model, ce_loss, batch)
    v = _random(op.num_params)
    before = op @ v
    _sgd_step(model, ce_loss, batch)
    after = op @ v
    assert not torch.allclose(before, after)
    assert_matches(after, HessianOperator(model, ce_loss, batch) @ v)


def test_subset_operator_rebuilds_when_another_layer_changes() -> None:
    model, batch = make_mlp([4, 6, 3], "tanh"), classification_batch(10, 4, 3)
    op = HessianOperator(model, ce_loss, batch, params=model[2].parameters())
    v = _random(op.num_params)
    before = op @ v
    with torch.no_grad():
        model[0].weight.mul_(1.5)  # not a parameter of the operator, but its Hessian block moves
    after = op @ v
    assert not torch.allclose(before, after)
    assert_matches(after, HessianOperator(model, ce_loss, batch, params=model[2].parameters()) @ v)


def test_set_flat_params_and_refresh() -> None:
    model, batch = make_mlp([3, 5, 2], "gelu"), regression_batch(9, 3, 2)
    op = HessianOperator(model, mse_loss, batch)
    v = _random(op.num_params)
    _ = op @ v
    set_flat_params(op.params, get_flat_params(op.params) * 0.5)
    assert_matches(op @ v, HessianOperator(model, mse_loss, batch) @ v)
    model[0].weight.data.mul_(2.0)  # invisible to version counters, seen in the values
    assert_matches(op @ v, HessianOperator(model, mse_loss, batch) @ v)
    op.refresh()
    assert_matches(op @ v, HessianOperator(model, mse_loss, batch) @ v)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_operator_rebuilds_after_a_fused_optimizer_step(optimizer: str) -> None:
    # fused steps write the parameters without bumping autograd's version counters
    model, batch = make_mlp([4, 5, 2], "tanh"), regression_batch(8, 4, 2)
    op = HessianOperator(model, mse_loss, batch)
    v = _random(op.num_params)
    before = op @ v
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    opt = make(model.parameters(), lr=0.1, fused=True)
    versions = [p._version for p in model.parameters()]
    opt.zero_grad()
    mse_loss(model, batch).backward()
    opt.step()
    assert [p._version for p in model.parameters()] == versions  # (what the test is about)
    fresh = HessianOperator(model, mse_loss, batch) @ v
    assert (fresh - before).abs().max() > 1e-3
    assert_matches(op @ v, fresh)


def test_a_nan_or_an_uncomparable_tensor_the_loss_never_reaches_keeps_the_graph() -> None:
    # the value check must not take NaN != NaN for a change (a rebuild at every product), nor
    # fail on a dtype torch cannot compare (complex32)
    model, batch = make_mlp([4, 5, 2], "tanh"), regression_batch(8, 4, 2)
    model.register_buffer("stat", torch.tensor([float("nan"), 1.0], dtype=DTYPE))
    with pytest.warns(UserWarning, match="ComplexHalf support is experimental"):
        model.register_buffer("odd", torch.zeros(2, dtype=torch.complex32))
    op = HessianOperator(model, mse_loss, batch)
    builds, build = [0], op._gradient_graph

    def counted(index: int):  # type: ignore[no-untyped-def]
        builds[0] += 1
        return build(index)

    op._gradient_graph = counted  # type: ignore[method-assign]
    v = _random(op.num_params)
    first = op @ v
    for _ in range(3):
        assert torch.equal(op @ v, first)
    assert builds[0] == 1


def test_a_replaced_parameter_is_refused() -> None:
    model, batch = make_mlp([4, 5, 2], "tanh"), regression_batch(8, 4, 2)
    op = HessianOperator(model, mse_loss, batch)
    v = _random(op.num_params)
    _ = op @ v
    model.load_state_dict({k: t.clone() * 1.1 for k, t in model.state_dict().items()}, assign=True)
    for call in (lambda: op @ v, op.loss_and_gradient):
        with pytest.raises(SharpdimError, match="build a new HessianOperator") as err:
            call()
        _one_line(err)
    chunked = HessianOperator(model, mse_loss, batches=[batch, batch])
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())
    with pytest.raises(SharpdimError, match="no longer parameters of the model"):
        chunked @ v


def test_graph_reuse_and_rebuild_agree() -> None:
    model, tokens = make_transformer(seed=3), lm_batch(n=3, seed=5)
    v = _random(sum(p.numel() for p in model.parameters()), 2)
    reused = HessianOperator(model, lm_loss, tokens)
    fresh = HessianOperator(model, lm_loss, tokens, reuse_graph=False)
    assert reused.reuse_graph and not fresh.reuse_graph
    assert_matches(reused @ v, fresh @ v)


# -- dtype and device ------------------------------------------------------------------------


def test_dtype_and_device_follow_the_model() -> None:
    model = make_mlp([3, 4, 2]).float()
    x, y = regression_batch(6, 3, 2)
    op = HessianOperator(model, mse_loss, (x.float(), y.float()))
    assert op.dtype == torch.float32 and op.device == torch.device("cpu")
    out = op @ torch.ones(op.num_params, dtype=torch.float64)  # converted to the model's dtype
    assert out.dtype == torch.float32 and out.shape == (op.num_params,)


# -- bad input -------------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo[SharpdimError]) -> str:
    msg = str(err.value)
    assert "\n" not in msg and ":" in msg, msg
    return msg


def test_non_scalar_loss_is_rejected() -> None:
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    op = HessianOperator(model, lambda m, b: (m(b[0]) - b[1]) ** 2, batch)
    with pytest.raises(SharpdimError, match="scalar") as err:
        op @ torch.zeros(op.num_params, dtype=DTYPE)
    _one_line(err)


def test_model_without_trainable_parameters_is_rejected() -> None:
    frozen = make_mlp([3, 4, 2]).requires_grad_(False)
    for model in (frozen, nn.ReLU()):
        with pytest.raises(SharpdimError, match="no trainable parameters") as err:
            HessianOperator(model, mse_loss, regression_batch(6, 3, 2))
        _one_line(err)


@pytest.mark.parametrize("shape", [(5,), (31,), (30, 2, 1), ()])
def test_mismatched_vector_shape_is_rejected(shape: tuple[int, ...]) -> None:
    model = make_mlp([3, 4, 2], bias=False)  # 12 + 8 = 20 parameters
    op = HessianOperator(model, mse_loss, regression_batch(6, 3, 2))
    with pytest.raises(SharpdimError, match="does not match") as err:
        op @ torch.zeros(shape, dtype=DTYPE)
    _one_line(err)


def test_non_finite_loss_is_rejected() -> None:
    model = make_mlp([3, 4, 2])
    x, y = regression_batch(6, 3, 2)
    x[2, 1] = float("nan")
    op = HessianOperator(model, mse_loss, (x, y))
    with pytest.raises(SharpdimError, match="not finite") as err:
        op @ torch.zeros(op.num_params, dtype=DTYPE)
    _one_line(err)
    with pytest.raises(SharpdimError, match="not finite"):
        op.loss_and_gradient()


def test_a_loss_over_no_targets_names_the_empty_mean() -> None:
    model = make_mlp([3, 4, 2])
    x = regression_batch(6, 3, 2)[0]
    y = torch.full((6,), -100)  # every target is cross-entropy's ignore_index: a mean of none
    op = HessianOperator(
        model, lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), (x, y)
    )
    with pytest.raises(SharpdimError, match=r"a mean is over no elements \(e\.g\. every target"):
        op @ torch.zeros(op.num_params, dtype=DTYPE)


def test_loss_without_graph_is_rejected() -> None:
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    op = HessianOperator(model, lambda m, b: mse_loss(m, b).detach(), batch)
    with pytest.raises(SharpdimError, match="no_grad") as err:
        op @ torch.zeros(op.num_params, dtype=DTYPE)
    _one_line(err)


def test_batch_arguments_are_checked() -> None:
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    bad: list[dict[str, object]] = [
        {"batch": batch, "batches": [batch]},
        {},
        {"batches": []},
        {"batch": batch, "mode": "training"},
        {"batches": [batch, batch], "weights": [1.0]},
        {"batch": batch, "params": model[0]},
        {"batches": [(batch[0][:0], batch[1][:0])] * 2},
        {"batches": [batch, batch], "weights": ["a", "b"]},
        {"batches": [batch, batch], "weights": [float("nan"), 1.0]},
        {"batch": batch, "params": make_mlp([3, 4, 2]).parameters()},
    ]
    for kwargs in bad:
        with pytest.raises(SharpdimError) as err:
            HessianOperator(model, mse_loss, **kwargs)  # type: ignore[arg-type]
        _one_line(err)


def test_mixed_dtypes_are_rejected() -> None:
    model = make_mlp([3, 4, 2])
    model[2].float()
    with pytest.raises(SharpdimError, match="dtype") as err:
        HessianOperator(model, mse_loss, regression_batch(6, 3, 2))
    _one_line(err)


def test_repeated_parameters_count_once() -> None:
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    w = model[0].weight
    op = HessianOperator(model, mse_loss, batch, params=[w, w, model[0].bias, w])
    assert op.num_params == 16
    assert_matches(op.dense(), reference_hessian(model, mse_loss, batch, params=[w, model[0].bias]))


# -- properties ------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    hidden=st.integers(1, 6),
    depth=st.integers(1, 2),
    activation=st.sampled_from(["tanh", "gelu", "relu"]),
    seed=st.integers(0, 2**16),
)
def test_hessian_vector_products_are_symmetric_and_linear(
    hidden: int, depth: int, activation: str, seed: int
) -> None:
    model = make_mlp([3, *[hidden] * depth, 2], activation, seed=seed)
    op = HessianOperator(model, ce_loss, classification_batch(7, 3, 2, seed=seed))
    u, v = _random(op.num_params, seed=seed), _random(op.num_params, seed=seed + 1)
    hu, hv = op @ u, op @ v
    scale = float(hu.norm() * v.norm() + hv.norm() * u.norm()) + 1e-300
    assert abs(float(u @ hv - v @ hu)) <= 1e-12 * scale  # u^T H v = v^T H u
    both = op @ torch.stack([u, v], dim=1)
    assert_matches(both, torch.stack([hu, hv], dim=1))
    assert_matches(op @ (2.0 * u - 3.0 * v), 2.0 * hu - 3.0 * hv)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(split=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_any_split_into_batches_gives_the_full_batch_hessian(split: int, seed: int) -> None:
    model = make_mlp([3, 4, 2], "tanh", seed=seed)
    x, y = regression_batch(10, 3, 2, seed=seed)
    op = HessianOperator(model, mse_loss, batches=[(x[:split], y[:split]), (x[split:], y[split:])])
    full = HessianOperator(copy.deepcopy(model), mse_loss, (x, y))
    assert_matches(op.dense(), full.dense())


# -- review fixes: attention, list batches, non-finite products, complex losses ---------------


def _sdp_flags() -> tuple[bool, ...]:
    b = torch.backends.cuda
    return (
        b.flash_sdp_enabled(),
        b.mem_efficient_sdp_enabled(),
        b.math_sdp_enabled(),
        b.cudnn_sdp_enabled(),
    )


class _AttentionBlock(nn.Module):
    """``nn.TransformerEncoderLayer`` (``F.scaled_dot_product_attention``) and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer(x).mean(1))


def test_scaled_dot_product_attention_is_twice_differentiable() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _AttentionBlock().to(DTYPE)
    batch = (_random(3, 4, 8), torch.tensor([0, 2, 1]))
    with sdpa_kernel(SDPBackend.MATH):
        ref = reference_hessian(model, ce_loss, batch)
    flags = _sdp_flags()
    op = HessianOperator(model, ce_loss, batch)
    v = _random(op.num_params)
    assert_matches(op @ v, ref @ v)
    assert_matches(op.dense(), ref)
    assert_matches(
        op.loss_and_gradient()[1],
        flatten(list(torch.autograd.grad(ce_loss(model, batch), list(model.parameters())))),
    )
    assert _sdp_flags() == flags == (True,) * 4  # the default backends are restored


def _example_list_loss(model: nn.Module, examples: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    xs, ys = torch.stack([e[0] for e in examples]), torch.stack([e[1] for e in examples])
    return F.cross_entropy(model(xs), ys)


def test_batches_of_example_lists_need_explicit_weights() -> None:
    model, (x, y) = make_mlp([6, 8, 3]), classification_batch(30, 6, 3)
    examples = list(zip(x, y, strict=True))  # 30 (x_i, y_i) pairs, x_i of shape (6,)
    chunks = [examples[:4], examples[4:]]
    with pytest.raises(SharpdimError, match="weights=") as err:
        HessianOperator(model, _example_list_loss, batches=chunks)
    _one_line(err)
    op = HessianOperator(model, _example_list_loss, batches=chunks, weights=[4 / 30, 26 / 30])
    full = HessianOperator(model, _example_list_loss, examples).dense()
    assert_matches(op.dense(), full)


def test_batch_size_is_the_first_top_level_tensor() -> None:
    t = torch.zeros(4, 2)
    texts, labels = ["a", "b", "c", "d"], [0, 1, 0, 1]
    for batch in (
        (t, t[:, 0], "names", torch.tensor(0.5)),
        {"x": t, "y": t[:, 0], "step": 3},
        (t, t[:, 0], texts),  # raw texts beside the tensors
        (t, labels),  # labels as a Python list
        {"x": t, "y": t[:, 0], "meta": {"epoch": 1}},
        (t, t[:, 0], torch.ones(10)),  # per-class weights after the examples
        ((t[:, 0], t[:, 1]), t[:, 0]),  # nested inputs (e.g. a PackedSequence) and labels
    ):
        assert batch_size(batch) == 4
    sequences = [torch.zeros(9), torch.zeros(3), torch.zeros(4)]  # per example, varying length
    assert batch_size([t, t[:, 0]]) == 4  # a list (x, y) of one batch is still read
    assert batch_size([t, t[:, 0], torch.tensor(0.5)]) == 4  # a scalar beside them is passed over
    for examples in ([(t, t), (t, t)], {"x": {"y": t}}, ("a",), (), sequences):
        with pytest.raises(SharpdimError, match="weights=") as err:
            batch_size(examples)
        _one_line(err)


def _rmse_at_exact_fit() -> HessianOperator:
    """RMSE = sqrt(MSE) at an exact fit: the loss is 0, its gradient and Hessian are NaN."""
    model = make_mlp([3, 1], bias=False)
    x = _random(8, 3)
    y = model(x).detach()
    return HessianOperator(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean().sqrt(), (x, y))


def test_non_finite_hessian_product_is_rejected() -> None:
    op = _rmse_at_exact_fit()
    assert op.loss_and_gradient()[0] == 0.0
    with pytest.raises(SharpdimError, match=r"not finite.*although the loss is finite") as err:
        op @ torch.ones(3, dtype=DTYPE)
    _one_line(err)
    finite = HessianOperator(make_mlp([3, 4, 2]), mse_loss, regression_batch(6, 3, 2))
    with pytest.raises(SharpdimError, match="vector holds NaN") as err:
        finite @ torch.full((finite.num_params,), float("nan"), dtype=DTYPE)
    _one_line(err)


def test_complex_loss_is_rejected() -> None:
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    op = HessianOperator(model, lambda m, b: mse_loss(m, b) * (1 + 1j), batch)
    with pytest.raises(SharpdimError, match="real") as err:
        op @ torch.zeros(op.num_params, dtype=DTYPE)
    _one_line(err)


def test_train_mode_dropout_leaves_the_global_rng_and_repeats() -> None:
    """The masks come from a fork of the global generator: computing curvature does not move
    the caller's random stream, so the same call twice gives the same numbers."""
    from sharpdim.curvature import lanczos_eigenvalues, slq_spectrum

    model = make_mlp([4, 8, 3], "tanh", dropout=0.5)
    x, y = regression_batch(10, 4, 3)
    with torch.random.fork_rng():
        torch.manual_seed(7)
        state = torch.get_rng_state()

        def moment() -> float:
            op = HessianOperator(model, mse_loss, (x, y), mode="train")
            lanczos_eigenvalues(op, k=2)
            slq = slq_spectrum(op, num_runs=2, num_steps=8, generator=torch.Generator())
            return slq.expectation(lambda t: t**2)

        first = moment()
        assert torch.equal(torch.get_rng_state(), state)
        assert moment() == first
    # an explicit seed fixes the masks whatever the global state; batches get their own masks
    a = HessianOperator(model, mse_loss, (x, y), mode="train", seed=3).dense()
    torch.manual_seed(11)
    assert torch.equal(a, HessianOperator(model, mse_loss, (x, y), mode="train", seed=3).dense())
    assert not torch.equal(
        a, HessianOperator(model, mse_loss, (x, y), mode="train", seed=4).dense()
    )
    twice = HessianOperator(model, mse_loss, batches=[(x, y), (x, y)], mode="train", seed=3)
    b = HessianOperator(model, mse_loss, (x, y), mode="train", seed=4).dense()
    assert torch.allclose(twice.dense(), (a + b) / 2, rtol=1e-12, atol=1e-14)
    # torch keeps a seed's low 32 bits: 2**32 would replay the masks of seed 0
    with pytest.raises(SharpdimError, match="at most 2\\*\\*32 - 1") as err:
        HessianOperator(model, mse_loss, (x, y), mode="train", seed=2**32)
    _one_line(err)
    last = HessianOperator(model, mse_loss, batches=[(x, y), (x, y)], mode="train", seed=2**32 - 1)
    first = HessianOperator(model, mse_loss, (x, y), mode="train", seed=0).dense()  # batch 1
    end = HessianOperator(model, mse_loss, (x, y), mode="train", seed=2**32 - 1).dense()
    assert torch.allclose(last.dense(), (end + first) / 2, rtol=1e-12, atol=1e-14)


def test_empty_or_frozen_params_subsets_are_named() -> None:
    model = make_mlp([4, 8, 3], "tanh")
    batch = regression_batch(10, 4, 3)
    with pytest.raises(SharpdimError, match=r"`params` is empty"):
        HessianOperator(model, mse_loss, batch, params=[])
    model[-1].requires_grad_(False)
    with pytest.raises(SharpdimError, match=r"every tensor in `params` \(2\) has requires_grad"):
        HessianOperator(model, mse_loss, batch, params=model[-1].parameters())
    partly = HessianOperator(model, mse_loss, batch, params=[model[0].weight, model[-1].weight])
    assert partly.num_params == model[0].weight.numel()  # the frozen one is left out


def _linear_ce_setup() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    return model, (x, torch.tensor([0, 3, 1, 2, 2, 0]))


def _ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch[0]), batch[1])


def test_complex_parameters_are_refused() -> None:
    """A complex model gave a complex, non-Hermitian 'Hessian' (the real one is 2d x 2d)."""
    model = nn.Linear(2, 1, dtype=torch.complex128)  # (.to(complex) warns)
    with pytest.raises(SharpdimError, match=r"^the parameters are torch.complex128: the Hessian"):
        HessianOperator(model, lambda m, b: m(b).real.sum(), torch.ones(1, 2))


def test_a_parameter_given_new_storage_rebuilds_the_graph() -> None:
    """Swapping a parameter's storage (what model.to()/.double() do) bumps no version: the
    kept graph was reused and gave neither the old nor the new Hessian."""
    model, batch = _linear_ce_setup()
    op = HessianOperator(model, _ce, batch)
    v = torch.randn(op.num_params, dtype=torch.float64)
    op @ v
    model.weight.data = model.weight.data * 3.0  # new storage, same version counter
    fresh = HessianOperator(model, _ce, batch)
    torch.testing.assert_close(op @ v, fresh @ v, rtol=1e-14, atol=1e-14)


def test_a_chunk_of_weight_0_is_left_out() -> None:
    """The token-count weights the docs recommend give an all-padding chunk weight 0; its NaN
    loss was still evaluated and the operator refused it."""
    model, (x, y) = _linear_ce_setup()
    padded = (x[:2], torch.full((2,), -100))
    chunked = HessianOperator(model, _ce, batches=[(x, y), padded], weights=[1.0, 0.0])
    alone = HessianOperator(model, _ce, (x, y))
    v = torch.randn(alone.num_params, dtype=torch.float64)
    torch.testing.assert_close(chunked @ v, alone @ v, rtol=1e-14, atol=1e-14)
    assert chunked.loss_and_gradient()[0] == pytest.approx(alone.loss_and_gradient()[0])
    # a single chunk of weight 0 took the graph-reuse path, which evaluated its NaN loss
    only_padding = HessianOperator(model, _ce, batches=[padded], weights=[0.0])
    assert torch.equal(only_padding @ v, torch.zeros_like(v))


def test_a_non_finite_vector_is_refused_where_the_hessian_is_zero() -> None:
    """A zero Hessian (a linear model and loss) turned an all-NaN vector into zeros."""
    model = nn.Linear(3, 1).double()
    op = HessianOperator(model, lambda m, b: m(b).sum(), torch.ones(4, 3, dtype=DTYPE))
    for bad in (math.nan, math.inf):
        with pytest.raises(SharpdimError, match=r"^the vector holds NaN/inf"):
            op @ torch.full((op.num_params,), bad, dtype=DTYPE)
    assert torch.equal(op @ torch.ones(op.num_params, dtype=DTYPE), torch.zeros(4, dtype=DTYPE))
    # a finite float64 vector beyond float32's range was "the vector holds NaN/inf"
    narrow = HessianOperator(nn.Linear(3, 1), lambda m, b: m(b).square().sum(), torch.ones(4, 3))
    with pytest.raises(SharpdimError, match=r"^the vector is finite but overflows the operator's"):
        narrow @ torch.full((narrow.num_params,), 1e39, dtype=DTYPE)


class _SparseBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3).double()
        adjacency = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        self.register_buffer("adjacency", adjacency.double().to_sparse())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.adjacency, torch.tanh(self.lin(x)))


def test_a_sparse_buffer_is_tracked_without_a_data_pointer() -> None:
    """Tracking storages called data_ptr() on a sparse buffer, which has none: RuntimeError."""
    torch.manual_seed(0)
    model = _SparseBuffer()
    x = torch.randn(3, 3, dtype=torch.float64)

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return (m(b) ** 2).sum()

    h = HessianOperator(model, loss, x).dense()
    assert torch.allclose(h, h.T, atol=1e-12) and h.shape == (12, 12)


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh with a first-order-only backward, as fused kernels often have."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(x)
        ctx.save_for_backward(y)  # type: ignore[attr-defined]
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return g * (1 - y * y)


class _Activation(nn.Module):
    def __init__(self, custom: bool) -> None:
        super().__init__()
        self.custom = custom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _OnceDifferentiableTanh.apply(x) if self.custom else torch.tanh(x)


def test_a_once_differentiable_function_in_the_loss_is_refused() -> None:
    """torch drops a @once_differentiable backward from a second derivative without an error:
    H @ v came out ~1e-17 for a 3-4-3 MLP whose tanh was such a Function (true Hessian of
    norm 0.33, and Lanczos 'converged' on garbage), and exactly 0 for sum(f(Wx))."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (5,), generator=g)
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), _Activation(False), nn.Linear(4, 3)).double()
    custom = copy.deepcopy(plain)
    custom[1].custom = True

    def ce(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    exact = HessianOperator(plain, ce, (x, y)).dense()
    assert float(exact.abs().max()) > 0.1
    message = r"^the loss passes through _OnceDifferentiableTanh, a custom autograd.Function"
    op = HessianOperator(custom, ce, (x, y))
    with pytest.raises(SharpdimError, match=message):
        op @ torch.ones(op.num_params, dtype=torch.float64)
    with pytest.raises(SharpdimError, match=message):
        op.dense()
    summed = HessianOperator(custom[:2], lambda m, b: m(b[0]).sum(), (x, y))
    with pytest.raises(SharpdimError, match=message):
        summed @ torch.ones(summed.num_params, dtype=torch.float64)
    custom[1].custom = False  # the same model through differentiable ops: the exact Hessian
    torch.testing.assert_close(HessianOperator(custom, ce, (x, y)).dense(), exact)


class _SparseEmbeddingNet(nn.Module):
    def __init__(self, sparse: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4, sparse=sparse)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(tokens))).mean(1)


def sparse_embedding_twins() -> tuple[nn.Module, nn.Module, tuple[torch.Tensor, ...], Any]:
    """A float64 net with ``nn.Embedding(sparse=True)``, its dense twin (same values), a
    token batch and a cross-entropy ``loss_fn``."""
    torch.manual_seed(0)
    sparse, twin = _SparseEmbeddingNet(True).double(), _SparseEmbeddingNet(False).double()
    twin.load_state_dict(sparse.state_dict())
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 7, (6, 3), generator=g), torch.randint(0, 3, (6,), generator=g))

    def ce(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(b[0]), b[1])

    return sparse, twin, batch, ce


def test_sparse_embedding_gradients_give_the_dense_twins_hessian() -> None:
    """nn.Embedding(sparse=True) gives sparse gradients: every product, dense() and
    loss_and_gradient raised 'reshape is not implemented for sparse tensors'."""
    sparse, twin, batch, ce = sparse_embedding_twins()
    g = torch.Generator().manual_seed(1)
    ours, reference = HessianOperator(sparse, ce, batch), HessianOperator(twin, ce, batch)
    v = torch.randn(ours.num_params, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ours @ v, reference @ v, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ours.dense(), reference.dense(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ours.loss_and_gradient()[1], reference.loss_and_gradient()[1])


def test_parameters_frozen_after_the_build_are_a_one_line_error() -> None:
    """requires_grad_(False) after building the operator: the reused graph gave autograd's
    'One of the differentiated Tensors does not require grad' (refresh() too), and a subset
    operator 'loss without a gradient graph'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    op = HessianOperator(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), batch)
    v = torch.ones(op.num_params, dtype=torch.float64)
    op @ v  # the graph is built and kept
    model[0].requires_grad_(False)
    message = r"^2 of the operator's parameter tensors \(shapes \[\(4, 3\), \(4,\)\]\) no longer"
    with pytest.raises(SharpdimError, match=message):
        op @ v
    with pytest.raises(SharpdimError, match=message):
        op.loss_and_gradient()
    fresh = HessianOperator(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), batch)
    assert fresh.num_params == 10  # the last layer only


def test_a_torch_compiled_model_is_measured_through_its_eager_module() -> None:
    """torch.compile graphs have no double backward: H @ v raised 'torch.compile with
    aot_autograd does not currently support double backward' (or, after a training step,
    'donated buffers'), deep inside torch."""
    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    compiled = torch.compile(eager, backend="aot_eager")
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))

    def mse(model: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.mse_loss(model(b[0]), b[1])

    mse(compiled, batch).backward()  # one training step's backward through the compiled graph
    torch.testing.assert_close(
        HessianOperator(compiled, mse, batch).dense(), HessianOperator(eager, mse, batch).dense()
    )


def test_a_torch_loss_module_as_loss_fn_is_a_one_line_error() -> None:
    """nn.CrossEntropyLoss() takes (output, target): it raised 'cross_entropy_loss():
    argument input must be Tensor, not Sequential', 20 frames deep."""
    model = nn.Sequential(nn.Linear(3, 2)).double()
    batch = (torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(SharpdimError, match=r"^loss_fn is a CrossEntropyLoss, which takes"):
        HessianOperator(model, nn.CrossEntropyLoss(), batch)  # type: ignore[arg-type]  # (at once)


def test_a_compiled_submodule_is_a_one_line_error() -> None:
    """Only a compiled top-level model was unwrapped: a torch.compile'd layer inside raised
    'torch.compile with aot_autograd does not currently support double backward'."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model[0] = torch.compile(model[0], backend="aot_eager")
    batch = (torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(SharpdimError, match=r"^the submodule '0' is torch.compile'd"):
        HessianOperator(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), batch)


class _OnceDifferentiableVjpTanh(torch.autograd.Function):
    """The same tanh, its first-order-only derivative given as ``vjp`` (torch's alias of
    backward)."""

    forward = staticmethod(_OnceDifferentiableTanh.forward)
    vjp = staticmethod(_OnceDifferentiableTanh.backward)


def test_a_once_differentiable_vjp_is_refused_too() -> None:
    """The graph walk looked at backward only: a @once_differentiable vjp gave Lanczos 0.542
    against the exact 0.733, with no error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Identity(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randint(0, 3, (5,), generator=g),
    )

    def ce(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(m[2](_OnceDifferentiableVjpTanh.apply(m[0](b[0]))), b[1])

    op = HessianOperator(model, ce, batch)
    with pytest.raises(SharpdimError, match=r"^the loss passes through _OnceDifferentiableVjpTanh"):
        op @ torch.ones(op.num_params, dtype=torch.float64)


def _two_layers() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """A 3-4-2 pair of linear layers (float64) and a batch of 5 regression examples."""
    torch.manual_seed(0)
    model = nn.ModuleList([nn.Linear(3, 4).double(), nn.Linear(4, 2).double()])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return model, (x, torch.randn(5, 2, generator=g, dtype=torch.float64))


def _assert_same_hessian(
    model: nn.Module, batch: Any, params: list[Any], loss: Any, at_least: float = 0.01
) -> None:
    """``loss(m, b, False)`` and its plain twin ``loss(m, b, True)`` have the same (nonzero)
    Hessian in ``params`` to 1e-13."""
    got = HessianOperator(model, lambda m, b: loss(m, b, False), batch, params).dense()
    want = HessianOperator(model, lambda m, b: loss(m, b, True), batch, params).dense()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    assert want.abs().max() > at_least


@pytest.mark.parametrize(
    ("layer", "named"),
    [
        (lambda h: torch.cdist(h.view(-1, 2, 2), h.view(-1, 2, 2) + 1).flatten(1), "torch.cdist"),
        (lambda h: torch.stack([F.pdist(r.view(2, 2)) for r in h]).repeat(1, 4), "F.pdist"),
        (
            lambda h: torch.utils.checkpoint.checkpoint(torch.tanh, h, use_reentrant=True),
            "torch.utils.checkpoint with use_reentrant=True",
        ),
    ],
)
def test_ops_without_a_second_derivative_are_one_line_errors(layer: Any, named: str) -> None:
    """torch cannot differentiate these twice: the first product raised a raw
    NotImplementedError ('the derivative for _cdist_backward is not implemented') or, for
    reentrant activation checkpointing, a RuntimeError ('incompatible with .grad()')."""
    model, batch = _two_layers()
    op = HessianOperator(model, lambda m, b: F.mse_loss(m[1](layer(m[0](b[0]))), b[1]), batch)
    with pytest.raises(SharpdimError, match=rf"^the loss passes through {re.escape(named)}"):
        op @ torch.ones(op.num_params, dtype=torch.float64)


def test_an_op_off_the_differentiated_path_is_not_refused() -> None:
    """A head-only Hessian never differentiates through the body: torch computes it, and the
    first version of the refusal (any such node in the graph) refused it."""
    model, batch = _two_layers()
    centres = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(m: Any, b: Any, plain: bool) -> torch.Tensor:
        points = m[0](b[0]).view(-1, 2, 1, 2)
        d = (
            (points - centres).pow(2).sum(-1).sqrt()
            if plain
            else torch.cdist(points[:, :, 0], centres[None])
        )
        return F.mse_loss(m[1](torch.exp(-d).flatten(1)[:, :4]), b[1])

    _assert_same_hessian(model, batch, list(model[1].parameters()), loss, at_least=0.05)


def test_a_reentrant_checkpoint_is_refused_anywhere_in_the_loss() -> None:
    """The parameters a reentrant checkpoint's function uses are not below its node (their
    gradients come from a backward run inside it): a Hessian of the block's own parameters,
    whose node is off every path to them, read zero with no error under the path rule. No
    inspection proves a function holds none of the differentiated parameters (hooks,
    closures, tied weights), so even a head-only Hessian is refused: use_reentrant=False."""
    torch.manual_seed(0)
    first, block, head = (nn.Linear(3, 3).double() for _ in range(3))
    model = nn.ModuleList([first, block, head])
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(5, 3, generator=g, dtype=torch.float64),
             torch.randn(5, 3, generator=g, dtype=torch.float64))  # fmt: skip

    def loss(m: Any, b: Any, plain: bool) -> torch.Tensor:
        h = torch.tanh(m[0](b[0])).detach()  # (the checkpoint's input needs no gradient ...)
        h.requires_grad_(True)  # (... but gets one, as enable_input_require_grads does)
        h = m[1](h) if plain else torch.utils.checkpoint.checkpoint(m[1], h, use_reentrant=True)
        return F.mse_loss(m[2](torch.tanh(h)), b[1])

    for params in (list(block.parameters()), list(model.parameters()), list(head.parameters())):
        op = HessianOperator(model, lambda m, b: loss(m, b, False), batch, params)
        with pytest.raises(SharpdimError, match=r"^the loss passes through torch.utils.checkpoint"):
            op @ torch.ones(op.num_params, dtype=torch.float64)
    from sharpdim.dynamics.step_maps import TrainingMap

    phi = TrainingMap(model, lambda m, b: loss(m, b, False), [batch], lr=0.1)
    with pytest.raises(SharpdimError, match=r"^the loss passes through torch.utils.checkpoint"):
        phi.jvp(phi.initial_state(), 0, torch.ones(phi.state_dim, dtype=torch.float64))


def test_a_users_function_named_like_a_refused_node_is_accepted() -> None:
    """Only torch's own nodes are refused: a user's twice-differentiable Function called
    ``Cdist`` (node ``CdistBackward``) was refused as torch.cdist."""

    class Cdist(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            ctx.save_for_backward(x, c)
            return (x[:, None] - c[None]).pow(2).sum(-1)

        @staticmethod
        def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x, c = ctx.saved_tensors
            diff = x[:, None] - c[None]
            return 2 * (g[..., None] * diff).sum(1), -2 * (g[..., None] * diff).sum(0)

    model, batch = _two_layers()
    centres = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def loss(m: Any, b: Any, own: bool) -> torch.Tensor:
        h = m[0](b[0])
        d = Cdist.apply(h, centres) if own else (h[:, None] - centres[None]).pow(2).sum(-1)
        return torch.tanh(d).mean()

    _assert_same_hessian(
        model, batch, list(model[0].parameters()), lambda m, b, plain: loss(m, b, not plain)
    )


def test_non_reentrant_checkpointing_is_exact() -> None:
    """The fix the message names: use_reentrant=False gives the Hessian of the plain model."""
    model, batch = _two_layers()

    def loss(m: Any, b: Any, ckpt: bool) -> torch.Tensor:
        h = m[0](b[0])
        h = (
            torch.utils.checkpoint.checkpoint(torch.tanh, h, use_reentrant=False)
            if ckpt
            else h.tanh()
        )
        return F.mse_loss(m[1](h), b[1])

    plain = HessianOperator(model, lambda m, b: loss(m, b, False), batch).dense()
    checked = HessianOperator(model, lambda m, b: loss(m, b, True), batch).dense()
    torch.testing.assert_close(checked, plain, rtol=0, atol=1e-14)
    assert plain.abs().max() > 0.1


def test_an_embedding_bag_is_a_one_line_error() -> None:
    """torch has no double backward for nn.EmbeddingBag: the first product raised a raw
    NotImplementedError ('the derivative for _embedding_bag_backward is not implemented')."""
    torch.manual_seed(0)
    bag, head = nn.EmbeddingBag(6, 3, mode="mean").double(), nn.Linear(3, 2).double()
    model = nn.ModuleList([bag, head])
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randint(0, 6, (4, 3), generator=g),
        torch.randn(4, 2, generator=g, dtype=torch.float64),
    )
    op = HessianOperator(model, lambda m, b: F.mse_loss(m[1](torch.tanh(m[0](b[0]))), b[1]), batch)
    with pytest.raises(SharpdimError, match=r"^the loss passes through nn.EmbeddingBag, whose"):
        op @ torch.ones(op.num_params, dtype=torch.float64)


def _reference_hvp(model: nn.Module, loss_fn: Any, batch: Any, v: torch.Tensor) -> torch.Tensor:
    return HessianOperator(model, loss_fn, batch, reuse_graph=False) @ v


def test_the_cached_graph_follows_a_batch_changed_in_place_and_a_swapped_module() -> None:
    """Targets scaled in place left the cached products stale (off by 16.5), inputs scaled in
    place raised autograd's "modified by an inplace operation", a swapped activation (a module
    without parameters) left them stale too."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)

    def mse(m: nn.Module, b: Any) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    H = HessianOperator(model, mse, (x, y))
    v = torch.randn(H.num_params, dtype=torch.float64)
    before = H @ v
    y.mul_(-3.0)
    torch.testing.assert_close(H @ v, _reference_hvp(model, mse, (x, y), v), rtol=1e-12, atol=0)
    assert not torch.allclose(H @ v, before)
    x.mul_(2.0)
    torch.testing.assert_close(H @ v, _reference_hvp(model, mse, (x, y), v), rtol=1e-12, atol=0)
    model[1] = nn.Sigmoid()
    torch.testing.assert_close(H @ v, _reference_hvp(model, mse, (x, y), v), rtol=1e-12, atol=0)


def test_weights_that_are_not_one_number_per_batch_are_refused() -> None:
    """A dict was read by its keys ({0: .25, 1: .75} became [0, 1]: a wrong Hessian); a 0-dim
    tensor or array raised len()'s TypeError."""
    model, loss_fn, batch = tiny_linear_problem()
    unordered = ({0: 0.25, 1: 0.75}, torch.tensor(1.0), np.array(1.0), {0.5, 0.25})
    for weights in (*unordered, bytearray(b"\x01\x03")):
        with pytest.raises(SharpdimError, match=r"^weights must be a sequence of one number"):
            HessianOperator(model, loss_fn, batches=[batch, batch], weights=weights)


def test_a_loss_fn_that_is_not_callable_is_refused_at_once() -> None:
    model, _, batch = tiny_linear_problem()
    with pytest.raises(
        SharpdimError, match=r"^loss_fn must be callable as loss_fn\(model, batch\)"
    ):
        HessianOperator(model, None, batch)  # type: ignore[arg-type]


def test_a_sparse_vector_is_multiplied_by_its_values() -> None:
    model, loss_fn, batch = tiny_linear_problem()
    H = HessianOperator(model, loss_fn, batch)
    v = torch.arange(4.0, dtype=torch.float64)
    assert torch.equal(H @ v.to_sparse(), H @ v)


def test_targets_made_under_inference_mode_are_accepted() -> None:
    """Inference tensors have no version counter: watching the batch raised at the first
    product (teacher targets computed under torch.inference_mode())."""
    model, loss_fn, batch = tiny_linear_problem()
    with torch.inference_mode():
        targets = batch[1].clone()
    v = torch.ones(4, dtype=torch.float64)
    got = HessianOperator(model, loss_fn, (batch[0], targets)) @ v
    torch.testing.assert_close(got, HessianOperator(model, loss_fn, batch) @ v)
