"""ResultsStore: one SQLite row per run config, WAL mode, safe to share between writers."""

import math
import sqlite3
import sys
import threading

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.runner.encoding import config_key
from sharpdim.runner.store import ResultsStore

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
        with pytest.raises(SharpdimError, match="stayed locked by another process while writing"):
            store.put(CONFIG, {})
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


def test_to_pandas_without_pandas_is_a_one_line_error(path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with ResultsStore(path) as store, pytest.raises(SharpdimError, match="needs pandas"):
        store.to_pandas()
