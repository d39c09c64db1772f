"""ModeScope: a shared buffer stays one tensor inside the block; a failed enter restores."""

import pytest
import torch
from torch import nn

from sharpdim.module_modes import ModeScope


class _Counter(nn.Module):
    """Adds one to its buffer on every training forward (like batch-norm statistics)."""

    def __init__(self, buf: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("count", buf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.count += 1
        return x + self.count


def test_shared_buffer_stays_shared_and_original_untouched() -> None:
    shared = torch.zeros(())
    model = nn.Sequential(_Counter(shared), _Counter(shared)).eval()
    with ModeScope(model, "train"):
        assert model[0].count is model[1].count
        out = model(torch.zeros(()))
        # first adds 1 (count 1, out 1), second adds 1 more to the same tensor (count 2, out 3)
        assert float(out) == 3.0
    assert model[0].count is shared and model[1].count is shared
    assert float(shared) == 0.0
    assert not model.training and not model[0].training


class _Refusing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.BatchNorm1d(2)

    def train(self, mode: bool = True) -> "_Refusing":
        if mode:
            self.inner.train(True)
            raise RuntimeError("cannot switch to training")
        return super().train(False)


def test_failed_enter_restores_flags() -> None:
    model = nn.Sequential(_Refusing()).eval()
    with pytest.raises(RuntimeError, match="cannot switch"), ModeScope(model, "train"):
        pass
    assert [m.training for m in model.modules()] == [False, False, False]
