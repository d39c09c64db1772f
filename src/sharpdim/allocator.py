"""Heap settings that keep tensor memory mapped between Hessian-vector products.

On Linux, glibc's ``malloc`` gives freed memory at the top of its heap back to the system and,
until its adaptive threshold has grown, serves large blocks with fresh mappings; a tensor
allocated there later page-faults on every 4 KiB page it first touches. A product taken right
after other work (a gradient, a training step) then finds its megabyte-sized intermediates
handed back: on the benchmark MLP 100-256-256-10 (batch 1000) about 1,000-1,400 minor page
faults and 8-20% more time per product than with the pages kept; products taken back to back
(a Lanczos solve) fault rarely (``docs/benchmarks.md``). :func:`tune_allocator` fixes glibc's
``M_MMAP_THRESHOLD`` at its 32 MiB ceiling and raises ``M_TOP_PAD`` so those pages stay
mapped, the aim of PyTorch's CPU performance advice to preload jemalloc or tcmalloc. It changes
the whole process, so the library never calls it on its own; the ``sharpdim`` command does, at
start.
"""

from __future__ import annotations

import ctypes
import os
import sys

MIB = 1 << 20
#: glibc's ceiling for ``M_MMAP_THRESHOLD`` on 64-bit systems (larger values are refused).
MAX_MMAP_THRESHOLD = 32 * MIB
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def _glibc() -> bool:
    """Whether this process runs on GNU libc (musl and others have no ``mallopt`` to tune)."""
    try:  # os.confstr is missing on Windows; None where the name is undefined
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def user_set_malloc() -> bool:
    """Whether the environment already chose the allocator: glibc's malloc variables or
    tunables, or another allocator preloaded (whose ``mallopt`` may accept and ignore)."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return True
    preloaded = os.environ.get("LD_PRELOAD", "").lower()
    if any(name in preloaded for name in _OTHER_ALLOCATORS):
        return True
    return "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def tune_allocator(top_pad_bytes: int = MAX_MMAP_THRESHOLD) -> bool:
    """Keep freed heap pages mapped: blocks up to 32 MiB come from the heap, and trimming keeps
    ``top_pad_bytes`` of free memory at its top. Returns whether the settings were applied.

    A no-op (``False``) outside Linux with glibc, and where the environment already chose
    (:func:`user_set_malloc`: the user's choice wins). The heap top keeps up to
    ``top_pad_bytes`` free per malloc arena; memory freed below a live block stays with the
    process as glibc keeps it anyway once its adaptive threshold has grown to 32 MiB.
    """
    if isinstance(top_pad_bytes, bool) or not isinstance(top_pad_bytes, int):
        raise TypeError(f"top_pad_bytes must be an int, got {type(top_pad_bytes).__name__}")
    if not 0 <= top_pad_bytes <= 2**31 - 1:
        raise ValueError(f"top_pad_bytes must be in [0, 2**31 - 1], got {top_pad_bytes}")
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    if user_set_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    threshold_set = mallopt(_M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD) == 1
    return threshold_set and mallopt(_M_TOP_PAD, top_pad_bytes) == 1
