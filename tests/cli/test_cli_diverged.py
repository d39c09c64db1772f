"""A run whose training diverges is a recorded outcome of every single-run command:
one line, exit code 0, and a JSON with ``status: diverged`` (it was an error, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sharpdim.cli import main

TINY = ["--n-train", "64", "--width", "4", "--depth", "1", "--lr", "100", "--train-steps", "20"]


@pytest.mark.parametrize(
    "command", [["sd", "compute"], ["spectrum"], ["chaos", "lyapunov"]], ids=" ".join
)
def test_a_diverged_run_is_recorded(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    assert main([*command, *TINY, "--json", str(out)]) == 0
    line = " ".join(capsys.readouterr().out.split())
    assert (
        "training diverged at step 2 (the loss blew up or became non-finite): nothing is "
        f"measured; lower --lr; recorded in {out}" in line
    )
    payload = json.loads(out.read_text())
    assert (payload["status"], payload["diverged_at"]) == ("diverged", 2)
    assert payload["training"]["lr"] == 100 and payload["training"]["n_train"] == 64


@pytest.mark.parametrize("with_json", [True, False])
def test_spectrum_removes_an_earlier_figure_when_its_run_diverges(
    tmp_path: Path, with_json: bool
) -> None:
    png = tmp_path / "s.png"
    png.write_bytes(b"an earlier figure")
    json_flag = ["--json", str(tmp_path / "s.json")] if with_json else []
    assert main(["spectrum", *TINY, *json_flag, "--png", str(png)]) == 0
    assert not png.exists()


def test_demo_records_a_diverged_run(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "report.html").write_text("an earlier report")
    assert main(["demo", "--lr", "100", "--steps", "20", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["diverged_at"], summary["settings"]["lr"]) == (
        "diverged",
        2,
        100.0,
    )
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_an_earlier_figure_that_cannot_be_removed_names_the_png_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    png = tmp_path / "s.png"
    png.write_bytes(b"an earlier figure")

    def refused(self: Path, missing_ok: bool = False) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", refused)
    assert main(["spectrum", *TINY, "--png", str(png)]) == 2
    assert "choose a writable --png path" in capsys.readouterr().err  # was: --json path
