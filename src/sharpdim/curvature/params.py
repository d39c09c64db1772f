"""Flat parameter vectors: the coordinates in which every curvature operator acts.

A model's trainable parameters ``[p_1, ..., p_m]`` are identified with one vector in ``R^d``,
``d = sum_i numel(p_i)``, in the order of ``model.parameters()`` (or of the subset given).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.module_modes import require_module


def trainable_parameters(
    model: nn.Module, params: Iterable[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """The parameters an operator differentiates: ``params`` if given, else all trainable ones.

    Tensors with ``requires_grad=False`` are skipped and repeated tensors kept once (in the
    order of their first appearance). A single tensor counts as a one-element subset; every
    tensor given must be a parameter of ``model`` (anything else has no Hessian block here),
    and none may be on the meta device (no values to differentiate at).
    """
    require_module(model)
    if isinstance(params, nn.Module):
        raise SharpdimError(
            f"`params` is a module ({type(params).__name__}): pass its .parameters() instead"
        )
    if isinstance(params, torch.Tensor):
        params = [params]
    own = list(model.parameters())
    chosen = own if params is None else list(params)
    if not all(isinstance(p, torch.Tensor) for p in chosen):
        raise SharpdimError(
            "`params` must hold tensors: pass e.g. model.fc.parameters() or [model.fc.weight]"
        )
    own_ids = {id(p) for p in own}
    foreign = [tuple(p.shape) for p in chosen if id(p) not in own_ids]
    if foreign:
        raise SharpdimError(
            f"`params` holds {len(foreign)} tensor(s) that are not parameters of the model "
            f"(shapes {foreign[:3]}): pass tensors from this model's .parameters()"
        )
    if params is not None and not chosen:
        raise SharpdimError(
            "`params` is empty: pass tensors of the model, e.g. model.fc.parameters() (an "
            "iterator used once already, or a name filter that matched nothing, is empty)"
        )
    unique = {id(p): p for p in chosen if p.requires_grad}
    if params is not None and not unique:
        raise SharpdimError(
            f"every tensor in `params` ({len(chosen)}) has requires_grad=False: unfreeze them "
            "(p.requires_grad_(True)) or pass trainable ones"
        )
    chosen = list(unique.values())
    if any(p.is_meta for p in chosen):
        raise SharpdimError(
            f"{type(model).__name__} has parameters on the meta device, which hold no values: "
            "materialise them first (model.to_empty(device='cpu'), then load_state_dict)"
        )
    if not chosen:
        raise SharpdimError(
            f"{type(model).__name__} has no trainable parameters: "
            "pass a model with requires_grad=True parameters or a non-empty `params` subset"
        )
    return chosen


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (sparse ones, such as the gradient of an
    ``nn.Embedding(sparse=True)``, made dense)."""
    return torch.cat([strided(t).reshape(-1) for t in tensors])


def strided(t: torch.Tensor) -> torch.Tensor:
    """``t`` as an ordinary dense tensor: a sparse gradient (``nn.Embedding(sparse=True)``)
    densified, differentiably; ``t`` itself when it is one already."""
    return t if t.layout == torch.strided else t.to_dense()


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector (or the rows of a ``(d, k)`` block) back into parameter shapes.

    For a block the result has shapes ``(k, *p.shape)``, the layout of batched autograd.
    """
    sizes = [p.numel() for p in like]
    if vector.ndim not in (1, 2) or vector.shape[0] != sum(sizes):
        raise SharpdimError(
            f"the flat vector has shape {tuple(vector.shape)}, the parameters hold {sum(sizes)} "
            f"numbers: pass a vector of shape ({sum(sizes)},) or a block ({sum(sizes)}, k)"
        )
    if vector.ndim == 1:
        return [c.view_as(p) for c, p in zip(vector.split(sizes), like, strict=False)]
    k = vector.shape[1]
    return [c.T.reshape(k, *p.shape) for c, p in zip(vector.split(sizes), like, strict=False)]


def get_flat_params(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """A detached copy of the parameters as one flat vector."""
    tensors = [p.detach() for p in params]
    if not tensors:
        raise SharpdimError(
            "no parameters given (an empty list, or an iterator used up already): pass the "
            "tensors, e.g. list(model.parameters())"
        )
    return flatten(tensors).clone()


@torch.no_grad()
def set_flat_params(params: Iterable[torch.Tensor], vector: torch.Tensor) -> None:
    """Write a flat vector into the parameters in place (``params`` may be a generator such
    as ``model.parameters()``)."""
    params = list(params)
    size = sum(p.numel() for p in params)
    if not isinstance(vector, torch.Tensor) or vector.ndim != 1 or vector.numel() != size:
        what = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
        raise SharpdimError(
            f"the flat vector is {what}, the parameters hold {size} numbers: pass a vector of "
            f"shape ({size},), e.g. from get_flat_params"
        )
    for p, v in zip(params, unflatten(vector, params), strict=True):
        p.copy_(v)
