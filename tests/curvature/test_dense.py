"""Dense Hessians and the size guard."""

from __future__ import annotations

import pytest
import torch

from sharpdim.curvature.dense import (
    DENSE_LIMIT,
    check_dense_size,
    dense_hessian,
    dense_operator_matrix,
    symmetrize_,
)
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.operator import DenseOperator
from sharpdim.errors import SharpdimError, TooLargeError
from tests.curvature.models import (
    DTYPE,
    assert_matches,
    ce_loss,
    classification_batch,
    make_mlp,
    mse_loss,
    reference_hessian,
    regression_batch,
)


def test_dense_hessian_matches_reference_and_is_symmetric() -> None:
    model, batch = make_mlp([4, 6, 3], "gelu", layernorm=True), classification_batch(10, 4, 3)
    h = dense_hessian(model, ce_loss, batch)
    assert torch.equal(h, h.T)  # symmetrized exactly
    assert_matches(h, reference_hessian(model, ce_loss, batch))
    raw = dense_hessian(model, ce_loss, batch, symmetrize=False)
    assert_matches(raw, h)


def test_dense_hessian_subset_and_mode() -> None:
    model = make_mlp([4, 6, 3], "tanh", batchnorm=True)
    batch = regression_batch(12, 4, 3)
    layer = list(model[3].parameters())
    h = dense_hessian(model, mse_loss, batch, layer, mode="train")
    assert_matches(h, reference_hessian(model, mse_loss, batch, params=layer, train=True))


def test_size_guard_refuses_and_names_iterative_methods() -> None:
    model, batch = make_mlp([4, 6, 3]), regression_batch(8, 4, 3)  # 51 parameters
    with pytest.raises(TooLargeError) as err:
        dense_hessian(model, mse_loss, batch, max_params=50)
    msg = str(err.value)
    assert isinstance(err.value, SharpdimError) and "\n" not in msg
    for name in ("lanczos_eigenvalues", "slq_spectrum", "hutchinson_trace", "max_params"):
        assert name in msg
    assert dense_hessian(model, mse_loss, batch, max_params=51).shape == (51, 51)
    assert dense_hessian(model, mse_loss, batch, max_params=None).shape == (51, 51)


def test_check_dense_size_boundaries() -> None:
    check_dense_size(DENSE_LIMIT)
    check_dense_size(10**9, None)
    with pytest.raises(TooLargeError, match=r"100,001 parameters \(74.5 GiB"):
        check_dense_size(100_001, 100_000)


def test_dense_operator_matrix() -> None:
    a = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    assert torch.equal(dense_operator_matrix(DenseOperator(a)), a)
    with pytest.raises(TooLargeError):
        dense_operator_matrix(DenseOperator(a), max_params=4)
    model, batch = make_mlp([3, 4, 2]), regression_batch(6, 3, 2)
    op = HessianOperator(model, mse_loss, batch)
    assert_matches(dense_operator_matrix(op), reference_hessian(model, mse_loss, batch))


@pytest.mark.parametrize("n", [1, 7, 1030])
@pytest.mark.parametrize("block", [3, 1024])
def test_symmetrize_in_place_equals_the_average(n: int, block: int) -> None:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=DTYPE)
    expected = (a + a.T) / 2
    out = symmetrize_(a, block=block)
    assert out is a
    assert torch.equal(out, expected)


def _column_by_column(op: HessianOperator) -> torch.Tensor:
    return op._matmat(torch.eye(op.num_params, dtype=op.dtype))


def test_batched_dense_columns_equal_the_column_loop_on_a_transformer() -> None:
    """dense() takes its columns in batched double backwards; with LayerNorm and attention
    (where vmap of jacrev goes wrong) they equal one product per column to round-off."""
    from tests.curvature.models import lm_batch, lm_loss, make_transformer

    op = HessianOperator(make_transformer(), lm_loss, lm_batch())
    batched = op.dense()
    assert op._dense_width == 64  # a small graph: batched
    torch.testing.assert_close(batched, _column_by_column(op), rtol=1e-12, atol=1e-12)


def test_dense_falls_back_to_columns_where_torch_cannot_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, batch = make_mlp([4, 6, 3], "tanh", layernorm=True), classification_batch(10, 4, 3)
    op = HessianOperator(model, ce_loss, batch)
    real_grad = torch.autograd.grad

    def no_batching(*args: object, **kwargs: object) -> object:
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("vmap: no batching rule")
        return real_grad(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    h = op.dense()
    assert op._dense_width == 1
    assert_matches(h, reference_hessian(model, ce_loss, batch))


def test_a_graph_that_saves_much_is_not_batched() -> None:
    """The bias block of the 100-256-256-10 MLP at batch 1000 (a graph of 6.7 MiB) was 2.7x
    slower and took 317 MiB more batched: one column at a time, the same matrix."""
    from torch import nn

    from sharpdim.curvature.batched_hvp import MAX_SAVED, batch_columns

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(100, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 10)
    )
    x, y = torch.randn(1000, 100), torch.randint(0, 10, (1000,))
    op = HessianOperator(
        model, lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), (x, y), [model[2].bias]
    )
    h = op.dense()
    assert op._dense_width == 1
    torch.testing.assert_close(h, _column_by_column(op), rtol=0, atol=0)
    assert [batch_columns(s) for s in (0, 2**20, 4 * 2**20, MAX_SAVED + 1)] == [64, 64, 16, 1]


def test_measuring_the_graph_keeps_nothing_alive() -> None:
    """The measuring hooks handed autograd the tensors themselves: a tanh output saved by its
    own node formed a cycle through C++ that kept the graph, the batch and the parameters."""
    import gc
    import weakref

    model, batch = make_mlp([4, 6, 3], "tanh"), classification_batch(10, 4, 3)
    op = HessianOperator(model, ce_loss, batch)
    op.dense()
    assert op._dense_width == 64
    weight = weakref.ref(model[0].weight)
    del op, model
    gc.collect()
    assert weight() is None


def test_dense_of_a_loss_that_uses_torch_func() -> None:
    """torch.func refuses saved-tensor hooks: the measurement is skipped, not the product."""
    from torch.func import grad

    model, batch = make_mlp([4, 6, 3], "tanh"), regression_batch(10, 4, 3)

    def penalised(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        def out_sum(x: torch.Tensor) -> torch.Tensor:
            return m(x).sum()

        return mse_loss(m, b) + 0.1 * grad(out_sum)(b[0]).pow(2).sum()

    op = HessianOperator(model, penalised, batch)
    h = op.dense()
    assert op._dense_width == 1
    torch.testing.assert_close(h, _column_by_column(op), rtol=0, atol=0)


def test_an_asymmetric_hessian_from_a_wrong_double_backward_is_refused() -> None:
    """Under torch 2.13 the second derivative of torch._weight_norm is wrong (gradients are
    right): dense() returned an asymmetric, wrong Hessian (asymmetry 0.07, error 0.12 on this
    model), dense_hessian averaged it and eigvalsh read one triangle of it, with no error."""
    from torch.nn.utils.parametrizations import weight_norm

    torch.manual_seed(0)
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    model = torch.nn.Sequential(
        weight_norm(torch.nn.Linear(4, 6)), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    ce = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    op = HessianOperator(model, ce, (x, y))
    columns = torch.stack([op @ e for e in torch.eye(op.num_params, dtype=torch.float64)], 1)
    if float((columns - columns.T).abs().max()) < 1e-6:
        pytest.skip("this torch differentiates weight_norm twice correctly")
    message = r"^the Hessian is not symmetric \(max \|H - H\^T\| = .*weight_norm"
    with pytest.raises(SharpdimError, match=message) as err:
        HessianOperator(model, ce, (x, y)).dense()
    assert "\n" not in str(err.value)
    with pytest.raises(SharpdimError, match=message):
        dense_hessian(model, ce, (x, y))
    # the same function with plain ops: symmetric, accepted
    plain = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    h = HessianOperator(plain.double(), ce, (x, y)).dense()
    assert float((h - h.T).abs().max()) <= 1e-14
