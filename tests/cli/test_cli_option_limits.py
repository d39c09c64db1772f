"""Options beyond what the data or the run holds are refused with one line, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import sharpdim.commands.demo as demo_module
import sharpdim.training.loop as loop_module
from sharpdim.cli import main
from sharpdim.training import eos_experiments, eos_minimalist_experiment


def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("work started before the options were checked")


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("error: ").rstrip("\n")


def test_minimalist_late_above_steps_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(eos_minimalist_experiment, "minimalist_experiment", _no_work)
    out = tmp_path / "o"
    args = ["eos", "minimalist", "--steps", "200", "--late", "500", "--out", str(out)]
    assert main(args) == 2
    assert _one_error_line(capsys) == "--late 500 exceeds --steps 200: pass --late <= --steps"
    assert not out.exists()


def test_demo_batch_size_above_n_train_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "train", _no_work)
    monkeypatch.setattr(demo_module, "load_dataset", _no_work)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-train", "100", "--batch-size", "101"]) == 2
    assert _one_error_line(capsys) == (
        "--batch-size 101 exceeds the 100 training examples: pass --batch-size <= 100 "
        "(or a larger --n-train)"
    )
    assert not out.exists()


_DIGITS = (
    "--n-train 1501 exceeds the 1500 training examples of --dataset digits: pass --n-train <= 1500"
)
_MODULAR = (
    "--n-train 9410 exceeds the 9409 training examples of --dataset modular: pass --n-train <= 9409"
)


@pytest.mark.parametrize(
    ("command", "dataset", "n_train", "message"),
    [
        (["sd", "compute", "--json"], "digits", 1501, _DIGITS),
        (["sd", "compute", "--json"], "modular", 9410, _MODULAR),
        (["chaos", "lyapunov", "--json"], "digits", 1501, _DIGITS),
        (["chaos", "compare", "--out"], "modular", 9410, _MODULAR),
        (["eos", "sharpening", "--out"], "digits", 1501, _DIGITS),
        (["eos", "thresholds", "--out"], "modular", 9410, _MODULAR),
    ],
)
def test_n_train_above_the_dataset_is_refused_naming_the_option(
    command: list[str],
    dataset: str,
    n_train: int,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(loop_module, "train", _no_work)
    monkeypatch.setattr(eos_experiments, "monitored_run", _no_work)
    out = tmp_path / "o"
    args = [*command, str(out / "r.json" if command[-1] == "--json" else out)]
    assert main([*args, "--dataset", dataset, "--n-train", str(n_train)]) == 2
    assert _one_error_line(capsys) == message
    assert not out.exists()


def test_a_step_size_without_a_finite_threshold_is_refused_before_any_run_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A subnormal lr after a valid one was refused only when its turn came, after the earlier
    step sizes had trained."""
    monkeypatch.setattr(eos_experiments, "monitored_run", _no_work)
    out = tmp_path / "o"
    args = ["eos", "sharpening", "--n-train", "16", "--width", "2", "--depth", "1"]
    assert (
        main([*args, "--steps", "30", "--every", "10", "--lrs", "0.2,1e-310", "--out", str(out)])
        == 2
    )
    # (named by its flag, and refused before --out and its store are made)
    assert _one_error_line(capsys).startswith("--lrs 1e-310 puts the gd stability threshold at inf")
    assert not out.exists()
