"""Checkpoints: ``torch.save`` of a model's and an optimizer's state dicts at a step."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sharpdim.errors import SharpdimError


def checkpoint_path(directory: str | Path, step: int) -> Path:
    """The file of step ``step`` in ``directory``: ``step_000123.pt``."""
    return Path(directory) / f"step_{step:06d}.pt"


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> Path:
    """Save ``{"step", "model", "optimizer"}`` state dicts to ``directory/step_XXXXXX.pt``."""
    path = checkpoint_path(directory, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
    }
    torch.save(state, path)
    return path


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> int:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``).

    Returns:
        The step stored in the checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise SharpdimError(f"checkpoint {path} does not exist: check the directory and step")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if state.get("optimizer") is None:
            raise SharpdimError(f"{path} holds no optimizer state: load the model only")
        optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])
