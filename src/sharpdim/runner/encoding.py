"""Plain JSON for the results store: conversion of run configs and results, and config keys.

* :func:`json_value`: numbers, strings, booleans, ``None``, lists and string-keyed dicts;
  tuples become lists, tensors and numpy arrays/scalars their ``tolist()``/``item()``.
  Non-finite floats (NaN, +-inf) become ``None`` in results (``nonfinite="null"``, the same
  convention as the JSON summaries the CLI writes) and are refused in configs
  (``nonfinite="error"``). Anything else is refused with a one-line
  :class:`~sharpdim.errors.SharpdimError` that names where it sits.
* :func:`canonical_json` / :func:`config_key`: sorted keys, no whitespace, floats in Python's
  shortest round-trip form (exact: ``float(repr(x)) == x``), so equal configs give equal
  text and keys whatever the order of their keys. ``1`` and ``1.0`` are different values.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import Any, Literal

from sharpdim.errors import SharpdimError

_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")

NonFinite = Literal["null", "error"]


def json_value(value: Any, *, nonfinite: NonFinite = "null", where: str = "value") -> Any:
    """``value`` as plain JSON data (see the module docstring).

    Args:
        value: the object to convert.
        nonfinite: ``"null"`` turns NaN/inf into ``None``; ``"error"`` refuses them.
        where: how to name ``value`` in an error message (e.g. ``"config"``).

    Raises:
        SharpdimError: for an object that has no JSON form, a non-string dict key, a string
            with a surrogate pair (JSON would read it back as another string), a
            container holding itself or nested past Python's recursion limit, or
            (``nonfinite="error"``) a NaN/inf.

    Example:
        >>> import torch
        >>> json_value({"lr": 0.1, "betas": (0.9, float("nan")), "w": torch.tensor([1, 2])})
        {'lr': 0.1, 'betas': [0.9, None], 'w': [1, 2]}
    """
    try:
        return _plain(value, nonfinite, where, frozenset())
    except RecursionError:
        raise SharpdimError(
            f"the {where} is nested too deeply to store: flatten it (e.g. store summaries)"
        ) from None


def _plain(value: Any, nonfinite: NonFinite, where: str, inside: frozenset[int]) -> Any:
    """:func:`json_value` of ``value``, which sits inside the containers of ids ``inside``."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str):
        return _text(value, where)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if nonfinite == "error":
            raise SharpdimError(f"{where} is {value}: configs must hold finite numbers")
        return None
    if _is_array(value):
        plain = _array_list(value, where)
        if _is_array(plain):  # numpy's long double stays itself: rounded to float64
            plain = complex(plain) if plain.dtype.kind == "c" else float(plain)
        return _plain(plain, nonfinite, where, inside)
    if isinstance(value, (Mapping, list, tuple)):
        if id(value) in inside:
            raise SharpdimError(
                f"{where} holds itself (a container inside its own items): store a copy "
                "without the cycle"
            )
        inside = inside | {id(value)}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise SharpdimError(
                    f"{where} has the key {key!r} of type {type(key).__name__}: "
                    "use string keys in stored configs and results"
                )
            out[_text(key, f"{where}'s key")] = _plain(item, nonfinite, f"{where}[{key!r}]", inside)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, nonfinite, f"{where}[{i}]", inside) for i, item in enumerate(value)]
    raise SharpdimError(
        f"{where} is a {type(value).__name__}, which has no JSON form: store numbers, strings, "
        "lists or dicts (e.g. the object's to_dict())"
    )


def _text(value: str, where: str) -> str:
    """``value``, unless it holds a surrogate *pair* (a high then a low surrogate code
    point): JSON writes it as two ``\\u`` escapes and reads them back as the one character
    they encode, so two different configs would share a key. A lone surrogate (a file name
    decoded with ``surrogateescape``) round-trips and is kept."""
    if _SURROGATE_PAIR.search(value):
        raise SharpdimError(
            f"{where} holds a surrogate pair ({value!r}): pass the character it encodes "
            "(valid Unicode text)"
        )
    return value


def _array_list(value: Any, where: str) -> Any:
    """``value.tolist()``; a sparse tensor by its dense values, a tensor without data (on the
    meta device) refused in one line."""
    if getattr(value, "is_meta", False):
        raise SharpdimError(
            f"{where} is a tensor on the meta device, which holds no values: store a "
            "materialised tensor"
        )
    if str(getattr(value, "layout", "")).startswith("torch.sparse"):  # (COO, CSR, ...)
        value = value.to_dense()
    return value.tolist()


def _is_array(value: Any) -> bool:
    """A tensor or a numpy array/scalar; neither module is imported here (a value of one
    exists only once it is), so that a process using the store alone does not load them."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    return (torch is not None and isinstance(value, torch.Tensor)) or (
        np is not None and isinstance(value, (np.ndarray, np.generic))
    )


def canonical_json(config: Mapping[str, Any]) -> str:
    """The canonical JSON text of a run config: sorted keys, no spaces, finite numbers only.

    Example:
        >>> canonical_json({"steps": 10, "lr": 0.1, "betas": (0.9, 0.999)})
        '{"betas":[0.9,0.999],"lr":0.1,"steps":10}'
    """
    if not isinstance(config, Mapping):
        raise SharpdimError(
            f"a run config must be a dict, got {type(config).__name__}: pass the run's "
            "options as a dict"
        )
    plain = json_value(config, nonfinite="error", where="config")
    return dumps_checked(plain, "config", sort_keys=True)


def dumps_checked(plain: Any, where: str, *, sort_keys: bool = False) -> str:
    """Compact JSON text of ``plain``; an int past Python's 4,300-digit limit for str()
    (the only value ``json`` then refuses) is a one-line error."""
    try:
        return json.dumps(plain, sort_keys=sort_keys, separators=(",", ":"), allow_nan=False)
    except ValueError as err:
        raise SharpdimError(
            f"the {where} holds a value JSON cannot write ({err}): store such a number as a "
            "float or a string"
        ) from None


def config_key(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``config``: the run's key in the store.

    Example:
        >>> config_key({"lr": 0.1, "steps": 10}) == config_key({"steps": 10, "lr": 0.1})
        True
        >>> config_key({"lr": 0.1})[:12]
        '9c9ba942d8bb'
    """
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()
