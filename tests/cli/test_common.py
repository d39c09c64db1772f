"""The helpers shared by the CLI commands (``sharpdim.commands._common``)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sharpdim.commands._common import (
    MAX_N_TRAIN,
    build_data_mlp,
    check_at_least,
    check_batch_size,
    check_exact_sd_size,
    check_n_train,
    check_positive_lr,
    jsonable,
    kv_table,
    load_mlp_dataset,
    mlp_data,
    mlp_num_params,
    output_errors,
    parse_floats,
    prepare_output_dir,
    prepare_output_file,
    prepare_store_path,
    write_json,
    wrote_line,
)
from sharpdim.errors import SharpdimError, TooLargeError


def test_parse_floats_commas_and_spaces() -> None:
    assert parse_floats("0.2,0.3 0.5", "lrs") == [0.2, 0.3, 0.5]
    with pytest.raises(SharpdimError, match="lrs 'a,b' is not a list of numbers"):
        parse_floats("a,b", "lrs")
    with pytest.raises(SharpdimError, match="lrs is empty"):
        parse_floats(" , ", "lrs")


def test_jsonable_and_write_json_are_strict(tmp_path: Path) -> None:
    value = {1: (math.nan, 2.5), "t": torch.tensor([1.0, math.inf]), "s": "x"}
    assert jsonable(value) == {"1": [None, 2.5], "t": [1.0, None], "s": "x"}
    path = write_json(tmp_path / "a" / "b.json", value)
    text = path.read_text()
    assert path == tmp_path / "a" / "b.json" and text.endswith("}\n")
    assert json.loads(text) == {"1": [None, 2.5], "t": [1.0, None], "s": "x"}
    # numpy values as the store's encoding takes them (were 'not JSON serializable')
    import numpy as np

    arrays = {"x": np.float32("nan"), "a": np.arange(2), "i": np.int64(4)}
    assert jsonable(arrays) == {"x": None, "a": [0, 1], "i": 4}
    assert json.loads(write_json(tmp_path / "n.json", arrays).read_text())["a"] == [0, 1]


def test_wrote_line_and_kv_table() -> None:
    assert wrote_line(Path("a.png"), Path("a.json")) == "wrote a.png and a.json"
    assert wrote_line(Path("x"), seconds=1.25) == "wrote x (1.2 s)"
    table = kv_table("t", [("k1", "v1"), ("k2", "v2")])
    assert [c.header for c in table.columns] == ["quantity", "value"]
    assert table.row_count == 2 and table.columns[1].justify == "right"


def test_prepare_output_dir_creates_and_refuses_files(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    assert prepare_output_dir(folder, "--out folder") == folder and folder.is_dir()
    assert list(folder.iterdir()) == []  # the scratch file is gone
    afile = tmp_path / "afile"
    afile.write_text("x")
    for bad in (afile, afile / "sub"):
        with pytest.raises(SharpdimError) as err:
            prepare_output_dir(bad, "--out folder")
        assert str(err.value) == (
            f"cannot write {bad} ({afile} is a file, not a folder): choose a writable --out folder"
        )
    assert afile.read_text() == "x"
    with pytest.raises(SharpdimError, match=r"^cannot write /proc/nonexist/x \(cannot create"):
        prepare_output_dir(Path("/proc/nonexist/x"), "--out folder")


def test_prepare_output_file(tmp_path: Path) -> None:
    assert prepare_output_file(None) is None
    path = tmp_path / "new" / "r.json"
    assert prepare_output_file(path, "--json path") == path
    assert path.parent.is_dir() and not path.exists()  # the folder is made, not the file
    path.write_text("old")
    assert prepare_output_file(path, "--json path") == path and path.read_text() == "old"
    with pytest.raises(SharpdimError) as err:
        prepare_output_file(tmp_path, "--json path")
    assert str(err.value) == (
        f"cannot write {tmp_path} (it is a folder): choose a writable --json path"
    )
    with pytest.raises(SharpdimError) as err:
        prepare_output_file(Path("/proc/nonexist/x.json"), "--json path")
    assert str(err.value) == (
        "cannot write /proc/nonexist/x.json (cannot create folder /proc/nonexist: "
        "No such file or directory): choose a writable --json path"
    )


def test_write_errors_become_one_line(tmp_path: Path) -> None:
    with pytest.raises(SharpdimError) as err:
        write_json(tmp_path, {"a": 1}, "--json path")  # a folder: IsADirectoryError
    assert str(err.value).startswith(f"cannot write {tmp_path} (")
    assert str(err.value).endswith("): choose a writable --json path")
    with pytest.raises(SharpdimError) as err, output_errors(tmp_path, "--out folder"):
        raise FileExistsError(17, "File exists", str(tmp_path / "x"))
    assert str(err.value) == (
        f"cannot write {tmp_path / 'x'} (File exists): choose a writable --out folder"
    )


def test_option_checks_name_the_flag() -> None:
    assert check_positive_lr(0.5) == 0.5
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(SharpdimError) as err:
            check_positive_lr(bad, "--lr-eos", "1.5")
        assert str(err.value) == (
            f"--lr-eos must be a positive finite number, got {bad}: pass e.g. --lr-eos 1.5"
        )
    assert check_at_least(0, 0, "--warmup") == 0
    with pytest.raises(SharpdimError) as err:
        check_at_least(0, 1, "--num-batches")
    assert str(err.value) == "--num-batches must be >= 1, got 0: pass --num-batches 1 or more"


def test_modular_is_one_hot_for_mlps() -> None:
    data = load_mlp_dataset("modular", seed=0, n_train=30, dtype=torch.float64)
    assert data.x_train.dtype == torch.float64 and data.x_train.shape == (30, 2 * 97)
    assert torch.equal(data.x_train.sum(1), torch.full((30,), 2.0, dtype=torch.float64))
    data, num_params = mlp_data("modular", n_train=30, width=3, depth=1, seed=0)
    model = build_data_mlp(data, 3, 1, "tanh", 0, torch.float32)
    assert model(data.x_train).shape == (30, 97)
    assert num_params == sum(
        p.numel() for p in model.parameters()
    )  # int64 tokens made this a dtype error
    with pytest.raises(SharpdimError, match=r"^--batch-size 31 exceeds the 30 training examples"):
        mlp_data("modular", n_train=30, width=3, depth=1, seed=0, batch_size=31)
    with pytest.raises(SharpdimError, match=r"^--width must be >= 1, got 0"):
        mlp_data("digits", n_train=30, width=0, depth=1, seed=0)


@pytest.mark.parametrize("text", ["0.2,,0.3", "0.2,0.3,", ",0.2", "0.2, ,0.3"])
def test_parse_floats_refuses_empty_items(text: str) -> None:
    with pytest.raises(SharpdimError) as err:
        parse_floats(text, "--lrs")
    assert str(err.value) == (
        f"--lrs {text!r} has an empty item between commas: use e.g. '0.2,0.3,0.5'"
    )


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        (
            "idx",
            ' (your own IDX files: in Python, load_dataset("idx", directory=...) from '
            "sharpdim.training.datasets)",
        ),
        ("cifar", ""),
    ],
)
def test_cli_datasets_name_the_option(name: str, hint: str) -> None:
    with pytest.raises(SharpdimError) as err:
        mlp_data(name, n_train=30, width=3, depth=1, seed=0)
    assert str(err.value) == (
        f"--dataset {name!r} is not one the command line can load: pass --dataset digits, "
        f"mnist1d, modular, teacher_student{hint}"
    )
    assert "--directory" not in str(err.value) and "train_images=" not in str(err.value)


def test_store_path_refuses_a_folder(tmp_path: Path) -> None:
    assert prepare_store_path(tmp_path) == tmp_path / "runs.sqlite"
    (tmp_path / "runs.sqlite").mkdir()
    with pytest.raises(SharpdimError) as err:
        prepare_store_path(tmp_path)
    store = tmp_path / "runs.sqlite"
    assert str(err.value) == (
        f"cannot use {store} as the results store (it is a folder): choose another --out "
        f"folder or move {store} away"
    )


def test_store_path_refuses_a_pipe(tmp_path: Path) -> None:
    """A named pipe (or a link to /dev/null) passed the folder check; SQLite then failed
    with 'disk I/O error' after writing a journal beside it (/dev/null-journal as root)."""
    os.mkfifo(tmp_path / "runs.sqlite")
    with pytest.raises(SharpdimError, match=r"^cannot use .*runs\.sqlite as the results store "):
        prepare_store_path(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["runs.sqlite"]


def test_store_path_refuses_a_read_only_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "runs.sqlite"
    store.write_bytes(b"")
    real_access = os.access
    monkeypatch.setattr(  # as for a file without write permission or on a read-only mount
        os, "access", lambda p, mode: mode != os.W_OK and real_access(p, mode)
    )
    with pytest.raises(SharpdimError) as err:
        prepare_store_path(tmp_path)
    assert str(err.value) == (
        f"cannot write {store} (the file is read-only): choose a writable --out folder"
    )
    assert prepare_store_path(tmp_path / "new") == tmp_path / "new" / "runs.sqlite"


def test_exact_sd_size_limit() -> None:
    # 64-w-10 MLP, w = 300: 64*300 + 300 + 300*10 + 10 parameters
    assert mlp_num_params(64, 10, 300, 1) == 22_510
    assert mlp_num_params(64, 10, 108, 2) == 19_882 and mlp_num_params(64, 10, 109, 2) == 20_175
    assert check_exact_sd_size(20_000, "x") == 20_000
    with pytest.raises(TooLargeError) as err:
        check_exact_sd_size(22_510, "pass a smaller --width or --depth")
    assert str(err.value) == (
        "the MLP has 22,510 parameters, more than the 20,000 the exact sharpness dimension "
        "(dense Hessians) takes: pass a smaller --width or --depth"
    )


@pytest.mark.parametrize(
    ("name", "limit", "num_test"), [("digits", 1500, 297), ("modular", 9409, 0)]
)
def test_n_train_limits_are_what_the_datasets_hold(name: str, limit: int, num_test: int) -> None:
    assert MAX_N_TRAIN[name] == limit
    data = load_mlp_dataset(name, seed=0, n_train=limit)
    assert (data.num_train, data.num_test) == (limit, num_test)
    with pytest.raises(SharpdimError) as err:
        mlp_data(name, n_train=limit + 1, width=3, depth=1, seed=0)
    assert str(err.value) == (
        f"--n-train {limit + 1} exceeds the {limit} training examples of --dataset {name}: "
        f"pass --n-train <= {limit}"
    )
    assert check_n_train("teacher_student", 10**6) == 10**6 and check_n_train(name, None) is None


@pytest.mark.parametrize("name", ["mnist1d", "teacher_student"])
def test_generated_datasets_are_capped_on_the_command_line(name: str) -> None:
    """10^9 examples of teacher_student ran out of memory with a traceback."""
    with pytest.raises(SharpdimError) as err:
        check_n_train(name, 10**9)
    assert str(err.value) == (
        f"--n-train 1000000000 exceeds the command line's 1,000,000 generated examples of "
        f"--dataset {name}: pass --n-train <= 1000000 (the Python API generates any size)"
    )


def test_batch_size_check_names_the_flag() -> None:
    assert check_batch_size(100, 100) == 100
    with pytest.raises(SharpdimError) as err:
        check_batch_size(101, 100)
    assert str(err.value) == (
        "--batch-size 101 exceeds the 100 training examples: pass --batch-size <= 100 "
        "(or a larger --n-train)"
    )
