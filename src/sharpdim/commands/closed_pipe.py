"""Standard output that outlives its reader: ``sharpdim ... | head -1`` must not lose results.

When the reader of a pipe exits, the next write raises ``BrokenPipeError``; click then ends
the command at once (exit 1), before the files it was about to write. Inside
:func:`pipe_safe_stdout`, the first such error points the descriptor at ``os.devnull`` (as
the Python docs advise for SIGPIPE) and every later write is dropped, so the command runs to
its end and writes its files. Any other error writing to standard output (``> /dev/full``:
no space left) does the same, with one ``warning:`` line on standard error. Characters the
stream cannot encode (an ASCII terminal) are written as ``?``.
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
            except UnicodeEncodeError:  # (an ASCII terminal: '±' written as '?')
                encoding = getattr(self._stream, "encoding", None) or "ascii"
                return self.write(text.encode(encoding, "replace").decode(encoding))
            except OSError as err:
                self._gone(err)
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self._stream.flush()
            except OSError as err:
                self._gone(err)

    def _gone(self, err: OSError) -> None:
        self.reader_gone = True
        if not isinstance(err, BrokenPipeError):  # (a reader that left wants no more)
            with contextlib.suppress(OSError, ValueError, AttributeError):
                print(
                    f"warning: cannot write to standard output ({err.strerror or err}): the "
                    "rest of the printed output is dropped; the files are written",
                    file=sys.stderr,
                )
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
