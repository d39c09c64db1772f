"""`sharpdim eos ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="eos commands.", no_args_is_help=True)
