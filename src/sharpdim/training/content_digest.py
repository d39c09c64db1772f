"""A SHA-256 of a checkpoint's contents that survives a ``torch.save``/``torch.load`` round
trip in any process, so a file damaged on disk is told apart from a good one.

Every key, number, string and tensor goes in, in order (tensors as dtype, shape and bytes,
read on the CPU); sets by the sorted digests of their members (their order depends on
Python's hash seed), other objects by their type name and attributes (their ``repr`` may hold
a memory address).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)


def content_digest(value: Any) -> str:
    """Hex SHA-256 of ``value`` (a checkpoint's dict), stable across save, load and processes."""
    digest = hashlib.sha256()
    _digest_into(digest, value)
    return digest.hexdigest()


def _digest_into(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        _tensor_into(digest, value)
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key, item in value.items():
            _digest_into(digest, key)
            _digest_into(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{type(value).__name__}{len(value)}".encode())
        for item in value:
            _digest_into(digest, item)
    elif isinstance(value, (set, frozenset)):
        members = sorted(content_digest(item) for item in value)
        digest.update(f"S{type(value).__name__}{len(value)}:{','.join(members)};".encode())
    elif isinstance(value, _PLAIN) or not hasattr(value, "__dict__"):
        digest.update(f"V{type(value).__name__}:{value!r};".encode())
    else:  # an allow-listed object: its type and attributes
        digest.update(f"O{type(value).__module__}.{type(value).__qualname__}".encode())
        _digest_into(digest, dict(sorted(vars(value).items())))


def _tensor_into(digest: Any, value: torch.Tensor) -> None:
    if value.is_nested:
        parts = value.unbind()
        digest.update(f"N{value.dtype}{len(parts)}".encode())
        for part in parts:
            _tensor_into(digest, part)
        return
    digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
    try:
        # (a conj or negative view's bits are the data before the flag: resolved first, else
        # .view raised and two different tensors hashed alike)
        plain = value.detach().to("cpu").resolve_conj().resolve_neg()
        raw = plain.contiguous().reshape(-1).view(torch.uint8)
    except RuntimeError:  # (sparse or quantized: dtype and shape only)
        return
    digest.update(raw.numpy())  # (the buffer itself: no copy)
