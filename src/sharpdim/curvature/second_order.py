"""Graphs whose second derivative autograd would get silently wrong.

A custom ``torch.autograd.Function`` whose ``backward`` is decorated with
``@once_differentiable`` (custom kernels often are) computes its backward without a graph.
Differentiating the gradient again then drops every term that passes through it: torch gives
zeros, or a wrong and asymmetric "Hessian", without an error (a 3-4-3 MLP with such a tanh:
``H @ v`` of order 1e-17 against a true Hessian of norm 0.33). Every Hessian-vector product
in sharpdim therefore refuses such a graph up front, and also one through an op torch cannot
differentiate twice at all (``nn.EmbeddingBag``, ``torch.cdist``, ``F.pdist``, reentrant
activation checkpointing), which would otherwise fail with a raw error at the first product.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import CheckpointFunction

from sharpdim.errors import SharpdimError

_ONCE_DIFFERENTIABLE = once_differentiable(lambda ctx, *grads: grads).__code__
"""The code of the wrapper ``once_differentiable`` puts around every backward it decorates."""


_CHECKPOINT = "CheckpointFunctionBackward"

_NO_DOUBLE_BACKWARD = {
    "EmbeddingBagBackward": (
        "nn.EmbeddingBag, whose backward torch cannot differentiate again ('the derivative for "
        "_embedding_bag_backward is not implemented')",
        "use nn.Embedding followed by the bag's sum or mean",
    ),
    "CdistBackward": (
        "torch.cdist, whose backward torch cannot differentiate again ('the derivative for "
        "_cdist_backward is not implemented')",
        "write the distances with elementwise ops, e.g. (x[:, None] - y[None]).pow(2).sum(-1)",
    ),
    "PdistBackward": (
        "F.pdist, whose backward torch cannot differentiate again ('the derivative for "
        "_pdist_backward is not implemented')",
        "write the distances with elementwise ops, e.g. (x[:, None] - x[None]).pow(2).sum(-1)",
    ),
    _CHECKPOINT: (
        "torch.utils.checkpoint with use_reentrant=True, which torch cannot differentiate with "
        "autograd.grad",
        "pass use_reentrant=False to checkpoint (or switch gradient checkpointing off)",
    ),
}
"""Graph nodes that torch cannot take a second derivative through (it raises a raw error at
the first product): torch's own nodes by class name without the trailing version digit (a
user's ``autograd.Function`` of the same name is not one of them), and reentrant
checkpointing by its Function. Each maps to what the node is and what to do instead."""


def _kind(node: object) -> str | None:
    """The key of :data:`_NO_DOUBLE_BACKWARD` that ``node`` is, if any."""
    function = getattr(node, "_forward_cls", None)
    if function is None:  # (one of torch's own nodes)
        kind = type(node).__name__.rstrip("0123456789")
        return kind if kind in _NO_DOUBLE_BACKWARD and kind != _CHECKPOINT else None
    return _CHECKPOINT if function is CheckpointFunction else None


def _walk(output: torch.Tensor, inputs: Sequence[torch.Tensor] | None) -> tuple[set[str], set[str]]:
    """The names of the once-differentiable Functions and the keys of
    :data:`_NO_DOUBLE_BACKWARD` met in ``output``'s graph on a path to one of ``inputs`` (the
    tensors differentiated; ``None``: anywhere). A node off every such path takes no part in
    the derivative (a head-only Hessian of a model whose body holds ``torch.cdist``), except
    a reentrant checkpoint: its graph edges reach only its tensor inputs, not the parameters
    its function uses (their gradients come from a backward run inside it, which
    ``autograd.grad`` cannot start: they would silently read zero), and no inspection of the
    function proves it holds none of ``inputs`` (hooks, closures, tied weights held outside
    its module, a tensor's bound method): it counts anywhere."""
    found: set[str] = set()
    blocked: set[str] = set()
    targets = None if inputs is None else {id(t) for t in inputs if t.grad_fn is None}
    target_nodes = {t.grad_fn for t in inputs or () if t.grad_fn is not None}  # (non-leaves)
    reaches: dict[object, bool] = {}
    stack: list[tuple[object, bool]] = [(output.grad_fn, False)]
    while stack:  # (post-order: a node is judged after all of its children)
        node, children_done = stack.pop()
        if node is None or (node in reaches and not children_done):
            continue
        children = [child for child, _ in node.next_functions if child is not None]  # type: ignore[attr-defined]
        if not children_done:
            reaches[node] = False  # (visited; a DAG, so no cycle comes back to it)
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in reaches)
            continue
        variable = getattr(node, "variable", None)  # (AccumulateGrad: a leaf tensor)
        on_path = (
            targets is None
            or node in target_nodes
            or (variable is not None and id(variable) in targets)
            or any(reaches.get(child, False) for child in children)
        )
        reaches[node] = on_path
        kind = _kind(node)
        if not on_path and kind != _CHECKPOINT:
            continue
        function = getattr(node, "_forward_cls", None)
        for method in ("backward", "vjp"):  # (torch runs vjp where a Function defines it)
            code = getattr(getattr(function, method, None), "__code__", None)
            if code is _ONCE_DIFFERENTIABLE:
                found.add(getattr(function, "__name__", repr(function)))
        if kind is not None:
            blocked.add(kind)
    return found, blocked


_WRITE_IT = "write its backward with differentiable torch ops, or use the plain layer it replaces"


def refuse_once_differentiable(
    output: torch.Tensor,
    what: str,
    advice: str = _WRITE_IT,
    inputs: Sequence[torch.Tensor] | None = None,
) -> None:
    """A one-line error if the graph of ``output`` (named ``what``) passes through a
    ``@once_differentiable`` backward, whose second derivative torch silently drops (the
    message then ends in ``advice``), or through a node of :data:`_NO_DOUBLE_BACKWARD`
    (``nn.EmbeddingBag``, ``torch.cdist``, ``F.pdist``, reentrant activation checkpointing),
    which torch cannot differentiate twice (a raw error at the first product). Only nodes on
    a path to ``inputs`` (the tensors differentiated; default: all) count, and reentrant
    checkpoints anywhere (see :func:`_walk`)."""
    names, blocked = _walk(output, inputs)
    if blocked:
        node, fix = _NO_DOUBLE_BACKWARD[sorted(blocked)[0]]
        raise SharpdimError(f"{what} passes through {node}: {fix}")
    if names:
        raise SharpdimError(
            f"{what} passes through {', '.join(sorted(names))}, a custom autograd.Function whose "
            "backward is @once_differentiable: torch silently drops its terms of a second "
            f"derivative (products through the gradient come out zero or wrong); {advice}"
        )
