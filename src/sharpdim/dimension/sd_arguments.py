"""Argument checks of :func:`~sharpdim.dimension.sharpness_dimension.sharpness_dimension`:
each bad value is a one-line :class:`~sharpdim.errors.SharpdimError` saying what to pass."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from sharpdim.checks import check_count, check_number
from sharpdim.errors import SharpdimError


def _check_integration(value: Any) -> str:
    if not isinstance(value, str) or value not in ("exact", "trapezoid"):
        raise SharpdimError(f"unknown integration {value!r}: use 'exact' or 'trapezoid'")
    return str(value)


# checks of the SD estimators' options (None where that is the default)
_ESTIMATOR_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "num_bins": lambda v: check_count(v, "num_bins"),
    "num_quantiles": lambda v: None if v is None else check_count(v, "num_quantiles"),
    "grid_size": lambda v: check_count(v, "grid_size", 2),
    "max_grid": lambda v: check_count(v, "max_grid", 64),
    "bandwidth": lambda v: None if v is None else check_number(v, "bandwidth", ">= 0", "0.05"),
    "points_per_bandwidth": lambda v: check_number(v, "points_per_bandwidth", "> 0", "16"),
    "integration": _check_integration,
}


def check_estimator_option(name: str, value: Any) -> Any:
    """A checked SD estimator option (``num_bins``, ``bandwidth``, ...), converted to int/float."""
    check = _ESTIMATOR_OPTIONS.get(name)
    return value if check is None else check(value)


def check_data(data: Any) -> int:
    """The number of examples of ``data`` = ``(x, y, ...)``: tensors of equal length >= 1."""
    if not isinstance(data, (tuple, list)) or not data:
        raise SharpdimError(
            "data must be a non-empty (x, y) tuple of tensors: pass (x_train, y_train)"
        )
    if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in data):
        raise SharpdimError("data must hold tensors with a leading example dimension: pass (x, y)")
    n = int(data[0].shape[0])
    if n == 0:
        raise SharpdimError("data is empty: pass at least one example")
    if any(int(t.shape[0]) != n for t in data):
        raise SharpdimError(
            "the tensors in data have different lengths: pass x and y with one row per example"
        )
    return n


def check_estimator_options(method: str, opts: Any) -> dict[str, Any]:
    """``estimator_options`` as a dict of checked values; keys the estimator does not take fail."""
    from sharpdim.dimension.sd_estimators import sd_histogram, sd_kde, sd_quantiles

    if opts is None:
        opts = {}
    if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
        raise SharpdimError(
            f"estimator_options must be a dict of keyword options, got {opts!r}: "
            "pass e.g. {'num_bins': 500}"
        )
    if method == "exact":
        if opts:
            raise SharpdimError(
                f"estimator_options {sorted(opts)} have no effect with method='exact': "
                "drop them or use method='slq', 'kde' or 'ps'"
            )
        return {}
    estimators: dict[str, Callable[..., Any]] = {
        "slq": sd_histogram,
        "kde": sd_kde,
        "ps": sd_quantiles,
    }
    params = inspect.signature(estimators[method]).parameters.values()
    allowed = sorted(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise SharpdimError(
            f"estimator_options {unknown} are not options of method={method!r}: "
            f"use {', '.join(allowed)}"
        )
    return {k: check_estimator_option(k, v) for k, v in opts.items()}
