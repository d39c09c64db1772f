"""Train/eval flags of every submodule, kept across a block that switches the whole model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

ModeFlags = list[tuple[nn.Module, bool]]


def module_flags(model: nn.Module) -> ModeFlags:
    """Every submodule of ``model`` with its train/eval flag, parents before children."""
    return [(m, m.training) for m in model.modules()]


def restore_flags(flags: ModeFlags) -> None:
    """Give each module its flag back through its own ``train(flag)`` (a module that
    overrides ``train`` to do more than set the flag does that too); parents come first, so
    a parent's recursive ``train`` never overrides a child's own flag."""
    for module, flag in flags:
        if module.training != flag or type(module).train is not nn.Module.train:
            module.train(flag)
    # a module shared by two parents: the later parent's recursive train() overrode the flag
    # it got back first; put it right (through its own train() where that does more), until
    # nothing changes
    for _ in range(len(flags)):
        wrong = [(m, f) for m, f in flags if m.training != f]
        if not wrong:
            return
        for module, flag in wrong:
            if type(module).train is nn.Module.train:
                module.training = flag
            else:
                module.train(flag)


@contextmanager
def restored_modes(model: nn.Module) -> Iterator[None]:
    """Run a block that may call ``model.train()`` / ``model.eval()``, then give every
    submodule back its own flag: ``model.train(was_training)`` alone would switch a batch
    norm the user froze with ``.eval()`` back to training mode."""
    flags = module_flags(model)
    try:
        yield
    finally:
        restore_flags(flags)
