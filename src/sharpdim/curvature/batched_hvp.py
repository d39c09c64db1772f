"""Many Hessian-vector products in one batched double backward, for dense Hessians.

For a small model each product is a handful of small matrix multiplications, so the autograd
engine's per-call work dominates: on the 784-16-16-10 ReLU MLP of the dense benchmark (batch
128) a column took 1.2-2.8 ms by itself and 0.2 ms in blocks of 64 through
``torch.autograd.grad(..., is_grads_batched=True)`` (``docs/benchmarks.md``). Where a product
is large, batching is slower per column (the 100-256-256-10 MLP at batch 1000: 23% slower at 8
columns, 2.7x slower for its bias block alone) and its intermediates grow with the columns, so
:func:`batch_columns` batches only graphs that save little (the activations autograd keeps)
and caps the columns by memory. The batched double backward is exact also with ``LayerNorm``
(unlike ``vmap`` of ``jacrev``; see ``docs/curvature.md``), and an operation without a
batching rule falls back to one column at a time."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from sharpdim.curvature.params import strided

COLUMNS = 64
"""Most columns per batched double backward."""
MAX_SAVED = 4 * 2**20
"""Graphs that save more bytes than this are not batched (their products are large enough to
keep the engine busy: 6.7 MiB for the bias block of the 100-256-256-10 MLP at batch 1000,
slower batched; 0.9 and 2.5 MiB for a 784-16-16-10 MLP at batch 128 and a 100-32-32-10 one at
batch 1000, 13x and 1.3x faster batched)."""
MEMORY = 64 * 2**20
"""Bound on ``columns x saved bytes``, the order of a batched double backward's intermediates."""


def saved_bytes(build: Callable[[], object]) -> int | None:
    """Bytes of the tensors autograd saves for backward while ``build()`` runs; ``None`` where
    the build refuses saved-tensor hooks (``torch.func`` transforms inside the loss).

    The hooks keep the tensors in a local store and hand autograd keys: handing the tensor
    itself back would tie an output saved by its own node (tanh, log-softmax) into a
    reference cycle through C++ that no garbage collection frees, keeping the graph alive.
    """
    total, store = 0, []

    def pack(t: torch.Tensor) -> int:
        nonlocal total
        total += t.numel() * t.element_size()
        store.append(t)
        return len(store) - 1

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, store.__getitem__):
            build()
    except RuntimeError:
        return None
    finally:
        store.clear()
    return total


def batch_columns(saved: int) -> int:
    """Columns per batched double backward for a graph that saves ``saved`` bytes (1: do not
    batch)."""
    if saved > MAX_SAVED:
        return 1
    return max(1, min(COLUMNS, MEMORY // max(saved, 1)))


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
        rows = out[:, start : start + b].split(sizes)  # views, one per parameter
        for i, h in zip(live, hv, strict=True):
            if h is not None:
                rows[i].copy_(strided(h).reshape(b, -1).T)
    return out
