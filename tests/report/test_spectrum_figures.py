"""The spectral-density figure refuses what it cannot draw, in one line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.report.spectrum_figures import plot_spectrum_density


def test_a_density_is_drawn(tmp_path: Path) -> None:
    grid = torch.linspace(-1, 4, 50)
    out = plot_spectrum_density(grid, torch.exp(-(grid**2)), tmp_path / "d.png", threshold=2.0)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("threshold", "drawn_as_line"),
    [(2.0, True), (5.0, True), (2000.0, False), (-1e30, False), (1e300, False)],
)
def test_a_far_threshold_does_not_stretch_the_axis(
    threshold: float, drawn_as_line: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At lr 0.001 the 2/eta line at 2000 stretched the x-axis to 0-2000 and squeezed a
    spectrum in [-1, 4] into a sliver; far thresholds are now an arrow at the edge."""
    import sharpdim.report.spectrum_figures as figures

    seen: list[Any] = []
    real_save = figures.save_figure
    monkeypatch.setattr(
        figures, "save_figure", lambda fig, path: seen.append(fig) or real_save(fig, path)
    )
    grid = torch.linspace(-1, 4, 50)
    plot_spectrum_density(grid, torch.exp(-(grid**2)), tmp_path / "d.png", threshold=threshold)
    ax = seen[0].axes[0]
    lo, hi = ax.get_xlim()
    assert lo > -2.5 and hi < 5.5, (lo, hi)
    labels = ax.get_legend_handles_labels()[1]
    assert (labels == [f"stability threshold {threshold:.3g}"]) is drawn_as_line
    assert any("stability threshold" in t.get_text() for t in ax.texts) is not drawn_as_line


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


def test_a_tiny_density_is_drawn_at_its_scale_and_nan_marks_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A density of 1e-30 was drawn as a flat 1e-12 (an absolute floor); a NaN threshold was
    marked 'stability threshold nan' at the left edge."""
    from sharpdim.report import spectrum_figures

    figures: list[Any] = []
    monkeypatch.setattr(spectrum_figures, "save_figure", lambda fig, path: figures.append(fig))
    grid = torch.linspace(0, 1, 5, dtype=torch.float64)
    density = torch.tensor([1e-30, 2e-30, 4e-30, 2e-30, 1e-30], dtype=torch.float64)
    spectrum_figures.plot_spectrum_density(grid, density, tmp_path / "t.png")
    assert list(figures[0].axes[0].lines[0].get_ydata()) == density.tolist()
    import matplotlib.pyplot as plt

    plt.close(figures[0])
    for bad in ({"threshold": math.nan}, {"top_eigenvalues": [1.0, math.inf]}):
        with pytest.raises(SharpdimError, match="NaN"):
            spectrum_figures.plot_spectrum_density(grid, density, tmp_path / "t.png", **bad)


def test_bfloat16_tensors_arrays_and_lists_are_drawn(tmp_path: Path) -> None:
    """bfloat16 raised numpy's TypeError, an array or a list an AttributeError."""
    import numpy as np

    grid = torch.linspace(-1, 4, 50)
    density = torch.exp(-(grid**2))
    for i, (g, d) in enumerate(
        (
            (grid.bfloat16(), density.bfloat16()),
            (grid.numpy(), density.numpy().astype(np.float64)),
            (grid.tolist(), density.tolist()),
        )
    ):
        out = plot_spectrum_density(g, d, tmp_path / f"d{i}.png")  # type: ignore[arg-type]
        assert out.read_bytes()[:4] == b"\x89PNG"


def test_eigenvalues_from_a_generator_are_drawn_and_complex_or_bool_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The NaN check used a generator up, so no eigenvalue line was drawn; a complex density
    was drawn as its real part and threshold=True as 'stability threshold 1'."""
    import sharpdim.report.spectrum_figures as figures

    seen: list[Any] = []
    real_save = figures.save_figure
    monkeypatch.setattr(
        figures, "save_figure", lambda fig, path: seen.append(fig) or real_save(fig, path)
    )
    grid = torch.linspace(0, 10, 50)
    density = torch.exp(-grid)
    top = (v for v in (9.0, 8.0, 7.5))
    plot_spectrum_density(grid, density, tmp_path / "d.png", top_eigenvalues=top)
    lines = [ln.get_xdata()[0] for ln in seen[0].axes[0].lines[1:]]
    assert lines == [9.0, 8.0, 7.5]
    mixed = [torch.tensor([9.0]), torch.tensor(8.0), 7.5]  # (entries of mixed shapes)
    plot_spectrum_density(grid, density, tmp_path / "m.png", top_eigenvalues=mixed)
    assert [ln.get_xdata()[0] for ln in seen[1].axes[0].lines[1:]] == [9.0, 8.0, 7.5]
    for kwargs, message in [
        ({"density": density.to(torch.complex128)}, r"^density must be real numbers"),
        ({"grid": torch.ones(50, dtype=torch.bool)}, r"^grid must be real numbers"),
        ({"threshold": True}, r"^threshold must be a number, got a bool"),
    ]:
        args: dict[str, Any] = {"grid": grid, "density": density, **kwargs}
        with pytest.raises(SharpdimError, match=message):
            plot_spectrum_density(path=tmp_path / "e.png", **args)


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        ("2", "threshold must be a number, got '2'"),
        (True, "threshold must be a number, got a bool"),
        (math.inf, "threshold inf is not finite"),
        (10**400, "is not finite"),
    ],
)
def test_a_threshold_that_is_no_finite_number_is_refused(
    threshold: Any, message: str, tmp_path: Path
) -> None:
    """The string "2" was drawn as 2, and inf as an arrow labelled 'stability threshold inf'."""
    grid = torch.linspace(-1, 4, 5)
    with pytest.raises(SharpdimError, match=message):
        plot_spectrum_density(grid, torch.ones(5), tmp_path / "d.png", threshold=threshold)
    assert not (tmp_path / "d.png").exists()
