"""The ``sharpdim`` command line: parse, call the library, store and report.

Bad input (a :class:`sharpdim.errors.SharpdimError`) prints one line and exits with code 2,
without a traceback.
"""

from __future__ import annotations

import sys

import typer

from sharpdim.commands import chaos, demo, eos, sd
from sharpdim.errors import SharpdimError

app = typer.Typer(
    name="sharpdim",
    help="Training at the edge of stability: Hessian spectra, sharpness dimension, chaos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("demo")(demo.demo)
app.add_typer(sd.app, name="sd")
app.add_typer(eos.app, name="eos")
app.add_typer(chaos.app, name="chaos")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 bad input)."""
    try:
        app(args=argv, prog_name="sharpdim", standalone_mode=False)
    except SharpdimError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except typer.Exit as ex:
        return int(ex.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except Exception as err:  # click usage errors carry their own exit code (2)
        show = getattr(err, "show", None)
        code = getattr(err, "exit_code", None)
        if show is None or code is None:
            raise
        show()
        return int(code)
    return 0


def run() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
