"""`sharpdim eos ...` at tiny sizes: each command writes its figure and JSON summary."""

import errno
import json
import os
import sqlite3

import pytest

from sharpdim.cli import main
from sharpdim.runner import resume
from sharpdim.training import eos_experiments

TINY_MLP = ["--n-train", "60", "--width", "8", "--depth", "1", "--steps", "12", "--every", "4"]


def _summary(path):
    assert (path.with_suffix(".png")).stat().st_size > 1000
    return json.loads(path.read_text())


def test_sharpening(tmp_path, capsys):
    code = main(["eos", "sharpening", "--lrs", "0.2,0.5", *TINY_MLP, "--out", str(tmp_path)])
    assert code == 0
    summary = _summary(tmp_path / "sharpening.json")
    assert summary["kind"] == "sharpening" and summary["steps"] == 12
    assert [r["lr"] for r in summary["runs"]] == [0.2, 0.5]
    assert summary["runs"][0]["steps"] == [0, 4, 8, 12]  # + the final parameters
    assert summary["runs"][1]["threshold"] == 4.0
    assert set(summary["ratios"]) == {"gd lr=0.2", "gd lr=0.5"}
    assert "late median ratio" in capsys.readouterr().out


def test_sharpening_table_shows_the_step_a_run_diverged_at(tmp_path, capsys):
    assert main(["eos", "sharpening", "--lrs", "0.2,50", *TINY_MLP, "--out", str(tmp_path)]) == 0
    runs = json.loads((tmp_path / "sharpening.json").read_text())["runs"]
    step = runs[1]["diverged_at"]
    assert runs[1]["status"] == "diverged" and isinstance(step, int)
    assert f"diverged@{step}" in capsys.readouterr().out


def test_thresholds(tmp_path):
    code = main(["eos", "thresholds", "--momentum-lr", "0.1", "--adam-lr", "0.01", *TINY_MLP,
                 "--float32", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = _summary(tmp_path / "thresholds.json")
    momentum, adam = summary["runs"]
    assert momentum["optimizer"] == "momentum" and adam["optimizer"] == "adam"
    assert abs(momentum["threshold"] - 38.0) < 1e-9
    assert abs(adam["threshold"] - 3.8 / (0.01 * 0.1)) < 1e-6
    assert adam["late_median_ratio"] is not None


def test_sweep_jsons_record_every_option(tmp_path):
    """thresholds.json did not record --momentum, --beta1 and --beta2."""
    options = ["--momentum", "0.8", "--beta1", "0.85", "--beta2", "0.99"]
    code = main(["eos", "thresholds", "--momentum-lr", "0.1", "--adam-lr", "0.01", *options,
                 *TINY_MLP, "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = _summary(tmp_path / "thresholds.json")
    assert summary["settings"] == {
        "momentum_lr": 0.1, "adam_lr": 0.01, "momentum": 0.8, "beta1": 0.85, "beta2": 0.99,
        "steps": 12, "every": 4, "dataset": "digits", "n_train": 60, "width": 8, "depth": 1,
        "late_fraction": 0.3, "float64": True, "seed": 0,
    }  # fmt: skip
    momentum, adam = summary["runs"]
    assert momentum["threshold"] == pytest.approx(3.6 / 0.1)
    assert adam["threshold"] == pytest.approx(3.7 / (0.01 * 0.15))
    assert _sharpening(tmp_path, "0.2") == 0
    settings = json.loads((tmp_path / "sharpening.json").read_text())["settings"]
    assert (settings["lrs"], settings["steps"], settings["n_train"]) == ([0.2], 12, 60)


def test_minimalist(tmp_path, capsys):
    # 1,500 steps: eta = 0.228, 0.332, 0.436 reach the EoS minimum (none did with 400, so
    # the ratio check passed on an empty list)
    code = main(["eos", "minimalist", "--num-lrs", "6", "--bif-num", "8", "--steps", "1500",
                 "--late", "50", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0
    summary = _summary(tmp_path / "minimalist.json")
    assert summary["ratio_steps"] == 1500 and summary["bifurcation_num_lrs"] == 8
    assert summary["ratio_init"] == [2.0, 0.3, 2.0, 0.3]
    assert summary["ratios"]["eos_lrs"] == pytest.approx([0.228, 0.332, 0.436])
    assert len(summary["ratios"]["eos_ratios"]) == 3
    assert all(0.9 < r < 1.0 for r in summary["ratios"]["eos_ratios"])
    assert "final sharpness / (2/eta)" in capsys.readouterr().out


def test_fractal(tmp_path):
    code = main(["eos", "fractal", "--particles", "300", "--steps", "20", "--out", str(tmp_path)])
    assert code == 0
    summary = _summary(tmp_path / "fractal.json")
    assert summary["num_particles"] == 300 and summary["steps"] == 20
    assert 0.0 <= summary["eos_fraction"] <= 1.0
    assert summary["status"] == "done" and summary["num_diverged"] == 0


def test_fractal_that_diverges_is_recorded_with_null_measures(tmp_path, capsys):
    args = ["--particles", "100", "--steps", "10", "--lr", "1e10", "--out", str(tmp_path)]
    assert main(["eos", "fractal", *args]) == 0
    summary = _summary(tmp_path / "fractal.json")
    assert summary["status"] == "diverged"
    assert summary["num_diverged"] == 100 and summary["diverged_fraction"] == 1.0
    for key in ("eos_fraction", "mean_loss", "median_sharpness", "box_dimension"):
        assert summary[key] is None, key
    assert summary["box_counts"] == []
    out = capsys.readouterr().out
    assert "slope" not in out
    line = next(x for x in out.splitlines() if x.startswith("diverged:"))  # one line in a pipe
    assert line.startswith("diverged: 100 of 100 particles ran away (loss above")
    assert line.endswith(
        "the measures are not computed (null in the JSON); pass a smaller --lr "
        "(below 2 keeps the particles bounded), --noise-std, --amplitude or --init-range"
    )
    assert main(["eos", "fractal", "--frequency", "1e200", "--out", str(tmp_path)]) == 2
    assert "gives an infinite sharpness 1 + A k^2" in capsys.readouterr().err  # was a traceback


@pytest.mark.parametrize(
    ("command", "stores"),
    [("sharpening", True), ("thresholds", True), ("minimalist", False), ("fractal", False)],
)
def test_out_help_names_what_the_command_writes(command, stores, capsys):
    assert main(["eos", command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "folder for the PNG" in text
    assert ("runs.sqlite" in text) is stores and "(sharpening, thresholds)" not in text


def test_bad_input_exits_with_code_2(tmp_path, capsys):
    assert main(["eos", "sharpening", "--lrs", "abc", "--out", str(tmp_path)]) == 2
    assert main(["eos", "sharpening", "--lrs", "0.2,0.3,2e-1", "--out", str(tmp_path)]) == 2
    assert "--lrs lists 0.2 twice: give each step size once" in capsys.readouterr().err
    assert main(["eos", "thresholds", "--momentum-lr", "0", "--adam-lr", "0"]) == 2
    assert main(["eos", "minimalist", "--lr-min", "0.5", "--lr-max", "0.1"]) == 2
    assert main(["eos", "fractal", "--particles", "0", "--out", str(tmp_path)]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["eos", "fractal", "--amplitude", "-2", "--out", str(tmp_path)]) == 2
    assert "--amplitude must be a finite number >= 0" in capsys.readouterr().err


@pytest.fixture
def trained(monkeypatch):
    """The step sizes trained by ``monitored_run`` (patched to count; raises at ``crash_lr``)."""
    calls: list[float] = []
    state = {"crash_lr": None}
    original = eos_experiments.monitored_run

    def counting(setup, data, config, **kwargs):
        if config.lr == state["crash_lr"]:
            raise RuntimeError("killed")
        calls.append(config.lr)
        return original(setup, data, config, **kwargs)

    monkeypatch.setattr(eos_experiments, "monitored_run", counting)
    return calls, state


def _sharpening(out, lrs, *extra):
    return main(["eos", "sharpening", "--lrs", lrs, *TINY_MLP, *extra, "--out", str(out)])


def _stored_lrs(out):
    conn = sqlite3.connect(out / "runs.sqlite")
    rows = conn.execute("SELECT config, status FROM runs ORDER BY rowid").fetchall()
    conn.close()
    return [(json.loads(c)["train"]["lr"], status) for c, status in rows]


def test_sharpening_rerun_trains_nothing_and_writes_the_same_json(tmp_path, trained, capsys):
    calls, _ = trained
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    first = (tmp_path / "sharpening.json").read_text()
    assert calls == [0.2, 0.5] and "reused" not in capsys.readouterr().out
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    assert calls == [0.2, 0.5]  # nothing trained again
    assert (tmp_path / "sharpening.json").read_text() == first
    assert "reused 2 of 2 runs stored in" in capsys.readouterr().out
    assert _stored_lrs(tmp_path) == [(0.2, "done"), (0.5, "done")]


def test_a_rerun_with_other_code_says_it_computed_the_runs_again(
    tmp_path, trained, capsys, monkeypatch
):
    calls, _ = trained
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    capsys.readouterr()
    stored = resume.code_version()
    monkeypatch.setattr(resume, "code_version", lambda: "9.9+edited")
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    assert calls == [0.2, 0.5, 0.2, 0.5]
    out = capsys.readouterr().out
    assert f"computed 2 of 2 runs again: {tmp_path / 'runs.sqlite'} holds them from other " in out
    assert f"(sharpdim {stored}), whose numbers may differ; the stored ones are kept" in out
    assert "reused" not in out


def test_sharpening_resumes_after_a_crash(tmp_path, trained):
    calls, state = trained
    state["crash_lr"] = 0.5
    with pytest.raises(RuntimeError, match="killed"):
        _sharpening(tmp_path, "0.2,0.5")
    assert _stored_lrs(tmp_path) == [(0.2, "done")]  # the finished run survived
    state["crash_lr"] = None
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    assert calls == [0.2, 0.5]  # 0.2 once before the crash, only 0.5 after it
    summary = json.loads((tmp_path / "sharpening.json").read_text())
    assert [r["lr"] for r in summary["runs"]] == [0.2, 0.5]


def test_sweeps_into_one_folder_keep_their_own_runs(tmp_path, trained, capsys):
    calls, _ = trained
    assert _sharpening(tmp_path, "0.2,0.5") == 0
    assert _sharpening(tmp_path, "0.3", "--late-fraction", "0.5") == 0
    summary = json.loads((tmp_path / "sharpening.json").read_text())
    assert [r["lr"] for r in summary["runs"]] == [0.3]
    assert "last 50% of training" in capsys.readouterr().out
    # stored runs serve another late fraction: the summary is recomputed, nothing trained
    assert _sharpening(tmp_path, "0.5,0.2", "--late-fraction", "0.5") == 0
    assert calls == [0.2, 0.5, 0.3]
    assert [lr for lr, _ in _stored_lrs(tmp_path)] == [0.2, 0.5, 0.3]
    summary = json.loads((tmp_path / "sharpening.json").read_text())
    assert [r["lr"] for r in summary["runs"]] == [0.5, 0.2] and summary["late_fraction"] == 0.5
    for run in summary["runs"]:  # records at steps 8 and 12; the median: their mean
        late = sorted(
            b / run["threshold"]
            for s, b in zip(run["steps"], run["bounded"], strict=True)
            if s >= 6
        )
        assert run["late_median_ratio"] == pytest.approx((late[0] + late[1]) / 2, rel=1e-14)
        assert run["late_ratio_range"] == [late[0], late[1]]
    assert "reused 2 of 2 runs" in capsys.readouterr().out


def test_thresholds_zero_skips_an_optimizer(tmp_path, trained):
    calls, _ = trained
    code = main(["eos", "thresholds", "--momentum-lr", "0", "--adam-lr", "0.01", *TINY_MLP,
                 "--late-fraction", "0.25", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0 and calls == [0.01]
    summary = json.loads((tmp_path / "thresholds.json").read_text())
    assert [r["optimizer"] for r in summary["runs"]] == ["adam"]
    # the skipped optimizer's hyperparameter is not recorded as if a run had used it
    assert "momentum" not in summary["settings"] and summary["settings"]["beta1"] == 0.9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--momentum-lr", "-1", "--adam-lr", "-1"],
            "error: --momentum-lr -1.0 is not a step size",
        ),
        (["--adam-lr", "nan"], "error: --adam-lr nan is not a step size"),
        (["--momentum-lr", "inf"], "error: --momentum-lr inf is not a step size"),
        (["--momentum-lr", "0", "--adam-lr", "0"], "error: both step sizes are 0"),
        # a skipped optimizer's hyperparameter was silently dropped
        (
            ["--momentum-lr", "0", "--momentum", "0.5"],
            "error: --momentum 0.5 would be ignored: --momentum-lr is 0",
        ),
        (["--adam-lr", "0", "--beta2", "0.99"], "error: --beta2 0.99 would be ignored: --adam-lr"),
        # a threshold that overflows was refused after --out and runs.sqlite were created, as lr=
        (
            ["--momentum-lr", "0", "--adam-lr", "1e-320"],
            "error: --adam-lr 9.99989e-321 puts the adam stability threshold at inf",
        ),
    ],
)
def test_thresholds_refuses_bad_step_sizes(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert main(["eos", "thresholds", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
    assert not out.exists()


def test_sharpening_refuses_a_step_size_whose_threshold_overflows(tmp_path, capsys, trained):
    out = tmp_path / "out"
    assert main(["eos", "sharpening", "--lrs", "0.2,1e-320", *TINY_MLP, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lrs 9.99989e-321 puts the gd stability threshold at inf")
    assert err.count("\n") == 1 and not out.exists() and trained[0] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "idx"], "dataset 'idx' is not one of the EoS datasets: use one of digits"),
        (["--dataset", "cifar"], "dataset 'cifar' is not one of the EoS datasets"),
        (
            ["--n-train", "1501"],
            "--n-train 1501 exceeds the 1500 training examples of --dataset digits: pass "
            "--n-train <= 1500",
        ),
    ],
)
def test_eos_data_errors(tmp_path, capsys, trained, args, message):
    code = main(
        ["eos", "sharpening", "--lrs", "0.2", "--steps", "4", *args, "--out", str(tmp_path)]
    )
    assert code == 2 and trained[0] == []
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_corrupt_store_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "runs.sqlite").write_bytes(b"not sqlite\n" * 100)
    assert _sharpening(tmp_path, "0.2") == 2
    err = capsys.readouterr().err
    assert "runs.sqlite is not a readable SQLite results store" in err
    # named by --out, which picks the path (it said "choose another path")
    assert err.rstrip().endswith("move the file away or choose another --out folder")
    assert err.count("\n") == 1


def test_minimalist_where_every_step_size_diverges(tmp_path, capsys):
    code = main(["eos", "minimalist", "--lr-min", "5", "--lr-max", "6", "--num-lrs", "3",
                 "--bif-min", "5", "--bif-max", "6", "--bif-num", "3", "--steps", "50",
                 "--late", "10", "--out", str(tmp_path)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    summary = _summary(tmp_path / "minimalist.json")  # the figure is written too
    for part in ("ratios", "bifurcation"):
        assert summary[part]["first_diverged"] == 5.0  # the smallest step size diverged
        assert summary[part]["eos_lrs"] == [] and summary[part]["reference_sharpness"] is None


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err.removeprefix("error: ").rstrip("\n")


def test_fractal_particles_have_an_upper_bound(tmp_path, capsys, monkeypatch):
    from sharpdim.training import eos_fractal

    monkeypatch.setattr(eos_fractal, "fractal_attractor", None)  # never reached
    args = ["eos", "fractal", "--particles", "1000001", "--out", str(tmp_path / "o")]
    assert main(args) == 2
    assert _one_error_line(capsys) == (
        "--particles 1,000,001 exceeds 1,000,000: pass --particles <= 1,000,000 (the default "
        "20,000 shows the attractor)"
    )
    assert not (tmp_path / "o").exists()


def test_lrs_with_an_empty_item_is_an_error(tmp_path, capsys, trained):
    assert _sharpening(tmp_path / "o", "0.2,,0.3") == 2
    assert _one_error_line(capsys) == (
        "--lrs '0.2,,0.3' has an empty item between commas: use e.g. '0.2,0.3,0.5'"
    )
    assert trained[0] == [] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["sharpening", "minimalist", "fractal"])
def test_empty_out_is_an_error(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["eos", command, "--out", ""]) == 2
    assert _one_error_line(capsys) == (
        f"Invalid value for '--out': it is empty: name a folder, e.g. --out results: "
        f"see 'sharpdim eos {command} --help'"
    )
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_a_store_path_that_is_a_folder_is_a_one_line_error(tmp_path, capsys, trained):
    (tmp_path / "runs.sqlite").mkdir()
    assert _sharpening(tmp_path, "0.2") == 2
    store = tmp_path / "runs.sqlite"
    assert _one_error_line(capsys) == (
        f"cannot use {store} as the results store (it is a folder): choose another --out "
        f"folder or move {store} away"
    )
    assert trained[0] == []


def test_fractal_init_range_must_be_positive(tmp_path, capsys, monkeypatch):
    from sharpdim.training import eos_fractal

    monkeypatch.setattr(eos_fractal, "fractal_attractor", None)  # never reached
    assert main(["eos", "fractal", "--init-range", "0", "--out", str(tmp_path / "o")]) == 2
    assert _one_error_line(capsys) == (
        "--init-range must be a positive finite number, got 0.0: pass e.g. --init-range 3.0"
    )
    assert not (tmp_path / "o").exists()


def _read_only_connections(monkeypatch):
    """Every ``sqlite3.connect`` gives a connection whose writes fail, as on a read-only file."""
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.execute("PRAGMA query_only = ON")
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


def test_a_read_only_store_is_refused_before_training(tmp_path, capsys, trained):
    assert _sharpening(tmp_path, "0.2") == 0
    with pytest.MonkeyPatch.context() as patch:
        _read_only_connections(patch)
        assert _sharpening(tmp_path, "0.2,0.5") == 2
    assert _one_error_line(capsys) == (
        f"the results store {tmp_path / 'runs.sqlite'} is read-only (attempt to write a "
        "readonly database): make it writable or choose another --out folder"
    )
    assert trained[0] == [0.2]  # 0.5 was not trained


def test_a_store_link_into_a_missing_folder_names_out(tmp_path, capsys, trained):
    """Its message ended in 'choose a writable file path', which the user picks via --out."""
    (tmp_path / "runs.sqlite").symlink_to(tmp_path / "missing" / "runs.sqlite")
    assert _sharpening(tmp_path, "0.2") == 2
    assert _one_error_line(capsys).endswith(": choose another --out folder")
    assert trained[0] == []


def test_a_store_of_another_schema_version_names_out(tmp_path, capsys, trained):
    """Its message said 'use a matching sharpdim or a new path'; the path is --out's."""
    from sharpdim.runner.store import APPLICATION_ID

    conn = sqlite3.connect(tmp_path / "runs.sqlite")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert _sharpening(tmp_path, "0.2") == 2
    message = _one_error_line(capsys)
    assert "is a results store of schema version 99" in message
    assert message.endswith("use a matching sharpdim or choose another --out folder")
    assert trained[0] == []


def test_a_store_file_without_write_permission_is_refused_before_training(
    tmp_path, capsys, trained
):
    assert _sharpening(tmp_path, "0.2") == 0
    store = tmp_path / "runs.sqlite"
    store.chmod(0o444)
    try:
        if os.access(store, os.W_OK):
            pytest.skip("file permissions do not bind this user (root)")
        assert _sharpening(tmp_path, "0.2,0.5") == 2
    finally:
        store.chmod(0o644)
    assert _one_error_line(capsys) == (
        f"cannot write {store} (the file is read-only): choose a writable --out folder"
    )
    assert trained[0] == [0.2]


@pytest.mark.filterwarnings("default::UserWarning")  # as outside pytest
def test_an_undecodable_stored_run_is_one_warning_line(tmp_path, capsys, trained):
    assert _sharpening(tmp_path, "0.2") == 0
    conn = sqlite3.connect(tmp_path / "runs.sqlite")
    (key,) = conn.execute("SELECT key FROM runs").fetchone()
    conn.execute("UPDATE runs SET result = '{' WHERE key = ?", (key,))
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert _sharpening(tmp_path, "0.2") == 0
    assert trained[0] == [0.2, 0.2]  # computed again
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        f"warning: {tmp_path / 'runs.sqlite'}: the stored run {key} cannot be decoded "
        "(JSONDecodeError: "
    )
    assert err.endswith("(further such runs of this store are not reported)\n")


def test_an_interrupted_figure_leaves_no_figure_of_an_earlier_run(tmp_path, monkeypatch):
    from sharpdim.report import eos_figures

    args = ["eos", "fractal", "--particles", "20", "--steps", "2", "--out", str(tmp_path)]
    assert main(args) == 0 and (tmp_path / "fractal.png").exists()

    def interrupted(result, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(eos_figures, "plot_fractal", interrupted)
    assert main([*args, "--seed", "1"]) == 130
    assert not (tmp_path / "fractal.png").exists()  # was: the seed-0 figure beside seed 1's JSON
    settings = json.loads((tmp_path / "fractal.json").read_text())["settings"]
    assert settings["seed"] == 1 and settings["particles"] == 20 and settings["amplitude"] == 2.0


def test_minimalist_json_records_its_settings(tmp_path):
    args = ["eos", "minimalist", "--num-lrs", "2", "--bif-num", "2", "--steps", "50"]
    assert main([*args, "--late", "20", "--out", str(tmp_path)]) == 0
    settings = json.loads((tmp_path / "minimalist.json").read_text())["settings"]
    assert (settings["lr_min"], settings["bif_max"], settings["late"]) == (0.02, 1.1, 20)


def test_a_figure_that_cannot_be_written_is_named(tmp_path, capsys, monkeypatch):
    from sharpdim.report import eos_figures

    def no_space(result, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eos_figures, "plot_fractal", no_space)
    args = ["eos", "fractal", "--particles", "20", "--steps", "2", "--out", str(tmp_path)]
    assert main(args) == 2
    assert _one_error_line(capsys) == (
        f"cannot write {tmp_path / 'fractal.png'} (No space left on device): choose a "
        "writable --out folder"
    )
    assert (tmp_path / "fractal.json").exists()  # the results are written first


def test_a_tiny_adam_step_size_plots_without_overflow_warnings(tmp_path):
    """A threshold near the float64 maximum (``--adam-lr 1e-300``) is drawn on a log axis
    without numpy's overflow RuntimeWarning (an error under this test configuration)."""
    from sharpdim.report.eos_figures import plot_eos_runs
    from sharpdim.training.eos_experiments import EoSRun, EoSRunsResult
    from sharpdim.training.eos_setup import MLPSetup

    run = EoSRun(
        optimizer="adam", lr=1e-300, threshold=3.8e301, status="ok", diverged_at=None,
        steps=(0, 4, 8), loss=(1.0, 0.9, 0.8), sharpness=(1.0, 2.0, 3.0),
        bounded=(0.5, 1.0, 1.5), late_median_ratio=0.0, late_ratio_range=(0.0, 0.0),
        final_train_loss=0.8, final_train_accuracy=0.5, wall_time_s=0.1,
    )  # fmt: skip
    result = EoSRunsResult(
        kind="thresholds", setup=MLPSetup(), steps=8, every=4, late_fraction=0.3,
        runs=(run,), wall_time_s=0.1,
    )  # fmt: skip
    png = plot_eos_runs(result, tmp_path / "thresholds.png")
    assert png.stat().st_size > 1000


def test_a_resumed_sweep_prints_its_own_time_not_the_stored_training(tmp_path, capsys, trained):
    assert _sharpening(tmp_path, "0.2") == 0
    conn = sqlite3.connect(tmp_path / "runs.sqlite")
    (key, result) = conn.execute("SELECT key, result FROM runs").fetchone()
    stored = json.loads(result)
    stored["wall_time_s"] = 1000.0  # as if the run had trained for 1000 s
    conn.execute("UPDATE runs SET result = ? WHERE key = ?", (json.dumps(stored), key))
    conn.commit()
    conn.close()
    capsys.readouterr()
    assert _sharpening(tmp_path, "0.2") == 0
    assert trained[0] == [0.2]  # reused, not trained again
    line = capsys.readouterr().out.strip().splitlines()[-1]
    seconds = float(line.rsplit("(", 1)[1].split(" s)")[0])
    assert line.startswith("wrote ") and seconds < 100, line
    assert _summary(tmp_path / "sharpening.json")["wall_time_s"] >= 1000.0


@pytest.mark.parametrize("folder", ["x[/b]", "run[red]"])
def test_output_paths_with_brackets_are_printed_as_they_are(tmp_path, capsys, folder):
    """Paths go out without rich markup: '[/b]' crashed after the files were written and
    'run[red]' printed as 'run'."""
    out = tmp_path / folder
    args = ["eos", "fractal", "--particles", "20", "--steps", "2", "--out", str(out)]
    assert main(args) == 0
    assert f"wrote {out / 'fractal.png'} and {out / 'fractal.json'}" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("sharpening", ["--lrs", "0.1,1e39"], "--lrs 1e+39 does not fit in float32"),
        ("thresholds", ["--momentum-lr", "1e39"], "--momentum-lr 1e+39 does not fit in float32"),
        ("thresholds", ["--adam-lr", "1e39"], "--adam-lr 1e+39 does not fit in float32"),
    ],
)
def test_a_float32_step_size_beyond_float32_is_refused_before_training(
    tmp_path, capsys, trained, command, args, message
):
    """torch raised inside SGD.step (a traceback, exit 1) after the earlier runs had trained."""
    code = main(["eos", command, *args, "--float32", *TINY_MLP, "--out", str(tmp_path)])
    assert code == 2 and trained[0] == []
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
    assert main(["eos", command, *args, *TINY_MLP, "--out", str(tmp_path / "f64")]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr-min", "0.02", "--lr-max", "0.54", "--num-lrs", "1"], "--num-lrs 1 runs one"),
        (["--bif-min", "0.2", "--bif-max", "1.1", "--bif-num", "1"], "--bif-num 1 runs one"),
    ],
)
def test_minimalist_refuses_a_range_with_one_step_size(tmp_path, capsys, args, message):
    """linspace(lo, hi, 1) = [lo]: --lr-max/--bif-max were silently ignored."""
    assert main(["eos", "minimalist", *args, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_ratios_keep_step_sizes_that_print_alike(tmp_path, trained):
    """Keys were f"lr={lr:g}": 0.1 and 0.1000001 shared one entry of "ratios"."""
    assert _sharpening(tmp_path, "0.1,0.1000001") == 0
    ratios = _summary(tmp_path / "sharpening.json")["ratios"]
    assert sorted(ratios) == ["gd lr=0.1", "gd lr=0.1000001"]


@pytest.mark.parametrize("flag", ["--lr-max", "--bif-max"])
def test_minimalist_refuses_step_sizes_its_figure_cannot_draw(tmp_path, capsys, flag):
    """Step sizes near the float maximum ran, wrote the JSON and then failed in the figure's
    ticks with a raw ValueError ('arange: cannot compute length'), exit code 1."""
    lo = "--lr-min" if flag == "--lr-max" else "--bif-min"
    args = [lo, "1e306", flag, "1.7e308", "--num-lrs", "2", "--bif-num", "2", "--steps", "10"]
    assert main(["eos", "minimalist", *args, "--late", "5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} 1.7e+308 is too large for the figure's step-size axis")
    assert err.count("\n") == 1 and not (tmp_path / "minimalist.json").exists()
    args[3] = "1.0000001e307"  # (the value is printed in full: not '1e+307 ... at most 1e+307')
    assert main(["eos", "minimalist", *args, "--late", "5", "--out", str(tmp_path)]) == 2
    assert f"error: {flag} 1.0000001e+307 is too large" in capsys.readouterr().err
    args[3] = "1e307"  # the largest allowed draws
    assert main(["eos", "minimalist", *args, "--late", "5", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "minimalist.png").exists()
