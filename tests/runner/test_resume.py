"""ResumableRuns: a killed sweep resumes without losing or repeating finished runs."""

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sharpdim
from sharpdim import __version__
from sharpdim.runner import ResultsStore, ResumableRuns, code_version, config_key
from sharpdim.runner.resume import source_digest

LRS = (0.1, 0.2, 0.3, 0.4)


class Killed(Exception):
    pass


def _sweep(path, calls, kill_at=None):
    """Run the sweep over LRS; raise Killed when about to compute lr == kill_at."""

    def compute(lr):
        if lr == kill_at:
            raise Killed
        calls.append(lr)
        return {"loss": lr * 10, "status": "diverged" if lr > 0.35 else "ok"}

    with ResultsStore(path) as store:
        runs = ResumableRuns(
            store,
            encode=dict,
            decode=dict,
            status=lambda r: "diverged" if r["status"] == "diverged" else "done",
        )
        results = [runs({"lr": lr}, lambda lr=lr: compute(lr)) for lr in LRS]
    return results, runs


def test_a_killed_sweep_reruns_only_what_is_missing(tmp_path):
    path = tmp_path / "runs.sqlite"
    calls: list[float] = []
    with pytest.raises(Killed):
        _sweep(path, calls, kill_at=0.3)
    assert calls == [0.1, 0.2]
    results, runs = _sweep(path, calls)
    assert calls == [0.1, 0.2, 0.3, 0.4]  # 0.1 and 0.2 not repeated
    assert (runs.reused, runs.computed) == (2, 2)
    assert [r["loss"] for r in results] == [1.0, 2.0, 3.0, 4.0]
    _, again = _sweep(path, calls)
    assert len(calls) == 4 and (again.reused, again.computed) == (4, 0)  # diverged is a result
    with ResultsStore(path) as store:
        assert [r.status for r in store.records()] == ["done", "done", "done", "diverged"]


def test_failed_runs_are_computed_again(tmp_path):
    path = tmp_path / "runs.sqlite"
    with ResultsStore(path) as store:
        store.put({"lr": 0.2}, {"loss": None, "status": "ok"}, status="failed")
    calls: list[float] = []
    _, runs = _sweep(path, calls)
    assert calls == [0.1, 0.2, 0.3, 0.4] and runs.reused == 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_midway_loses_only_the_run_in_progress(tmp_path):
    path = tmp_path / "runs.sqlite"
    script = textwrap.dedent(
        f"""
        import os, signal
        from sharpdim.runner import ResultsStore, ResumableRuns
        runs = ResumableRuns(
            ResultsStore({str(path)!r}), encode=dict, decode=dict, status=lambda r: "done"
        )
        for lr in (0.1, 0.2):
            runs({{"lr": lr}}, lambda lr=lr: {{"loss": lr}})
        os.kill(os.getpid(), signal.SIGKILL)  # killed while the third run trains
        """
    )
    done = subprocess.run([sys.executable, "-c", script], env=os.environ, check=False)
    assert done.returncode == -signal.SIGKILL
    calls: list[float] = []
    _sweep(path, calls)
    assert calls == [0.3, 0.4]


def test_runs_of_another_version_are_computed_again(tmp_path):
    """The package version is part of every key: another version's numbers are not reused."""
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        old = ResumableRuns(
            store, encode=dict, decode=dict, status=lambda r: "done", version="0.0.1"
        )
        assert old({"lr": 0.1}, lambda: {"loss": 1.0}) == {"loss": 1.0}
        new = ResumableRuns(
            store, encode=dict, decode=dict, status=lambda r: "done", version="0.0.2"
        )
        assert new({"lr": 0.1}, lambda: {"loss": 2.0}) == {"loss": 2.0}
        assert (new.computed, new.reused) == (1, 0)
        assert old({"lr": 0.1}, lambda: {"loss": 9.0}) == {"loss": 1.0}
        assert sorted(r.config["sharpdim_version"] for r in store.records()) == ["0.0.1", "0.0.2"]


def test_runs_computed_again_for_other_code_are_counted(tmp_path):
    """Any edit of the package changes every key: a rerun recomputed the whole sweep without
    a word. ``other_code`` names the versions of the stored runs it recomputed."""
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        old = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done", version="a")
        for lr in (0.1, 0.2):
            old({"lr": lr}, lambda: {"loss": 1.0})
        failed = ResumableRuns(
            store, encode=dict, decode=dict, status=lambda r: "failed", version="b"
        )
        failed({"lr": 0.3}, lambda: {"loss": None})
        new = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done", version="c")
        for lr in (0.1, 0.2, 0.3, 0.4):
            new({"lr": lr}, lambda: {"loss": 2.0})
        assert new.other_code == [("a",), ("a",)] and (new.computed, new.reused) == (4, 0)
        newer = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done", version="d")
        newer({"lr": 0.1}, lambda: {"loss": 4.0})  # stored by a and c: one run, two versions
        assert newer.other_code == [("a", "c")]
        again = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done", version="c")
        again({"lr": 0.1}, lambda: {"loss": 3.0})
        assert again.other_code == [] and again.reused == 1  # (a reused run is not counted)


def test_undecodable_stored_runs_are_computed_again(tmp_path):
    """Damaged JSON, or a stored result that ``decode`` refuses, is a missing run."""
    path = tmp_path / "runs.sqlite"
    calls: list[float] = []
    _sweep(path, calls)
    conn = sqlite3.connect(path)
    for lr, result in ((0.1, "[1, 2"), (0.3, "5")):  # dict(5) raises: decode refuses it
        key = config_key({"lr": lr, "sharpdim_version": code_version()})
        conn.execute("UPDATE runs SET result = ? WHERE key = ?", (result, key))
    conn.commit()
    conn.close()
    with pytest.warns(UserWarning, match="cannot be decoded") as caught:
        results, runs = _sweep(path, calls)
    assert len(caught) == 1  # once per store
    assert calls == [0.1, 0.2, 0.3, 0.4, 0.1, 0.3]
    assert (runs.reused, runs.computed) == (2, 2)
    assert [r["loss"] for r in results] == [1.0, 2.0, 3.0, 4.0]
    _, again = _sweep(path, calls)  # stored again, reused now
    assert (again.reused, again.computed) == (4, 0)


def test_the_default_key_version_follows_the_package_sources(tmp_path):
    """A fix that leaves ``__version__`` as it was must still change the keys: the default
    version is ``__version__`` plus a digest of the package's ``.py`` files."""
    root = Path(sharpdim.__file__).parent
    assert code_version() == f"{__version__}+{source_digest(root)}"
    copy = tmp_path / "pkg"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert source_digest(copy) == source_digest(root)
    (copy / "stale.pyc").write_bytes(b"compiled")  # not source: no change
    assert source_digest(copy) == source_digest(root)
    core = copy / "curvature" / "lanczos.py"
    core.write_text(core.read_text() + "\n# a fix\n")
    changed = source_digest(copy)
    assert changed != source_digest(root) and len(changed) == 12
    (copy / "curvature" / "new_module.py").write_text("")
    assert source_digest(copy) not in (changed, source_digest(root))
    # an editor's lock file (Emacs: a link to nowhere) or a hidden folder: not sources (the
    # link raised FileNotFoundError in every sweep)
    grown = source_digest(copy)
    (copy / "runner" / ".#store.py").symlink_to("user@host.1234:1700000000")
    (copy / ".ipynb_checkpoints").mkdir()
    (copy / ".ipynb_checkpoints" / "scratch.py").write_text("x = 1\n")
    assert source_digest(copy) == grown
    with ResultsStore(tmp_path / "runs.sqlite") as store:
        runs = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done")
        runs({"lr": 0.1}, lambda: {"loss": 1.0})
        assert [r.config["sharpdim_version"] for r in store.records()] == [code_version()]


def test_a_package_without_readable_files_is_keyed_by_its_version_with_a_warning(
    tmp_path, monkeypatch
):
    """Imported from a zip, the package's folder holds no files to hash: the digest of
    nothing would have been one constant shared by every build."""
    assert source_digest(tmp_path / "missing") is None
    compiled = tmp_path / "pkg"
    compiled.mkdir()
    (compiled / "a.pyc").write_bytes(b"one")
    first = source_digest(compiled)
    (compiled / "a.pyc").write_bytes(b"two")
    assert first is not None and source_digest(compiled) not in (None, first)
    monkeypatch.setattr(sharpdim, "__file__", str(tmp_path / "missing" / "__init__.py"))
    code_version.cache_clear()
    try:
        message = rf"keyed by the version number {re.escape(__version__)} alone"
        with pytest.warns(RuntimeWarning, match=message):
            assert code_version() == __version__
    finally:
        code_version.cache_clear()
