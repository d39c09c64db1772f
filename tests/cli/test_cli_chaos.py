"""``sharpdim chaos`` commands at tiny sizes."""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import sharpdim.training.loop as loop_module
import sharpdim.training.models as models_module
import sharpdim.training.trajectory as trajectory_module
from sharpdim.cli import main
from sharpdim.commands.chaos import app
from sharpdim.commands.chaos_cases import full_batch_sharpness, train_and_lyapunov


def _run(args: list[str]) -> int:
    # the chaos sub-app directly (sharpdim.cli.main routes `chaos ...` to it)
    try:
        app(args=args, prog_name="sharpdim chaos", standalone_mode=False)
    except SystemExit as ex:  # pragma: no cover
        return int(ex.code or 0)
    return 0


def test_compare_writes_json_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = _run(
        [
            "compare",
            "--lr-eos", "0.5",
            "--lr-below", "0.05",
            "--n-train", "48",
            "--width", "4",
            "--depth", "1",
            "--train-steps", "30",
            "--k", "2",
            "--lyap-steps", "10",
            "--warmup", "2",
            "--num-iterates", "30",
            "--seeds", "2",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((out / "chaos_compare.json").read_text())
    for case in payload["cases"].values():
        assert len(case["lyapunov"]["exponents"]) == 2
        per_seed = case["largest_lyapunov_per_seed"]
        assert len(per_seed) == 2 and per_seed[0] == case["largest_lyapunov"]
        assert abs(case["largest_lyapunov_seed_mean"] - sum(per_seed) / 2) < 1e-12
        assert (
            abs(case["largest_lyapunov_seed_stderr"] - abs(per_seed[0] - per_seed[1]) / 2) < 1e-12
        )
        assert case["ph0_dimension"] is None or case["ph0_dimension"] > 0
        assert case["sd"] >= 0
        assert case["sharpness_converged"] is True
    assert (out / "chaos_compare.png").stat().st_size > 1000


def test_lyapunov_json(tmp_path: Path) -> None:
    out = tmp_path / "l.json"
    args = ["lyapunov", "--n-train", "32", "--width", "4", "--depth", "1"]
    args += ["--train-steps", "5", "--k", "3", "--steps", "5", "--warmup", "0"]
    assert _run([*args, "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert len(payload["result"]["exponents"]) == 3
    training = payload["training"]
    assert (training["dataset"], training["n_train"]) == ("digits", 32)
    assert (training["width"], training["depth"]) == (4, 1)
    assert training["num_params"] == 64 * 4 + 4 + 4 * 10 + 10
    assert training["steps"] == 5 and training["lr"] == 0.5
    assert payload["lyapunov"] == {"k": 3, "steps": 5, "warmup": 0, "lr": 0.5, "seed": 0}


def test_bad_lrs_is_an_error(tmp_path: Path) -> None:
    import pytest

    from sharpdim.errors import SharpdimError

    with pytest.raises(SharpdimError):
        _run(["compare", "--lr-eos", "0.01", "--lr-below", "0.1", "--out", str(tmp_path)])


class _Quadratic(torch.nn.Module):
    """``0.5 w^T A w`` with ``A = Q diag(2, -6, 1, 0.5, -3, 0.1) Q^T``: a saddle."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
        eig = torch.tensor([2.0, -6.0, 1.0, 0.5, -3.0, 0.1], dtype=torch.float64)
        self.register_buffer("a", q @ torch.diag(eig) @ q.T)
        self.w = torch.nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.w @ self.a @ self.w


def test_sharpness_is_largest_algebraic_eigenvalue_not_magnitude() -> None:
    model = _Quadratic()

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        return m(batch)

    dense = torch.autograd.functional.hessian(lambda w: 0.5 * w @ model.a @ w, model.w.detach())
    assert float(torch.linalg.eigvalsh(dense).max()) == pytest.approx(2.0, abs=1e-12)
    sharpness, converged = full_batch_sharpness(model, loss_fn, torch.zeros(1))
    assert sharpness == pytest.approx(2.0, abs=1e-8)  # power iteration gave -6
    assert converged is True


def _no_training(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("training started before the options were checked")


def _exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err.removeprefix("error: ").rstrip("\n")


def test_compare_rerun_reuses_stored_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun of the same comparison computes nothing and writes the same cases."""
    import sharpdim.commands.chaos as chaos_module

    out = tmp_path / "cmp"
    args = [
        "compare", "--lr-eos", "0.5", "--lr-below", "0.05", "--n-train", "48", "--width", "4",
        "--depth", "1", "--train-steps", "30", "--k", "2", "--lyap-steps", "10",
        "--warmup", "2", "--num-iterates", "30", "--seeds", "1", "--out", str(out),
    ]  # fmt: skip
    assert _run(args) == 0
    first = json.loads((out / "chaos_compare.json").read_text())["cases"]
    calls: list[float] = []
    original = chaos_module.run_case

    def counted(**kwargs: Any) -> dict[str, Any]:
        calls.append(kwargs["lr"])
        return original(**kwargs)

    monkeypatch.setattr(chaos_module, "run_case", counted)
    assert _run(args) == 0
    assert calls == []
    assert json.loads((out / "chaos_compare.json").read_text())["cases"] == first
    assert _run([*args[:-2], "--lr-below", "0.04", "--out", str(out)]) == 0
    assert calls == [0.04]  # only the new case is computed


@pytest.mark.parametrize(
    ("args", "points"), [(["--num-iterates", "10"], 10), (["--train-steps", "5"], 6)]
)
def test_compare_too_few_iterates_fails_first(
    args: list[str],
    points: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(trajectory_module, "capture_backward", _no_training)
    iterates = args[1] if args[0] == "--num-iterates" else "500"
    steps = args[1] if args[0] == "--train-steps" else "500"
    msg = _exit_2(["chaos", "compare", *args, "--out", str(tmp_path)], capsys)
    assert msg == (
        f"--num-iterates {iterates} with --train-steps {steps} keeps {points} trajectory "
        "points, but the PH0 dimension needs at least 11: pass --num-iterates >= 11 and "
        "--train-steps >= 10"
    )


def test_compare_checks_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(trajectory_module, "capture_backward", _no_training)
    afile = tmp_path / "afile"
    afile.write_text("x")
    msg = _exit_2(["chaos", "compare", "--out", str(afile)], capsys)
    assert (
        msg
        == f"cannot write {afile} ({afile} is a file, not a folder): choose a writable --out folder"
    )
    msg = _exit_2(["chaos", "compare", "--lr-eos", "nan", "--out", str(tmp_path)], capsys)
    assert msg == "--lr-eos must be a positive finite number, got nan: pass e.g. --lr-eos 1.5"
    msg = _exit_2(["chaos", "compare", "--k", "0", "--out", str(tmp_path)], capsys)
    assert msg == "--k must be >= 1, got 0: pass --k 1 or more"


LYAP_BAD = [
    (["--lr", "0"], "--lr must be a positive finite number, got 0.0: pass e.g. --lr 0.5"),
    (
        ["--lr", "1e-320"],
        "--lr 9.99989e-321 puts the gd stability threshold at inf: pass a step size whose "
        "threshold is a finite number, e.g. 1e-3",
    ),
    (["--k", "0"], "--k must be >= 1, got 0: pass --k 1 or more"),
    (["--k", "500"], "--k 500 exceeds the 310 parameters of the MLP: pass --k <= 310"),
    (["--steps", "0"], "--lyap-steps must be >= 1, got 0: pass --lyap-steps 1 or more"),
    (["--lyap-steps", "0"], "--lyap-steps must be >= 1, got 0: pass --lyap-steps 1 or more"),
    (
        ["--batch-size", "999"],  # the alias of --train-batch-size, which the error names
        "--train-batch-size 999 exceeds the 256 training examples: pass --train-batch-size <= 256 "
        "(or a larger --n-train)",
    ),
    (["--json", "{tmp}"], "cannot write {tmp} (it is a folder): choose a writable --json path"),
]


@pytest.mark.parametrize(("args", "message"), LYAP_BAD, ids=[b[0][0] for b in LYAP_BAD])
def test_lyapunov_checks_before_training(
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(loop_module, "train", _no_training)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    msg = _exit_2(["chaos", "lyapunov", "--width", "4", "--depth", "1", *argv], capsys)
    assert msg == message.replace("{tmp}", str(tmp_path))


def test_modular_dataset_runs(tmp_path: Path) -> None:
    out = tmp_path / "l.json"
    args = ["chaos", "lyapunov", "--dataset", "modular", "--n-train", "30", "--width", "2"]
    args += ["--depth", "1", "--train-steps", "2", "--k", "2", "--steps", "3", "--warmup", "0"]
    assert main([*args, "--json", str(out)]) == 0
    training = json.loads(out.read_text())["training"]
    assert (
        training["dataset"] == "modular" and training["num_params"] == 2 * 97 * 2 + 2 + 2 * 97 + 97
    )
    run = train_and_lyapunov(
        lr=0.1,
        dataset="modular",
        n_train=30,
        width=2,
        depth=1,
        train_steps=2,
        batch_size=None,
        k=1,
        lyap_steps=2,
        warmup=0,
        num_iterates=3,
        seed=0,
    )  # what chaos compare runs per case; a dtype error with token inputs before
    assert run["data"].x_train.dtype == torch.float64 and len(run["traj"]) == 3


def _tiny_compare(out: Path, *, lr_eos: str, lyap_steps: str, lr_below: str = "0.05") -> list[str]:
    """``chaos compare`` at a tiny size: one seed, width 4, 10 training steps."""
    return [
        "chaos", "compare", "--lr-eos", lr_eos, "--lr-below", lr_below, "--n-train", "48",
        "--width", "4", "--depth", "1", "--train-steps", "10", "--k", "1",
        "--lyap-steps", lyap_steps, "--warmup", "0", "--num-iterates", "11", "--seeds", "1",
        "--out", str(out),
    ]  # fmt: skip


def test_compare_records_a_diverging_run_and_keeps_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    out = tmp_path / "cmp"
    assert main(_tiny_compare(out, lr_eos="50", lyap_steps="4")) == 0
    assert (
        "EoS (lr=50): training diverged at step 2; its measures are not computed (null in the JSON)"
        in capsys.readouterr().out
    )
    cases = json.loads((out / "chaos_compare.json").read_text())["cases"]
    eos, below = cases["EoS"], cases["below"]
    assert (eos["status"], eos["diverged_at"]) == ("diverged", 2)  # loss blew up at step 2
    assert eos["lyapunov"] is None and eos["num_params"] == 64 * 4 + 4 + 4 * 10 + 10
    for key in ("largest_lyapunov", "sd", "ph0_dimension", "e1", "divergence_rate"):
        assert eos[key] is None  # NaN in strict JSON
    assert (below["status"], below["diverged_at"]) == ("done", None)
    assert below["sd"] >= 0 and len(below["lyapunov"]["exponents"]) == 1
    assert (out / "chaos_compare.png").stat().st_size > 1000
    conn = sqlite3.connect(out / "runs.sqlite")
    statuses = sorted(s for (s,) in conn.execute("SELECT status FROM runs"))
    conn.close()
    assert statuses == ["diverged", "done"]


def test_compare_records_a_trajectory_that_does_not_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At lr 1e-30 every update rounds away in float64: no PH0 dimension, a recorded outcome
    (it stopped the command after all the training, with advice naming no CLI option)."""
    out = tmp_path / "cmp"
    assert main(_tiny_compare(out, lr_eos="0.5", lyap_steps="2", lr_below="1e-30")) == 0
    printed = capsys.readouterr().out
    assert "warning: below (lr=1e-30): the last iterates coincide" in printed
    assert "undefined" in printed
    below = json.loads((out / "chaos_compare.json").read_text())["cases"]["below"]
    assert below["ph0_zero_persistence"] is True and below["status"] == "done"
    for key in ("ph0_dimension", "ph0_slope", "ph0_dimension_loss", "ph0_dimension_r2"):
        assert below[key] is None
    assert below["e1"] == 0.0 and below["sd"] is not None


def test_compare_tells_losses_that_coincide_from_iterates_that_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At lr 1e-17 the weights still move (a Euclidean PH0 dimension) but the per-example
    losses round alike: one flag for both clouds said the iterates coincide, next to a
    computed Euclidean dimension."""
    out = tmp_path / "cmp"
    argv = ["chaos", "compare", "--n-train", "20", "--width", "2", "--train-steps", "30"]
    argv += ["--k", "2", "--lyap-steps", "3", "--warmup", "1", "--num-iterates", "20"]
    argv += ["--seeds", "1", "--lr-below", "1e-17", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "the last iterates coincide" not in printed
    assert "below (lr=1e-17): the last iterates' per-example losses coincide" in printed
    below = json.loads((out / "chaos_compare.json").read_text())["cases"]["below"]
    assert (below["ph0_zero_persistence"], below["ph0_zero_persistence_loss"]) == (False, True)
    assert below["ph0_dimension"] is not None and below["ph0_dimension_loss"] is None


def test_an_infinite_ph0_dimension_reads_inf_not_missing() -> None:
    """JSON stores inf as null; the fitted slope (>= 1) tells it from a missing value."""
    from sharpdim.commands.chaos import _fmt_ph0
    from sharpdim.report.chaos_figures import _missing_label

    inf = {"ph0_dimension_loss": None, "ph0_slope_loss": 4.07, "ph0_zero_persistence": False}
    frozen = {"ph0_dimension": None, "ph0_slope": None, "ph0_zero_persistence": True}
    nan = {"ph0_dimension": None, "ph0_slope": 0.3, "ph0_zero_persistence": False}
    assert _fmt_ph0(inf, "ph0_dimension_loss") == "inf"
    assert _missing_label(inf, "ph0_dimension_loss") == "inf"
    assert _fmt_ph0(frozen, "ph0_dimension") == "undefined"
    assert _missing_label(frozen, "ph0_dimension") == "undef."
    assert _fmt_ph0(nan, "ph0_dimension") == "-" and _missing_label(nan, "sd") == "n/a"
    assert _fmt_ph0({"ph0_dimension": 1.5, "ph0_slope": 0.2}, "ph0_dimension") == "1.5"


def test_run_case_records_diverged_seeds() -> None:
    from sharpdim.commands.chaos_cases import run_case

    # at lr=2.65 the run of seed 0 finishes, those of seeds 1 and 2 diverge (steps 9 and 8)
    case = run_case(
        lr=2.65, n_train=48, width=4, depth=1, train_steps=10, k=1, lyap_steps=4, warmup=0,
        num_iterates=11, seed=0, seeds=3,
    )  # fmt: skip
    assert (case["status"], case["diverged_at"], case["diverged_seeds"]) == ("done", None, [1, 2])
    first, *others = case["largest_lyapunov_per_seed"]
    assert first == case["largest_lyapunov"] and all(math.isnan(v) for v in others)
    assert case["largest_lyapunov_seed_mean"] == first  # over the seeds that finished
    assert math.isnan(case["largest_lyapunov_seed_stderr"])  # one finished seed


def test_compare_says_how_many_seeds_the_mean_over_seeds_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _tiny_compare(tmp_path / "cmp", lr_eos="2.65", lyap_steps="4")
    args[args.index("--seeds") + 1] = "3"  # seeds 1 and 2 diverge at lr 2.65 (test above)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert (
        "warning: EoS (lr=2.65): training diverged for seed(s) 1, 2 (2 of 3); the mean over "
        "seeds uses the other 1" in " ".join(out.split())
    )
    row = next(line for line in out.splitlines() if "seeds in that mean" in line)
    assert "1 of 3" in row and "3 of 3" in row  # EoS, then the case below the edge


@pytest.mark.filterwarnings("default::UserWarning")  # as outside pytest
def test_compare_recomputes_a_damaged_stored_case_with_one_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    out = tmp_path / "cmp"
    args = _tiny_compare(out, lr_eos="1.0", lyap_steps="4")
    assert main(args) == 0
    first = json.loads((out / "chaos_compare.json").read_text())["cases"]
    conn = sqlite3.connect(out / "runs.sqlite")
    (key,) = conn.execute("SELECT key FROM runs ORDER BY key LIMIT 1").fetchone()
    conn.execute("UPDATE runs SET result = '{\"x\": 1}' WHERE key = ?", (key,))
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert main(args) == 0  # was: KeyError 'lr'
    captured = capsys.readouterr()
    assert "a stored case lacks" in captured.err and captured.err.count("\n") == 1
    assert "reused 1 of 2 cases" in captured.out
    again = json.loads((out / "chaos_compare.json").read_text())["cases"]
    for name in ("EoS", "below"):
        assert again[name]["largest_lyapunov"] == first[name]["largest_lyapunov"]


def test_run_case_leaves_no_spill_files_and_caps_the_iterates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sharpdim.commands import chaos_cases

    opts = dict(
        lr=0.5, n_train=48, width=4, depth=1, train_steps=10, k=1, lyap_steps=4, warmup=0, seed=0
    )
    plain = chaos_cases.run_case(num_iterates=11, seeds=1, **opts)
    real = trajectory_module.capture_backward
    spill = tmp_path / "spill"

    def spilling(*args: Any, **kwargs: Any) -> Any:  # every buffer goes to disk
        return real(*args, **kwargs, max_memory_bytes=0, spill_dir=spill)

    monkeypatch.setattr(trajectory_module, "capture_backward", spilling)
    spilled = chaos_cases.run_case(num_iterates=10**10, seeds=1, **opts)  # was: MemoryError
    assert spill.is_dir() and list(spill.iterdir()) == []  # was: one folder left per run
    assert spilled["num_iterates"] == plain["num_iterates"] == 11
    for key in ("ph0_dimension", "e1", "sd", "largest_lyapunov"):
        assert spilled[key] == plain[key], key


def test_compare_too_large_for_the_exact_sd_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(trajectory_module, "capture_backward", _no_training)
    out = tmp_path / "cmp"
    msg = _exit_2(["chaos", "compare", "--width", "300", "--depth", "1", "--out", str(out)], capsys)
    assert msg == (  # 64*300 + 300 + 300*10 + 10
        "the MLP has 22,510 parameters, more than the 20,000 the exact sharpness dimension "
        "(dense Hessians) takes: pass a smaller --width or --depth"
    )
    assert not out.exists()


@pytest.mark.parametrize("command", ["compare", "lyapunov"])
def test_the_size_checks_build_no_model(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A refused size is refused from the count: 81.7M parameters were built (2.6 GB) first."""
    monkeypatch.setattr(models_module, "build_mlp", _no_training)
    argv = ["chaos", command, "--width", "9000", "--depth", "2"]
    extra = ["--out", str(tmp_path / "cmp")] if command == "compare" else ["--k", "90000000"]
    msg = _exit_2(argv + extra, capsys)
    assert ("81,684,010 parameters" in msg) if command == "compare" else ("--k 90000000" in msg)


def test_compare_store_folder_and_empty_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(trajectory_module, "capture_backward", _no_training)
    store = tmp_path / "runs.sqlite"
    store.mkdir()
    msg = _exit_2(["chaos", "compare", "--out", str(tmp_path)], capsys)
    assert msg == (
        f"cannot use {store} as the results store (it is a folder): choose another --out "
        f"folder or move {store} away"
    )
    monkeypatch.chdir(tmp_path)
    msg = _exit_2(["chaos", "compare", "--out", ""], capsys)
    assert msg == (
        "Invalid value for '--out': it is empty: name a folder, e.g. --out results: "
        "see 'sharpdim chaos compare --help'"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["runs.sqlite"]


def test_idx_dataset_names_the_cli_options(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(loop_module, "train", _no_training)
    msg = _exit_2(["chaos", "lyapunov", "--dataset", "idx"], capsys)
    assert msg == (
        "--dataset 'idx' is not one the command line can load: pass --dataset digits, "
        "mnist1d, modular, teacher_student (your own IDX files: in Python, "
        'load_dataset("idx", directory=...) from sharpdim.training.datasets)'
    )


def _overflowing_orbit(k: int, steps: int, warmup: int, json_out: Path) -> list[str]:
    """``chaos lyapunov`` without training at lr=1e30: the orbit overflows at step 6."""
    args = ["chaos", "lyapunov", "--n-train", "32", "--width", "4", "--depth", "1"]
    args += ["--train-steps", "0", "--lr", "1e30", "--k", str(k), "--steps", str(steps)]
    return [*args, "--warmup", str(warmup), "--json", str(json_out)]


def test_lyapunov_says_when_the_orbit_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # no training; at lr=1e30 the map's orbit overflows at step 6 (5 warmup steps, then 1)
    out = tmp_path / "l.json"
    assert main(_overflowing_orbit(k=3, steps=30, warmup=5, json_out=out)) == 0
    printed = capsys.readouterr().out
    assert (
        "warning: the orbit diverged (non-finite state) at step 6 of 35 (warmup included): "
        "its exponents average only 1 of the 30 steps; lower --lr"
    ) in printed.splitlines()
    result = json.loads(out.read_text())["result"]
    assert (result["diverged_at"], result["num_steps"]) == (6, 1)


def _overflowing_map_at(lr_to_break: float) -> type:
    """A TrainingMap whose step size is 1e30 for the case at ``lr_to_break``: its orbits
    overflow after training went fine."""
    from sharpdim.dynamics.step_maps import TrainingMap

    class Overflowing(TrainingMap):
        def __init__(self, *args: Any, lr: float, **kwargs: Any) -> None:
            super().__init__(*args, lr=1e30 if lr == lr_to_break else lr, **kwargs)

    return Overflowing


def test_run_case_records_an_orbit_that_diverged(monkeypatch: pytest.MonkeyPatch) -> None:
    import sharpdim.dynamics.step_maps as step_maps_module
    from sharpdim.commands.chaos_cases import run_case

    monkeypatch.setattr(step_maps_module, "TrainingMap", _overflowing_map_at(0.5))
    case = run_case(
        lr=0.5, n_train=48, width=4, depth=1, train_steps=10, k=1, lyap_steps=20, warmup=0,
        num_iterates=11, seed=0, seeds=2,
    )  # fmt: skip
    assert (case["status"], case["diverged_at"]) == ("orbit_diverged", None)  # was "done"
    lyap = case["lyapunov"]
    assert case["orbit_diverged_at"] == lyap["diverged_at"] == lyap["num_steps"] == 6
    assert case["orbit_diverged_seeds"] == [0, 1] and case["diverged_seeds"] == []
    assert case["divergence"]["diverged_at"] is not None
    fine = run_case(
        lr=0.05, n_train=48, width=4, depth=1, train_steps=10, k=1, lyap_steps=4, warmup=0,
        num_iterates=11, seed=0, seeds=1,
    )  # fmt: skip
    assert (fine["status"], fine["orbit_diverged_at"], fine["orbit_diverged_seeds"]) == (
        "done",
        None,
        [],
    )


def test_compare_reports_and_stores_an_orbit_that_diverged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    import sharpdim.dynamics.step_maps as step_maps_module

    monkeypatch.setattr(step_maps_module, "TrainingMap", _overflowing_map_at(0.5))
    out = tmp_path / "cmp"
    assert main(_tiny_compare(out, lr_eos="0.5", lyap_steps="20")) == 0
    assert (
        "EoS (lr=0.5): warning: the Lyapunov orbit diverged (non-finite state) at step 6 of 20 "
        "(warmup included): its exponents average only 6 of the 20 steps"
    ) in capsys.readouterr().out.splitlines()
    cases = json.loads((out / "chaos_compare.json").read_text())["cases"]
    assert (cases["EoS"]["status"], cases["EoS"]["orbit_diverged_at"]) == ("orbit_diverged", 6)
    assert cases["below"]["status"] == "done"
    conn = sqlite3.connect(out / "runs.sqlite")
    statuses = sorted(s for (s,) in conn.execute("SELECT status FROM runs"))
    conn.close()
    assert statuses == ["done", "done"]  # finished measurements: reused by a rerun


def test_cases_stored_before_the_ph0_outcome_keys_are_reused() -> None:
    """Stores written before ph0_slope / ph0_zero_persistence existed were refused and every
    case trained again; the shipped example JSON is such an older case."""
    from sharpdim.commands.chaos_cases import decode_case

    shipped = Path(__file__).resolve().parents[2] / "docs" / "figures" / "chaos_compare.json"
    for case in json.loads(shipped.read_text())["cases"].values():
        old = {k: v for k, v in case.items() if k not in ("ph0_slope", "ph0_slope_loss")}
        old.pop("ph0_zero_persistence", None)
        old.pop("ph0_zero_persistence_loss", None)
        decoded = decode_case(old)
        assert decoded["ph0_zero_persistence"] is False and decoded["ph0_slope"] is None
        assert decoded["ph0_zero_persistence_loss"] is False
        assert decoded["ph0_dimension"] == case["ph0_dimension"]
    # a case with the one flag of both clouds: it is kept for the cloud whose dimension is null
    case = next(iter(json.loads(shipped.read_text())["cases"].values()))
    one_flag = {**case, "ph0_zero_persistence": True, "ph0_dimension_loss": None}
    one_flag.pop("ph0_zero_persistence_loss", None)
    decoded = decode_case(one_flag)
    assert (decoded["ph0_zero_persistence"], decoded["ph0_zero_persistence_loss"]) == (False, True)


def test_lyapunov_json_reports_the_warmup_steps_run_when_the_orbit_diverges_in_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # as above, the orbit overflows at step 6, here inside a warmup of 10 (reported: 10 before)
    out = tmp_path / "l.json"
    assert main(_overflowing_orbit(k=1, steps=3, warmup=10, json_out=out)) == 0
    assert (
        "warning: the orbit diverged (non-finite state) at step 6 of 13 (warmup included): "
        "its exponents average only 0 of the 3 steps; lower --lr"
    ) in capsys.readouterr().out.splitlines()
    payload = json.loads(out.read_text())
    result = payload["result"]
    assert (result["diverged_at"], result["warmup"], result["num_steps"]) == (6, 6, 0)
    assert payload["lyapunov"]["warmup"] == 10  # the setting asked for


def _map_overflowing_for_seed_1(lr_to_break: float) -> type:
    """A TrainingMap whose step size is 1e30 for the second map built at ``lr_to_break``
    (``run_case`` builds the map of its first seed, then one per extra seed)."""
    from sharpdim.dynamics.step_maps import TrainingMap

    built: list[float] = []

    class OverflowingForSeed1(TrainingMap):
        def __init__(self, *args: Any, lr: float, **kwargs: Any) -> None:
            built.append(lr)
            second = lr == lr_to_break and built.count(lr) == 2
            super().__init__(*args, lr=1e30 if second else lr, **kwargs)

    return OverflowingForSeed1


def test_compare_names_seeds_whose_orbit_diverged_in_the_warmup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Seed 1's orbit overflows inside the warmup: no exponent, so it leaves the mean over
    seeds; it was neither listed apart nor named in a warning."""
    import sharpdim.dynamics.step_maps as step_maps_module

    monkeypatch.setattr(step_maps_module, "TrainingMap", _map_overflowing_for_seed_1(0.5))
    out = tmp_path / "cmp"
    args = _tiny_compare(out, lr_eos="0.5", lyap_steps="2")
    args[args.index("--warmup") + 1] = "20"
    args[args.index("--seeds") + 1] = "2"
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "warning: EoS (lr=0.5): the Lyapunov orbit diverged before its first averaged step for "
        "seed(s) 1 (1 of 2); the mean over seeds uses the other 1" in " ".join(printed.split())
    )
    eos = json.loads((out / "chaos_compare.json").read_text())["cases"]["EoS"]
    assert (eos["status"], eos["diverged_seeds"]) == ("done", [])
    assert eos["orbit_diverged_seeds"] == eos["orbit_diverged_early_seeds"] == [1]
    first, second = eos["largest_lyapunov_per_seed"]
    assert second is None and eos["largest_lyapunov_seed_mean"] == first  # null: NaN in JSON
    row = next(line for line in printed.splitlines() if "seeds in that mean" in line)
    assert "1 of 2" in row and "2 of 2" in row  # EoS, then the case below the edge


def test_cases_stored_before_the_early_seeds_key_get_it_when_their_records_tell() -> None:
    from sharpdim.commands.chaos import _dropped_seeds
    from sharpdim.commands.chaos_cases import decode_case

    shipped = Path(__file__).resolve().parents[2] / "docs" / "figures" / "chaos_compare.json"
    case = json.loads(shipped.read_text())["cases"]["EoS"]
    case.pop("orbit_diverged_early_seeds", None)
    assert decode_case(case)["orbit_diverged_early_seeds"] == []
    # seed 1's training diverged, seed 2's orbit diverged with no exponent: tell apart
    old = {**case, "largest_lyapunov_per_seed": [0.1, None, None]}
    old.update(diverged_seeds=[1], orbit_diverged_seeds=[2])
    decoded = decode_case(old)
    assert decoded["orbit_diverged_early_seeds"] == [2]
    assert _dropped_seeds(decoded) == (
        "training diverged for seed(s) 1 (1 of 3) and the Lyapunov orbit diverged before its "
        "first averaged step for seed(s) 2 (1 of 3); the mean over seeds uses the other 1"
    )
    # two orbits diverged, one of them early: which one is not stored, so computed again
    old.update(
        diverged_seeds=[], orbit_diverged_seeds=[0, 2], largest_lyapunov_per_seed=[0.1, 0.2, None]
    )
    with pytest.raises(ValueError, match="a stored case lacks orbit_diverged_early_seeds"):
        decode_case(old)
