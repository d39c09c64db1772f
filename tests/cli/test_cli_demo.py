"""``sharpdim demo`` at tiny size writes its figure, JSON and HTML report."""

from __future__ import annotations

import json
from pathlib import Path

from sharpdim.cli import main


def test_demo_tiny(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-train", "100", "--width", "4", "--steps", "20"]
    code = main([*args, "--sd-batches", "2", "--slq-runs", "2", "--slq-steps", "10"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    top = summary["spectrum"]["top_eigenvalues"]
    assert len(top) == 5 and top == sorted(top, reverse=True)
    assert summary["spectrum"]["num_params"] == 64 * 4 + 4 + 4 * 4 + 4 + 4 * 10 + 10
    assert 0 <= summary["sharpness_dimension"]["sd"] <= summary["spectrum"]["num_params"]
    assert (out / "spectrum.png").stat().st_size > 1000
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_demo_bad_lr_exits_2(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--lr", "-1"]) == 2
