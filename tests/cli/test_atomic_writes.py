"""Output files are written atomically: a failed write leaves the old file and no temporary."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from matplotlib.figure import Figure

from sharpdim.atomic import atomic_path, write_text_atomic
from sharpdim.cli import main
from sharpdim.commands._common import write_json
from sharpdim.errors import SharpdimError
from sharpdim.report import eos_figures
from sharpdim.report.html_report import ReportSection, write_html_report
from sharpdim.report.spectrum_figures import plot_spectrum_density


def _disk_full_after_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """``Path.write_text`` writes half of the text, then fails as on a full disk."""

    def half(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", half)


def test_atomic_path_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.json.")
        tmp.write_text("partial")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert write_text_atomic(tmp_path / "a" / "b.txt", "new") == tmp_path / "a" / "b.txt"
    assert (tmp_path / "a" / "b.txt").read_text() == "new"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]


def test_write_json_failing_midway_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"old": 1}\n')
    _disk_full_after_half(monkeypatch)
    with pytest.raises(SharpdimError) as err:
        write_json(target, {"new": list(range(100))}, "--json path")
    assert str(err.value) == (  # the file asked for, not the temporary one
        f"cannot write {target} (No space left on device): choose a writable --json path"
    )
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_html_report_failing_midway_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    _disk_full_after_half(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_html_report(target, "t", [ReportSection("h", rows={"a": 1.0})])
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


def test_figure_failing_midway_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "spectrum.png"
    target.write_bytes(b"old png")
    formats: list[str] = []

    def half(self: Figure, fname: Any, *, format: str, **kwargs: Any) -> None:
        formats.append(format)  # the temporary name has no .png: the format is explicit
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(28, "No space left on device", str(fname))

    monkeypatch.setattr(Figure, "savefig", half)
    grid = torch.linspace(0.0, 1.0, 5)
    with pytest.raises(OSError, match="No space left"):
        plot_spectrum_density(grid, torch.ones(5), target)
    assert formats == ["png"]
    assert target.read_bytes() == b"old png"
    assert [p.name for p in tmp_path.iterdir()] == ["spectrum.png"]


def test_eos_writes_the_json_before_the_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(result: Any, path: Path) -> Path:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(eos_figures, "plot_fractal", fail)
    args = ["eos", "fractal", "--particles", "50", "--steps", "3", "--out", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: cannot write {tmp_path / 'fractal.png'} (No space left on device): "
        "choose a writable --out folder\n"
    )
    summary = json.loads((tmp_path / "fractal.json").read_text())
    assert summary["num_particles"] == 50 and summary["steps"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["fractal.json"]


def test_a_symlink_keeps_pointing_at_the_rewritten_target(tmp_path: Path) -> None:
    target = tmp_path / "results" / "run1.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["run1.json"]


def test_the_permission_bits_of_a_rewritten_file_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "private.json"
    path.write_text("old")
    path.chmod(0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and (path.stat().st_mode & 0o777) == 0o640


def test_a_killed_writers_old_temporary_is_removed_by_the_next_write(tmp_path: Path) -> None:
    """SIGKILL leaves ``.name.<hex>.tmp`` (10 MB for a checkpoint); nothing deleted it. The
    next write of that file removes one older than an hour, not a younger one (maybe another
    writer's in progress) nor another file's."""
    target = tmp_path / "ckpt[1].pt"
    old = tmp_path / ".ckpt[1].pt.0badf00d.tmp"
    young = tmp_path / ".ckpt[1].pt.12345678.tmp"
    other = tmp_path / ".other.pt.0badf00d.tmp"
    for leftover in (old, young, other):
        leftover.write_text("partial")
    hours_ago = time.time() - 7200
    for aged in (old, other):
        os.utime(aged, (hours_ago, hours_ago))
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert not old.exists()
    assert young.exists() and other.exists()


def test_a_name_at_the_length_limit_is_written(tmp_path: Path) -> None:
    """A valid name of 242-255 characters made the temporary name (14 more) too long: the
    write failed after the run, naming the temporary."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("r" * (limit - 5) + ".json")
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == [target.name]


def test_a_long_non_ascii_name_is_cut_by_bytes(tmp_path: Path) -> None:
    """The limit counts bytes: 125 accented letters and '.json' (255 bytes) were cut to
    241 characters, 264 bytes, and the write failed with 'File name too long'."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    target = tmp_path / ("\u00e9" * ((limit - 5) // 2) + ".json")
    assert len(os.fsencode(target.name)) > limit - 14
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == [target.name]


def test_stale_cleanup_removes_only_names_it_writes(tmp_path: Path) -> None:
    """The cleanup's glob matched any 8 characters: a user's two-hour-old
    '.summary.json.backup01.tmp' was deleted with the killed writers' leftovers."""
    users = tmp_path / ".summary.json.backup01.tmp"
    ours = tmp_path / ".summary.json.0badf00d.tmp"
    for leftover in (users, ours):
        leftover.write_text("kept?")
        hours_ago = time.time() - 7200
        os.utime(leftover, (hours_ago, hours_ago))
    write_text_atomic(tmp_path / "summary.json", "{}")
    assert users.read_text() == "kept?" and not ours.exists()


def test_a_device_or_pipe_is_not_replaced_by_a_file(tmp_path: Path) -> None:
    """os.replace put a regular file where a named pipe (or /dev/null, for root) was."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="it is not a regular file") as err:
        write_text_atomic(pipe, "{}")
    assert err.value.filename == str(pipe)
    assert pipe.is_fifo() and sorted(os.listdir(tmp_path)) == ["pipe"]
    code = main(["chaos", "lyapunov", "--steps", "5", "--json", str(pipe)])
    assert code == 2 and pipe.is_fifo()


def test_eos_and_chaos_outputs_that_are_folders_are_refused_before_computing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder at <out>/minimalist.json was found after the 12 s run (its results lost)."""
    import sharpdim.training.eos_fractal as fractal
    import sharpdim.training.eos_minimalist_experiment as minimalist

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("computed although an output was a folder")

    monkeypatch.setattr(minimalist, "minimalist_experiment", never)
    monkeypatch.setattr(fractal, "fractal_attractor", never)
    for command, name in (("minimalist", "minimalist.json"), ("fractal", "fractal.png")):
        out = tmp_path / command
        (out / name).mkdir(parents=True)
        code = main(["eos", command, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and f"cannot write {out / name} (it is a folder)" in err, err
    import sharpdim.commands.chaos as chaos

    out = tmp_path / "compare"
    (out / "chaos_compare.json").mkdir(parents=True)
    monkeypatch.setattr(chaos, "run_case", never)
    code = main(["chaos", "compare", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "chaos_compare.json (it is a folder)" in err, err


def test_the_content_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ``fsync`` a power loss after the rename can leave an empty file in place of
    both the old and the new content."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("replace", str(src)))
        real_replace(src, dst)

    real_chmod = os.chmod

    def chmod(path: Any, mode: int) -> None:
        events.append(("chmod", str(path)))
        real_chmod(path, mode)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "chmod", chmod)
    (tmp_path / "r.json").write_text("old")
    write_text_atomic(tmp_path / "r.json", "new")
    # synced before the chmod, which may take the owner's read bit away (0o200: the read-only
    # open of the fsync then failed for a non-root user)
    (kind0, synced), (kind1, _), (kind2, moved), (kind3, folder) = events
    assert (kind0, kind1, kind2, kind3) == ("fsync", "chmod", "replace", "fsync")
    assert synced == moved and Path(synced).name.startswith(".r.json.")
    assert folder == str(tmp_path.resolve())
    assert (tmp_path / "r.json").read_text() == "new"


def test_a_failed_rename_names_the_target_without_a_second_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error named the temporary file, then (filename2 = None) printed '-> None'."""

    def refuse(src: Any, dst: Any) -> None:
        raise PermissionError(13, "Permission denied", str(src), str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(PermissionError) as caught:
        write_text_atomic(tmp_path / "r.json", "new")
    assert str(caught.value) == f"[Errno 13] Permission denied: '{tmp_path / 'r.json'}'"
    assert list(tmp_path.iterdir()) == []


def test_a_renamed_error_keeps_its_class_and_second_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class CustomError(OSError):
        pass

    def failing(src: Any, dst: Any) -> None:
        raise CustomError(5, "io", str(src))

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(CustomError, match=r"\[Errno 5\] io: '.*r\.json'$"):
        write_text_atomic(tmp_path / "r.json", "new")
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError) as caught, atomic_path(tmp_path / "x.bin") as tmp:
        raise FileNotFoundError(2, "No such file", "/nonexistent_src", None, str(tmp))
    assert caught.value.filename == "/nonexistent_src"
    assert caught.value.filename2 == str(tmp_path / "x.bin")


def test_a_failed_rename_does_not_name_the_target_twice(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with pytest.raises(IsADirectoryError) as caught, atomic_path(target) as tmp:
        tmp.write_text("new")
        target.mkdir()  # os.replace(file, folder) fails naming both paths
    assert caught.value.filename == str(target) and caught.value.filename2 is None


def test_a_non_utf8_name_keeps_its_bytes_in_the_temporary_name(tmp_path: Path) -> None:
    """The byte cut decoded with errors='ignore', so 'caf\\xe9.json' had the temporary prefix
    '.caf.json' of another file, and its cleanup deleted that file's leftovers."""
    others = tmp_path / ".caf.json.0123abcd.tmp"
    others.write_text("caf.json's")
    hours_ago = time.time() - 7200
    os.utime(others, (hours_ago, hours_ago))
    target = tmp_path / os.fsdecode(b"caf\xe9.json")
    write_text_atomic(target, "{}")
    assert target.read_text() == "{}" and others.read_text() == "caf.json's"


def test_a_failed_cleanup_does_not_hide_the_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a read-only filesystem unlinking the never-made temporary raised EROFS, which
    replaced the real error and named the hidden temporary file."""
    import errno

    def read_only(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    target = tmp_path / "out.json"
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(OSError) as err, atomic_path(target) as partial:
        raise OSError(errno.ENOSPC, "No space left on device", str(partial))
    assert err.value.errno == errno.ENOSPC and ".tmp" not in str(err.value)
    assert "out.json" in str(err.value)


def test_a_link_to_a_file_not_made_yet_is_checked_where_it_points(tmp_path: Path) -> None:
    """The link's own folder was checked, and the target's failed only after the work."""
    from sharpdim.commands._common import prepare_output_file

    (tmp_path / "afile").write_text("x")
    link = tmp_path / "link.json"
    link.symlink_to(tmp_path / "afile" / "new.json")
    with pytest.raises(SharpdimError, match=r"^cannot write .*link.json \(.*afile.*\): choose"):
        prepare_output_file(link, "--json")


def test_with_stderr_closed_errors_do_not_go_to_stdout(tmp_path: Path) -> None:
    """Python sets sys.stderr to None when fd 2 is closed, and print(file=None) wrote the
    error line to stdout (into the user's redirected output)."""
    import subprocess
    import sys

    (tmp_path / "afile").write_text("x")
    script = (
        "import sys; from sharpdim.entry import run; "
        f"sys.argv = ['sharpdim', 'eos', 'fractal', '--out', {str(tmp_path / 'afile')!r}]; run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        preexec_fn=lambda: os.close(2),
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == b""


def test_an_out_folder_that_is_a_link_to_a_folder_not_made_yet_is_made(tmp_path: Path) -> None:
    """mkdir of the link itself failed: 'cannot create folder danglink: File exists'."""
    from sharpdim.commands._common import prepare_output_dir

    link = tmp_path / "danglink"
    link.symlink_to(tmp_path / "later" / "out")
    assert prepare_output_dir(link, "--out folder", files=("a.json",)) == link
    assert (tmp_path / "later" / "out").is_dir() and link.is_dir()


def test_a_plain_output_path_keeps_its_own_words_in_the_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolving every path made the message name the absolute folder, not the one typed."""
    from sharpdim.commands._common import prepare_output_file

    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    with pytest.raises(SharpdimError, match=r"^cannot write afile/x.json \(afile is a file"):
        prepare_output_file(Path("afile/x.json"), "--json")
