"""What the EoS figures say about diverged runs (legend and title text)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpdim.report import eos_figures
from sharpdim.training.eos_experiments import EoSRun, EoSRunsResult, MLPSetup
from sharpdim.training.eos_fractal import fractal_attractor


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions would save, kept open for inspection."""
    figures: list[Any] = []

    def keep(fig: Any, path: str | Path, *, dpi: int = 100) -> Path:
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(eos_figures, "save_figure", keep)
    yield figures
    import matplotlib.pyplot as plt

    for fig in figures:
        plt.close(fig)


def _run(lr: float, diverged_at: int | None) -> EoSRun:
    return EoSRun(
        optimizer="gd", lr=lr, threshold=2 / lr, status="ok" if diverged_at is None else "diverged",
        diverged_at=diverged_at, steps=(0, 4), loss=(1.0, 0.5), sharpness=(2.0, 3.0),
        bounded=(2.0, 3.0), late_median_ratio=math.nan if diverged_at else 0.75,
        late_ratio_range=(0.75, 0.75), final_train_loss=0.5, final_train_accuracy=None,
        wall_time_s=1.0,
    )  # fmt: skip


def test_a_diverged_run_is_named_in_the_legend(drawn: list[Any], tmp_path: Path) -> None:
    result = EoSRunsResult(
        kind="sharpening", setup=MLPSetup(), steps=4, every=4, late_fraction=0.3,
        runs=(_run(0.2, None), _run(50.0, 2)), wall_time_s=2.0,
    )  # fmt: skip
    eos_figures.plot_eos_runs(result, tmp_path / "x.png")
    labels = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert labels == ["gd $\\eta$=0.2 (ratio 0.750)", "gd $\\eta$=50 (diverged at step 2)"]


def test_a_diverged_fractal_run_says_so_in_the_title(drawn: list[Any], tmp_path: Path) -> None:
    result = fractal_attractor(20, steps=10, lr=1e10, generator=torch.Generator().manual_seed(0))
    eos_figures.plot_fractal(result, tmp_path / "f.png")
    assert "20 of 20 particles diverged (not shown)" in drawn[0].axes[0].get_title()
    assert drawn[0].axes[0].collections[0].get_offsets().shape[0] == 0  # none drawn


def test_a_run_without_finite_data_is_drawn_and_named(drawn: list[Any], tmp_path: Path) -> None:
    """No records and a NaN threshold raised 'Data cannot be log-scaled'."""
    import dataclasses

    empty = dataclasses.replace(
        _run(0.2, None), steps=(), loss=(), sharpness=(), bounded=(), threshold=math.nan
    )
    result = EoSRunsResult(
        kind="sharpening", setup=MLPSetup(), steps=4, every=4, late_fraction=0.3,
        runs=(empty,), wall_time_s=1.0,
    )  # fmt: skip
    eos_figures.plot_eos_runs(result, tmp_path / "e.png")
    labels = [t.get_text() for t in drawn[0].axes[0].get_legend().get_texts()]
    assert labels == ["gd $\\eta$=0.2 (no finite data)"]


def test_a_zero_loss_draws_without_a_log_scale_warning(drawn: list[Any], tmp_path: Path) -> None:
    import dataclasses

    zero = dataclasses.replace(_run(0.2, None), loss=(0.0, 0.0))
    result = EoSRunsResult(
        kind="sharpening", setup=MLPSetup(), steps=4, every=4, late_fraction=0.3,
        runs=(zero,), wall_time_s=1.0,
    )  # fmt: skip
    eos_figures.plot_eos_runs(result, tmp_path / "z.png")  # (warnings are errors here)
    assert drawn[0].axes[0].get_yscale() == "linear"
    assert list(drawn[0].axes[0].lines[0].get_ydata()) == [0.0, 0.0]


def test_a_threshold_above_the_trace_panel_is_named(drawn: list[Any], tmp_path: Path) -> None:
    """With the command's default traces, 2/eta = 40 for eta = 0.05 lay above the panel's top
    (1.3 x the largest traced sharpness) and was not drawn visibly."""
    from sharpdim.training.eos_minimalist_experiment import minimalist_experiment

    result = minimalist_experiment(
        ratio_lrs=[0.1, 0.2], bifurcation_lrs=[0.3, 0.6], steps=2000, late=20
    )
    eos_figures.plot_minimalist(result, tmp_path / "m.png")
    panel = drawn[0].axes[0]
    top = panel.get_ylim()[1]
    above = [2.0 / lr for lr in result.ratios.trace_lrs if 2.0 / lr > top]
    assert above == [40.0]
    assert [t.get_text() for t in panel.texts] == ["2/$\\eta$=40 above"]


def test_an_infinite_loss_alone_gets_a_linear_axis(tmp_path: Path) -> None:
    """nan_to_num read +inf as 1.8e308, 'positive', so the loss axis went to log scale with
    nothing it could draw: saving raised 'Data cannot be log-scaled'."""
    import dataclasses

    blown = dataclasses.replace(_run(0.2, None), steps=(0,), loss=(math.inf,), sharpness=(2.0,),
                                bounded=(2.0,))  # fmt: skip
    result = EoSRunsResult(
        kind="sharpening", setup=MLPSetup(), steps=4, every=4, late_fraction=0.3,
        runs=(blown,), wall_time_s=1.0,
    )  # fmt: skip
    out = eos_figures.plot_eos_runs(result, tmp_path / "inf.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    assert not eos_figures._any_positive([(math.inf, math.nan)])
    assert eos_figures._any_positive([(math.inf, 0.5)])


def test_a_run_with_one_record_is_drawn_as_a_marker(drawn: list[Any], tmp_path: Path) -> None:
    """A run that diverged before its second record (GD at lr 50, records every 5 steps) was
    named in the legend but drawn as a one-point line: nothing visible."""
    one = EoSRun(
        optimizer="gd", lr=50.0, threshold=0.04, status="diverged", diverged_at=2, steps=(0,),
        loss=(2.3,), sharpness=(8.7,), bounded=(8.7,), late_median_ratio=math.nan,
        late_ratio_range=(math.nan, math.nan), final_train_loss=math.nan,
        final_train_accuracy=None, wall_time_s=1.0,
    )  # fmt: skip
    result = EoSRunsResult(
        kind="sharpening", setup=MLPSetup(), steps=30, every=5, late_fraction=0.3,
        runs=(_run(0.2, None), one), wall_time_s=2.0,
    )  # fmt: skip
    eos_figures.plot_eos_runs(result, tmp_path / "x.png")
    for ax in drawn[0].axes:
        two = ax.get_lines()[0]
        (lone,) = [line for line in ax.get_lines() if list(line.get_xdata()) == [0]]
        assert two.get_marker() in ("", "None") and list(two.get_xdata()) == [0, 4]
        assert lone.get_marker() == "o"
