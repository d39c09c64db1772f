"""The global RNG around computations that run a user's model (dropout in train mode).

A Hessian in train mode draws dropout masks from torch's global generator. Computations that
must be reproducible from their own ``torch.Generator`` and must not shift the caller's random
stream (a training run around them) run inside :func:`forked_global_rng`: the global state is
saved, seeded, and restored afterwards.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch


def stage_generator(seed: int, stage: str) -> torch.Generator:
    """A CPU generator for one stage of a command (``"lanczos"``, ``"trace"``, ...), seeded
    from ``seed`` and the stage's name: each stage's draws depend on the seed alone, not on
    how many numbers the stages before it drew (so a density option cannot move the trace).
    """
    digest = hashlib.blake2b(f"sharpdim:{stage}:{seed}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") % 2**63)


def peek_seed(generator: torch.Generator) -> int:
    """A 32-bit seed drawn from a copy of ``generator``: fixed by its state, which it leaves
    as it is (so the caller's results are those of the unforked computation)."""
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return int(torch.randint(0, 2**32, (1,), generator=twin, device=generator.device))


@contextmanager
def forked_global_rng(seed: int | None, params: Iterable[torch.Tensor] = ()) -> Iterator[None]:
    """Fork the global CPU generator (and those of the CUDA devices holding ``params``) and
    seed them with ``seed`` (``None``: go on from their current states); every state is
    restored on exit."""
    cuda = sorted({p.device for p in params if p.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)
            for device in cuda:
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(seed)
        yield


def operator_seed(mode: str) -> int | None:
    """The ``seed`` of one of several Hessian operators a computation builds in turn: drawn
    from (and advancing) the global generator in ``"train"``/``"keep"`` mode, so each operator
    draws its own dropout masks (call it inside :func:`forked_global_rng`); ``None`` in
    ``"eval"`` mode, which has no such randomness (nothing is drawn). The draw's low 32 bits:
    all of a seed torch's CPU generator keeps (so the CPU streams are those of the full draw)."""
    if mode == "eval":
        return None
    return int(torch.randint(0, 2**62, (1,))) % 2**32


@contextmanager
def python_random_kept() -> Iterator[None]:
    """Restore Python's global ``random`` state on exit: around lazy imports of modules that
    draw from it when first imported (``rich.style`` calls ``random.getrandbits``; the first
    digits load, through scikit-learn, and the first progress bar shifted a user's seeded
    ``random`` stream)."""
    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)
