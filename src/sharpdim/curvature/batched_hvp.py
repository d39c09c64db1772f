"""Many Hessian-vector products in one batched double backward, for dense Hessians.

For a small model each product is a handful of small matrix multiplications, so the autograd
engine's per-call work dominates: on the 784-16-16-10 ReLU MLP of the dense benchmark (batch
128) a column took 1.2-2.8 ms by itself and 0.2 ms in blocks of 64 through
``torch.autograd.grad(..., is_grads_batched=True)`` (``docs/benchmarks.md``). For large
products (the 100-256-256-10 MLP at batch 1000) batching was 23% slower per vector, so only
:meth:`HessianOperator.dense` uses it. The batched double backward is exact also with
``LayerNorm`` (unlike ``vmap`` of ``jacrev``; see ``docs/curvature.md``), and an operation
without a batching rule falls back to the column loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

COLUMNS = 64
"""Columns per batched double backward (intermediates grow with it: 64 x the activations)."""


def batched_hvp(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    live: Sequence[int],
    block: torch.Tensor,
    columns: int = COLUMNS,
) -> torch.Tensor | None:
    """``H @ block`` from the kept gradient graph ``grads`` (of ``params[i]`` for ``i`` in
    ``live``; the other parameters' rows are zero), ``columns`` at a time; ``None`` where
    torch cannot batch the double backward (the caller then takes one column at a time)."""
    sizes = [p.numel() for p in params]
    live_params = [params[i] for i in live]
    out = torch.zeros_like(block)
    for start in range(0, block.shape[1], columns):
        part = block[:, start : start + columns]
        b = part.shape[1]
        pieces = [c.T.reshape(b, *p.shape) for c, p in zip(part.split(sizes), params, strict=True)]
        try:
            with warnings.catch_warnings():  # a missing batching rule warns, then loops itself
                warnings.filterwarnings("ignore", message=".*performance drop.*")
                hv = torch.autograd.grad(
                    grads,
                    live_params,
                    grad_outputs=[pieces[i] for i in live],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
        except RuntimeError:  # e.g. a custom autograd.Function without vmap support
            return None
        rows = out[:, start : start + b]
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        for i, h in zip(live, hv, strict=True):
            if h is not None:
                rows[offsets[i] : offsets[i + 1]] = h.reshape(b, -1).T
    return out
