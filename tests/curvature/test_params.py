"""Flat parameter vectors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from sharpdim.curvature.params import (
    flatten,
    get_flat_params,
    set_flat_params,
    trainable_parameters,
    unflatten,
)
from sharpdim.errors import SharpdimError
from tests.curvature.models import make_mlp


def test_flatten_unflatten_round_trip() -> None:
    params = list(make_mlp([3, 4, 2]).parameters())
    flat = flatten(params)
    assert flat.shape == (3 * 4 + 4 + 4 * 2 + 2,)
    for p, q in zip(params, unflatten(flat, params), strict=True):
        assert torch.equal(p, q)


def test_unflatten_block_is_batched_layout() -> None:
    params = list(make_mlp([3, 4, 2]).parameters())
    n = sum(p.numel() for p in params)
    block = torch.randn(n, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pieces = unflatten(block, params)
    for j in range(3):
        column = unflatten(block[:, j], params)
        for piece, col, p in zip(pieces, column, params, strict=True):
            assert piece.shape == (3, *p.shape)
            assert torch.equal(piece[j], col)


def test_get_and_set_flat_params() -> None:
    model = make_mlp([3, 4, 2])
    params = list(model.parameters())
    w = get_flat_params(params)
    assert not w.requires_grad
    w.add_(1.0)  # a copy: the model does not change
    assert not torch.equal(flatten([p.detach() for p in params]), w)
    versions = [p._version for p in params]
    set_flat_params(params, w)
    assert torch.equal(get_flat_params(params), w)
    assert all(
        p._version > v for p, v in zip(params, versions, strict=True)
    )  # visible to operators


def test_set_flat_params_takes_a_generator_and_checks_the_size() -> None:
    """With model.parameters() (a generator) nothing was written and nothing raised."""
    model = make_mlp([3, 4, 2])
    zeros = torch.zeros(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    set_flat_params(model.parameters(), zeros)
    assert float(get_flat_params(model.parameters()).abs().max()) == 0.0
    for bad in (torch.zeros(5, dtype=torch.float64), zeros[:, None], [0.0] * zeros.numel()):
        with pytest.raises(SharpdimError, match=r"^the flat vector is .*, the parameters hold 26"):
            set_flat_params(model.parameters(), bad)


def test_trainable_parameters_selection() -> None:
    model = make_mlp([3, 4, 2])
    model[0].bias.requires_grad_(False)
    assert trainable_parameters(model) == [model[0].weight, model[2].weight, model[2].bias]
    w = model[2].weight
    assert trainable_parameters(model, [w, model[0].bias, w]) == [w]
    with pytest.raises(SharpdimError, match=r"every tensor in `params` \(1\) has requires_grad"):
        trainable_parameters(model, [model[0].bias])
    with pytest.raises(SharpdimError, match=r"\.parameters\(\)"):
        trainable_parameters(model, model[2])  # type: ignore[arg-type]
    with pytest.raises(SharpdimError, match="tensors"):
        trainable_parameters(model, [nn.Linear(1, 1)])  # type: ignore[list-item]


def test_unflatten_of_a_vector_of_the_wrong_size_is_refused() -> None:
    params = list(nn.Linear(2, 3).parameters())  # 6 + 3 numbers
    with pytest.raises(
        SharpdimError,
        match=r"^the flat vector has shape \(10,\), the parameters hold 9 numbers: pass a vector of shape \(9,\)",
    ):
        unflatten(torch.zeros(10), params)
    with pytest.raises(
        SharpdimError, match=r"^the flat vector has shape \(8, 2\), the parameters hold 9"
    ):
        unflatten(torch.zeros(8, 2), params)


def test_flat_params_of_no_parameters_is_refused() -> None:
    used = iter([torch.zeros(2)])
    list(used)
    empties: list[Iterator[torch.Tensor] | list[torch.Tensor]] = [[], used]
    for empty in empties:
        with pytest.raises(SharpdimError, match=r"^no parameters given .*: pass the tensors"):
            get_flat_params(empty)


def test_meta_parameters_are_refused_in_one_line() -> None:
    from sharpdim.curvature import HessianOperator

    model = nn.Linear(3, 1, device="meta")
    with pytest.raises(SharpdimError, match=r"^Linear has parameters on the meta device.*to_empty"):
        trainable_parameters(model)
    batch = (torch.zeros(4, 3, device="meta"), torch.zeros(4, 1, device="meta"))
    with pytest.raises(SharpdimError, match="meta device"):
        HessianOperator(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), batch)
