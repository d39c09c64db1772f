"""Pieces shared by the ``sharpdim`` sub-commands: Typer options, input checks, output.

* option factories for the flags several commands have (``--dataset``, ``--width``,
  ``--depth``, ``--seed``, ``--float64/--float32``, ``--json``); each call makes a fresh
  ``typer.Option`` so a command can pass its own default and help text;
* :func:`parse_floats`: a comma/space separated list of numbers, or a one-line
  :class:`~sharpdim.errors.SharpdimError`;
* :func:`load_mlp_dataset`: :func:`~sharpdim.training.datasets.load_dataset` with the float
  inputs an MLP needs (modular arithmetic one-hot encoded); :func:`mlp_data`: that data and
  the MLP's parameter count, with the model options checked before anything is built or
  trained, and :func:`build_data_mlp` the MLP itself;
* :func:`check_positive_lr`, :func:`check_at_least`, :func:`check_n_train`,
  :func:`check_batch_size`, :func:`check_mlp_size`, :func:`check_exact_sd_size`: option
  checks whose one-line errors name the flag;
  :func:`training_record`: the model/data/training part of a JSON result;
* :func:`parse_output_folder` / :func:`parse_output_file` (``--out``, ``--json`` and ``--png``
  must not be empty), :func:`prepare_output_dir` /
  :func:`prepare_output_file` / :func:`prepare_store_path`: check (and create) where a command
  will write, at its start, so that a bad ``--out``/``--json`` fails before any computing;
  :func:`output_errors`: an ``OSError`` while writing becomes the same one-line error;
* :func:`warnings_as_lines`: warnings printed as one ``warning: ...`` line each;
  :func:`print_line`: a plain line (no markup, no wrapping);
* :func:`jsonable` / :func:`write_json`: strict JSON (NaN/inf become ``null``, tensors and
  tuples lists) written atomically with a trailing newline, parent folders created;
* :func:`kv_table`, :func:`wrote_line`, :func:`print_report`: the two-column rich table and the
  closing "wrote ..." line the commands print;
* :func:`print_reuse`: the lines on runs reused from a store or computed again;
* :func:`progress_bar`: a transient rich progress bar.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import typer
from rich import get_console
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sharpdim.atomic import write_text_atomic
from sharpdim.checks import SEED_RANGE
from sharpdim.dynamics.jacobian_spectra import ADAPTIVE_OPTIMIZERS, MOMENTUM_OPTIMIZERS
from sharpdim.errors import SharpdimError, TooLargeError

if TYPE_CHECKING:
    from sharpdim.runner import ResumableRuns
    from sharpdim.training.datasets import Dataset
    from sharpdim.training.loop import TrainConfig, TrainResult

DATASETS_HELP = "digits | mnist1d | modular (one-hot a, b; p = 97) | teacher_student"


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
    """``--seed``; ``help`` says what it seeds (checked to fit a ``torch.Generator``)."""
    return typer.Option(default, help=help, min=SEED_RANGE[0], max=SEED_RANGE[1])


def float64_option(default: bool = True) -> Any:
    """``--float64/--float32``: the model's dtype."""
    return typer.Option(default, "--float64/--float32", help="model dtype")


def json_option() -> Any:
    """``--json PATH``: optional file for the result as JSON (default: none)."""
    return typer.Option(
        None, "--json", help="write the result as JSON here", parser=parse_output_file
    )


# -- checks ----------------------------------------------------------------------------------
def parse_floats(text: str, what: str) -> list[float]:
    """Numbers separated by commas and/or spaces; ``what`` names the flag in the error.

    An empty item between commas (``'0.2,,0.3'``, a trailing comma) is an error.
    """
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise SharpdimError(
            f"{what} {text!r} is not a list of numbers: use e.g. '0.2,0.3,0.5'"
        ) from None
    if not values:
        raise SharpdimError(f"{what} is empty: give at least one number")
    if any(not item.strip() for item in text.split(",")):
        raise SharpdimError(
            f"{what} {text!r} has an empty item between commas: use e.g. '0.2,0.3,0.5'"
        )
    return values


CLI_DATASETS = ("digits", "mnist1d", "modular", "teacher_student")
"""The ``--dataset`` names (``"idx"`` needs file paths, which only the Python API takes)."""

MAX_N_TRAIN = {
    "digits": 1797 - 297,
    "modular": 97 * 97,
    "mnist1d": 1_000_000,
    "teacher_student": 1_000_000,
}
"""Most ``--n-train`` a dataset holds: digits keeps 297 of its 1,797 images for testing;
modular has ``p^2`` pairs (all of them leave no test set). The generated ones are capped at
a million examples on the command line (generating 10^8 took minutes or ran out of memory;
the Python API generates any size)."""


GENERATED = ("mnist1d", "teacher_student")
"""The datasets generated at the size asked for (capped in :data:`MAX_N_TRAIN`)."""


def check_n_train(dataset: str, n_train: int | None) -> int | None:
    """``n_train`` if ``--dataset`` holds that many training examples, else a one-line error."""
    limit = MAX_N_TRAIN.get(dataset)
    if n_train is not None and limit is not None and n_train > limit:
        if dataset in GENERATED:
            raise SharpdimError(
                f"--n-train {n_train} exceeds the command line's {limit:,} generated examples "
                f"of --dataset {dataset}: pass --n-train <= {limit} (the Python API "
                "generates any size)"
            )
        raise SharpdimError(
            f"--n-train {n_train} exceeds the {limit} training examples of --dataset "
            f"{dataset}: pass --n-train <= {limit}"
        )
    return n_train


def check_batch_size(batch_size: int, num_train: int, flag: str = "--batch-size") -> int:
    """``batch_size`` if at most ``num_train``, else a one-line error naming ``flag``."""
    if batch_size > num_train:
        raise SharpdimError(
            f"{flag} {batch_size} exceeds the {num_train} training examples: pass "
            f"{flag} <= {num_train} (or a larger --n-train)"
        )
    return batch_size


def load_mlp_dataset(
    name: str, *, seed: int, n_train: int | None, dtype: torch.dtype = torch.float32
) -> Dataset:
    """``load_dataset(name, ...)`` with float inputs for an MLP; ``name`` one of :data:`CLI_DATASETS`,
    ``n_train`` within :data:`MAX_N_TRAIN` (both errors name the option).

    Modular arithmetic comes as int64 token inputs by default (for transformers); an MLP needs
    its one-hot encoding ``[onehot(a), onehot(b)]`` (width ``2p``), so that is what it gets.
    """
    from sharpdim.training.datasets import load_dataset

    if name not in CLI_DATASETS:
        idx = (
            ' (your own IDX files: in Python, load_dataset("idx", directory=...) from '
            "sharpdim.training.datasets)"
            if name == "idx"
            else ""
        )
        raise SharpdimError(
            f"--dataset {name!r} is not one the command line can load: pass --dataset "
            f"{', '.join(CLI_DATASETS)}{idx}"
        )
    check_n_train(name, n_train)
    options: dict[str, Any] = {"encoding": "onehot"} if name == "modular" else {}
    return load_dataset(name, seed=seed, n_train=n_train, dtype=dtype, **options)


def build_data_mlp(
    data: Dataset, width: int, depth: int, activation: str, seed: int, dtype: torch.dtype
) -> torch.nn.Sequential:
    """The MLP of the options for ``data``'s inputs and outputs (after :func:`mlp_data`'s
    checks, and any check of its parameter count, so a refused size builds nothing)."""
    from sharpdim.training.models import build_mlp

    return build_mlp(
        data.input_dim,
        data.num_outputs,
        width=width,
        depth=depth,
        activation=activation,
        seed=seed,
        dtype=dtype,
    )


def mlp_data(
    dataset: str,
    *,
    n_train: int | None,
    width: int,
    depth: int,
    seed: int,
    activation: str = "tanh",
    dtype: torch.dtype = torch.float32,
    batch_size: int | None = None,
    loss: str | None = None,
    batch_flag: str = "--batch-size",
) -> tuple[Dataset, int]:
    """Check ``--n-train``, ``--width``, ``--depth``, ``--activation``, ``--batch-size`` and
    ``--loss`` (against the data: cross-entropy needs classes); the data and the MLP's
    parameter count, without building it.

    Cheap, so commands call it before any training. ``batch_size=None`` and ``loss=None`` are
    not checked; ``batch_flag`` is the option that sets ``batch_size``.
    """
    from sharpdim.training.losses import LOSSES
    from sharpdim.training.models import ACTIVATIONS

    if activation not in ACTIVATIONS:
        raise SharpdimError(
            f"unknown --activation {activation!r}: use one of {', '.join(ACTIVATIONS)}"
        )
    if loss is not None and loss not in LOSSES:
        raise SharpdimError(f"unknown --loss {loss!r}: use one of mse, ce")
    if n_train is not None:
        check_at_least(n_train, 1, "--n-train")
    check_at_least(width, 1, "--width")
    check_at_least(depth, 0, "--depth")
    if batch_size is not None:
        check_at_least(batch_size, 1, batch_flag)
    data = load_mlp_dataset(dataset, seed=seed, n_train=n_train, dtype=dtype)
    if loss is not None and loss != "mse" and not data.num_classes:
        raise SharpdimError(
            f"--loss {loss} needs class labels and --dataset {dataset} is a regression: pass "
            "--loss mse"
        )
    if batch_size is not None:
        check_batch_size(batch_size, data.num_train, batch_flag)
    return data, check_mlp_size(data.input_dim, data.num_outputs, width, depth)


MAX_MLP_PARAMS = 100_000_000
"""Largest MLP the commands build (400 MB of float32 parameters before any curvature)."""

MAX_MLP_DEPTH = 1_000
"""Most hidden layers the commands build (building 50,000 layers took 15 s and 0.5 GB, of
width 1 and a handful of parameters each)."""


def mlp_num_params(input_dim: int, outputs: int, width: int, depth: int) -> int:
    """The parameter count of ``build_mlp(input_dim, outputs, width, depth)`` (with biases)."""
    fan_in = width if depth else input_dim  # of the output layer
    params = fan_in * outputs + outputs
    if depth:
        params += input_dim * width + width + (depth - 1) * (width * width + width)
    return params


def check_mlp_size(input_dim: int, outputs: int, width: int, depth: int) -> int:
    """:func:`mlp_num_params`; a one-line error naming ``--width``/``--depth`` above
    :data:`MAX_MLP_PARAMS`, or ``--depth`` above :data:`MAX_MLP_DEPTH`."""
    if depth > MAX_MLP_DEPTH:
        raise SharpdimError(
            f"--depth {depth} is above the {MAX_MLP_DEPTH:,} hidden layers the commands build: "
            "use a smaller --depth"
        )
    params = mlp_num_params(input_dim, outputs, width, depth)
    if params > MAX_MLP_PARAMS:
        raise SharpdimError(
            f"--width {width} and --depth {depth} give an MLP of {params:,} parameters, more "
            f"than {MAX_MLP_PARAMS:,}: use a smaller --width or --depth"
        )
    return params


def check_exact_sd_size(num_params: int, fix: str) -> int:
    """``num_params`` if the exact sharpness dimension takes a model that size (its dense
    Hessians: :data:`~sharpdim.curvature.dense.DENSE_LIMIT` parameters at most), else a one-line
    error ending in ``fix`` (the options to change)."""
    from sharpdim.curvature.dense import DENSE_LIMIT

    if num_params > DENSE_LIMIT:
        raise TooLargeError(
            f"the MLP has {num_params:,} parameters, more than the {DENSE_LIMIT:,} the exact "
            f"sharpness dimension (dense Hessians) takes: {fix}"
        )
    return num_params


def check_finite(value: float, flag: str, *, low: float | None = None, example: str) -> float:
    """``value`` if finite (and ``>= low`` when given), else a one-line error naming ``flag``."""
    if not math.isfinite(value) or (low is not None and value < low):
        bound = "a finite number" if low is None else f"a finite number >= {low:g}"
        raise SharpdimError(f"{flag} must be {bound}, got {value}: pass e.g. {flag} {example}")
    return value


def check_fraction(value: float, flag: str, example: str) -> float:
    """``value`` if in ``[0, 1)``, else a one-line error naming ``flag``."""
    if not 0 <= value < 1:
        raise SharpdimError(f"{flag} must be in [0, 1), got {value}: pass e.g. {flag} {example}")
    return value


def check_positive_lr(
    lr: float, flag: str = "--lr", example: str = "0.1", dtype: torch.dtype | None = None
) -> float:
    """``lr`` if it is a finite number > 0 (that fits ``dtype``, when given), else a one-line
    error naming ``flag``."""
    if not (math.isfinite(lr) and lr > 0):
        raise SharpdimError(
            f"{flag} must be a positive finite number, got {lr}: pass e.g. {flag} {example}"
        )
    if dtype is not None and lr > torch.finfo(dtype).max:
        raise SharpdimError(
            f"{flag} {lr:g} does not fit in the model's {str(dtype).removeprefix('torch.')} "
            f"(largest {torch.finfo(dtype).max:.3g}): pass e.g. {flag} {example}"
        )
    return lr


def check_finite_threshold(flag: str, optimizer: str, lr: float, **hyper: Any) -> None:
    """A one-line error naming ``flag`` when step size ``lr`` puts ``optimizer``'s stability
    threshold (with ``hyper``: momentum, betas) at inf: a subnormal ``lr`` such as 1e-320,
    which otherwise trained and reported a threshold of inf and a ratio of 0."""
    from sharpdim.training.optimizers import stability_threshold

    threshold = stability_threshold(optimizer, lr, **hyper)
    if not math.isfinite(threshold):
        raise SharpdimError(
            f"{flag} {lr:g} puts the {optimizer} stability threshold at {threshold}: pass a "
            "step size whose threshold is a finite number, e.g. 1e-3"
        )


def check_at_least(value: int, minimum: int, flag: str) -> int:
    """``value`` if it is ``>= minimum``, else a one-line error naming ``flag``."""
    if value < minimum:
        raise SharpdimError(
            f"{flag} must be >= {minimum}, got {value}: pass {flag} {minimum} or more"
        )
    return value


def training_record(
    dataset: str,
    data: Dataset,
    *,
    width: int,
    depth: int,
    activation: str,
    loss: str,
    config: TrainConfig,
    trained: TrainResult,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """What a command's JSON records about the model, the data and the training run (the
    optimizer's hyperparameters only where its step uses them)."""
    unused = set() if config.optimizer in MOMENTUM_OPTIMIZERS else {"momentum"}
    unused |= set() if config.optimizer in ADAPTIVE_OPTIMIZERS else {"betas", "eps"}
    return {
        "dataset": dataset,
        "n_train": data.num_train,
        "n_test": data.num_test,
        "width": width,
        "depth": depth,
        "activation": activation,
        **({} if dtype is None else {"dtype": str(dtype).removeprefix("torch.")}),
        "loss": loss,
        **{k: v for k, v in config.to_dict().items() if k not in unused},
        "final_train_loss": trained.final_train_loss,
        "final_test_loss": trained.final_test_loss,
        "final_train_accuracy": trained.final_train_accuracy,
        "final_test_accuracy": trained.final_test_accuracy,
    }


TRAIN_OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "adam")
# (no adamw: it differs from adam only by a weight decay, which these commands do not set)
"""The ``--optimizer`` choices of the commands that train an MLP before measuring it."""


def activation_option() -> Any:
    """``--activation``: the MLP's hidden nonlinearity."""
    return typer.Option("tanh", help="tanh | relu | gelu")


def loss_option() -> Any:
    """``--loss``: the training loss (and the loss whose Hessian is measured)."""
    return typer.Option("mse", help="mse | ce")


def optimizer_option() -> Any:
    """``--optimizer``: one of :data:`TRAIN_OPTIMIZERS`."""
    return typer.Option("gd", help=" | ".join(TRAIN_OPTIMIZERS))


def momentum_option() -> Any:
    """``--momentum``: heavy-ball / Nesterov momentum (default 0.9; refused with another
    optimizer by :func:`check_training_options`)."""
    return typer.Option(
        None,
        help="momentum of --optimizer momentum / nesterov, in [0, 1) (Nesterov, and sd "
        "compute, where 0 would be plain gd: in (0, 1)); default 0.9",
        show_default=False,
    )


def train_batch_size_option() -> Any:
    """``--train-batch-size``: the training minibatch (default: full batch)."""
    return typer.Option(None, help="training minibatch (default: full batch)")


def train_steps_option(default: int = 200) -> Any:
    """``--train-steps``: optimizer steps before measuring."""
    return typer.Option(default, help="training steps before measuring")


def check_training_options(
    optimizer: str,
    lr: float,
    momentum: float | None,
    train_steps: int,
    train_batch_size: int | None,
    dtype: torch.dtype,
) -> float:
    """One-line errors naming the flag for the training options of :func:`train_mlp` (the
    model in ``dtype``); the momentum to train with (0.9 when ``--momentum`` was not given). A
    ``--momentum`` given with an optimizer that has none, or a ``--train-batch-size`` with no
    training steps, is refused: it would be ignored."""
    if optimizer == "adamw":  # (it trained exactly as adam: the decay was 0)
        raise SharpdimError(
            "--optimizer adamw differs from adam only by its weight decay, which the command "
            "line does not set: pass --optimizer adam, or train with TrainConfig(optimizer="
            "'adamw', weight_decay=...) in Python"
        )
    if optimizer not in TRAIN_OPTIMIZERS:
        raise SharpdimError(
            f"unknown --optimizer {optimizer!r}: use one of {', '.join(TRAIN_OPTIMIZERS)}"
        )
    check_positive_lr(lr, dtype=dtype)
    if momentum is not None and optimizer not in MOMENTUM_OPTIMIZERS:
        raise SharpdimError(
            f"--momentum {momentum:g} is not used by --optimizer {optimizer} and would be "
            "ignored: drop it, or pass --optimizer momentum or nesterov"
        )
    momentum = 0.9 if momentum is None else momentum
    check_fraction(momentum, "--momentum", "0.9")
    if optimizer == "nesterov" and momentum == 0:
        raise SharpdimError(
            "--optimizer nesterov needs --momentum in (0, 1) (torch's Nesterov step has no "
            "momentum-0 form): pass e.g. --momentum 0.9, or --optimizer gd"
        )
    check_finite_threshold("--lr", optimizer, lr, momentum=momentum)
    check_at_least(train_steps, 0, "--train-steps")
    if train_batch_size is not None:
        check_at_least(train_batch_size, 1, "--train-batch-size")
        if train_steps == 0:  # (recorded in the JSON as if it had trained)
            raise SharpdimError(
                f"--train-batch-size {train_batch_size} is not used with --train-steps 0 and "
                "would be ignored: drop it, or pass --train-steps > 0"
            )
    return momentum


def check_train_batch_size(train_batch_size: int | None, data: Dataset) -> None:
    """A one-line error if ``--train-batch-size`` exceeds the training set."""
    if train_batch_size is not None and train_batch_size > data.num_train:
        raise SharpdimError(
            f"--train-batch-size {train_batch_size} exceeds the {data.num_train} training "
            f"examples: pass --train-batch-size <= {data.num_train} or omit it (full batch)"
        )


def train_mlp(
    model: torch.nn.Module, data: Dataset, config: TrainConfig
) -> tuple[TrainResult, torch.optim.Optimizer, list[torch.nn.Parameter]]:
    """Train ``model`` on ``data`` with ``config`` (with a progress bar); ``(result, optimizer,
    trained params)``. A diverged run comes back too (``result.diverged``): the caller records
    it with :func:`record_diverged`.
    """
    from sharpdim.training.loop import train

    params = [p for p in model.parameters() if p.requires_grad]
    opt = config.make_optimizer(params)
    trained = train(model, data, config, optimizer=opt, progress=True)
    return trained, opt, params


def remove_stale(paths: Iterable[Path], flag: str) -> None:
    """Remove earlier versions of the files ``paths`` (missing ones are fine)."""
    for stale in paths:
        with output_errors(stale, flag):
            Path(stale).unlink(missing_ok=True)


def record_diverged(
    trained: TrainResult,
    training: dict[str, Any],
    json_out: Path | None,
    flag: str = "--json path",
    *,
    replaces: Iterable[Path] = (),
    extra: dict[str, Any] | None = None,
) -> None:
    """A run whose training diverged is a recorded outcome: nothing is measured, one line
    says so, and the JSON (when asked for) holds ``{**extra, "status": "diverged",
    "diverged_at", "training"}`` (``replaces``: see :func:`write_json`). The command then
    exits with 0."""
    remove_stale(replaces, flag)
    if json_out is not None:
        payload = {
            **(extra or {}),
            "status": "diverged",
            "diverged_at": trained.diverged_at,
            "training": training,
        }
        write_json(json_out, payload, flag)
    where = f"; recorded in {json_out}" if json_out is not None else ""
    print_line(
        f"training diverged at step {trained.diverged_at} (the loss blew up or became "
        f"non-finite): nothing is measured; lower --lr{where}"
    )


# -- output locations ------------------------------------------------------------------------
def _cannot_write(path: Path | str, reason: str, flag: str) -> SharpdimError:
    return SharpdimError(f"cannot write {path} ({reason}): choose a writable {flag}")


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _dir_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (created with its parents), or ``None``.

    Creates the folder if needed and writes and deletes a scratch file in it.
    """
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:  # (a link to a folder not made yet: its target made, mkdir said "File exists")
        Path(os.path.realpath(folder)).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"cannot create folder {err.filename or folder}: {_reason(err)}"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot create files in {folder}: {_reason(err)}"
    return None


def parse_output_folder(value: str | Path) -> Path:
    """The ``--out`` folder as a ``Path``; an empty value is an error (it would mean ``.``).

    Typer's ``parser=`` for the option, so it sees the text as typed.
    """
    if not str(value).strip():
        raise typer.BadParameter("it is empty: name a folder, e.g. --out results")
    return Path(value)


def parse_output_file(value: str | Path) -> Path:
    """A ``--json``/``--png`` file as a ``Path``; an empty value is an error (it would mean
    ``.``, reported as a folder the user never named). Typer's ``parser=`` for the option."""
    if not str(value).strip():
        raise typer.BadParameter("it is empty: name the file to write")
    if str(value).endswith(("/", os.sep)):  # (Path drops the slash: a file of that name)
        raise typer.BadParameter(f"{value} names a folder (it ends in /): name the file to write")
    return Path(value)


def prepare_output_dir(folder: Path, flag: str = "--out", files: Iterable[str] = ()) -> Path:
    """Make sure the command can write files into ``folder``; call it before any work.

    Creates ``folder`` and its parents and checks that a file can be written there, and
    that each of ``files`` (names in ``folder``) can be (:func:`prepare_output_file`).

    Raises:
        SharpdimError: one line ``cannot write FOLDER (reason): choose a writable FLAG``.
    """
    with output_errors(folder, flag):  # (a name too long: Path.exists raises, 3.11)
        problem = _dir_problem(folder)
    if problem is not None:
        raise _cannot_write(folder, problem, flag)
    for name in files:
        prepare_output_file(folder / name, flag)
    return folder


def prepare_output_file(path: Path | None, flag: str = "--json") -> Path | None:
    """Make sure the command can write the file ``path`` (``None``: nothing to check).

    ``path`` must not be a folder, device, pipe or socket; its parent folder is created if
    needed and must be writable; an existing file must be writable (it is left unchanged).

    Raises:
        SharpdimError: one line ``cannot write PATH (reason): choose a writable FLAG``.
    """
    if path is None:
        return None
    with output_errors(path, flag):  # (a name too long: Path.is_dir raises, 3.11)
        if path.is_dir():
            raise _cannot_write(path, "it is a folder", flag)
        if path.exists() and not path.is_file():  # a device or pipe: replaced by a file
            raise _cannot_write(path, "it is not a regular file (a device, pipe or socket)", flag)
        # (the folder atomic_path writes in: a symbolic link's target's, checked now, not
        # after the work as it was for a link to a file not made yet)
        problem = _dir_problem(
            Path(os.path.realpath(path)).parent if path.is_symlink() else path.parent
        )
        if problem is not None:
            raise _cannot_write(path, problem, flag)
        if path.exists() and not os.access(path, os.W_OK):
            raise _cannot_write(path, "permission denied", flag)
    return path


def prepare_store_path(folder: Path, name: str = "runs.sqlite") -> Path:
    """``folder / name``, the results store of a resumable command; refuses a folder, a device
    or pipe, or a read-only file there (before any run is computed).

    Raises:
        SharpdimError: one line naming the path and ``--out``.
    """
    path = folder / name
    with output_errors(path, "--out folder"):
        if path.is_dir():
            raise SharpdimError(
                f"cannot use {path} as the results store (it is a folder): choose another "
                f"--out folder or move {path} away"
            )
        if path.exists() and not path.is_file():  # SQLite would write its journal beside it
            raise SharpdimError(
                f"cannot use {path} as the results store (it is a device or pipe, not a "
                f"file): choose another --out folder or move {path} away"
            )
        if path.exists() and not os.access(path, os.W_OK):
            raise _cannot_write(path, "the file is read-only", "--out folder")
    return path


_STORE_REMEDIES = (
    "choose another path",
    "a new path",
    "choose a writable file path",
    "choose a path on another disk",
    "choose a file path such as runs.sqlite",
)
"""The ends of :class:`~sharpdim.runner.ResultsStore`'s refusals that name its path as the
user's choice; on the command line that choice is ``--out``."""


def open_run_store(path: Path) -> Any:
    """The :class:`~sharpdim.runner.ResultsStore` at ``path`` (from :func:`prepare_store_path`);
    its refusals name ``--out``, through which the user picks the path (the store's own
    messages end in "choose another path" or "a new path")."""
    from sharpdim.runner import ResultsStore

    try:
        return ResultsStore(path)
    except SharpdimError as exc:
        message = str(exc)
        for tail in _STORE_REMEDIES:
            if message.endswith(tail):
                raise SharpdimError(
                    message.removesuffix(tail) + "choose another --out folder"
                ) from None
        raise


@contextmanager
def output_errors(path: Path, flag: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block (writing under ``path``) into one line."""
    try:
        yield
    except OSError as err:
        raise _cannot_write(err.filename or path, _reason(err), flag) from None


@contextmanager
def warnings_as_lines() -> Iterator[None]:
    """Print each warning raised inside the block as one line ``warning: message`` on stderr
    (instead of Python's two lines pointing into the library)."""

    def show(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(OSError):  # (a closed pipe loses the line, not the run;
            # Python's own showwarning does the same)
            print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


# -- JSON ------------------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """JSON-safe values: NaN/inf floats become ``None``, tensors, numpy arrays and scalars and
    tuples plain lists and numbers, keys strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        return jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json(
    path: Path, payload: Any, flag: str = "--out/--json", *, replaces: Iterable[Path] = ()
) -> Path:
    """Write ``jsonable(payload)`` as strict, indented JSON to ``path`` atomically; return it.

    ``replaces``: the files that will be written from the same results after it (figures,
    reports); any earlier version of them is removed first, so a command interrupted between
    its files never leaves this JSON beside figures of another run. An ``OSError`` becomes the
    one-line error of :func:`output_errors` naming ``flag``.
    """
    text = json.dumps(jsonable(payload), indent=2, allow_nan=False) + "\n"
    remove_stale(replaces, flag)
    with output_errors(path, flag):
        write_text_atomic(path, text)
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


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped: a path holding a newline split a message."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def progress_hidden() -> bool:
    """Whether a live progress bar would not show (neither a terminal nor a notebook): on a
    pipe it only left a blank first line."""
    console = get_console()
    return not (console.is_terminal or console.is_jupyter)


def wrote_line(*paths: Path, seconds: float | None = None) -> str:
    """``"wrote a and b"``, with ``" (12.3 s)"`` appended when ``seconds`` is given."""
    line = one_line("wrote " + " and ".join(str(p) for p in paths))
    return line if seconds is None else f"{line} ({seconds:.1f} s)"


def print_report(shown: RenderableType, *paths: Path, seconds: float | None = None) -> None:
    """Print ``shown`` (a table or a line), then :func:`wrote_line` of ``paths``."""
    if isinstance(shown, str):
        print_line(shown)
    else:
        Console().print(shown)
    print_line(wrote_line(*paths, seconds=seconds))


def print_line(text: str) -> None:
    """Print ``text`` as is: no rich markup (paths may hold ``[...]``) and one line in a pipe."""
    Console().print(text, markup=False, soft_wrap=True)


def print_reuse(runs: ResumableRuns[Any], total: int, what: str, store: Path) -> None:
    """The lines a resumed command prints about ``runs``: how many of ``total`` ``what``
    (``"runs"``) came from ``store``, and how many were computed again because the stored
    ones of the same settings come from other code."""
    if runs.reused:
        print_line(f"reused {runs.reused} of {total} {what} stored in {store}")
    if runs.other_code:
        versions = ", ".join(sorted({v for found in runs.other_code for v in found}))
        print_line(
            f"computed {len(runs.other_code)} of {total} {what} again: {store} holds them from "
            f"other code (sharpdim {versions}), whose numbers may differ; the stored ones are kept"
        )


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A transient rich progress bar; yields ``update(completed)``."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=progress_hidden(),
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda done: progress.update(task, completed=done)
