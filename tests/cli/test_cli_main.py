"""``sharpdim.cli.main``: exit codes and one-line messages for Ctrl-C and usage errors."""

from __future__ import annotations

import io
import runpy
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

import sharpdim.commands.demo as demo_module
import sharpdim.training.loop as loop_module
from sharpdim.cli import INTERRUPTED_LINE, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _interrupt(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("target", "argv"),
    [
        (
            (demo_module, "train"),
            ["demo", "--n-train", "20", "--batch-size", "8", "--width", "2", "--steps", "1"],
        ),
        (
            (loop_module, "train"),
            ["sd", "compute", "--n-train", "20", "--width", "2", "--batch-size", "8"],
        ),
    ],
    ids=["demo", "sd-compute"],
)
def test_ctrl_c_exits_130_with_one_line(
    target: tuple[Any, str],
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(*target, _interrupt)
    out = tmp_path / "out"
    flag = ["--out", str(out)] if argv[0] == "demo" else ["--json", str(out / "sd.json")]
    assert main([*argv, *flag]) == 130
    err = capsys.readouterr().err
    assert err == INTERRUPTED_LINE + "\n"
    assert err.startswith("error: interrupted") and "rerun the same command" in err
    assert not list(out.glob("*"))  # nothing was written


USAGE = [
    (["demo", "--steps", "0"], "Invalid value for '--steps'", "sharpdim demo"),
    (["demo", "--lr", "abc"], "Invalid value for '--lr'", "sharpdim demo"),
    (["sd", "compute", "--wdth", "3"], "No such option: --wdth", "sharpdim sd compute"),
    (["sd", "bogus"], "No such command 'bogus'", "sharpdim sd"),
    (["bogus"], "No such command 'bogus'", "sharpdim"),
    (["chaos", "lyapunov", "extra"], "unexpected extra argument", "sharpdim chaos lyapunov"),
    # an option without its value: click gives no command here, argv names it
    (["eos", "minimalist", "--lrs"], "No such option: --lrs", "sharpdim eos minimalist"),
    (
        ["eos", "minimalist", "--lr-max"],
        "'--lr-max' requires an argument",
        "sharpdim eos minimalist",
    ),
    (["sd", "compute", "--width"], "'--width' requires an argument", "sharpdim sd compute"),
    (["demo", "--steps"], "'--steps' requires an argument", "sharpdim demo"),
    # an empty file was read as "." and reported as a folder the user never named
    (
        ["spectrum", "--json", ""],
        "Invalid value for '--json': it is empty: name the file to write",
        "sharpdim spectrum",
    ),
    (
        ["spectrum", "--png", " "],
        "Invalid value for '--png': it is empty: name the file to write",
        "sharpdim spectrum",
    ),
    (["sd", "compute", "--json", ""], "'--json': it is empty", "sharpdim sd compute"),
    # a trailing slash: Path dropped it, and a JSON file took the folder's name
    (
        ["spectrum", "--json", "newdir/"],
        "Invalid value for '--json': newdir/ names a folder (it ends in /): name the file",
        "sharpdim spectrum",
    ),
    (["sd", "compute", "--json", "out/"], "out/ names a folder", "sharpdim sd compute"),
    (["spectrum", "--png", "figs/"], "figs/ names a folder", "sharpdim spectrum"),
    (["chaos", "lyapunov", "--json", ""], "'--json': it is empty", "sharpdim chaos lyapunov"),
]


@pytest.mark.parametrize(("argv", "message", "command"), USAGE, ids=[u[1][:24] for u in USAGE])
def test_usage_errors_are_one_line(
    argv: list[str], message: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and message in err
    assert err.endswith(f": see '{command} --help'\n")
    assert "Usage:" not in err + captured.out


def test_help_and_no_arguments_still_show_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"]) == 0
    assert "--steps" in capsys.readouterr().out
    assert main(["sd", "compute", "--help"]) == 0
    assert "--num-batches" in capsys.readouterr().out
    for argv in ([], ["sd"], ["eos"], ["chaos"]):
        assert main(argv) == 2  # a group without a command: its help (click's exit code 2)
        captured = capsys.readouterr()
        assert "Usage" in captured.out and "COMMAND" in captured.out
        assert captured.err == ""  # help on stdout only, no stray line on stderr


@pytest.mark.parametrize("rich", [True, False], ids=["rich", "plain"])
@pytest.mark.parametrize("argv", [[], ["sd"], ["eos"], ["chaos"]], ids=str)
def test_a_group_without_a_command_prints_its_help_once(
    argv: list[str], rich: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import typer.core

    monkeypatch.setattr(typer.core, "HAS_RICH", rich)  # typer's help without rich, too
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out.count("Usage:") == 1, captured.out
    assert f"Usage: {' '.join(['sharpdim', *argv])} [OPTIONS] COMMAND" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize("steps", [0, 1, 10, 30])
def test_example_monitor_own_loop_short_runs(
    steps: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = str(EXAMPLES / "monitor_own_loop.py")
    monkeypatch.setattr(sys, "argv", [script, "--steps", str(steps)])
    runpy.run_path(script, run_name="__main__")  # raised IndexError for these before
    last = capsys.readouterr().out.strip().splitlines()[-1]
    if steps == 0:
        assert last == "no measurement: run at least one step"
    else:
        at = 20 if steps == 30 else 0
        assert last.startswith(f"sharpness / (2/eta) at the last measurement (step {at}): ")


def _never(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("trained or computed although the options were bad")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sd", "compute", "--seed", str(2**32)], "--seed"),
        (["demo", "--seed", "-1"], "--seed"),
        (["eos", "fractal", "--seed", str(2**64)], "--seed"),
        (  # failed after training the first model, naming seed 2**32
            ["chaos", "compare", "--seed", str(2**32 - 1)],
            f"--seed {2**32 - 1} with --seeds 3 runs up to seed {2**32 + 1}, above",
        ),
        (["sd", "compute", "--width", "100000000"], "use a smaller --width or --depth"),
        (["eos", "sharpening", "--width", "100000000"], "use a smaller --width or --depth"),
        (["sd", "compute", "--optimizer", "momentum", "--momentum", "nan"], "--momentum"),
        (["eos", "fractal", "--amplitude", "nan"], "--amplitude must be a finite number"),
        (["eos", "fractal", "--lr", "inf"], "--lr must be a positive finite number"),
        (["eos", "fractal", "--noise-std", "-1"], "--noise-std must be a finite number >= 0"),
        (["eos", "minimalist", "--num-lrs", "1000000000"], "--num-lrs 1000000000 exceeds"),
        (["eos", "minimalist", "--lr-max", "inf"], "--lr-max must be a positive finite"),
        (["eos", "sharpening", "--lrs", "-1"], "--lrs must be a positive finite number"),
        (["eos", "sharpening", "--steps", "0"], "--steps must be >= 1"),
        (["eos", "sharpening", "--late-fraction", "nan"], "--late-fraction must be in (0, 1]"),
        (["eos", "sharpening", "--n-train", "999999"], "--n-train 999999 exceeds the 1500"),
        (["eos", "minimalist", "--steps", "5", "--late", "6"], "--late 6 exceeds --steps 5"),
        (  # ran 2 min, then a memory error traceback (about 128 GB at --late 20000)
            ["eos", "minimalist", "--bif-num", "100000", "--steps", "3000", "--late", "3000"],
            "(--num-lrs 53 + --bif-num 100000) x --late 3000 = 300,159,000 late iterates exceed",
        ),
        (  # four identical runs
            ["eos", "minimalist", "--lr-min", "0.3", "--lr-max", "0.3", "--num-lrs", "4"],
            "--lr-min = --lr-max = 0.3 with --num-lrs 4 repeats one step size",
        ),
        (["demo", "--n-train", "10"], "--batch-size 64 exceeds the 10 training examples"),
        (["eos", "thresholds", "--beta2", "1.0"], "--beta2 must be in [0, 1)"),
    ],
)
def test_bad_options_fail_first_in_one_line_and_write_nothing(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(loop_module, "train", _never)
    out = tmp_path / "out"
    flag = "--json" if argv[:2] == ["sd", "compute"] else "--out"
    target = out / "r.json" if flag == "--json" else out
    code = main([*argv, flag, str(target)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert message in err
    assert not out.exists()  # nothing written: no folder, no empty runs.sqlite


def test_ctrl_c_while_loading_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script catches Ctrl-C during the (slow) import of torch and the commands."""
    import builtins

    from sharpdim import entry

    monkeypatch.setenv("MALLOC_TOP_PAD_", "131072")  # leaves pytest's own malloc untouched
    real_import = builtins.__import__

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "sharpdim.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as ex:
        entry.run()
    # (during loading SIGTERM keeps its default: raised inside torch's imports it was
    # swallowed or gave a traceback)
    assert signal.getsignal(signal.SIGTERM) is previous
    assert ex.value.code == 130
    assert capsys.readouterr().err == entry.INTERRUPTED_WHILE_LOADING + "\n"


def test_sigterm_after_loading_is_answered_as_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (timeout, kill, Slurm) left a temporary file beside an output and printed
    nothing; once the commands are loaded it raises KeyboardInterrupt, as Ctrl-C does."""
    import sharpdim.cli
    from sharpdim import entry

    monkeypatch.setenv("MALLOC_TOP_PAD_", "131072")  # leaves pytest's own malloc untouched
    monkeypatch.setattr(sharpdim.cli, "main", lambda: 0)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SystemExit) as ex:
            entry.run()
        assert ex.value.code == 0 and signal.getsignal(signal.SIGTERM) is entry._terminated
    finally:
        signal.signal(signal.SIGTERM, previous)
    with pytest.raises(KeyboardInterrupt):
        entry._terminated(signal.SIGTERM, None)


def test_import_sharpdim_is_lazy() -> None:
    """``import sharpdim`` loads no torch; a public name loads its module on first use."""
    import subprocess

    code = (
        "import sys, sharpdim; assert 'torch' not in sys.modules; "
        "assert sharpdim.lanczos_eigenvalues.__module__ == 'sharpdim.curvature.lanczos'; "
        "from sharpdim import TrainConfig; print(sorted(set(sharpdim.__all__) - set(dir(sharpdim))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _commands(command: Any, path: str = "sharpdim") -> Any:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_every_help_paragraph_is_one_line() -> None:
    """typer's rich help keeps a paragraph's line breaks and wraps each line again: ragged."""
    import typer

    from sharpdim.cli import app

    for path, command in _commands(typer.main.get_command(app)):
        for paragraph in (command.help or "").split("\n\n"):
            assert "\n" not in paragraph.strip(), f"{path}: {paragraph!r}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["sd", "compute", "--width", "400", "--depth", "1"],
            "--method exact needs dense Hessians of 30,010 parameters, above --max-params",
        ),
        (["spectrum", "--width", "30", "--exact", "--k", "5"], ""),
        (["spectrum", "--width", "1", "--depth", "1001"], "--depth 1001 is above the 1,000"),
    ],
)
def test_size_limits_are_checked_before_the_model_is_built(
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A width-1 MLP of 100,000 layers took 35 s and 1 GB to build before --max-params
    refused it."""
    import sharpdim.training.models as models_module

    if not message:  # a size that is fine: the builder is reached
        argv = ["spectrum", "--width", "2", "--depth", "1", "--k", "200"]
        message = "--k 200"
    monkeypatch.setattr(models_module, "build_mlp", _never)
    assert main([*argv, "--json", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err


class _ClosedPipe(io.StringIO):
    """A stream whose reader has gone: every write raises ``BrokenPipeError``."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_reader_that_closes_the_pipe_loses_lines_not_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sharpdim sd compute ... | head -1``: the first print after the reader had gone raised
    BrokenPipeError, click exited 1 at once, and the --json was never written."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    out = tmp_path / "r.json"
    argv = ["sd", "compute", "--n-train", "40", "--width", "3", "--depth", "1"]
    argv += ["--train-steps", "3", "--num-batches", "2", "--sd-batch-size", "10"]
    argv += ["--num-bootstrap", "0", "--json", str(out)]
    assert main(argv) == 0
    assert out.is_file() and '"result"' in out.read_text()


def test_a_closed_stdout_or_stderr_pipe_loses_no_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With fd 1 closed, sys.stdout is None: the wrapper must stay out of the way. A warning
    printed to a closed stderr pipe must not end the run either."""
    import warnings

    import sharpdim.commands.sd as sd_module

    monkeypatch.setattr(sys, "stdout", None)
    out = tmp_path / "r.json"
    argv = ["sd", "compute", "--n-train", "40", "--width", "3", "--depth", "1"]
    argv += ["--train-steps", "3", "--num-batches", "2", "--sd-batch-size", "10"]
    argv += ["--num-bootstrap", "0", "--json", str(out)]
    assert main(argv) == 0 and out.is_file()

    real_write_json = sd_module.write_json

    def warn_then_write(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("a late warning", RuntimeWarning, stacklevel=1)
        return real_write_json(*args, **kwargs)

    monkeypatch.setattr(sd_module, "write_json", warn_then_write)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    monkeypatch.setattr(sys, "stderr", _ClosedPipe())
    out.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # (pytest's filterwarnings=error would raise it)
        assert main(argv) == 0 and out.is_file()


def test_a_usage_error_into_a_closed_stderr_pipe_still_exits_2(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stderr", _ClosedPipe())
    assert main(["sd", "compute", "--width", "0"]) == 2


LONG = "b" * 256  # one name longer than the filesystem's 255 bytes


@pytest.mark.parametrize(
    "args",
    [
        ["eos", "fractal", "--out", LONG],
        ["demo", "--out", LONG],
        ["eos", "sharpening", "--out", LONG],
        ["sd", "compute", "--json", LONG + ".json"],
        ["spectrum", "--json", f"{LONG}/x.json"],
        ["chaos", "lyapunov", "--json", LONG],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_a_name_too_long_is_one_line_before_any_work(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Path.exists / is_dir raise ENAMETOOLONG under Python 3.11: a traceback and exit 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loop_module, "train", _no_work)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and len(err.strip().splitlines()) == 1
    assert "(File name too long): choose a writable " in err


def _no_work(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("work started before the output path was checked")


class _FullStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


def test_a_full_stdout_is_one_warning_and_the_files_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """`> /dev/full` ended the command with a traceback (exit 1) at its first print."""
    with capsys.disabled():
        err = io.StringIO()
        monkeypatch.setattr(sys, "stdout", _FullStream())
        monkeypatch.setattr(sys, "stderr", err)
        code = main(["eos", "fractal", "--particles", "10", "--steps", "2", "--out", str(tmp_path)])
        monkeypatch.undo()
    assert code == 0 and {p.name for p in tmp_path.iterdir()} == {"fractal.json", "fractal.png"}
    assert err.getvalue().count("warning: cannot write to standard output (No space left") == 1


@pytest.mark.parametrize("command", [["sd", "compute"], ["spectrum"]])
def test_a_step_size_float32_cannot_hold_is_refused_before_training(command, capsys, tmp_path):
    """sd compute and spectrum trained with --lr 1e39 in float32, reported a divergence and
    exited 0; demo refused it up front (exit 2)."""
    args = [*command, "--n-train", "60", "--width", "4", "--train-steps", "3", "--float32"]
    assert main([*args, "--lr", "1e39", "--json", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --lr 1e+39 does not fit in the model's float32 (largest 3.4e+38)")
    assert err.count("\n") == 1 and not (tmp_path / "x.json").exists()


def test_an_ascii_stdout_gets_question_marks_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trace row's '±' raised UnicodeEncodeError on an ASCII stdout (PYTHONIOENCODING=ascii):
    a traceback and exit 1."""
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    out = tmp_path / "s.json"
    argv = ["spectrum", "--n-train", "30", "--width", "2", "--train-steps", "2", "--k", "1"]
    assert main([*argv, "--json", str(out)]) == 0
    ascii_out.flush()
    assert out.is_file() and b" ? " in raw.getvalue()


def test_sd_compute_help_shows_the_defaults_written_in_its_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich read '[default: 100]' in a help text as a style tag and deleted it."""
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["sd", "compute", "--help"]) == 0
    text = capsys.readouterr().out
    for option, default in (
        ("--num-batches", "10"),
        ("--num-runs", "100"),
        ("--num-steps", "100"),
        ("--reorth", "full"),
        ("--max-params", "20000"),
    ):
        line = next(row for row in text.splitlines() if option in row)
        assert f"[default: {default}]" in line, line


def test_an_error_naming_a_path_with_a_newline_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path went into the message as it is: three lines on stderr."""
    from sharpdim.commands._common import wrote_line

    odd = tmp_path / "nl\nfile"
    odd.write_text("x")
    assert main(["eos", "fractal", "--out", str(odd)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nl\\nfile" in err
    assert "\n" not in wrote_line(odd, odd)
