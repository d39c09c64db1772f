"""Train/eval flags of every submodule, kept across a block that switches the whole model;
:class:`ModeScope`, a block in train or eval mode that leaves the model's buffers alone."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sharpdim.errors import SharpdimError

ModeFlags = list[tuple[nn.Module, bool]]


def module_flags(model: nn.Module) -> ModeFlags:
    """Every submodule of ``model`` with its train/eval flag, parents before children."""
    return [(m, m.training) for m in model.modules()]


def restore_flags(flags: ModeFlags) -> None:
    """Give each module whose flag changed its flag back: through its own ``train(flag)`` where
    it overrides ``train`` to do more than set the flag (e.g. merge weights for inference),
    else by setting the flag alone. An override's ``train`` also switches its children, so
    the pass repeats until nothing is wrong (a module shared by two parents included)."""
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


class ModeScope:
    """Puts the model in train or eval mode (``"train"``/``"eval"``; ``"keep"``: as it is) for
    a block, then restores its flags.

    Whenever some module runs in training mode, its buffers are swapped for copies during
    the block, so that batch-norm running statistics (updated in place by every training
    forward) are left untouched: computing curvature never changes the model. The copies
    are what a gradient graph built inside the block refers to; a buffer two modules share
    stays shared (one copy). If entering fails (a module's own ``train`` raising), the
    flags and buffers are restored before the error propagates.
    """

    def __init__(self, model: nn.Module, mode: str) -> None:
        self.model, self.mode = model, mode
        self.saved = module_flags(model)
        self.swapped: list[tuple[nn.Module, str, torch.Tensor]] = []

    def __enter__(self) -> None:
        try:
            if self.mode != "keep":
                self.model.train(self.mode == "train")
            copies: dict[int, torch.Tensor] = {}
            for m in self.model.modules():
                if not m.training:
                    continue
                for name, buf in list(m._buffers.items()):
                    if buf is not None:
                        self.swapped.append((m, name, buf))
                        if id(buf) not in copies:
                            copies[id(buf)] = buf.detach().clone()
                        m._buffers[name] = copies[id(buf)]
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        for m, name, buf in self.swapped:
            m._buffers[name] = buf
        self.swapped.clear()
        restore_flags(self.saved)


def require_module(model: object) -> None:
    """A one-line error unless ``model`` is a ``torch.nn.Module`` (a bound ``forward``, a
    lambda or a list of modules failed later with a raw AttributeError)."""
    if not isinstance(model, nn.Module):
        raise SharpdimError(
            f"model must be a torch.nn.Module, got {type(model).__name__}: pass the network"
        )


def uncompiled(model: nn.Module) -> nn.Module:
    """The module ``torch.compile`` wrapped (it holds the same parameter tensors), else
    ``model``: compiled graphs have no double backward ("torch.compile with aot_autograd does
    not currently support double backward"), so curvature runs the eager module; a compiled
    submodule is refused in one line."""
    require_module(model)
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        model = inner
    for name, module in model.named_modules():
        if type(module).__name__ == "OptimizedModule":
            raise SharpdimError(
                f"the submodule {name!r} is torch.compile'd, and compiled graphs have no double "
                "backward: put back its eager module (the wrapper's ._orig_mod), or compile it in "
                "place with module.compile()"
            )
    return model
