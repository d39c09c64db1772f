"""``sharpdim demo`` at tiny size writes its figure, JSON and HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import sharpdim.commands.demo as demo_module
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
    settings = summary["settings"]  # what was run, beside what came out
    assert (settings["n_train"], settings["width"], settings["steps"]) == (100, 4, 20)
    assert (settings["dtype"], settings["lr"], settings["slq_runs"]) == ("float32", 0.5, 2)


def test_demo_sd_depends_on_the_seed_not_on_the_density_options(tmp_path: Path) -> None:
    """The SD's minibatches come from their own seeded stream: more SLQ runs for the density
    figure leave the sharpness dimension and its interval unchanged (a review found them
    moving outside each other's bootstrap intervals when one generator served both)."""
    args = ["demo", "--n-train", "100", "--width", "4", "--steps", "20", "--sd-batches", "2"]
    sds = []
    for runs in ("1", "3"):
        out = tmp_path / runs
        assert main([*args, "--out", str(out), "--slq-runs", runs, "--slq-steps", "10"]) == 0
        sd = json.loads((out / "summary.json").read_text())["sharpness_dimension"]
        sds.append({key: value for key, value in sd.items() if key != "wall_time_s"})
    assert sds[0] == sds[1]


def _no_training(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("training started before the options were checked")


@pytest.mark.parametrize("lr", ["-1", "0", "nan", "inf"])
def test_demo_bad_lr_exits_2_before_training(
    lr: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    assert main(["demo", "--out", str(tmp_path), "--lr", lr]) == 2
    assert capsys.readouterr().err == (
        f"error: --lr must be a positive finite number, got {float(lr)}: pass e.g. --lr 0.5\n"
    )


@pytest.mark.parametrize(
    ("lr", "message"),
    [
        # it failed after printing 'training ...' and creating --out, advising a float64 model
        # the demo has no option for, and naming lr instead of --lr
        (
            "1e39",
            "--lr 1e+39 does not fit in the model's float32 (largest 3.4e+38): pass e.g. --lr 0.5",
        ),
        # it trained and reported a threshold 2/eta of inf and an SD of every parameter
        (
            "1e-320",
            "--lr 9.99989e-321 puts the sgd stability threshold at inf: pass a step size whose "
            "threshold is a finite number, e.g. 1e-3",
        ),
    ],
)
def test_demo_lr_out_of_range_exits_2_before_anything(
    lr: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    assert main(["demo", "--out", str(tmp_path / "d"), "--lr", lr]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {message}\n"
    assert captured.out == "" and not (tmp_path / "d").exists()


def test_demo_unwritable_out_exits_2_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--out", str(afile)]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot write {afile} ({afile} is a file, not a folder): "
        "choose a writable --out folder\n"
    )
    assert afile.read_text() == "x"


@pytest.mark.parametrize("name", ["summary.json", "spectrum.png", "report.html"])
def test_demo_output_file_that_is_a_folder_exits_2_before_training(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    (tmp_path / name).mkdir()
    assert main(["demo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write {tmp_path / name} (") and err.count("\n") == 1


def test_demo_write_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(out: Path, *args: Any) -> None:
        raise PermissionError(13, "Permission denied", str(out / "summary.json"))

    monkeypatch.setattr(demo_module, "_write_outputs", fail)
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--n-train", "20", "--batch-size", "20", "--width", "2"]
    assert (
        main([*args, "--steps", "2", "--sd-batches", "1", "--slq-runs", "1", "--slq-steps", "4"])
        == 2
    )
    assert capsys.readouterr().err == (
        f"error: cannot write {out / 'summary.json'} (Permission denied): "
        "choose a writable --out folder\n"
    )


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize(("width", "params"), [(109, "20,175"), (10**6, "1,000,076,000,010")])
def test_demo_too_wide_for_the_exact_sd_fails_before_training(
    width: int,
    params: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--width", str(width)]) == 2
    # 64-w-w-10: w^2 + 76 w + 10 parameters; w = 108 gives 19,882 <= 20,000
    assert _one_error_line(capsys) == (
        f"the MLP has {params} parameters, more than the 20,000 the exact sharpness "
        "dimension (dense Hessians) takes: pass --width 108 or less"
    )
    assert not out.exists()


def test_demo_n_train_above_digits_fails_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "1501"]) == 2
    msg = _one_error_line(capsys)
    assert msg.startswith("Invalid value for '--n-train'") and "1500" in msg, msg
    assert not out.exists()


def test_demo_empty_out_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_training)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--out", ""]) == 2
    assert _one_error_line(capsys) == (
        "Invalid value for '--out': it is empty: name a folder, e.g. --out results: "
        "see 'sharpdim demo --help'"
    )
    assert list(tmp_path.iterdir()) == []
