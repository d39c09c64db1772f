"""The snippets of the guides in ``docs/`` run and print what the text says they print."""

from __future__ import annotations

import re

from tests.docs.snippets import run_guide


def test_curvature_guide() -> None:
    printed = run_guide("curvature.md", min_blocks=8)
    assert "451 torch.float32 cpu" in printed
    assert "exceeds max_params=100" in printed


def test_training_guide() -> None:
    printed = run_guide("training.md", min_blocks=10)
    assert "1500 297 10 64" in printed
    assert "0.2048" in printed
    assert "torch.Size([20, 784]) 10 uint8" in printed or "torch.Size([20, 784]) 9 uint8" in printed
    assert "diverged" in printed
    assert "('nesterov', 135.7" in printed
    assert "[(0, 1.0), (25, 0.83), (50, 0.89)]" in printed  # EoSMonitor ratios


def test_readme_snippet() -> None:
    """The README's "Use it on your model" block runs as written (seeded: same numbers)."""
    printed = run_guide("../README.md")
    assert printed.startswith("tensor([0.7472, 0.7117, 0.6723, 0.6431, 0.6410]"), printed


def test_chaos_guide() -> None:
    """docs/chaos.md: the Hénon exponents, det J = -0.3 (sum = ln 0.3), its Kaplan-Yorke
    dimension ~1.26, and a training map's top-4 spectrum all expanding (KY = k = 4)."""
    printed = run_guide("chaos.md", min_blocks=5).splitlines()
    henon = [float(x) for x in re.findall(r"-?\d+\.\d+", printed[0])]
    assert abs(henon[0] - 0.42) < 0.01 and abs(henon[1] + 1.62) < 0.01, printed[0]
    assert max(henon[2:]) < 0.01, printed[0]  # stderr ~ 0.006
    assert abs(float(re.findall(r"-?\d+\.\d+e-?\d+", printed[1])[0])) < 1e-12, printed[1]
    assert abs(float(printed[2]) - 1.26) < 0.01, printed[2]
    assert printed[3].endswith(" 4.0"), printed[3]
    rate, start, stop, saturated = printed[4].split()
    assert 0 < float(rate) < 0.05 and int(start) < int(stop) and saturated == "False", printed[4]
    assert all(float(v) > 0 for v in printed[5:8]), printed[5:8]
