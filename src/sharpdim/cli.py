"""The ``sharpdim`` command line: parse, call the library, store and report.

Bad input (a :class:`sharpdim.errors.SharpdimError` or a usage error: unknown option or
command, an option value of the wrong type or out of range) prints one line
``error: what is wrong: what to do`` on stderr and exits with code 2, without a traceback.
Ctrl-C (SIGINT) prints one line and exits with code 130. ``--help`` exits with code 0; a
group called without a command prints its help and exits with code 2.
"""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

import typer

from sharpdim.commands import chaos, demo, eos, sd, spectrum
from sharpdim.commands._common import one_line, warnings_as_lines
from sharpdim.commands.closed_pipe import pipe_safe_stdout
from sharpdim.errors import SharpdimError


def help_text(command: Callable[..., Any]) -> str:
    """A command's docstring with each paragraph on one line, for ``--help``.

    typer's rich help keeps the single line breaks of every paragraph but the first, and then
    wraps each line again to the terminal, which leaves ragged half-empty lines.
    """
    paragraphs = inspect.cleandoc(command.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


app = typer.Typer(
    name="sharpdim",
    help="Training at the edge of stability: Hessian spectra, sharpness dimension, chaos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("demo", help=help_text(demo.demo))(demo.demo)
app.command("spectrum", help=help_text(spectrum.spectrum))(spectrum.spectrum)
app.add_typer(sd.app, name="sd")
app.add_typer(eos.app, name="eos")
app.add_typer(chaos.app, name="chaos")

#: exit code of a command stopped by Ctrl-C (128 + SIGINT, the shell convention)
INTERRUPTED = 130
INTERRUPTED_LINE = (
    "error: interrupted before the command finished (results not written yet are lost): "
    "rerun the same command; eos sharpening/thresholds and chaos compare resume from their "
    "finished runs, other commands start over"
)


def _is_a(err: BaseException, class_name: str) -> bool:
    # typer >= 0.2x vendors click (typer._click) and older typer uses click itself: match the
    # exception classes by name so that both work
    return any(cls.__name__ == class_name for cls in type(err).__mro__)


def command_path(argv: list[str]) -> str:
    """The command that ``argv`` calls, e.g. ``sharpdim eos minimalist``: its leading words
    that name commands."""
    command: Any = typer.main.get_command(app)
    names = ["sharpdim"]
    for word in argv:
        command = getattr(command, "commands", {}).get(word)
        if command is None:
            break
        names.append(word)
    return " ".join(names)


def usage_error_line(err: Any, argv: list[str] | None = None) -> str:
    """``error: {message}: see '{command path} --help'`` on one line, for a click usage error.

    The command is the error's own or, for an error click raises without one (an option
    missing its value), the one ``argv`` (default: the process's arguments) calls.
    """
    message = " ".join(str(err.format_message()).split()).rstrip(".")
    ctx = getattr(err, "ctx", None)
    if ctx is not None:
        path = ctx.command_path
    else:
        path = command_path(sys.argv[1:] if argv is None else argv)
    return f"error: {message}: see '{path} --help'"


def _stderr_line(line: str) -> None:
    """Print ``line`` to stderr, as one line (a path holding a newline is shown escaped); a
    closed pipe loses the line, not the exit code."""
    with contextlib.suppress(OSError):
        print(one_line(line), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 bad input, 130 interrupted)."""
    try:
        # non-standalone typer returns the command's value (None) or, for typer.Exit and for
        # Ctrl-C (which it turns into Exit(130)), the exit code
        with warnings_as_lines(), pipe_safe_stdout():  # one "warning: ..." line each, as
            # errors are; a reader that closes the pipe early loses lines, not files
            code = app(args=argv, prog_name="sharpdim", standalone_mode=False)
    except KeyboardInterrupt:  # an interrupt that typer did not catch
        code = INTERRUPTED
    except SharpdimError as err:
        _stderr_line(f"error: {err}")
        return 2
    except typer.Exit as ex:
        return int(ex.exit_code)
    except typer.Abort:
        _stderr_line("error: aborted (end of input): rerun the command")
        return 1
    except Exception as err:
        exit_code = getattr(err, "exit_code", None)
        if not isinstance(exit_code, int) or not hasattr(err, "format_message"):
            raise
        if _is_a(err, "NoArgsIsHelpError"):  # a group called without a command: its help,
            help_text = err.format_message()  # which typer with rich has printed already
            if help_text.strip():
                print(help_text)
        elif _is_a(err, "UsageError"):  # unknown option/command, bad or out-of-range value
            _stderr_line(usage_error_line(err, argv))
        else:  # another click exception
            _stderr_line(f"error: {' '.join(str(err.format_message()).split())}")
        return exit_code
    if code == INTERRUPTED:
        _stderr_line(INTERRUPTED_LINE)
    return code if isinstance(code, int) else 0


def run() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
