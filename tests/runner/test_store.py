"""ResultsStore: one SQLite row per run config, WAL mode, safe to share between writers."""

import math
import multiprocessing
import os
import shutil
import sqlite3
import sys
import threading
from typing import Any

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.runner.encoding import config_key
from sharpdim.runner.store import ResultsStore
from tests.runner._store_worker import open_and_put

CONFIG = {"dataset": "digits", "lr": 0.2, "betas": (0.9, 0.999), "steps": 10}


@pytest.fixture
def path(tmp_path):
    return tmp_path / "sub" / "runs.sqlite"


def test_round_trip_and_reopen(path):
    result = {"loss": [1.0, 0.5], "w": torch.tensor([1.5, 2.5]), "acc": np.float64(0.25)}
    with ResultsStore(path) as store:
        record = store.put(CONFIG, result)
        assert store.get(CONFIG) == record
        assert store.get({**CONFIG, "lr": 0.3}) is None
    with ResultsStore(path) as store:  # committed, readable by a new connection
        (again,) = store.records()
    assert again == record
    assert again.key == config_key(CONFIG)
    assert again.config == {"dataset": "digits", "lr": 0.2, "betas": [0.9, 0.999], "steps": 10}
    assert again.result == {"loss": [1.0, 0.5], "w": [1.5, 2.5], "acc": 0.25}
    assert again.status == "done" and again.created == again.updated


def test_file_is_in_wal_mode(path):
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_same_config_in_another_key_order_is_one_row_replaced(path):
    with ResultsStore(path) as store:
        first = store.put(CONFIG, {"loss": 1.0}, status="failed")
        reordered = dict(reversed(list(CONFIG.items())))
        second = store.put(reordered, {"loss": 0.5}, status="done")
        assert len(store) == 1
        assert second.key == first.key and second.created == first.created
        assert second.updated >= first.updated
        assert store.get(CONFIG).result == {"loss": 0.5}


def test_finished_keys_are_done_and_diverged_not_failed(path):
    with ResultsStore(path) as store:
        for lr, status in ((0.1, "done"), (0.2, "diverged"), (0.3, "failed")):
            store.put({"lr": lr}, {}, status=status)
        assert store.finished_keys() == {config_key({"lr": 0.1}), config_key({"lr": 0.2})}
        assert [r.config["lr"] for r in store.records(status="failed")] == [0.3]
        with pytest.raises(SharpdimError, match="status 'ok': use one of done, diverged, failed"):
            store.put({"lr": 0.4}, {}, status="ok")


def test_nan_and_inf_are_stored_as_null(path):
    with ResultsStore(path) as store:
        record = store.put({"lr": 5.0}, {"loss": math.nan, "ratio": [math.inf, -math.inf, 1.0]})
    assert record.result == {"loss": None, "ratio": [None, None, 1.0]}
    conn = sqlite3.connect(path)
    (text,) = conn.execute("SELECT result FROM runs").fetchone()
    conn.close()
    assert text == '{"loss":null,"ratio":[null,null,1.0]}'


def test_unstorable_result_stores_nothing(path):
    with ResultsStore(path) as store:
        with pytest.raises(SharpdimError, match=r"^result\['model'\] is a object, which has no"):
            store.put(CONFIG, {"model": object()})
        assert len(store) == 0


def test_two_connections_writing_at_once(path):
    stores = [ResultsStore(path), ResultsStore(path)]

    def write(index: int) -> None:
        store = ResultsStore(path)  # one connection per thread, as per process
        for i in range(25):
            store.put({"writer": index, "i": i}, {"value": i})
        store.close()

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stores[0].put({"writer": 9, "i": 0}, {"value": -1})
    assert len(stores[1]) == 51 and stores[0].finished_keys() == stores[1].finished_keys()
    for store in stores:
        store.close()


def test_a_write_locked_too_long_is_a_one_line_error(path):
    ResultsStore(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process mid-write
    with ResultsStore(path, timeout=0.05) as store:
        with pytest.raises(SharpdimError, match="stayed locked by another process") as caught:
            store.put(CONFIG, {})
        # the CLI has no timeout option: the advice is to end the holder, not raise a timeout
        assert "for 0.05 s while writing a run: end the program holding it" in str(caught.value)
        assert "raise the timeout" not in str(caught.value)
        other.execute("COMMIT")
        store.put(CONFIG, {})
        assert len(store) == 1
    other.close()


def test_corrupt_or_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"definitely not a database\n" * 200)
    with pytest.raises(SharpdimError, match=r"junk\.sqlite is not a readable SQLite results store"):
        ResultsStore(junk)
    foreign = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(SharpdimError, match="is an SQLite database but not a sharpdim results"):
        ResultsStore(foreign)
    conn = sqlite3.connect(foreign)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not switched to WAL
    conn.close()
    with pytest.raises(SharpdimError, match="cannot open the results store"):
        ResultsStore(tmp_path)  # a folder
    assert junk.read_bytes().startswith(b"definitely not")  # left untouched


def test_to_pandas_flattens_config_and_result(path):
    pytest.importorskip("pandas")
    with ResultsStore(path) as store:
        store.put({"lr": 0.1, "setup": {"width": 8}}, {"loss": 0.5})
        store.put({"lr": 0.2, "setup": {"width": 8}}, {"loss": math.nan}, status="diverged")
        frame = store.to_pandas()
    assert list(frame["config.lr"]) == [0.1, 0.2]
    assert list(frame["config.setup.width"]) == [8, 8]
    assert list(frame["status"]) == ["done", "diverged"]
    assert frame["result.loss"][0] == 0.5 and math.isnan(frame["result.loss"][1])


def test_to_pandas_refuses_two_fields_flattening_to_one_column(path, monkeypatch):
    """pandas would keep one of ``config.a.b`` silently (the value 2 was lost)."""
    flattened = []

    class FakePandas:  # (pandas is optional: the check runs before it is used)
        @staticmethod
        def json_normalize(rows, sep):
            flattened.append(rows)

    monkeypatch.setitem(sys.modules, "pandas", FakePandas)
    with ResultsStore(path) as store:
        store.put({"a.b": 1, "a": {"c": 2}}, {"x": {"y": 1}})
        store.to_pandas()
        assert len(flattened) == 1
        store.put({"a.b": 1, "a": {"b": 2}}, {})
        with pytest.raises(SharpdimError, match=r"flatten to the column 'config\.a\.b'"):
            store.to_pandas()


def test_ints_json_cannot_write_are_one_line_errors(path):
    """Past Python's 4,300-digit limit json.dumps raised a bare ValueError."""
    with ResultsStore(path) as store:
        with pytest.raises(SharpdimError, match="the config holds a value JSON cannot write"):
            store.put({"n": 10**5000}, {})
        with pytest.raises(SharpdimError, match="the result holds a value JSON cannot write"):
            store.put(CONFIG, {"n": 10**5000})
        assert len(store) == 0


def test_a_folder_where_the_log_goes_is_named(path):
    """A folder named ``runs.sqlite-wal`` was counted as unmerged runs / a read-only folder."""
    with ResultsStore(path) as store:
        store.put(CONFIG, {})
    (path.parent / "runs.sqlite-wal").mkdir()
    with pytest.raises(SharpdimError, match=r"runs\.sqlite-wal beside it is not a file .*move it"):
        ResultsStore(path)


def test_a_read_only_folder_is_named_not_the_file(path):
    """SQLITE_READONLY_DIRECTORY (the file is writable, its folder is not: seen with chmod 555
    on the folder) was reported as a read-only file, whose advice (make it writable) fails."""
    with ResultsStore(path) as store:
        err = sqlite3.OperationalError("attempt to write a readonly database")
        err.sqlite_errorname = "SQLITE_READONLY_DIRECTORY"  # type: ignore[attr-defined]
        message = str(store._fail(err, "opening it"))
    assert "its folder must be writable" in message
    assert "make it writable" not in message


def test_to_pandas_without_pandas_is_a_one_line_error(path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with ResultsStore(path) as store, pytest.raises(SharpdimError, match="needs pandas"):
        store.to_pandas()


def test_processes_opening_a_new_store_at_once_all_write(tmp_path):
    """Spawned processes create and open the same new files together (schema, WAL switch);
    the interleavings it hits by chance are pinned by the test below."""
    context = multiprocessing.get_context("spawn")
    n, paths = 8, [str(tmp_path / f"{k}.sqlite") for k in range(12)]
    barrier, errors = context.Barrier(n), context.Queue()
    processes = [
        context.Process(target=open_and_put, args=(paths, i, barrier, errors)) for i in range(n)
    ]
    for process in processes:
        process.start()
    reports = [errors.get(timeout=60) for _ in processes]
    for process in processes:
        process.join()
    assert [r for r in reports if r is not None] == []
    for path in paths:
        with ResultsStore(path) as store:
            assert sorted(r.config["writer"] for r in store.records()) == list(range(n))


def _hooked_connect(after: int, act: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The next ``sqlite3.connect`` gives a connection that calls ``act()`` right after its
    ``after``-th statement: another process acting at that point of opening the store."""
    real_connect = sqlite3.connect

    class Hooked(sqlite3.Connection):
        statements = 0

        def execute(self, *args: Any) -> sqlite3.Cursor:
            cursor = super().execute(*args)
            Hooked.statements += 1
            if Hooked.statements == after:
                act()
            return cursor

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        monkeypatch.setattr(sqlite3, "connect", real_connect)
        return real_connect(*args, factory=Hooked, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)


@pytest.mark.parametrize("after", range(1, 16))
@pytest.mark.parametrize("other", ["creates the store", "holds a write"])
def test_another_process_acting_at_any_point_of_opening(path, monkeypatch, other, after):
    """Opening a new file never sees a half-made store (after=2, 3 failed with separate
    reads) and waits out a write lock held while it switches to WAL (after=13)."""
    path.parent.mkdir()
    timers = []

    def create() -> None:
        try:
            ResultsStore(path, timeout=0).close()
        except SharpdimError as err:  # we hold the lock: that process would wait for us
            assert "stayed locked" in str(err)

    def write() -> None:
        conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # we hold the lock: that process would wait for us
            conn.close()
            return
        timers.append(threading.Timer(0.2, lambda: (conn.execute("COMMIT"), conn.close())))
        timers[-1].start()

    _hooked_connect(after, create if other == "creates the store" else write, monkeypatch)
    with ResultsStore(path, timeout=5) as store:
        store.put(CONFIG, {"loss": 0.5})
    for timer in timers:
        timer.join()
    with ResultsStore(path) as store:
        assert [r.result for r in store.records()] == [{"loss": 0.5}]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_opening_waits_for_a_writer_on_a_rollback_journal_file(path):
    """Switching the file to WAL is retried while another connection holds a write lock."""
    ResultsStore(path).close()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode=DELETE")  # as a store being created is, briefly
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.2, lambda: other.execute("COMMIT"))
    timer.start()
    with ResultsStore(path, timeout=5) as store:
        assert len(store) == 0
    timer.join()
    other.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_undecodable_rows_read_as_missing_with_one_warning(path):
    """A row whose JSON was damaged or written by another program is a missing run."""
    with ResultsStore(path) as store:
        for lr in (0.1, 0.2, 0.3):
            store.put({"lr": lr}, {"loss": lr})
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE runs SET result = '{\"loss\": 0.' WHERE key = ?", (config_key({"lr": 0.1}),)
    )
    conn.execute("UPDATE runs SET config = x'ff00' WHERE key = ?", (config_key({"lr": 0.2}),))
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        with pytest.warns(UserWarning) as caught:
            assert store.get({"lr": 0.1}) is None and store.get({"lr": 0.2}) is None
            assert [r.config for r in store.records()] == [{"lr": 0.3}]
            assert store.finished_keys() == {config_key({"lr": 0.3})}
        assert len(caught) == 1  # once per store
        message = str(caught[0].message)
        assert message.startswith(f"{path}: the stored run {config_key({'lr': 0.1})} cannot be")
        assert "treated as missing" in message and "\n" not in message
        store.put({"lr": 0.1}, {"loss": 1.0})  # replaces the damaged row
        assert store.get({"lr": 0.1}).result == {"loss": 1.0} and len(store) == 3


def _connect_then(monkeypatch: pytest.MonkeyPatch, setup: Any) -> None:
    """The next ``sqlite3.connect`` runs ``setup(connection)`` before the store uses it."""
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        monkeypatch.setattr(sqlite3, "connect", real_connect)
        conn = real_connect(*args, **kwargs)
        setup(conn)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)


def _full_disk_message(path: Any, doing: str) -> str:
    return (
        f"the disk holding the results store {path} is full while {doing}: free some space "
        "or choose a path on another disk"
    )


def test_a_full_disk_while_writing_names_the_full_disk(path):
    """SQLite rolls a transaction back itself when the disk fills (max_page_count stands in
    for it); that must not turn into 'cannot rollback - no transaction is active'."""
    with ResultsStore(path) as store:
        store.put(CONFIG, {"loss": 0.5})
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(SharpdimError) as caught:
            store.put({"lr": 0.3}, {"blob": "x" * 100_000})
        assert str(caught.value) == _full_disk_message(path, "writing a run")
        store._conn.execute("PRAGMA max_page_count = 1000000")
        store.put({"lr": 0.3}, {"blob": "x"})  # usable once there is room
        assert len(store) == 2


def test_a_full_disk_while_creating_names_the_full_disk(path):
    path.parent.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        _connect_then(patch, lambda conn: conn.execute("PRAGMA max_page_count = 1"))
        with pytest.raises(SharpdimError) as caught:
            ResultsStore(path)
    assert str(caught.value) == _full_disk_message(path, "opening it")


def _raise_on(statement: str, err: sqlite3.Error) -> Any:
    """A connection factory whose ``execute(statement)`` raises ``err``."""

    class Failing(sqlite3.Connection):
        def execute(self, *args: Any) -> sqlite3.Cursor:
            if args[0] == statement:
                raise err
            return super().execute(*args)

    return Failing


@pytest.mark.parametrize(
    ("name", "free", "full"),
    [
        ("SQLITE_IOERR_SHMSIZE", 40_000, True),  # growing the -shm file on a nearly full disk
        ("SQLITE_IOERR_SHMSIZE", 10**9, False),
    ],
)
def test_a_disk_io_error_at_opening_says_when_the_disk_is_full(path, monkeypatch, name, free, full):
    err = sqlite3.OperationalError("disk I/O error")
    err.sqlite_errorname = name
    real_connect = sqlite3.connect
    monkeypatch.setattr(
        sqlite3,
        "connect",
        lambda *a, **k: real_connect(*a, factory=_raise_on("PRAGMA journal_mode=WAL", err), **k),
    )
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(1, 1, free))
    with pytest.raises(SharpdimError) as caught:
        ResultsStore(path)
    if full:
        assert str(caught.value) == _full_disk_message(path, "opening it")
    else:
        assert str(caught.value) == (
            f"results store {path}: disk I/O error while opening it: check the file"
        )


def _open_read_only(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA query_only = ON")  # writes fail as on a read-only file


def test_a_read_only_store_is_refused_at_opening(path):
    with ResultsStore(path) as store:
        store.put(CONFIG, {"loss": 0.5})
    with pytest.MonkeyPatch.context() as patch:
        _connect_then(patch, _open_read_only)
        with pytest.raises(SharpdimError) as caught:
            ResultsStore(path)
    assert str(caught.value) == (
        f"the results store {path} is read-only (attempt to write a readonly database): make "
        "it writable or choose another path"
    )
    with pytest.MonkeyPatch.context() as patch:
        _connect_then(patch, _open_read_only)
        with ResultsStore(path, writable=False) as store:  # reading it is fine
            assert store.get(CONFIG).result == {"loss": 0.5}


def test_a_store_file_without_write_permission_is_refused_at_opening(path):
    ResultsStore(path).close()
    path.chmod(0o444)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("file permissions do not bind this user (root)")
        with pytest.raises(SharpdimError, match=r"is read-only \(attempt to write a readonly"):
            ResultsStore(path)
    finally:
        path.chmod(0o644)


def test_a_store_on_a_read_only_filesystem_is_read_with_writable_false(tmp_path):
    """WAL mode needs a ``-shm`` file beside the store; where none can be created (a read-only
    folder or filesystem), ``writable=False`` reads the file as immutable. Needs a read-only
    bind mount, so root and ``unshare``; skipped elsewhere."""
    folder = tmp_path / "ro"
    with ResultsStore(folder / "runs.sqlite") as store:
        store.put({"a": 1}, {"x": 1.0})
        store.put({"a": 2}, {"x": 2.0}, "diverged")
        held = ResultsStore(folder / "held.sqlite")  # copied while its runs sit in the -wal
        held._conn.execute("PRAGMA wal_autocheckpoint = 0")
        held.put({"a": 3}, {"x": 3.0})
        for suffix in ("", "-wal"):
            shutil.copy(folder / f"held.sqlite{suffix}", folder / f"unmerged.sqlite{suffix}")
        held.close()
    script = (
        "import sys\n"
        "from sharpdim.errors import SharpdimError\n"
        "from sharpdim.runner.store import ResultsStore\n"
        f"with ResultsStore({str(folder / 'runs.sqlite')!r}, writable=False) as s:\n"
        "    print(sorted((r.status, r.result['x']) for r in s.records()))\n"
        "try:\n"
        f"    ResultsStore({str(folder / 'runs.sqlite')!r})\n"
        "except SharpdimError as err:\n"
        "    print(err)\n"
        "try:\n"
        f"    ResultsStore({str(folder / 'unmerged.sqlite')!r}, writable=False)\n"
        "except SharpdimError as err:\n"
        "    print(err)\n"
    )
    (tmp_path / "read.py").write_text(script)
    cmd = (
        f"mount --bind -o ro {folder} {folder} && cd {os.getcwd()} && "
        f"{sys.executable} {tmp_path / 'read.py'}"
    )
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare for a read-only bind mount")
    import subprocess

    out = subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True)
    if "mount" in out.stderr or "unshare" in out.stderr:
        pytest.skip(f"no read-only bind mount here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "[('diverged', 2.0), ('done', 1.0)]"
    assert lines[1].startswith(f"cannot open the results store {folder / 'runs.sqlite'} (")
    assert lines[1].endswith(
        "SQLite creates files beside it, so its folder must be writable; choose a writable "
        "folder (to only read it: ResultsStore(path, writable=False))"
    )
    assert lines[2].endswith(
        "unmerged.sqlite-wal beside it holds runs not yet merged, and its folder is read-only; "
        "open it once where the folder is writable (that merges them), then read it anywhere"
    )


@pytest.mark.parametrize("timeout", [math.inf, 1e7])
def test_huge_timeouts_are_capped_not_broken(path, timeout):
    """SQLite's busy timeout is an int of milliseconds: inf crashed, 1e7 s became 0 (no wait)."""
    with ResultsStore(path, timeout=1.0) as store:
        store.put({"a": 1}, {"x": 1.0})
    with ResultsStore(path, timeout=timeout) as store:
        (busy,) = store._conn.execute("PRAGMA busy_timeout").fetchone()
        assert busy == 2**31 - 1
        assert store.get({"a": 1}).result == {"x": 1.0}
    for bad in (-1, torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]), "60"):
        with pytest.raises(SharpdimError, match=r"^timeout must be a number of seconds >= 0"):
            ResultsStore(path, timeout=bad)


def test_a_locked_store_is_not_read_as_immutable(path):
    """The immutable read is for read-only places only: a store another connection holds
    exclusively (its newest runs in the -wal) gives the lock error, not a stale snapshot."""
    with ResultsStore(path) as store:
        store.put({"a": 1}, {"x": 1.0})
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA locking_mode = EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute(
        "INSERT INTO runs SELECT 'k2', config, status, result, created, updated FROM runs"
    )
    other.execute("COMMIT")
    try:
        with pytest.raises(SharpdimError, match=r"stayed locked by another process"):
            ResultsStore(path, timeout=0.2, writable=False)
    finally:
        other.close()
    with ResultsStore(path, writable=False) as store:
        assert len(store) == 2


def test_a_closed_store_or_another_thread_is_not_called_a_corrupt_file(path):
    """``sqlite3.ProgrammingError`` is a ``DatabaseError``: it was reported as an unreadable
    file to be moved away, though the file is fine."""
    with ResultsStore(path) as store:
        store.put({"a": 1}, {"x": 1.0})
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                store.get({"a": 1})
            except BaseException as err:  # (collected for the assertion)
                errors.append(err)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    with pytest.raises(SharpdimError, match=r"cannot be used here .*closed or was opened in"):
        store.put({"a": 2}, {"x": 2.0})
    (err,) = errors
    assert isinstance(err, SharpdimError) and "another thread" in str(err)
    assert "not a readable" not in str(err)
    with ResultsStore(path) as store:
        assert store.get({"a": 1}).result == {"x": 1.0}


def test_bad_paths_statuses_and_numbers_are_one_line_errors(path):
    with pytest.raises(SharpdimError, match=r"^':memory:' is SQLite's in-memory database"):
        ResultsStore(":memory:")
    with pytest.raises(SharpdimError, match=r"^cannot open the results store .*embedded null"):
        ResultsStore(str(path.parent / "a\x00b.sqlite"))
    with pytest.raises(SharpdimError, match=r"^timeout must be a number of seconds >= 0"):
        ResultsStore(path, timeout=10**400)  # was an OverflowError from math.isfinite
    with ResultsStore(path) as store:
        store.put({"a": 1}, {"x": 1.0}, status="done")
        assert [r.config for r in store.records("done")] == [{"a": 1}]
        for bad in ("Done", "ok"):  # were an empty list
            with pytest.raises(SharpdimError, match=rf"^status '{bad}': use one of done, dive"):
                list(store.records(bad))


def test_a_pipe_is_refused_before_sqlite_writes_beside_it(tmp_path):
    """A named pipe gave 'disk I/O error ... check the file' (a link to /dev/null the same,
    plus a /dev/null-journal written as root)."""
    pipe = tmp_path / "runs.sqlite"
    os.mkfifo(pipe)
    with pytest.raises(SharpdimError, match=r"^cannot open the results store .*not a regular"):
        ResultsStore(pipe)
    assert sorted(os.listdir(tmp_path)) == ["runs.sqlite"]


def test_a_run_too_large_for_sqlite_does_not_blame_the_file(path):
    """SQLITE_TOOBIG said the healthy store was 'not a readable SQLite results store' and to
    move it away; the limit (1e9 bytes by default) is lowered here to reach it."""
    with ResultsStore(path) as store:
        store.put(CONFIG, [0.5] * 10)
        store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1000)
        with pytest.raises(SharpdimError, match=r"^a run is too large for the results store"):
            store.put({**CONFIG, "lr": 0.3}, [0.5] * 1000)
        assert len(store) == 1 and store.get(CONFIG).result == [0.5] * 10


def test_a_foreign_row_whose_config_holds_nan_is_undecodable(path):
    """Python's json reads NaN, Infinity and 1e999 (inf); such a row written by another
    program decoded, and the sweep then stopped at config_key's 'config['lr'] is nan'."""
    from sharpdim.runner.resume import ResumableRuns

    with ResultsStore(path) as store:
        store.put({"lr": 1.0, "sharpdim_version": "old"}, {"x": 1})
    conn = sqlite3.connect(path)
    for key, text in (("k1", '{"lr":NaN}'), ("k2", '{"lr":1e999}'), ("k3", '{"lr":-Infinity}')):
        conn.execute("INSERT INTO runs VALUES (?, ?, 'done', '{}', 't', 't')", (key, text))
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        runs = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done")
        with pytest.warns(UserWarning, match=r"the stored run k1 cannot be decoded .*NaN"):
            assert runs({"lr": 0.5}, lambda: {"x": 2}) == {"x": 2}
        assert [r.config["lr"] for r in store.records()] == [1.0, 0.5]


def test_a_row_of_invalid_utf8_is_undecodable_not_a_broken_store(path):
    """sqlite3 decodes TEXT inside fetchall(): one row of invalid UTF-8 failed get(),
    records(), finished_keys() and every sweep with 'Could not decode to UTF-8'."""
    from sharpdim.runner.resume import ResumableRuns

    with ResultsStore(path) as store:
        kept = store.put({"a": 1}, {"x": 1.0})
        damaged = store.put({"a": 2}, {"x": 2.0})
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE runs SET result = CAST(? AS TEXT) WHERE key = ?", (b'{"x":\xff}', damaged.key)
    )
    conn.commit()
    conn.close()
    with ResultsStore(path) as store:
        with pytest.warns(UserWarning, match=r"cannot be decoded \(UnicodeDecodeError"):
            assert store.get({"a": 2}) is None
        assert [r.result for r in store.records()] == [{"x": 1.0}]
        assert store.finished_keys() == {kept.key} and len(store) == 2
        runs = ResumableRuns(store, encode=dict, decode=dict, status=lambda r: "done")
        assert runs({"a": 3}, lambda: {"x": 3.0}) == {"x": 3.0}


def test_a_relative_path_starting_with_file_colon_is_a_file_not_a_uri(tmp_path, monkeypatch):
    """SQLite read 'file:...' as a URI: `--out file:res` stored its runs in res/, and
    'file::memory:' opened an in-memory database that kept nothing."""
    monkeypatch.chdir(tmp_path)
    for name in ("file:runs.sqlite", "file::memory:"):
        with ResultsStore(name) as store:
            store.put({"lr": 0.1}, {"loss": 1.0})
        with ResultsStore(name) as store:
            assert len(store) == 1
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "runs.sqlite").exists()


def test_a_file_name_without_room_for_the_journal_is_refused(tmp_path):
    """At 248-255 bytes SQLite's -journal/-wal names exceed the limit (a wrong 'folder must be
    writable' error, or a raw OSError from the -wal check); beyond 255 exists() raised."""
    for size in (250, 255, 300):
        name = "x" * (size - len(".sqlite")) + ".sqlite"
        with pytest.raises(SharpdimError, match=rf"^the results store's file name is {size} bytes"):
            ResultsStore(tmp_path / name)
    fits = "x" * (247 - len(".sqlite")) + ".sqlite"
    with ResultsStore(tmp_path / fits) as store:
        store.put({"lr": 0.1}, {"loss": 1.0})
        assert len(store) == 1


def test_a_path_through_a_symlinked_folder_opens_the_file_the_os_names(tmp_path, monkeypatch):
    """An absolute name made lexically collapsed `link/..` to the link's own folder, while the
    OS (and the store's other checks) went to the parent of the link's target."""
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "link").symlink_to(tmp_path / "real" / "sub")
    monkeypatch.chdir(tmp_path / "work")
    with ResultsStore("link/../runs.sqlite") as store:
        store.put({"lr": 0.1}, {"loss": 1.0})
    assert (tmp_path / "real" / "runs.sqlite").is_file()
    assert not (tmp_path / "work" / "runs.sqlite").exists()


def test_a_utf16_store_reads_back_and_a_row_with_a_damaged_created_time_is_replaced(tmp_path):
    """Reading TEXT as CAST(... AS BLOB) gave a UTF-16 database's bytes, decoded as UTF-8:
    every row undecodable. put() could not replace a row whose created time was invalid
    UTF-8 (it read it back to return it)."""
    from sharpdim.runner import store as st

    path = tmp_path / "utf16.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA encoding = 'UTF-16le'")
    conn.execute(st._SCHEMA)
    conn.execute(f"PRAGMA application_id = {st.APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {st.SCHEMA_VERSION}")
    conn.close()
    with ResultsStore(path) as store:
        store.put({"a": 1}, {"b": 2})
        assert store.get({"a": 1}).result == {"b": 2}
        assert [r.config for r in store.records()] == [{"a": 1}] and len(store.finished_keys()) == 1
    utf8 = path.with_name("utf8.sqlite")
    with ResultsStore(utf8) as store:
        key = store.put({"a": 1}, {"b": 2}).key
    conn = sqlite3.connect(utf8)
    conn.execute("UPDATE runs SET created = CAST(? AS TEXT) WHERE key = ?", (b"\xff", key))
    conn.commit()
    conn.close()
    with ResultsStore(utf8) as store:
        with pytest.warns(UserWarning, match=r"cannot be decoded"):
            assert store.get({"a": 1}) is None
        replaced = store.put({"a": 1}, {"b": 3})
        assert replaced.result == {"b": 3} and replaced.created == replaced.updated
        assert store.get({"a": 1}).result == {"b": 3}


def test_the_read_only_uri_quotes_a_name_that_is_not_utf8(tmp_path):
    """A store named with a non-UTF-8 byte on a read-only filesystem raised
    UnicodeEncodeError while building the immutable URI; the bytes are quoted as they are."""
    import os

    from sharpdim.runner.store import immutable_uri

    path = tmp_path / os.fsdecode(b"r\xff.sqlite")
    with ResultsStore(path) as store:
        store.put({"a": 1}, {"x": 1.0})
    uri = immutable_uri(path)
    assert uri.endswith("/r%FF.sqlite?immutable=1")
    conn = sqlite3.connect(uri, uri=True)
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    conn.close()
