"""`sharpdim sd ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="sd commands.", no_args_is_help=True)
