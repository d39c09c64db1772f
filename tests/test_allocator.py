"""``sharpdim.allocator``: kept heap pages remove the page faults of repeated products."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

import sharpdim.allocator as allocator
from sharpdim import entry

# Minor page faults per Hessian-vector product taken right after a gradient (the pattern of a
# training loop with a sharpness monitor) on the benchmark MLP (100-256-256-10, batch 1000,
# float32) after warm-up, in a fresh process, with or without tune_allocator().
_FAULTS_PER_PRODUCT = """
import resource, sys
import torch
from torch import nn
from sharpdim.allocator import tune_allocator
from sharpdim.curvature import HessianOperator

tuned = tune_allocator() if sys.argv[1] == "tuned" else False
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(100, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                      nn.Linear(256, 10))
x, y = torch.randn(1000, 100), torch.randint(0, 10, (1000,))
loss = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])
op = HessianOperator(model, loss, (x, y))
v = torch.randn(op.num_params)
for _ in range(5):
    op @ v
faults = []
for _ in range(10):
    torch.autograd.grad(loss(model, (x, y)), list(model.parameters()))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    op @ v
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(tuned, sorted(faults)[5])
"""


def _faults(mode: str) -> tuple[str, int]:
    env_free = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "GLIBC_TUNABLES")
    }
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_PRODUCT, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env_free,
    )
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not allocator._glibc(), reason="tunes glibc's malloc only")
def test_tuned_heap_keeps_the_pages_of_repeated_products() -> None:
    applied, tuned = _faults("tuned")
    assert applied == "True"
    # other work on the machine only adds faults (seen twice in CI runs beside a busy
    # process: 17 and 65 against 0 alone): the fewest of up to three fresh processes counts
    for _ in range(2):
        if tuned < 10:
            break
        tuned = min(tuned, _faults("tuned")[1])
    _, default = _faults("default")
    if default < 100:
        pytest.skip(f"default malloc took only {default} page faults per product here")
    assert tuned < 10 <= default, (tuned, default)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TOP_PAD_", "131072"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("MALLOC_TRIM_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072"),
        ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ("LD_PRELOAD", "/opt/lib/libtcmalloc_minimal.so.4"),
    ],
)
def test_the_users_malloc_settings_win(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    assert allocator.user_set_malloc()
    assert allocator.tune_allocator() is False


def test_other_tunables_do_not_count_as_malloc_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libfaketime.so.1")
    assert not allocator.user_set_malloc()


def test_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: False)
    assert allocator.tune_allocator() is False
    monkeypatch.setattr(allocator, "_glibc", lambda: True)  # only the platform says no now
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.tune_allocator() is False


@pytest.mark.parametrize(
    ("pad", "error", "message"),
    [
        (True, TypeError, "must be an int"),
        (1.5, TypeError, "must be an int"),
        (-1, ValueError, r"\[0, 2\*\*31 - 1\]"),
        (2**31, ValueError, r"\[0, 2\*\*31 - 1\]"),
    ],
)
def test_bad_pad_is_refused(pad: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        allocator.tune_allocator(pad)


def test_the_command_tunes_the_allocator_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda: calls.append("tuned") or True)
    monkeypatch.setattr(sys, "argv", ["sharpdim", "--help"])
    with pytest.raises(SystemExit) as ex:
        entry.run()
    assert ex.value.code == 0 and calls == ["tuned"]
