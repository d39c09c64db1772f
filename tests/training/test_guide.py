"""The snippets of ``docs/training.md`` run, in order, as one script."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import torch

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "training.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_guide_snippets_run() -> None:
    blocks = BLOCK.findall(GUIDE.read_text())
    assert len(blocks) >= 9
    namespace: dict[str, object] = {"__name__": "guide"}
    with torch.random.fork_rng(), contextlib.redirect_stdout(io.StringIO()) as out:
        for code in blocks:
            exec(compile(code, str(GUIDE), "exec"), namespace)
    printed = out.getvalue()
    assert "1500 297 10 64" in printed
    assert "0.2048" in printed
    assert "torch.Size([20, 784]) 10 uint8" in printed or "torch.Size([20, 784]) 9 uint8" in printed
    assert "diverged" in printed
    assert "('nesterov', 135.7" in printed
