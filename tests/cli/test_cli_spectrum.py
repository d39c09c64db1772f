"""`sharpdim spectrum` at tiny size, checked against eigvalsh of the dense Hessian."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from sharpdim.cli import main

TINY = "--n-train 60 --width 4 --depth 1 --lr 0.5 --train-steps 20 --slq-runs 2 --slq-steps 10"


def _spectrum(tmp_path: Path, flags: str, name: str = "s") -> dict[str, Any]:
    """Run ``sharpdim spectrum FLAGS --json`` (float64); expect exit 0; return the JSON."""
    out = tmp_path / f"{name}.json"
    assert main(["spectrum", *flags.split(), "--json", str(out)]) == 0
    payload: dict[str, Any] = json.loads(out.read_text())
    return payload


def test_spectrum_matches_eigvalsh_and_writes_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "figs" / "density.png"
    payload = _spectrum(tmp_path, f"{TINY} --k 3 --exact --png {png}")
    out = capsys.readouterr().out
    s = payload["spectrum"]
    assert s["num_params"] == 64 * 4 + 4 + 4 * 10 + 10
    exact = torch.tensor(s["exact_eigenvalues"], dtype=torch.float64)
    found = torch.tensor(s["lanczos"]["eigenvalues"], dtype=torch.float64)
    expected = torch.cat([exact.flip(0)[:3], exact[:3].flip(0)])  # largest, then smallest
    assert torch.allclose(found, expected, rtol=0, atol=1e-9 * float(exact.abs().max()))
    assert all(s["lanczos"]["converged"])
    assert s["max_error_over_norm"] < 1e-10
    # Hutch++ (seeded) near the exact trace; its reported standard error is of that size
    assert abs(s["trace"]["estimate"] - float(exact.sum())) < 0.05 * float(exact.abs().sum())
    weights = torch.tensor(s["slq"]["weights"], dtype=torch.float64)
    assert torch.allclose(weights.sum(1), torch.ones(2, dtype=torch.float64))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "stability threshold 2/eta" in out and f"wrote {tmp_path / 's.json'} and {png}" in out
    assert payload["training"]["steps"] == 20 and payload["training"]["n_train"] == 60


def test_spectrum_in_chunks_equals_one_batch(tmp_path: Path) -> None:
    one = _spectrum(tmp_path, f"{TINY} --which LA --k 2", "one")["spectrum"]
    a = torch.tensor(one["lanczos"]["eigenvalues"])
    for chunk in (25, 1000):  # chunks of 25, 25 and 10; one chunk larger than the data
        got = _spectrum(tmp_path, f"{TINY} --which LA --k 2 --chunk-size {chunk}", f"c{chunk}")
        assert got["spectrum"]["chunk_size"] == chunk and got["spectrum"]["max_iter"] is None
        b = torch.tensor(got["spectrum"]["lanczos"]["eigenvalues"])
        assert torch.allclose(a, b, rtol=1e-9, atol=0)


def test_spectrum_json_records_dtype_and_threshold(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = _spectrum(tmp_path, f"{TINY} --which LA --k 1 --float32 --trace-matvecs 3")
    s, training = payload["spectrum"], payload["training"]
    assert training["dtype"] == "float32" and s["threshold"] == 2 / 0.5
    top = s["lanczos"]["eigenvalues"][0]
    assert s["sharpness_over_threshold"] == pytest.approx(top / 4.0, rel=1e-12)
    assert s["trace"]["stderr"] is None  # one probe: no standard error
    assert "(no standard error)" in capsys.readouterr().out


def test_spectrum_output_paths_checked_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sharpdim.training.loop as loop

    monkeypatch.setattr(loop, "train", _no_training)
    same = str(tmp_path / "s.png")
    for args, message in (
        (["--png", str(tmp_path / "f.svgx")], "matplotlib cannot write 'svgx' figures: end it in"),
        (["--png", same, "--json", same], f"--json and --png both name {same}"),
    ):
        assert main(["spectrum", "--n-train", "60", "--width", "4", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_spectrum_smallest_only_and_unconverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = _spectrum(tmp_path, f"{TINY} --which SA --k 2 --max-iter 3")["spectrum"]
    out = capsys.readouterr().out
    assert s["lanczos"]["which"] == "SA" and not all(s["lanczos"]["converged"])
    assert "smallest 2 eigenvalues" in out and "largest" not in out
    assert "stability threshold" not in out  # it bounds the largest eigenvalue
    assert "* not converged: raise --max-iter or --tol" in out


def test_spectrum_threshold_of_the_sgd_family_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _spectrum(tmp_path, f"{TINY} --which LA --k 1 --optimizer momentum --lr 0.05", "m")
    out = capsys.readouterr().out
    assert re.search(r"stability threshold \(2\+2mu\)/eta\s*│\s*76\s*│", out), out  # 3.8 / 0.05
    _spectrum(tmp_path, f"{TINY} --which LA --k 1 --optimizer adam --lr 0.01", "a")
    assert "stability threshold" not in capsys.readouterr().out  # Adam's bounds P^-1 H


def _no_training(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("training started before the options were checked")


BAD = [
    (["--which", "LM"], "unknown --which 'LM': use one of LA, SA, both"),
    (["--k", "0"], "--k must be >= 1, got 0"),
    (["--k", "400"], "--k 400 exceeds the 310 parameters: pass --k 310"),
    (["--tol", "0"], "--tol must be in (0, 1), got 0.0: pass e.g. --tol 1e-6"),
    (["--tol", "nan"], "--tol must be in (0, 1), got nan"),
    (["--max-iter", "0"], "--max-iter must be >= 1, got 0"),
    (["--max-iter", "8"], "--max-iter 8 products cannot give 10 eigenvalues (--k 5 --which both)"),
    (["--chunk-size", "0"], "--chunk-size must be >= 1, got 0"),
    (["--trace-matvecs", "2"], "--trace-matvecs must be >= 3, got 2"),
    (["--slq-runs", "0"], "--slq-runs must be >= 1, got 0"),
    (["--slq-steps", "1"], "--slq-steps must be >= 2, got 1"),
    (["--optimizer", "rmsprop"], "unknown --optimizer 'rmsprop'"),
    (["--activation", "sigmoid"], "unknown --activation 'sigmoid': use one of tanh, relu, gelu"),
    (["--loss", "hinge"], "unknown --loss 'hinge': use one of mse, ce"),
    (
        ["--dataset", "teacher_student", "--loss", "ce"],
        "--loss ce needs class labels and --dataset teacher_student is a regression: pass --loss mse",
    ),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "1e-320"], "--lr 9.99989e-321 puts the gd stability threshold at inf"),  # (ran)
    (["--exact", "--width", "400"], "--exact needs the dense Hessian of 30,010 parameters"),
    (["--train-batch-size", "61"], "--train-batch-size 61 exceeds the 60 training examples"),
    (["--png", "/proc/nonexist/x.png"], "cannot write /proc/nonexist/x.png ("),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[b[1][:24] for b in BAD])
def test_spectrum_bad_input_exits_2_before_training(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import sharpdim.training.loop as loop

    monkeypatch.setattr(loop, "train", _no_training)
    code = main(["spectrum", "--n-train", "60", "--width", "4", "--depth", "1", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_a_refused_figure_format_creates_no_json_folder(tmp_path, capsys) -> None:
    from sharpdim.cli import main

    argv = ["spectrum", "--json", str(tmp_path / "nd" / "deep" / "a.json")]
    assert main([*argv, "--png", str(tmp_path / "b.xyz")]) == 2
    assert "--png path" in capsys.readouterr().err
    assert not (tmp_path / "nd").exists()
    # nesterov with --momentum 0 (which torch refuses) too, naming the flag
    argv = ["spectrum", "--json", str(tmp_path / "nd" / "deep" / "a.json")]
    assert main([*argv, "--optimizer", "nesterov", "--momentum", "0"]) == 2
    assert "--optimizer nesterov needs --momentum in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "nd").exists()


def test_spectrum_json_records_max_iter(tmp_path: Path) -> None:
    got = _spectrum(tmp_path, f"{TINY} --which SA --k 2 --max-iter 3")["spectrum"]
    assert got["max_iter"] == 3 and got["lanczos"]["num_matvecs"] == 3


def test_piped_output_starts_with_the_table_not_a_blank_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The transient training bar, stopped on a pipe, left an empty first line (`| head -1`
    showed nothing)."""
    flags = ["--dataset", "teacher_student", "--n-train", "20", "--width", "2", "--k", "2"]
    assert main(["spectrum", *flags, "--train-steps", "3", "--json", str(tmp_path / "s.json")]) == 0
    assert capsys.readouterr().out.splitlines()[0].strip() != ""


def test_each_estimate_depends_on_the_seed_not_on_the_other_estimators_options(
    tmp_path: Path,
) -> None:
    """The trace and the density draw from their own seeded streams: changing how many
    eigenvalues Lanczos finds, or how many probes Hutch++ draws, moves neither of the others."""
    a = _spectrum(tmp_path, f"{TINY} --which LA --k 1 --trace-matvecs 9", "a")["spectrum"]
    b = _spectrum(tmp_path, f"{TINY} --which both --k 3 --trace-matvecs 9", "b")["spectrum"]
    assert a["trace"] == b["trace"]
    more_probes = _spectrum(tmp_path, f"{TINY} --which LA --k 1 --trace-matvecs 30", "m")
    assert more_probes["spectrum"]["slq"] == a["slq"]
    assert more_probes["spectrum"]["lanczos"] == a["lanczos"]
    c = _spectrum(tmp_path, f"{TINY} --which LA --k 1 --seed 1", "c")["spectrum"]
    assert c["trace"]["estimate"] != a["trace"]["estimate"]  # the seed does move them
