"""Canonical JSON and config keys: equal configs give equal keys, whatever the key order."""

import hashlib
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.runner.encoding import canonical_json, config_key, json_value

CONFIG = {"setup": {"dataset": "digits", "width": 8}, "train": {"lr": 0.2, "betas": (0.9, 0.999)}}


def test_canonical_json_sorts_keys_and_writes_floats_exactly():
    assert canonical_json(CONFIG) == (
        '{"setup":{"dataset":"digits","width":8},"train":{"betas":[0.9,0.999],"lr":0.2}}'
    )
    assert canonical_json({"lr": 0.1 + 0.2}) == '{"lr":0.30000000000000004}'


def test_key_is_sha256_of_canonical_json():
    expected = hashlib.sha256(canonical_json(CONFIG).encode()).hexdigest()
    assert config_key(CONFIG) == expected and len(expected) == 64


def test_key_ignores_key_order_but_not_values():
    reordered = {
        "train": {"betas": [0.9, 0.999], "lr": 0.2},
        "setup": {"width": 8, "dataset": "digits"},
    }
    assert config_key(reordered) == config_key(CONFIG)
    other_lr = {**CONFIG, "train": {"lr": 0.3, "betas": (0.9, 0.999)}}
    assert config_key(other_lr) != config_key(CONFIG)
    assert config_key({"lr": 0.1 + 0.2}) != config_key({"lr": 0.3})  # exact floats
    assert config_key({"steps": 1}) != config_key({"steps": 1.0})


def test_results_convert_tensors_numpy_and_non_finite_numbers():
    value = {
        "t": torch.tensor([1.5, math.inf]),
        "n": np.float64(0.25),
        "i": np.int64(3),
        "a": np.array([[1, 2]]),
        "x": (math.nan, -math.inf, None, True, "s"),
    }
    assert json_value(value) == {
        "t": [1.5, None],
        "n": 0.25,
        "i": 3,
        "a": [[1, 2]],
        "x": [None, None, None, True, "s"],
    }
    # numpy's long double: tolist() returns a long double again (was a RecursionError)
    assert json_value({"l": np.longdouble(0.25), "la": np.array([0.5, np.inf], np.longdouble)}) == {
        "l": 0.25,
        "la": [0.5, None],
    }
    with pytest.raises(SharpdimError, match=r"^value is a complex, which has no JSON form"):
        json_value(np.clongdouble(1 + 2j))


def test_unstorable_values_give_one_line_errors_that_say_where():
    with pytest.raises(SharpdimError, match=r"result\['model'\]\[1\] is a object, which has no"):
        json_value({"model": [1, object()]}, where="result")
    with pytest.raises(SharpdimError, match=r"has the key 3 of type int: use string keys"):
        json_value({3: 1.0})
    with pytest.raises(SharpdimError, match=r"config\['train'\]\['lr'\] is nan: configs must"):
        config_key({"train": {"lr": math.nan}})
    with pytest.raises(SharpdimError, match="a run config must be a dict, got list"):
        config_key([1, 2])  # type: ignore[arg-type]


def test_surrogates_cycles_and_deep_nesting_are_one_line_errors() -> None:
    """A surrogate pair and its character wrote the same JSON escape, so two different configs
    shared a key; a container holding itself, or nested past the recursion limit, raised
    RecursionError."""
    assert config_key({"s": "\U0001f600"}) != config_key({"s": "\U0001f601"})
    with pytest.raises(SharpdimError, match=r"^config\['s'\] holds a surrogate pair"):
        config_key({"s": "\ud83d\ude00"})
    with pytest.raises(SharpdimError, match=r"^value's key holds a surrogate pair"):
        json_value({"\ud83d\ude00": 1})
    # a lone surrogate (a non-UTF-8 file name under surrogateescape) round-trips: kept
    name = os.fsdecode(b"/data/caf\xe9.npy")
    assert json.loads(canonical_json({"data": name})) == {"data": name}
    assert config_key({"data": name}) != config_key({"data": "/data/caf.npy"})
    loop: list = []
    loop.append(loop)
    with pytest.raises(SharpdimError, match=r"^result\[0\] holds itself"):
        json_value(loop, where="result")
    deep: list = []
    for _ in range(5 * sys.getrecursionlimit()):
        deep = [deep]
    with pytest.raises(SharpdimError, match=r"^the result is nested too deeply to store"):
        json_value(deep, where="result")
    shared = [1.0, 2.0]  # the same list twice is no cycle
    assert json_value({"a": shared, "b": (shared, shared)}) == {"a": shared, "b": [shared, shared]}


def test_sparse_tensors_are_stored_by_value_and_meta_tensors_refused() -> None:
    """A sparse tensor raised torch's RuntimeError, a meta tensor NotImplementedError."""
    eye = torch.eye(2, dtype=torch.float64)
    assert json_value({"r": eye.to_sparse()}) == {"r": [[1.0, 0.0], [0.0, 1.0]]}
    with pytest.raises(SharpdimError, match=r"^value\['r'\] is a tensor on the meta device"):
        json_value({"r": torch.empty(2, device="meta")})
