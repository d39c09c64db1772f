"""The ``sharpdim`` console script: load the CLI and run it.

Kept apart from :mod:`sharpdim.cli` so that Ctrl-C while torch and the commands are still
loading is answered like Ctrl-C later (one line, exit code 130) instead of a traceback.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED_WHILE_LOADING = "error: interrupted while starting: rerun the command"


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM (``timeout``, ``kill``, Slurm) handled as Ctrl-C is: the command's cleanup runs
    (no temporary file is left beside an output) and it exits 130 with one line."""
    raise KeyboardInterrupt


def run() -> None:
    """Entry point of the ``sharpdim`` command (keeps heap pages mapped: see
    :mod:`sharpdim.allocator`)."""
    if sys.stderr is None:  # (started with stderr closed: print(file=None) wrote to stdout)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open for the whole run)
    try:
        from sharpdim.allocator import tune_allocator

        tune_allocator()
        from sharpdim.cli import main

        # (after loading: raised inside torch's own imports, a SIGTERM was swallowed or gave
        # a traceback; during loading it ends the process as it always did)
        signal.signal(signal.SIGTERM, _terminated)
    except KeyboardInterrupt:
        print(INTERRUPTED_WHILE_LOADING, file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
