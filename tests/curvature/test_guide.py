"""The snippets of ``docs/curvature.md`` run, in order, as one script."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import torch

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "curvature.md"
BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def test_guide_snippets_run() -> None:
    blocks = BLOCK.findall(GUIDE.read_text())
    assert len(blocks) >= 8
    namespace: dict[str, object] = {"__name__": "guide"}
    with (
        torch.random.fork_rng(),
        contextlib.redirect_stdout(io.StringIO()) as out,
        warnings.catch_warnings(),
    ):
        # torch.func.hessian (the pitfall snippet) warns about torch.jit internally
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        for indent, code in blocks:
            source = "\n".join(line[len(indent) :] for line in code.splitlines())
            exec(compile(source, str(GUIDE), "exec"), namespace)
    printed = out.getvalue()
    assert "451 torch.float32 cpu" in printed
    assert "exceeds max_params=100" in printed
