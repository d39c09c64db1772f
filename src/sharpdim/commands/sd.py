"""``sharpdim sd ...``: the sharpness dimension of a small model trained on an offline dataset.

``sharpdim sd compute`` trains an MLP briefly (gradient descent, SGD, momentum or Adam) with
:func:`sharpdim.training.loop.train`, then computes its sharpness dimension (paper Def. 4.2)
with :func:`sharpdim.dimension.sharpness_dimension.sharpness_dimension` and prints a table
(optionally a JSON file).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import typer
from rich.console import Console
from rich.table import Table

from sharpdim.commands._common import (
    activation_option,
    build_data_mlp,
    check_at_least,
    check_train_batch_size,
    check_training_options,
    dataset_option,
    depth_option,
    float64_option,
    json_option,
    kv_table,
    loss_option,
    mlp_data,
    momentum_option,
    optimizer_option,
    prepare_output_file,
    print_line,
    record_diverged,
    seed_option,
    train_batch_size_option,
    train_mlp,
    train_steps_option,
    training_record,
    width_option,
    write_json,
    wrote_line,
)
from sharpdim.curvature.slq import REORTHOGONALIZATIONS
from sharpdim.dimension.sharpness_dimension import METHODS, SDResult, sharpness_dimension
from sharpdim.dynamics.jacobian_spectra import ADAPTIVE_OPTIMIZERS, MOMENTUM_OPTIMIZERS
from sharpdim.errors import SharpdimError

if TYPE_CHECKING:
    from sharpdim.training.loop import TrainConfig

app = typer.Typer(
    help="Sharpness dimension (paper Def. 4.2): exact and SLQ-based estimators.",
    no_args_is_help=True,
)

_TRAIN_TO_SD = {
    "gd": "sgd",
    "sgd": "sgd",
    "momentum": "momentum",
    "nesterov": "nesterov",
    "adam": "adam",
}


def _with_stderr(value: float, stderr: float) -> str:
    """``value +- stderr``, or ``value`` alone when there is no standard error (one batch)."""
    return f"{value:.5f}" if math.isnan(stderr) else f"{value:.5f} +- {stderr:.1e}"


def _table(result: SDResult, extra: dict[str, Any]) -> Table:
    ci = "-" if result.num_bootstrap == 0 else f"[{result.ci_low:.3f}, {result.ci_high:.3f}]"
    rows = [
        ("SD", f"{result.sd:.4f}"),
        ("SD / number of exponents", f"{result.sd_fraction:.4f}"),
        (f"{int(result.confidence * 100)}% bootstrap CI", ci),
        ("j*", f"{result.j_star:.3f}"),
        ("lambda_1 (RDS sharpness)", _with_stderr(result.lambda_1, result.lambda_1_stderr)),
        ("expanding directions", f"{result.num_expanding:.1f}"),
        ("parameters d / exponents", f"{result.num_params} / {result.num_exponents}"),
        ("method / optimizer / lr", f"{result.method} / {result.optimizer} / {result.lr:g}"),
        ("SD wall time (s)", f"{result.wall_time_s:.2f}"),
    ]
    rows += [(k, v if isinstance(v, str) else f"{v:.4g}") for k, v in extra.items()]
    return kv_table("Sharpness dimension", rows)


@app.command("compute")
def compute(
    dataset: str = dataset_option(),
    n_train: int | None = typer.Option(None, help="training examples (dataset default if unset)"),
    width: int = width_option(32),
    depth: int = depth_option(2),
    activation: str = activation_option(),
    loss: str = loss_option(),
    lr: float = typer.Option(0.1, help="step size of training and of the SD's optimizer step"),
    optimizer: str = optimizer_option(),
    momentum: float | None = momentum_option(),
    train_batch_size: int | None = train_batch_size_option(),
    train_steps: int = train_steps_option(),
    method: str = typer.Option("exact", help="exact | slq | kde | ps"),
    batch_size: int = typer.Option(
        64, "--sd-batch-size", "--batch-size", help="minibatch size of the SD's Jacobians"
    ),
    num_batches: int | None = typer.Option(
        None,
        help="minibatches (exact method; and Adam's estimated preconditioner at 0 steps) "
        "\\[default: 10]",
        show_default=False,
    ),
    num_runs: int | None = typer.Option(
        None, help="Lanczos runs (slq/kde/ps) \\[default: 100]", show_default=False
    ),
    num_steps: int | None = typer.Option(
        None, help="Lanczos steps per run (slq/kde/ps) \\[default: 100]", show_default=False
    ),
    reorth: str | None = typer.Option(
        None,
        help="Lanczos reorthogonalization (slq/kde/ps): full (the paper's) | partial | none "
        "\\[default: full]",
        show_default=False,
    ),
    num_bootstrap: int = typer.Option(200, help="bootstrap resamples for the CI (0: none)"),
    max_params: int | None = typer.Option(
        None, help="largest model for method=exact \\[default: 20000]", show_default=False
    ),
    float64: bool = float64_option(),
    seed: int = seed_option("seed of data, model, training and SD sampling"),
    json_out: Path | None = json_option(),
) -> None:
    """Train an MLP briefly, then compute its sharpness dimension and print it."""
    from sharpdim.training.loop import TrainConfig
    from sharpdim.training.losses import get_loss
    from sharpdim.training.optimizers import adam_preconditioner, adam_step

    for flag, value, choices in (
        ("--method", method, METHODS),
        ("--reorth", reorth, (None, *REORTHOGONALIZATIONS)),
    ):
        if value not in choices:
            names = ", ".join(c for c in choices if c is not None)
            raise SharpdimError(f"unknown {flag} {value!r}: use one of {names}")
    dtype = torch.float64 if float64 else torch.float32
    momentum = check_training_options(optimizer, lr, momentum, train_steps, train_batch_size, dtype)
    adam_estimate = _TRAIN_TO_SD.get(optimizer) == "adam" and train_steps == 0
    _refuse_unused_method_options(
        method,
        adam_estimate,
        {"--num-batches": num_batches, "--max-params": max_params},
        {"--num-runs": num_runs, "--num-steps": num_steps, "--reorth": reorth},
    )
    num_batches = 10 if num_batches is None else num_batches
    max_params = 20_000 if max_params is None else max_params
    num_runs = 100 if num_runs is None else num_runs
    num_steps = 100 if num_steps is None else num_steps
    reorth = "full" if reorth is None else reorth
    if optimizer in ("momentum", "nesterov") and momentum == 0:  # (before training, not after)
        raise SharpdimError(
            f"--optimizer {optimizer} with --momentum 0 is plain gradient descent, whose SD the "
            "momentum formula does not give: pass --optimizer gd, or --momentum in (0, 1)"
        )
    check_at_least(num_batches, 1, "--num-batches")
    check_at_least(num_runs, 1, "--num-runs")
    check_at_least(num_steps, 1, "--num-steps")
    check_at_least(num_bootstrap, 0, "--num-bootstrap")
    if num_bootstrap == 1:
        raise SharpdimError(
            "--num-bootstrap 1 gives no interval (one resample): pass 0 (no CI) or e.g. 200"
        )
    check_at_least(max_params, 1, "--max-params")
    data, num_params = mlp_data(
        dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        seed=seed,
        activation=activation,
        dtype=dtype,
        batch_size=batch_size,
        loss=loss,
        batch_flag="--sd-batch-size",
    )
    check_train_batch_size(train_batch_size, data)
    if method == "exact" and num_params > max_params:  # (before building the model)
        raise SharpdimError(
            f"--method exact needs dense Hessians of {num_params:,} parameters, above "
            f"--max-params {max_params:,}: use --method 'slq', 'kde' or 'ps' (or raise "
            "--max-params)"
        )
    model = build_data_mlp(data, width, depth, activation, seed, dtype)
    prepare_output_file(json_out, "--json path")
    config = TrainConfig(
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        batch_size=train_batch_size,
        steps=train_steps,
        loss=loss,
        seed=seed,
    )
    trained, opt, params = train_mlp(model, data, config)
    training = training_record(
        dataset, data, width=width, depth=depth, activation=activation, loss=loss,
        config=config, trained=trained, dtype=dtype,
    )  # fmt: skip
    if trained.diverged:
        record_diverged(trained, training, json_out)
        return
    sd_optimizer = _TRAIN_TO_SD[optimizer]
    pre, adam_t = None, None
    if sd_optimizer in ("adam", "adamw") and train_steps > 0:
        pre = adam_preconditioner(opt, params, bias_correction=False).to(torch.float64)
        adam_t = adam_step(opt, params)
    what = "dense minibatch Hessians" if method == "exact" else "stochastic Lanczos runs"
    with Console().status(f"sharpness dimension ({method}): {what}"):
        result = sharpness_dimension(
            model,
            get_loss(loss),
            data.train_batch(),
            lr,
            method=method,
            optimizer=sd_optimizer,
            num_batches=num_batches,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
            max_params=max_params,
            num_runs=num_runs,
            num_steps=num_steps,
            reorthogonalization=reorth,
            weight_decay=config.weight_decay,
            preconditioner=pre,
            num_bootstrap=num_bootstrap,
            **_hyperparameters(sd_optimizer, momentum, config, adam_t),
        )
    extra: dict[str, Any] = {
        "train loss": trained.final_train_loss,
        "test loss": trained.final_test_loss,
    }
    if trained.final_train_accuracy is not None and trained.final_test_accuracy is not None:
        extra["train / test accuracy"] = (
            f"{trained.final_train_accuracy:.3f} / {trained.final_test_accuracy:.3f}"
        )
    if json_out is not None:  # (before any print: a closed pipe ends the command there)
        write_json(json_out, {"result": result.to_dict(), "training": training}, "--json path")
    Console().print(_table(result, extra))
    if json_out is not None:
        print_line(wrote_line(json_out))


def _hyperparameters(
    sd_optimizer: str, momentum: float, config: TrainConfig, adam_t: int | None
) -> dict[str, Any]:
    """The optional hyperparameters of ``sharpness_dimension`` that ``sd_optimizer`` uses
    (the others are refused there)."""
    if sd_optimizer in MOMENTUM_OPTIMIZERS:
        return {"momentum": momentum}
    if sd_optimizer in ADAPTIVE_OPTIMIZERS:
        return {"betas": config.betas, "adam_eps": config.eps, "step": adam_t}
    return {}


def _refuse_unused_method_options(
    method: str, adam_estimate: bool, exact: dict[str, Any], lanczos: dict[str, Any]
) -> None:
    """Refuse an option given for a method that does not use it (it would be ignored):
    ``exact`` ones with slq/kde/ps (``--num-batches`` is theirs too where Adam's
    preconditioner is estimated, at 0 training steps), ``lanczos`` ones with exact."""
    unused = lanczos if method == "exact" else exact
    for flag, value in unused.items():
        if value is None or (flag == "--num-batches" and adam_estimate):
            continue
        users = "--method slq, kde or ps" if method == "exact" else "--method exact"
        raise SharpdimError(
            f"{flag} {value} is not used by --method {method} and would be ignored: drop it, "
            f"or pass {users}"
        )
