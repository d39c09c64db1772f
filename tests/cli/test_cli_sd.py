"""`sharpdim sd compute` at tiny size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharpdim.cli import main

TINY = "--n-train 100 --width 4 --depth 1"


def _compute(out: Path, flags: str) -> dict[str, Any]:
    """Run ``sharpdim sd compute FLAGS --json OUT`` (flags space separated); expect exit 0.

    Returns the JSON payload written to ``out``.
    """
    assert main(["sd", "compute", *flags.split(), "--json", str(out)]) == 0
    payload: dict[str, Any] = json.loads(out.read_text())
    return payload


def test_sd_compute_exact_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    payload = _compute(
        tmp_path / "sd.json",
        "--dataset digits --n-train 200 --width 6 --depth 1 --lr 0.5 --train-steps 10 "
        "--num-batches 3 --batch-size 32 --num-bootstrap 20",
    )
    out = capsys.readouterr().out
    assert "Sharpness dimension" in out and f"wrote {tmp_path / 'sd.json'}" in out
    r = payload["result"]
    assert r["method"] == "exact" and r["optimizer"] == "sgd"
    assert r["num_params"] == 64 * 6 + 6 + 6 * 10 + 10
    assert 0 <= r["sd"] <= r["num_exponents"]
    assert r["ci_low"] <= r["ci_high"]
    assert payload["training"]["steps"] == 10 and payload["training"]["dtype"] == "float64"
    assert not {"momentum", "betas", "eps"} & payload["training"].keys()  # (gd uses none)


def test_sd_compute_momentum_and_adam(tmp_path: Path) -> None:
    for opt, n_exp in (("momentum", 2), ("adam", 2)):
        payload = _compute(
            tmp_path / f"{opt}.json",
            f"{TINY} --lr 0.05 --optimizer {opt} --train-steps 5 --num-batches 2 "
            "--batch-size 16 --num-bootstrap 0",
        )
        r = payload["result"]
        assert r["optimizer"] == opt and r["num_exponents"] == n_exp * r["num_params"]
        # Adam: the optimizer's sqrt(v_hat) + eps with its step count t = 5 for 1 - b1^t
        assert r["settings"].get("step") == (5 if opt == "adam" else None)
        # the training record holds the hyperparameters this optimizer's step uses, only
        # (plain SGD's recorded a momentum of 0.9 and Adam's betas)
        training = payload["training"]
        assert ("momentum" in training) == (opt == "momentum")
        assert ("betas" in training) == ("eps" in training) == (opt == "adam")
        assert training["optimizer"] == opt and "weight_decay" in training


@pytest.mark.parametrize("reorth", ["partial", "none"])
def test_sd_compute_slq_tiny(tmp_path: Path, reorth: str) -> None:
    r = _compute(
        tmp_path / "slq.json",
        f"{TINY} --lr 0.5 --train-steps 3 --method ps --num-runs 4 --num-steps 8 "
        f"--batch-size 16 --num-bootstrap 5 --reorth {reorth}",
    )["result"]
    assert r["method"] == "ps" and r["settings"]["num_runs"] == 4
    assert r["settings"]["reorthogonalization"] == reorth
    assert 0 <= r["sd"] <= r["num_exponents"]


BAD = [
    (["--method", "bogus"], "unknown --method 'bogus': use one of exact, slq, kde, ps"),
    (["--optimizer", "rmsprop"], "unknown --optimizer 'rmsprop'"),
    (["--activation", "sigmoid"], "unknown --activation 'sigmoid'"),
    (["--num-bootstrap", "1"], "--num-bootstrap 1 gives no interval (one resample)"),
    (["--max-params", "-5"], "--max-params must be >= 1, got -5"),
    (["--dataset", "teacher_student", "--loss", "ce"], "is a regression: pass --loss mse"),
    (["--lr", "-1"], "--lr must be a positive finite number"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "nan"], "--lr must be a positive finite number, got nan"),
    (["--lr", "1e-320"], "--lr 9.99989e-321 puts the gd stability threshold at inf"),
    (["--n-train", "50", "--batch-size", "64"], "--sd-batch-size 64 exceeds the 50"),  # alias
    (["--sd-batch-size", "0"], "--sd-batch-size must be >= 1, got 0"),
    (["--width", "200", "--max-params", "1000"], "'slq', 'kde' or 'ps'"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--reorth", "bogus"], "unknown --reorth 'bogus': use one of full, partial, none"),
    (["--num-batches", "0"], "--num-batches must be >= 1, got 0: pass --num-batches 1 or more"),
    (["--method", "slq", "--num-runs", "0"], "--num-runs must be >= 1, got 0"),
    (["--method", "slq", "--num-steps", "0"], "--num-steps must be >= 1, got 0"),
    (  # each was accepted and ignored: the same SD as without it
        ["--num-runs", "1"],
        "--num-runs 1 is not used by --method exact and would be ignored: drop it, or pass "
        "--method slq, kde or ps",
    ),
    (["--reorth", "none"], "--reorth none is not used by --method exact"),
    (
        ["--method", "slq", "--max-params", "1"],
        "--max-params 1 is not used by --method slq and would be ignored: drop it, or pass "
        "--method exact",
    ),
    (["--method", "kde", "--num-batches", "999"], "--num-batches 999 is not used by --method kde"),
    (["--num-bootstrap", "-1"], "--num-bootstrap must be >= 0, got -1"),
    (["--width", "0"], "--width must be >= 1, got 0"),
    (
        ["--max-params", "10"],
        "--method exact needs dense Hessians of 3,466 parameters, above --max-params 10: use "
        "--method 'slq', 'kde' or 'ps' (or raise --max-params)",
    ),
    (
        ["--train-steps", "1", "--train-batch-size", "101"],  # (the later --train-steps)
        "--train-batch-size 101 exceeds the 100 training examples: pass --train-batch-size "
        "<= 100 or omit it (full batch)",
    ),
    (["--steps", "3"], "No such option: --steps"),
    (
        ["--optimizer", "momentum", "--momentum", "0"],
        "--optimizer momentum with --momentum 0 is plain gradient descent, whose SD the "
        "momentum formula does not give: pass --optimizer gd, or --momentum in (0, 1)",
    ),
    (
        ["--optimizer", "nesterov", "--momentum", "5"],
        "--momentum must be in [0, 1), got 5.0: pass e.g. --momentum 0.9",
    ),
    (  # trained plain SGD and recorded momentum 0.5 in the JSON, exit 0
        ["--optimizer", "sgd", "--momentum", "0.5"],
        "--momentum 0.5 is not used by --optimizer sgd and would be ignored: drop it, or pass "
        "--optimizer momentum or nesterov",
    ),
    (
        ["--optimizer", "adam", "--momentum", "0.9"],
        "--momentum 0.9 is not used by --optimizer adam and would be ignored",
    ),
    # ignored before: adamw trained as adam (its decay was 0), and the batch size of no
    # training was recorded in the JSON
    (["--optimizer", "adamw"], "--optimizer adamw differs from adam only by its weight decay"),
    (
        ["--train-batch-size", "7"],
        "--train-batch-size 7 is not used with --train-steps 0 and would be ignored",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[b[1][:20] for b in BAD])
def test_sd_compute_bad_input_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sd", "compute", "--train-steps", "0", "--n-train", "100", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1, err


def _no_training(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("training started before the options were checked")


CHECKED_FIRST = [
    ["--num-batches", "0"],
    ["--max-params", "10"],
    ["--json", "{tmp}"],  # a folder
    ["--json", "{tmp}/afile/x.json"],  # below a file
    ["--json", "/proc/nonexist/x.json"],
    ["--optimizer", "gd", "--momentum", "-0.5"],  # refused: gd does not use it
    ["--optimizer", "adam", "--momentum", "5"],
    ["--optimizer", "momentum", "--momentum", "5"],
    ["--optimizer", "momentum", "--momentum", "0"],  # was refused after training, by the SD
]


@pytest.mark.parametrize("args", CHECKED_FIRST, ids=[" ".join(a) for a in CHECKED_FIRST])
def test_sd_compute_checks_before_training(
    args: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sharpdim.training.loop as loop

    monkeypatch.setattr(loop, "train", _no_training)
    (tmp_path / "afile").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = main(
        ["sd", "compute", "--train-steps", "2000", "--n-train", "100", "--width", "8", *argv]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.splitlines()) == 1, err
    if argv[0] == "--json":
        assert err.startswith(f"error: cannot write {argv[1]} (")
        assert err.endswith("): choose a writable --json path\n")


def test_sd_compute_modular_and_json_records_the_data(tmp_path: Path) -> None:
    payload = _compute(
        tmp_path / "mod.json",
        "--dataset modular --n-train 40 --width 3 --depth 1 --lr 0.1 --train-steps 2 "
        "--num-batches 1 --batch-size 8 --num-bootstrap 0",
    )
    training = payload["training"]
    assert training["dataset"] == "modular" and training["n_train"] == 40
    assert (training["width"], training["depth"]) == (3, 1)
    assert payload["result"]["num_params"] == 2 * 97 * 3 + 3 + 3 * 97 + 97


def test_one_batch_prints_no_interval_and_no_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One batch printed the zero-width '95% bootstrap CI [40.654, 40.654]' and '+- nan'."""
    r = _compute(tmp_path / "one.json", f"{TINY} --lr 0.5 --train-steps 3 --num-batches 1")
    out = capsys.readouterr().out
    assert r["result"]["num_bootstrap"] == 0 and r["result"]["ci_low"] is None
    assert "nan" not in out and "bootstrap CI" in out
    row = next(line for line in out.splitlines() if "bootstrap CI" in line)
    assert row.split("│")[2].strip() == "-"
