"""The chaos comparison figure: a missing dimension is marked, never drawn as 0."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from sharpdim.report import chaos_figures


def _case(**dims: Any) -> dict[str, Any]:
    return {
        "lr": 0.5,
        "status": "done",
        "lyapunov": {"finite_time": [[0.1], [0.05]]},
        "divergence": {"log_distance": [-18.0, -17.5, None], "fit_start": 0, "fit_stop": 2},
        **dims,
    }


def test_a_missing_dimension_is_no_bar_and_says_n_a(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """None (not computed, or NaN stored as null) became 'or 0.0': a bar of a real 0."""
    figures: list[Any] = []
    monkeypatch.setattr(chaos_figures, "save_figure", lambda fig, path: figures.append(fig))
    case = _case(kaplan_yorke_top_k=None, sd=0.0, ph0_dimension=None, ph0_dimension_loss=2.0)
    chaos_figures.plot_chaos_comparison({"a": case}, tmp_path / "c.png")
    bars = figures[0].axes[2].patches
    heights = [b.get_height() for b in bars]
    assert heights[1] == 0.0 and heights[3] == 2.0  # a real SD of 0 stays a bar of 0
    assert math.isnan(heights[0]) and math.isnan(heights[2])
    texts = [t.get_text() for t in figures[0].axes[2].texts]
    assert texts == ["n/a", "n/a"]
    import matplotlib.pyplot as plt

    plt.close(figures[0])


def test_an_infinite_ph0_dimension_says_inf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A case straight from run_case holds inf (JSON later makes it null): it read 'n/a' and
    the bar's inf warned in numpy."""
    figures: list[Any] = []
    monkeypatch.setattr(chaos_figures, "save_figure", lambda fig, path: figures.append(fig))
    case = _case(kaplan_yorke_top_k=1.0, sd=2.0, ph0_dimension=math.inf, ph0_dimension_loss=4.0)
    chaos_figures.plot_chaos_comparison({"a": {**case, "ph0_slope": 1.2}}, tmp_path / "c.png")
    assert [t.get_text() for t in figures[0].axes[2].texts] == ["inf"]
    assert math.isnan(figures[0].axes[2].patches[2].get_height())
    import matplotlib.pyplot as plt

    plt.close(figures[0])
