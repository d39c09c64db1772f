"""Graphs whose second derivative autograd would get silently wrong.

A custom ``torch.autograd.Function`` whose ``backward`` is decorated with
``@once_differentiable`` (custom kernels often are) computes its backward without a graph.
Differentiating the gradient again then drops every term that passes through it: torch gives
zeros, or a wrong and asymmetric "Hessian", without an error (a 3-4-3 MLP with such a tanh:
``H @ v`` of order 1e-17 against a true Hessian of norm 0.33). Every Hessian-vector product
in sharpdim therefore refuses such a graph up front.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from sharpdim.errors import SharpdimError

_ONCE_DIFFERENTIABLE = once_differentiable(lambda ctx, *grads: grads).__code__
"""The code of the wrapper ``once_differentiable`` puts around every backward it decorates."""


def _walk(output: torch.Tensor) -> tuple[set[str], set[str]]:
    """The names of the once-differentiable Functions and of the ``nn.EmbeddingBag`` nodes (no
    double backward in torch) in ``output``'s graph, each node visited once."""
    found: set[str] = set()
    bags: set[str] = set()
    seen: set[object] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        function = getattr(node, "_forward_cls", None)
        for method in ("backward", "vjp"):  # (torch runs vjp where a Function defines it)
            code = getattr(getattr(function, method, None), "__code__", None)
            if code is _ONCE_DIFFERENTIABLE:
                found.add(getattr(function, "__name__", repr(function)))
        if type(node).__name__.startswith("EmbeddingBagBackward"):
            bags.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found, bags


_WRITE_IT = "write its backward with differentiable torch ops, or use the plain layer it replaces"


def refuse_once_differentiable(output: torch.Tensor, what: str, advice: str = _WRITE_IT) -> None:
    """A one-line error if the graph of ``output`` (named ``what``) passes through a
    ``@once_differentiable`` backward, whose second derivative torch silently drops (the
    message then ends in ``advice``), or through ``nn.EmbeddingBag``, which torch cannot
    differentiate twice (a raw ``NotImplementedError`` at the first product)."""
    names, bags = _walk(output)
    if bags:
        raise SharpdimError(
            f"{what} passes through nn.EmbeddingBag, whose backward torch cannot differentiate "
            "again ('the derivative for _embedding_bag_backward is not implemented'): use "
            "nn.Embedding followed by the bag's sum or mean"
        )
    if names:
        raise SharpdimError(
            f"{what} passes through {', '.join(sorted(names))}, a custom autograd.Function whose "
            "backward is @once_differentiable: torch silently drops its terms of a second "
            f"derivative (products through the gradient come out zero or wrong); {advice}"
        )
