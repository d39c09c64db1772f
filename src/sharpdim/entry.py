"""The ``sharpdim`` console script: load the CLI and run it.

Kept apart from :mod:`sharpdim.cli` so that Ctrl-C while torch and the commands are still
loading is answered like Ctrl-C later (one line, exit code 130) instead of a traceback.
"""

from __future__ import annotations

import sys

INTERRUPTED_WHILE_LOADING = "error: interrupted while starting: rerun the command"


def run() -> None:
    """Entry point of the ``sharpdim`` command (keeps heap pages mapped: see
    :mod:`sharpdim.allocator`)."""
    try:
        from sharpdim.allocator import tune_allocator

        tune_allocator()
        from sharpdim.cli import main
    except KeyboardInterrupt:
        print(INTERRUPTED_WHILE_LOADING, file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
