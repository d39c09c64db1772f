"""Helpers shared by the benchmark scripts (run as ``python benchmarks/<name>.py``).

The scripts import this file as ``_common``: running a script puts ``benchmarks/`` first on
``sys.path``.
"""

from __future__ import annotations

import json
import platform
from typing import Any

import torch
from torch import nn


def ce_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of ``model(x)`` against integer labels ``y``."""
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def machine() -> str:
    """The processor's name, or the machine type where the platform reports none."""
    return platform.processor() or platform.machine()


def dump_json(path: str | None, payload: Any, indent: int = 2) -> None:
    """Write ``payload`` as JSON to ``path``; nothing when ``path`` is ``None`` or empty."""
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=indent)
