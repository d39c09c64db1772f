"""The spectral-density figure refuses what it cannot draw, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.report.spectrum_figures import plot_spectrum_density


def test_a_density_is_drawn(tmp_path: Path) -> None:
    grid = torch.linspace(-1, 4, 50)
    out = plot_spectrum_density(grid, torch.exp(-(grid**2)), tmp_path / "d.png", threshold=2.0)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("grid", "density", "message"),
    [
        (torch.zeros(0), torch.zeros(0), "must be equal, non-empty vectors"),
        (torch.zeros(3), torch.zeros(4), "must be equal, non-empty vectors"),
        (torch.arange(3.0), torch.full((3,), float("nan")), "holds NaN or inf"),
    ],
)
def test_nothing_to_draw_is_a_one_line_error(
    grid: torch.Tensor, density: torch.Tensor, message: str, tmp_path: Path
) -> None:
    """An empty grid raised RuntimeError from max(); an all-NaN density saved a blank figure."""
    with pytest.raises(SharpdimError, match=message):
        plot_spectrum_density(grid, density, tmp_path / "d.png")
    assert not (tmp_path / "d.png").exists()
