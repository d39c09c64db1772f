"""Pieces shared by the ``sharpdim`` sub-commands: Typer options, input checks, output.

* option factories for the flags several commands have (``--dataset``, ``--width``,
  ``--depth``, ``--seed``, ``--float64/--float32``, ``--json``); each call makes a fresh
  ``typer.Option`` so a command can pass its own default and help text;
* :func:`parse_floats`: a comma/space separated list of numbers, or a one-line
  :class:`~sharpdim.errors.SharpdimError`;
* :func:`jsonable` / :func:`write_json`: strict JSON (NaN/inf become ``null``, tensors and
  tuples lists) written with a trailing newline, parent folders created;
* :func:`kv_table`, :func:`wrote_line`, :func:`print_report`: the two-column rich table and the
  closing "wrote ..." line the commands print;
* :func:`progress_bar`: a transient rich progress bar.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sharpdim.errors import SharpdimError

DATASETS_HELP = "digits | mnist1d | modular | teacher_student"


# -- options ---------------------------------------------------------------------------------
def dataset_option(default: str = "digits", help: str = DATASETS_HELP) -> Any:
    """``--dataset``: a name of :func:`sharpdim.training.datasets.load_dataset`."""
    return typer.Option(default, help=help)


def width_option(default: int, help: str = "MLP hidden width") -> Any:
    """``--width``: hidden width of the MLP."""
    return typer.Option(default, help=help)


def depth_option(default: int, help: str = "MLP hidden layers") -> Any:
    """``--depth``: number of hidden layers of the MLP."""
    return typer.Option(default, help=help)


def seed_option(help: str, default: int = 0) -> Any:
    """``--seed``; ``help`` says what it seeds."""
    return typer.Option(default, help=help)


def float64_option(default: bool = True) -> Any:
    """``--float64/--float32``: the model's dtype."""
    return typer.Option(default, "--float64/--float32", help="model dtype")


def json_option() -> Any:
    """``--json PATH``: optional file for the result as JSON (default: none)."""
    return typer.Option(None, "--json", help="write the result as JSON here")


# -- checks ----------------------------------------------------------------------------------
def parse_floats(text: str, what: str) -> list[float]:
    """Numbers separated by commas and/or spaces; ``what`` names the flag in the error."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise SharpdimError(
            f"{what} {text!r} is not a list of numbers: use e.g. '0.2,0.3,0.5'"
        ) from None
    if not values:
        raise SharpdimError(f"{what} is empty: give at least one number")
    return values


# -- JSON ------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """JSON-safe values: NaN/inf floats become ``None``, tensors and tuples lists, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(path: Path, payload: Any) -> Path:
    """Write ``jsonable(payload)`` as strict, indented JSON to ``path``; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path


# -- printing --------------------------------------------------------------------------------
def kv_table(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    """A rich table with a ``quantity`` column and a right-aligned ``value`` column."""
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def wrote_line(*paths: Path, seconds: float | None = None) -> str:
    """``"wrote a and b"``, with ``" (12.3 s)"`` appended when ``seconds`` is given."""
    line = "wrote " + " and ".join(str(p) for p in paths)
    return line if seconds is None else f"{line} ({seconds:.1f} s)"


def print_report(shown: RenderableType, *paths: Path, seconds: float | None = None) -> None:
    """Print ``shown`` (a table or a line), then :func:`wrote_line` of ``paths``."""
    console = Console()
    console.print(shown)
    console.print(wrote_line(*paths, seconds=seconds))


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar; yields ``update(completed)``."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda done: progress.update(task, completed=done)
