"""The results store: one SQLite row per run, keyed by a hash of the run's full config.

A sweep writes each run as soon as it finishes, in its own transaction, so a sweep killed at
any point (even by SIGKILL) loses only the run in progress, and a rerun reuses every stored
run instead of repeating it. The file is an ordinary SQLite database (stdlib :mod:`sqlite3`)
in WAL mode, which lets several processes read while one writes; writers wait for each other
up to ``timeout`` seconds (SQLite's busy timeout). Processes may open, and create, the same
new file at the same moment.

Table ``runs``:

* ``key``: :func:`~sharpdim.runner.encoding.config_key` of the config (primary key);
* ``config``: the canonical JSON of the config;
* ``status``: ``"done"``, ``"diverged"`` (a diverged run is a result, not an error) or
  ``"failed"``, as the caller says;
* ``result``: the result as JSON (NaN/inf stored as ``null``, see
  :mod:`sharpdim.runner.encoding`);
* ``created``, ``updated``: UTC ISO-8601 times of the first and the latest write.

Putting a config that is already stored **replaces** its status and result (one row per
key; ``created`` is kept, ``updated`` moves): a failed run that is retried ends up with its
new outcome. The database is marked with SQLite's ``application_id`` so that another file at
the same path is refused instead of written into (its journal mode included). A row that
cannot be decoded (its JSON damaged, or written by another program) reads as missing, with one
warning per store: :meth:`~ResultsStore.get` returns ``None`` and
:meth:`~ResultsStore.records` leaves it out; putting its config replaces it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sqlite3
import time
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from sharpdim.checks import check_number
from sharpdim.errors import SharpdimError
from sharpdim.runner.encoding import canonical_json, config_key, dumps_checked, json_value

STATUSES = ("done", "diverged", "failed")
FINISHED = ("done", "diverged")  # outcomes a resumed sweep does not repeat
APPLICATION_ID = 0x53445253  # "SDRS": marks a sharpdim results store
SCHEMA_VERSION = 1
NEARLY_FULL = 1 << 20  # free bytes below which a disk I/O error is put down to a full disk
MAX_TIMEOUT = (2**31 - 1) / 1000  # seconds: SQLite's busy timeout is an int of milliseconds

_SCHEMA = """
CREATE TABLE runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'diverged', 'failed')),
    result TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
)
"""
_COLUMNS = "key, config, status, result, created, updated"


@dataclass(frozen=True)
class RunRecord:
    """One stored run.

    Attributes:
        key: hex SHA-256 of the canonical config.
        config, result: the config and the result, as plain JSON data.
        status: ``"done"``, ``"diverged"`` or ``"failed"``.
        created, updated: UTC ISO-8601 times of the first and the latest write.
    """

    key: str
    config: dict[str, Any]
    status: str
    result: Any
    created: str
    updated: str

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def immutable_uri(path: Path) -> str:
    """SQLite's URI of ``path`` opened read-only without locks; the name's bytes are quoted as
    they are (``quote(str(...))`` raised UnicodeEncodeError for a name that is not UTF-8)."""
    return f"file:{urllib.parse.quote(os.fsencode(path.resolve()))}?immutable=1"


def _record(row: tuple[Any, ...]) -> RunRecord:
    key, config, status, result, created, updated = (
        v.decode("utf-8") if isinstance(v, bytes) else v for v in row
    )  # (strict: invalid UTF-8 is a UnicodeDecodeError, a ValueError: undecodable)
    # a config another program wrote with NaN, Infinity or 1e999 (Python's json reads them)
    # is no config this store could have keyed: undecodable, not a crash of the sweep
    plain = json.loads(config, parse_constant=_no_constant, parse_float=_finite_float)
    if not isinstance(plain, dict):
        raise ValueError(f"the config is a {type(plain).__name__}, not a dict")
    return RunRecord(key, plain, status, json.loads(result), created, updated)


def _no_constant(name: str) -> float:
    raise ValueError(f"the config holds {name}, which configs never hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the config holds {text}, beyond float range")
    return value


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ResultsStore:
    """A SQLite file of runs keyed by config (see the module docstring).

    Args:
        path: the database file; created (with its folder) if missing.
        timeout: seconds a write waits for another process's write to finish.
        writable: check at once that runs can be put, so that a read-only file is refused
            before any run is computed; ``False`` skips the check, to read a store (also in a
            read-only folder or filesystem, as an immutable file).

    Raises:
        SharpdimError: ``path`` cannot be opened, is read-only (with ``writable``), its disk
            is full, or it holds something other than a results store (another SQLite
            database, a corrupt or a non-SQLite file).

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder, ResultsStore(f"{folder}/r.sqlite") as s:
        ...     _ = s.put({"lr": 0.1}, {"loss": float("nan"), "acc": 0.9}, status="diverged")
        ...     record = s.get({"lr": 0.1})
        ...     (record.status, record.result, len(s))
        ('diverged', {'loss': None, 'acc': 0.9}, 1)
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0, writable: bool = True) -> None:
        self.path = Path(path)
        # SQLite's busy timeout is an int of milliseconds: longer waits (inf too) are capped
        # at 24.8 days
        try:
            forever = isinstance(timeout, (float, np.floating)) and timeout == math.inf
            seconds = math.inf if forever else check_number(timeout, "t", ">= 0", "")
        except SharpdimError:
            raise SharpdimError(
                f"timeout must be a number of seconds >= 0 (inf: as long as SQLite can wait), "
                f"got {timeout!r}: pass e.g. 60.0"
            ) from None
        self.timeout = min(seconds, MAX_TIMEOUT)
        self._warned = False
        if str(path) == ":memory:":
            raise SharpdimError(
                "':memory:' is SQLite's in-memory database, which keeps nothing after close: "
                "pass a file path such as runs.sqlite"
            )
        self._check_name_length()
        try:
            elsewhere = self.path.exists() and not self.path.is_file()
        except OSError as err:  # (a folder name in the path too long, a loop of links)
            raise SharpdimError(
                f"cannot open the results store {self.path} ({err}): choose a writable file path"
            ) from None
        if elsewhere:  # SQLite would write beside it
            raise SharpdimError(
                f"cannot open the results store {self.path}: it is not a regular file (a folder, "
                "device or pipe); choose a file path such as runs.sqlite"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # (an absolute name: SQLite reads a name starting with "file:" as a URI, and wrote
            # `--out file:res` to res/, `file:` to /runs.sqlite, `file::memory:` to memory)
            name = str(self.path.absolute())  # (`..` left to the OS: symlinked folders)
            self._conn = sqlite3.connect(name, timeout=self.timeout, isolation_level=None)
        except (OSError, ValueError, sqlite3.Error) as err:
            raise SharpdimError(
                f"cannot open the results store {self.path} ({err}): choose a writable file path"
            ) from None
        try:
            self._open(writable)
        except BaseException:
            self._conn.close()
            raise

    def _check_name_length(self) -> None:
        """A one-line error for a file name with no room for the ``-journal`` SQLite keeps
        beside it (it failed as a misleading read-only folder, or a raw OSError)."""
        size = len(os.fsencode(self.path.name))
        try:
            folder = self.path.parent if self.path.parent.is_dir() else Path(".")
            limit = os.pathconf(folder, "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        if size + len("-journal") > limit:
            raise SharpdimError(
                f"the results store's file name is {size} bytes long, and SQLite keeps a file "
                f"named like it plus '-journal' beside it, beyond this filesystem's {limit}-byte "
                "names: choose a shorter name, such as runs.sqlite"
            )

    def _unmerged_wal(self) -> bool:
        """Whether a non-empty ``-wal`` file beside the store holds runs not yet merged."""
        wal = self._beside("-wal")
        return wal.is_file() and wal.stat().st_size > 0

    def _beside(self, suffix: str) -> Path:
        """The file SQLite keeps next to the store: ``suffix`` is ``"-wal"`` or ``"-shm"``."""
        return self.path.with_name(self.path.name + suffix)

    def _open_immutable(self, err: sqlite3.Error) -> bool:
        """After ``err`` while opening for reading: if it says nothing can be created beside
        the file (a read-only folder or filesystem, where WAL mode cannot make its ``-shm``
        file) and no ``-wal`` holds unmerged runs, read the store as an immutable file (no
        locks: nothing can write there either); whether that worked."""
        name = getattr(err, "sqlite_errorname", "")
        if not name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY")):
            return False
        if not self.path.is_file() or self._unmerged_wal():
            return False
        self._conn.close()
        try:
            self._conn = sqlite3.connect(immutable_uri(self.path), uri=True, isolation_level=None)
        except sqlite3.Error:
            return False
        try:
            if self._in_transaction("BEGIN", create=False):
                return True
        except sqlite3.Error:
            pass
        except BaseException:
            self._conn.close()
            raise
        self._conn.close()
        return False

    # -- connection ----------------------------------------------------------------------------
    def _fail(self, err: sqlite3.Error, doing: str) -> SharpdimError:
        text = str(err)
        if self._disk_full(err):
            return SharpdimError(
                f"the disk holding the results store {self.path} is full while {doing}: free "
                "some space or choose a path on another disk"
            )
        # a read-only folder: SQLite cannot create its -wal/-shm files (CANTOPEN), or opened
        # the file but cannot write beside it (READONLY_DIRECTORY)
        cantopen = getattr(err, "sqlite_errorname", "") in (
            "SQLITE_CANTOPEN",
            "SQLITE_READONLY_DIRECTORY",
        )
        blocked = cantopen and [
            side
            for side in map(self._beside, ("-wal", "-shm"))
            if side.exists() and not side.is_file()
        ]
        if blocked:
            return SharpdimError(
                f"cannot open the results store {self.path} ({text}) while {doing}: "
                f"{blocked[0].name} beside it is not a file (SQLite keeps its log there); move "
                "it away"
            )
        if cantopen and self.path.is_file() and self._unmerged_wal():
            return SharpdimError(
                f"cannot open the results store {self.path} ({text}) while {doing}: "
                f"{self.path.name}-wal beside it holds runs not yet merged, and its folder is "
                "read-only; open it once where the folder is writable (that merges them), then "
                "read it anywhere"
            )
        if cantopen and self.path.is_file():
            return SharpdimError(
                f"cannot open the results store {self.path} ({text}) while {doing}: SQLite "
                "creates files beside it, so its folder must be writable; choose a writable "
                "folder (to only read it: ResultsStore(path, writable=False))"
            )
        if "readonly" in text:
            return SharpdimError(
                f"the results store {self.path} is read-only ({text}): make it writable or "
                "choose another path"
            )
        if "locked" in text or "busy" in text:
            return SharpdimError(
                f"the results store {self.path} stayed locked by another process for "
                f"{self.timeout:g} s while {doing}: end the program holding it (e.g. an open "
                "transaction in a sqlite3 shell) and run again, the stored runs are kept (from "
                "Python, ResultsStore(path, timeout=...) waits longer)"
            )
        if isinstance(err, sqlite3.ProgrammingError):  # not the file's fault
            return SharpdimError(
                f"the results store {self.path} cannot be used here ({text}): it is closed or "
                "was opened in another thread; open a ResultsStore where it is used"
            )
        if getattr(err, "sqlite_errorname", "") == "SQLITE_TOOBIG":  # the run, not the file
            return SharpdimError(
                f"a run is too large for the results store {self.path} ({text}) while {doing}: "
                "store a smaller result (summaries instead of whole arrays); the stored runs "
                "are kept"
            )
        if isinstance(err, sqlite3.DatabaseError) and not isinstance(err, sqlite3.OperationalError):
            return SharpdimError(
                f"{self.path} is not a readable SQLite results store ({text}): move the file "
                "away or choose another path"
            )
        return SharpdimError(f"results store {self.path}: {text} while {doing}: check the file")

    def _disk_full(self, err: sqlite3.Error) -> bool:
        """Whether ``err`` comes from a full disk: SQLite says so, or it is an I/O error (such
        as growing the ``-shm`` file) while the disk has next to no space left."""
        name = getattr(err, "sqlite_errorname", "")
        if name == "SQLITE_FULL":
            return True
        try:
            return name.startswith("SQLITE_IOERR") and (
                shutil.disk_usage(self.path.parent).free < NEARLY_FULL
            )
        except OSError:
            return False

    def _open(self, writable: bool) -> None:
        try:
            # each check reads one snapshot, so a file that another process is making a store
            # is seen empty or complete; an empty one is made a store in a write transaction
            if not self._in_transaction("BEGIN", create=False):
                self._in_transaction("BEGIN IMMEDIATE", create=True)
            self._switch_to_wal()  # after the checks: another file is left as it is
            if writable:
                self._check_writable()
        except sqlite3.Error as err:
            if not writable and self._open_immutable(err):
                return
            raise self._fail(err, "opening it") from None

    def _check_writable(self) -> None:
        """Raise on a read-only file: a write that changes nothing, tried without waiting
        for a lock (SQLite refuses it as read-only first; a file being written is not)."""
        (busy,) = self._conn.execute("PRAGMA busy_timeout").fetchone()
        self._conn.execute("PRAGMA busy_timeout = 0")
        try:
            self._conn.execute("UPDATE runs SET key = key WHERE 0")
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err):
                raise
        finally:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy)}")

    def _switch_to_wal(self) -> None:
        """``PRAGMA journal_mode=WAL``, retried while locked: SQLite's busy timeout does not
        cover it when another connection holds a write lock on a rollback-journal file."""
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _in_transaction(self, begin: str, *, create: bool) -> bool:
        self._conn.execute(begin)
        try:
            found = self._check_or_create(create=create)
            self._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return found

    def _rollback(self) -> None:
        """Roll back after an error, unless SQLite already has (it does on a full disk); a
        failing rollback is ignored, so that the first error is the one reported."""
        with contextlib.suppress(sqlite3.Error):
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def _check_or_create(self, *, create: bool) -> bool:
        """True if the file is a store; refuse other files; create an empty one if ``create``."""
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id == 0 and tables == 0:
            if not create:
                return False
            self._conn.execute(_SCHEMA)
            self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif app_id != APPLICATION_ID:
            raise SharpdimError(
                f"{self.path} is an SQLite database but not a sharpdim results store: move it "
                "away or choose another path"
            )
        elif version != SCHEMA_VERSION:
            raise SharpdimError(
                f"{self.path} is a results store of schema version {version}, this sharpdim "
                f"reads version {SCHEMA_VERSION}: use a matching sharpdim or a new path"
            )
        return True

    def close(self) -> None:
        """Close the connection (everything put is already committed)."""
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as err:
            raise self._fail(err, "reading") from None

    def _query_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """``_query`` with TEXT as UTF-8 bytes, decoded per row by ``_record``: sqlite3
        decodes inside fetchall(), so one row of invalid UTF-8 (another program's) failed
        every read of the store instead of reading as that row undecodable. (sqlite converts
        a UTF-16 database's text to UTF-8 for this, as it does for str.)"""
        self._conn.text_factory = bytes
        try:
            return self._query(sql, params)
        finally:
            self._conn.text_factory = str

    def _records(self, rows: list[Any]) -> Iterator[RunRecord]:
        """The records of ``rows``, leaving out (with a warning) those that cannot be decoded."""
        for row in rows:
            try:
                yield _record(row)
            except (ValueError, TypeError) as err:  # JSON damaged or written by another program
                key = row[0].decode("utf-8", "replace") if isinstance(row[0], bytes) else row[0]
                self.warn_undecodable(str(key), err)

    def warn_undecodable(self, key: str, err: Exception) -> None:
        """Warn, once per store, that the run ``key`` cannot be decoded and counts as missing."""
        if not self._warned:
            self._warned = True
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            warnings.warn(
                f"{self.path}: the stored run {key} cannot be decoded ({reason}): it is treated "
                "as missing, so a resumed sweep computes it again and replaces it (further such "
                "runs of this store are not reported)",
                UserWarning,
                stacklevel=3,
            )

    # -- runs ------------------------------------------------------------------------------
    @staticmethod
    def config_key(config: Mapping[str, Any]) -> str:
        """The key of ``config`` (:func:`sharpdim.runner.encoding.config_key`)."""
        return config_key(config)

    def put(self, config: Mapping[str, Any], result: Any, status: str = "done") -> RunRecord:
        """Store one run atomically, replacing a stored run with the same config.

        Args:
            config: everything that determines the run (JSON data, finite numbers).
            result: the run's outcome (JSON data; tensors, numpy values and tuples are
                converted, NaN/inf stored as ``null``).
            status: ``"done"``, ``"diverged"`` or ``"failed"``.

        Returns:
            The stored :class:`RunRecord` (``result`` as it reads back).
        """
        if status not in STATUSES:
            raise SharpdimError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        text = canonical_json(config)
        key = config_key(config)
        plain = json_value(result, nonfinite="null", where="result")
        body = dumps_checked(plain, "result")
        now = _now()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    f"INSERT INTO runs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET config = excluded.config, "
                    "status = excluded.status, result = excluded.result, updated = excluded.updated",
                    (key, text, status, body, now, now),
                )
                record = self._read_back(key, now)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as err:
            raise self._fail(err, "writing a run") from None
        return record

    def _read_back(self, key: str, now: str) -> RunRecord:
        """The row ``put`` just wrote; a replaced row keeps its ``created`` time, or gets
        ``now`` when that cannot be decoded (another program's: put could not replace it)."""
        select = f"SELECT {_COLUMNS} FROM runs WHERE key = ?"
        self._conn.text_factory = bytes
        try:
            try:
                return _record(self._conn.execute(select, (key,)).fetchone())
            except (ValueError, TypeError):
                self._conn.execute("UPDATE runs SET created = ? WHERE key = ?", (now, key))
                return _record(self._conn.execute(select, (key,)).fetchone())
        finally:
            self._conn.text_factory = str

    def get(self, config: Mapping[str, Any]) -> RunRecord | None:
        """The stored run of ``config``, or ``None`` (also for a row that cannot be decoded)."""
        rows = self._query_rows(f"SELECT {_COLUMNS} FROM runs WHERE key = ?", (config_key(config),))
        return next(self._records(rows), None)

    def finished_keys(self) -> set[str]:
        """Keys of the runs a resumed sweep skips: status ``"done"`` or ``"diverged"``.

        ``"failed"`` runs are left out, so a sweep retries them, and so are undecodable rows.
        """
        rows = self._query_rows(f"SELECT {_COLUMNS} FROM runs WHERE status IN (?, ?)", FINISHED)
        return {record.key for record in self._records(rows)}

    def records(self, status: str | None = None) -> Iterator[RunRecord]:
        """All stored runs (or those with ``status``) in the order they were first put; rows
        that cannot be decoded are left out (see :meth:`warn_undecodable`)."""
        if status is not None and status not in STATUSES:
            raise SharpdimError(f"status {status!r}: use one of {', '.join(STATUSES)}")
        where, params = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        rows = self._query_rows(f"SELECT {_COLUMNS} FROM runs {where} ORDER BY rowid", params)
        return self._records(rows)

    def __len__(self) -> int:
        """The number of stored rows, undecodable ones included."""
        return int(self._query("SELECT count(*) FROM runs")[0][0])

    def to_pandas(self) -> Any:
        """A pandas DataFrame, one row per run: ``key``, ``status``, ``created``, ``updated``
        and the config's and result's fields flattened as ``config.<name>``,
        ``result.<name>`` (nested dicts joined with ``.``; lists kept as cells; a field
        holding an empty dict gets no column, as in pandas' ``json_normalize``).

        pandas is optional and imported here; ``.to_parquet(path)`` on the frame (with
        pyarrow installed) gives the Parquet export.
        """
        try:
            import pandas as pd
        except ImportError:
            raise SharpdimError(
                "to_pandas needs pandas, which is not installed: pip install pandas, or read "
                "the runs with records()"
            ) from None
        rows = [record.to_dict() for record in self.records()]
        if not rows:
            return pd.DataFrame(columns=["key", "config", "status", "result", "created", "updated"])
        for row in rows:
            _check_flat_names(row)
        return pd.json_normalize(rows, sep=".")


def _check_flat_names(row: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The names ``row`` flattens to (nested dicts joined with ``.``); refuse two fields that
    flatten to one column (``{"a.b": 1, "a": {"b": 2}}``), where pandas keeps one silently."""
    names: set[str] = set()
    for key, value in row.items():
        name = f"{prefix}{key}"
        inner = _check_flat_names(value, f"{name}.") if isinstance(value, Mapping) else {name}
        if names & inner:
            raise SharpdimError(
                f"two fields of a stored run flatten to the column {min(names & inner)!r}: "
                "rename the key holding a '.', or read the runs with records()"
            )
        names |= inner
    return names
