"""The snippets of the guides in ``docs/`` run and print what the text says they print."""

from __future__ import annotations

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
