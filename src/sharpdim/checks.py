"""Checks of scalar arguments shared by the core: each bad value is a one-line
:class:`~sharpdim.errors.SharpdimError` saying what was passed and what to pass."""

from __future__ import annotations

import decimal
import fractions
import math
import numbers
import re
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sharpdim.errors import SharpdimError

if TYPE_CHECKING:
    import torch

_RANGES: dict[str, Callable[[float], bool]] = {
    "any": lambda x: True,
    ">= 0": lambda x: x >= 0,
    "> 0": lambda x: x > 0,
    "in [0, 1)": lambda x: 0 <= x < 1,
    "in (0, 1)": lambda x: 0 < x < 1,
}


def described(value: Any) -> str:
    """``value`` for a one-line message: an array or tensor by its type and shape (its repr
    printed every entry, over many lines: labels passed as lr), anything else by a repr
    shortened to one line (a 400-digit int)."""
    ndim = getattr(value, "ndim", None)
    if isinstance(ndim, int) and ndim > 0 and hasattr(value, "shape"):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    return re.sub(r"\s*\n\s*", " ", _SHORT.repr(value))


def _short_repr() -> reprlib.Repr:
    """Reprs for messages: long enough for a Fraction or a user's object, never a page."""
    short = reprlib.Repr()  # (keyword settings only from Python 3.12)
    short.maxlevel, short.maxlist = 3, 12
    short.maxstring, short.maxother, short.maxlong = 120, 120, 60
    return short


_SHORT = _short_repr()


def plain_scalar(value: Any) -> Any:
    """A 0-dim tensor or numpy array (e.g. a torch optimizer's ``step`` or tensor ``betas``) as
    a Python number; anything else unchanged (bool tensors stay, and are refused). A masked
    or meta value has no number to give: refused in one line."""
    if getattr(value, "is_meta", False):
        raise SharpdimError("got a meta tensor, which holds no data: pass a tensor with values")
    if getattr(value, "mask", False) is not False and _is_masked(value):
        raise SharpdimError(
            f"a masked value has no number to give, got {described(value)}: pass "
            "values.compressed() or values.filled(...)"
        )
    if isinstance(value, decimal.Decimal) and value.is_finite():  # (not a numbers.Real:
        return fractions.Fraction(value)  # "got Decimal('0.1')"; exact, as Fractions are)
    is_array = hasattr(value, "ndim") and hasattr(value, "item") and value.ndim == 0
    if is_array and str(getattr(value, "dtype", "")).split(".")[-1] != "bool":
        return value.item()
    return value


def _is_masked(value: Any) -> bool:
    """Whether ``value`` is a numpy masked array with an entry masked (its data there is not
    the user's: read as it is, it entered the result silently)."""
    import numpy as np

    return isinstance(value, np.ma.MaskedArray) and bool(np.ma.is_masked(value))


def check_count(value: Any, name: str, minimum: int = 1, hint: str = "a whole number") -> int:
    """``value`` as an ``int >= minimum``: an integer, a whole float (``5.0``), any whole
    real (``Fraction(10, 2)``) or a 0-dim tensor of one; bools, non-whole numbers and strings
    are refused."""
    given, value = value, plain_scalar(value)
    whole = isinstance(value, numbers.Integral) or (  # (exactly: Fraction(10**17 + 1, 10**17)
        # rounds to the whole float 1.0)
        isinstance(value, numbers.Real) and _finite(value) and value == math.floor(value)
    )
    if isinstance(value, bool) or not whole or value < minimum:
        raise SharpdimError(
            f"{name} must be an integer >= {minimum}, got {described(given)}: pass {hint}"
        )
    return int(value)


MAX_SIZE = 2**63 - 1
"""The largest size of a tensor dimension: torch's and numpy's sizes are int64."""


def check_size(value: Any, name: str, minimum: int = 1, hint: str = "a whole number") -> int:
    """:func:`check_count` of a tensor dimension, at most :data:`MAX_SIZE` (beyond it torch
    failed deep inside ``torch.empty`` with a 12-line TypeError). Upper bounds such as
    ``max_iter`` stay :func:`check_count`: a huge one means no limit."""
    size = check_count(value, name, minimum, hint)
    if size > MAX_SIZE:
        raise SharpdimError(
            f"{name} must be at most 2**63 - 1 (sizes are int64), got {described(value)}: pass {hint}"
        )
    return size


SEED_RANGE = (0, 2**32 - 1)
"""Seeds that give distinct runs: torch's CPU generator keeps only the low 32 bits of a seed
(``manual_seed(2**32)`` draws what ``manual_seed(0)`` draws), so larger seeds are refused."""


def check_flag(value: Any, name: str) -> bool:
    """``value`` if it is a bool (numpy's too), else a one-line error: a string such as
    ``"no"`` is truthy and would silently mean ``True``."""
    import numpy as np

    if not isinstance(value, (bool, np.bool_)):
        raise SharpdimError(f"{name} must be True or False, got {described(value)}")
    return bool(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed: a whole number (int, numpy integer, whole float, 0-dim tensor) in
    :data:`SEED_RANGE`."""
    seed = check_count(value, name, 0, f"a whole number in [0, 2**32 - 1], e.g. {name}=0")
    if seed > SEED_RANGE[1]:
        raise SharpdimError(
            f"{name} must be at most 2**32 - 1 (torch keeps only a seed's low 32 bits), "
            f"got {seed}: pass a smaller seed"
        )
    return seed


def check_number(value: Any, name: str, rule: str, example: str) -> float:
    """``value`` as a float: a finite real number or 0-dim tensor (not a bool) with ``rule``
    (a key of ``_RANGES``)."""
    given, value = value, plain_scalar(value)
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    # the rule holds for the float returned too (Fraction(1, 10**400) > 0 is 0.0 as a float;
    # a beta just below 1 rounds to 1.0)
    if not (real and _finite(value) and _RANGES[rule](value) and _RANGES[rule](float(value))):
        rule = "" if rule == "any" else f" {rule}"
        raise SharpdimError(
            f"{name} must be a finite number{rule}, got {described(given)}: pass e.g. {example}"
        )
    return float(value)


def _finite(value: numbers.Real) -> bool:
    """Whether ``value`` is a finite float (an int beyond float's range is not: 10**400)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def unordered(values: Any) -> bool:
    """Whether ``values`` cannot be a list of numbers in order: text, a set or a mapping
    (whose iteration order is not the user's), a 0-dim array or anything not iterable."""
    return (
        isinstance(values, (str, bytes, bytearray, memoryview, set, frozenset, dict))
        or not hasattr(values, "__iter__")
        or getattr(values, "ndim", 1) == 0
    )


def check_betas(betas: Any) -> tuple[float, float]:
    """Adam's ``(b1, b2)``: a pair (tuple, list, array or tensor) of numbers in ``[0, 1)``."""
    if unordered(betas) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise SharpdimError(
            f"betas must be a pair (b1, b2), got {described(betas)}: pass e.g. (0.9, 0.999)"
        )
    b1, b2 = (check_number(b, "betas", "in [0, 1)", "(0.9, 0.999)") for b in betas)
    return b1, b2


def check_numbers(
    values: Any, name: str, rule: str, example: str, *, allow_empty: bool = False
) -> list[float]:
    """``values`` (a list, tuple, numpy array or 1-d tensor) as a list of floats, each a finite
    number with ``rule``; empty only with ``allow_empty``."""
    if unordered(values):
        raise SharpdimError(
            f"{name} must be a list of numbers, got {described(values)}: pass e.g. {example}"
        )
    out = [check_number(v, f"each of {name}", rule, example) for v in values]
    if not out and not allow_empty:
        raise SharpdimError(f"{name} is empty: pass e.g. {example}")
    return out


def native_array(array: Any) -> Any:
    """``array`` (a numpy array) in a layout torch can wrap: a copy if it has negative strides
    (``x[::-1]``) or a non-native byte order (``'>f8'``), else itself."""
    if any(stride < 0 for stride in array.strides):
        array = array.copy()
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def real_tensor(values: Any, name: str, *, word_errors: bool = True) -> torch.Tensor:
    """``values`` (a tensor, array, list of numbers or of tensors) as a detached float64 CPU
    tensor of the same shape; text, complex and bool data are refused (a cast to float would drop an imaginary part or
    read ``True`` as 1). Python floats stay float64 (numpy's default, not torch's float32).
    With ``word_errors=False`` a value that converts to no tensor (ragged lists, text) raises
    the conversion's own ``TypeError``/``ValueError``, for callers that word it themselves."""
    import numpy as np
    import torch

    if isinstance(values, (list, tuple)) and _holds_bool(values):
        raise SharpdimError(
            f"{name} must be real numbers (a tensor or array), got a bool among them"
        )
    if getattr(values, "is_meta", False):
        raise SharpdimError(f"{name} is a meta tensor, which holds no data: pass its values")
    if _is_masked(values):  # (its masked entries' data entered the result silently)
        raise SharpdimError(
            f"{name} is a masked array with masked entries: pass {name}.compressed() or "
            f"{name}.filled(...)"
        )
    try:
        if isinstance(values, torch.Tensor):
            t = values
        elif (
            isinstance(values, (list, tuple))
            and values
            and all(isinstance(e, torch.Tensor) for e in values)
        ):
            t = torch.stack([e.detach().cpu() for e in values])  # (e.g. values needing grad)
        else:
            if isinstance(values, (list, tuple)):  # tensors among numbers, some needing grad
                values = [e.detach().cpu() if isinstance(e, torch.Tensor) else e for e in values]
            if values is None:  # (numpy would read it as NaN)
                raise TypeError("None is not a number")
            array = native_array(np.asarray(values))
            if array.dtype == object:  # Fraction, Decimal, ints beyond int64 (not None, text)
                if not all(
                    isinstance(e, (numbers.Real, decimal.Decimal)) and not isinstance(e, bool)
                    for e in array.flat
                ):
                    raise TypeError("not all numbers")
                exact = [plain_scalar(e) for e in array.flat]  # (Decimals as Fractions)
                array = np.asarray(exact, dtype=np.float64).reshape(array.shape)
            if array.dtype == np.longdouble and array.dtype != np.float64:  # (torch has none)
                with np.errstate(over="ignore"):
                    narrow = array.astype(np.float64)
                if (np.isinf(narrow) & np.isfinite(array)).any():
                    raise OverflowError("beyond float64")
                array = narrow
            t = torch.as_tensor(array)
    except OverflowError:  # (an int or Fraction beyond float64: 10**400)
        raise SharpdimError(
            f"{name} holds a number beyond float64's range (about 1.8e308): pass smaller values"
        ) from None
    except (TypeError, ValueError, RuntimeError):
        if not word_errors:
            raise
        raise SharpdimError(
            f"{name} must be real numbers (a tensor or array), got {type(values).__name__}"
        ) from None
    if t.is_complex() or t.dtype == torch.bool:
        raise SharpdimError(f"{name} must be real numbers (a tensor or array), got {t.dtype}")
    if t.layout != torch.strided:  # (a sparse tensor: its dense values)
        t = t.to_dense()
    return t.detach().to(device="cpu", dtype=torch.float64)


def _holds_bool(values: Any) -> bool:
    """Whether a (nested) list or tuple holds a bool, a numpy bool or a bool array or tensor:
    numpy and torch would promote it to 1 beside numbers. (The element types of each list are
    gathered with ``map``, so a flat list of a million numbers costs milliseconds; only arrays
    and tensors among them are looked at one by one.)"""
    import numpy as np

    kinds = set(map(type, values))
    if bool in kinds or np.bool_ in kinds:
        return True
    if any(issubclass(k, (list, tuple)) for k in kinds) and any(
        _holds_bool(e) for e in values if isinstance(e, (list, tuple))
    ):
        return True
    arrays = {k for k in kinds if hasattr(k, "dtype") and not issubclass(k, np.generic)}
    return bool(arrays) and any(
        str(e.dtype).endswith("bool") for e in values if type(e) in arrays and hasattr(e, "ndim")
    )


def default_generator(generator: Any) -> torch.Generator:
    """``generator``, or a ``torch.Generator`` seeded with 0 when it is ``None``: the one source
    of randomness of every estimator; anything else, and a generator of another device than
    the CPU (probes are drawn on the CPU), is refused."""
    import torch  # (this module stays importable without torch)

    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise SharpdimError(
            f"generator must be a torch.Generator, got {type(generator).__name__}: "
            "pass torch.Generator().manual_seed(seed)"
        )
    if generator.device.type != "cpu":
        raise SharpdimError(
            f"generator is on {generator.device}, but random draws are made on the CPU (so "
            "results do not depend on the device): pass torch.Generator().manual_seed(seed)"
        )
    return generator
