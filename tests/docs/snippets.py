"""Run the ```python blocks of a Markdown guide, in order, as one script."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^( *)```python\n(.*?)^\1```", re.S | re.M)


def run_guide(name: str, *, min_blocks: int = 1) -> str:
    """Execute every python block of ``docs/<name>`` (``"../README.md"``: the README) in one
    namespace; return what it printed."""
    path = DOCS / name
    blocks = _BLOCK.findall(path.read_text())
    assert len(blocks) >= min_blocks, f"{name}: expected >= {min_blocks} python blocks"
    namespace: dict[str, object] = {"__name__": "guide"}
    with (
        torch.random.fork_rng(),
        contextlib.redirect_stdout(io.StringIO()) as out,
        warnings.catch_warnings(),
    ):
        # torch.func.hessian (the curvature pitfall snippet) warns about torch.jit internally
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        for indent, code in blocks:
            source = "\n".join(line[len(indent) :] for line in code.splitlines())
            exec(compile(source, str(path), "exec"), namespace)
    return out.getvalue()
