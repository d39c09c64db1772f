"""Standard output that outlives its reader: ``sharpdim ... | head -1`` must not lose results.

When the reader of a pipe exits, the next write raises ``BrokenPipeError``; click then ends
the command at once (exit 1), before the files it was about to write. Inside
:func:`pipe_safe_stdout`, the first such error points the descriptor at ``os.devnull`` (as
the Python docs advise for SIGPIPE) and every later write is dropped, so the command runs to
its end and writes its files.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class _PipeSafe:
    """Wraps a text stream; writes after its reader has gone are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # (the interpreter's final flush too)
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:  # isatty, encoding, fileno, ...
        return getattr(self._stream, name)


@contextlib.contextmanager
def pipe_safe_stdout() -> Iterator[None]:
    """Run a block with ``sys.stdout`` wrapped (see the module docstring)."""
    original = sys.stdout
    if original is None:  # (fd 1 closed at start: Python and rich write nowhere already)
        yield
        return
    sys.stdout = _PipeSafe(original)
    try:
        yield
    finally:
        sys.stdout = original
