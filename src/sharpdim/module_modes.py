"""Train/eval flags of every submodule, kept across a block that switches the whole model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Run a block that may call ``model.train()`` / ``model.eval()``, then give every
    submodule back its own flag: ``model.train(was_training)`` alone would switch a batch
    norm the user froze with ``.eval()`` back to training mode."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
