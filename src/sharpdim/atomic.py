"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

The content goes to a hidden temporary file in the same folder, which ``os.replace`` then
moves over the target in one step; when writing fails (an error, Ctrl-C) the temporary file
is deleted and the old file is left as it was. The content is flushed to the disk (``fsync``)
before the rename and the folder after it, so a machine that loses power also keeps the old
file or the whole new one, not an empty one. A process killed outright (SIGKILL, power)
cannot delete its temporary file; the next successful write of the same file removes such
leftovers once they are an hour old (a younger one may be another writer's, in progress).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; on success move it onto ``path``.

    Parent folders are created. The block must create the file at the yielded path. A
    symbolic link at ``path`` is followed (its target is replaced, the link kept), and an
    existing file's permission bits carry over to the new one.
    """
    out = Path(os.path.realpath(path))
    if out.exists() and not out.is_file():  # os.replace would put a file in its place
        code, kind = (
            (errno.EISDIR, "a folder")
            if out.is_dir()
            else (errno.EINVAL, "not a regular file (a device, pipe or socket)")
        )
        raise OSError(code, f"it is {kind}", str(path))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{_temporary_prefix(out)}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        _fsync(tmp)  # (before the chmod, which may take the owner's read bit away)
        if out.exists():
            os.chmod(tmp, stat.S_IMODE(out.stat().st_mode))
        os.replace(tmp, out)
    except BaseException as err:
        with contextlib.suppress(OSError):  # (EROFS for a file never made hid the real error)
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and tmp in _paths(err):
            raise _renamed(err, tmp, out, path) from err  # name the file the user asked for
        raise
    with contextlib.suppress(OSError):  # (some filesystems cannot sync a folder)
        _fsync(out.parent)
    _remove_stale_temporaries(out)


def _paths(err: OSError) -> list[Path]:
    return [Path(f) for f in (err.filename, err.filename2) if isinstance(f, (str, Path))]


def _renamed(err: OSError, tmp: Path, out: Path, path: str | Path) -> OSError:
    """``err`` with the temporary file's name replaced by ``path`` (same class, no
    ``-> None``; the rename's second path, the resolved target ``out``, dropped)."""
    second_is_target = isinstance(err.filename2, (str, Path)) and Path(err.filename2) == out
    names = [
        str(path) if isinstance(f, (str, Path)) and Path(f) == tmp else f
        for f in (err.filename, None if second_is_target else err.filename2)
    ]
    args: tuple[Any, ...] = (err.errno, err.strerror, names[0])
    if names[1] is not None:
        args += (None, names[1])
    try:
        return type(err)(*args)
    except Exception:  # (a subclass with another constructor)
        return OSError(*args)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


STALE_SECONDS = 3600.0
"""Age after which a temporary file of :func:`atomic_path` counts as a killed writer's."""


def _temporary_prefix(out: Path) -> str:
    """``.{name}``, shortened so that ``.{name}.<8 hex>.tmp`` fits the file-name limit, which
    counts bytes (a valid name of 242-255 bytes made the temporary one too long; cutting
    characters left a 125-character accented name at 264 bytes)."""
    try:
        limit = os.pathconf(out.parent if out.parent.exists() else "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = os.fsencode(out.name)
    room = max(1, limit - 14)
    if len(name) <= room:
        return "." + out.name
    cut = name[:room]
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut in two: drop its first bytes
        if err.reason == "unexpected end of data" and err.start > 0:
            cut = cut[: err.start]
    return "." + os.fsdecode(cut)  # (other bytes of a non-UTF-8 name kept as they are)


def _remove_stale_temporaries(out: Path) -> None:
    """Delete ``.{name}.<8 hex>.tmp`` files beside ``out`` older than :data:`STALE_SECONDS`
    (only names this module writes: a user's ``.{name}.backup01.tmp`` is kept)."""
    cutoff = time.time() - STALE_SECONDS
    prefix = _temporary_prefix(out)
    ours = re.compile(re.escape(prefix) + r"\.[0-9a-f]{8}\.tmp")
    for leftover in out.parent.glob(f"{glob.escape(prefix)}.????????.tmp"):
        with contextlib.suppress(OSError):  # (gone already, or not ours to delete)
            if (
                ours.fullmatch(leftover.name)
                and leftover.is_file()
                and leftover.stat().st_mtime < cutoff
            ):
                leftover.unlink()


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return ``path`` as a ``Path``."""
    out = Path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return out


def save_figure_atomic(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format of its suffix (default PNG)."""
    out = Path(path)
    fmt = out.suffix.lstrip(".").lower() or "png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, **savefig_kwargs)
    return out
