"""``sharpdim chaos ...``: Lyapunov spectra, divergence and trajectory geometry of training.

* ``sharpdim chaos lyapunov``: train a small MLP, then the top-k Lyapunov spectrum of the real
  optimizer step at the end of training (:func:`sharpdim.dynamics.lyapunov.lyapunov_spectrum`
  on a :class:`~sharpdim.dynamics.step_maps.TrainingMap`).
* ``sharpdim chaos compare``: the same MLP trained at the edge of stability and well below it;
  for each run the largest Lyapunov exponent (also as mean and standard error over ``--seeds``
  independent runs), the divergence rate of two runs ``delta`` apart
  (same batches), the Kaplan–Yorke dimension of the top-k spectrum, the sharpness dimension,
  the PH0 dimension (Euclidean and loss pseudo-metric) and ``E_1`` of the last iterates; a
  table, a JSON file and a figure. A case whose training diverges is recorded as such
  (``status`` ``"diverged"``, ``diverged_at``, NaN measures) and the other case still runs; one
  whose Lyapunov orbit diverges after training gets ``status`` ``"orbit_diverged"`` and
  ``orbit_diverged_at`` (its exponents average the steps completed), with a printed warning.
  Each finished case is stored in ``<out>/runs.sqlite`` (:mod:`sharpdim.runner`), so a rerun
  of a killed comparison reuses it.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sharpdim.checks import SEED_RANGE
from sharpdim.commands._common import (
    check_at_least,
    check_exact_sd_size,
    check_finite_threshold,
    check_positive_lr,
    dataset_option,
    depth_option,
    json_option,
    mlp_data,
    open_run_store,
    output_errors,
    parse_output_folder,
    prepare_output_dir,
    prepare_output_file,
    prepare_store_path,
    print_line,
    print_reuse,
    progress_hidden,
    record_diverged,
    seed_option,
    training_record,
    width_option,
    write_json,
    wrote_line,
)
from sharpdim.commands.chaos_cases import decode_case, run_case, seeds_in_mean
from sharpdim.errors import SharpdimError

if TYPE_CHECKING:
    from sharpdim.training.datasets import Dataset

app = typer.Typer(
    help="Chaos and trajectory geometry: Lyapunov spectra, divergence, PH0 dimension, E_alpha.",
    no_args_is_help=True,
)


#: smallest trajectory the PH0 dimension fits (its default subsample sizes start at 10)
MIN_TRAJECTORY_POINTS = 11


def _check_model_options(
    *, dataset: str, n_train: int, width: int, depth: int, batch_size: int | None, k: int, seed: int
) -> tuple[Dataset, int]:
    """Check the model options and ``--k`` before any training (nothing built); the data and
    the parameter count."""
    check_at_least(k, 1, "--k")
    data, d = mlp_data(
        dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        seed=seed,
        dtype=torch.float64,
        batch_size=batch_size,
        batch_flag="--train-batch-size",
    )
    if k > d:
        raise SharpdimError(f"--k {k} exceeds the {d} parameters of the MLP: pass --k <= {d}")
    return data, d


_ROWS = [
    ("status", "status"),
    ("sharpness (full batch)", "sharpness_full_batch"),
    ("2 / lr", "threshold_2_over_lr"),
    ("largest Lyapunov exponent", "largest_lyapunov"),
    ("  its stderr (time blocks)", "largest_lyapunov_stderr"),
    ("  mean over seeds", "largest_lyapunov_seed_mean"),
    ("  its stderr (over seeds)", "largest_lyapunov_seed_stderr"),
    ("  seeds in that mean", "seeds_in_mean"),
    ("divergence rate (per step)", "divergence_rate"),
    ("Kaplan-Yorke dim. of top-k", "kaplan_yorke_top_k"),
    ("sharpness dimension (SD)", "sd"),
    ("PH0 dimension (Euclidean)", "ph0_dimension"),
    ("PH0 dimension (loss metric)", "ph0_dimension_loss"),
    ("E_1 (Euclidean)", "e1"),
    ("E_1 (loss metric)", "e1_loss"),
    ("train / test loss", None),
    ("wall time (s)", "wall_time_s"),
]


def _orbit_warning(diverged_at: int, warmup: int, averaged: int, steps: int, what: str) -> str:
    """The line that says a Lyapunov orbit became non-finite and what its exponents average."""
    return (
        f"warning: the {what} diverged (non-finite state) at step {diverged_at} of "
        f"{warmup + steps} (warmup included): its exponents average only {averaged} of the "
        f"{steps} steps"
    )


def _dropped_seeds(case: dict[str, Any]) -> str:
    """Which seeds have no exponent, why, and how many the mean over seeds uses."""
    used, total = seeds_in_mean(case)
    reasons = []
    for key, what in (
        ("diverged_seeds", "training diverged"),
        (
            "orbit_diverged_early_seeds",
            "the Lyapunov orbit diverged before its first averaged step",
        ),
    ):
        if case.get(key):
            seeds = case[key]
            reasons.append(
                f"{what} for seed(s) {', '.join(map(str, seeds))} ({len(seeds)} of {total})"
            )
    return f"{' and '.join(reasons)}; the mean over seeds uses the other {used}"


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _fmt_ph0(case: dict[str, Any], key: str) -> str:
    """A measure, or why it is null where that is known ("inf", "undefined")."""
    from sharpdim.report.chaos_figures import ph0_missing_reason

    return ph0_missing_reason(case, key) or _fmt(case.get(key))


def _table(cases: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Edge of stability vs well below: chaos and trajectory geometry")
    table.add_column("quantity")
    for name, case in cases.items():
        table.add_column(f"{name} (lr={case['lr']:g})", justify="right")
    for label, key in _ROWS:
        if key is None:
            vals = [f"{_fmt(c['train_loss'])} / {_fmt(c['test_loss'])}" for c in cases.values()]
        elif key == "seeds_in_mean":
            vals = ["{} of {}".format(*seeds_in_mean(c)) for c in cases.values()]
        else:
            vals = [_fmt_ph0(c, key) for c in cases.values()]
        table.add_row(label, *vals)
    return table


@app.command("compare")
def compare(
    lr_eos: float = typer.Option(1.5, help="step size that trains at the edge of stability"),
    lr_below: float = typer.Option(0.1, help="step size well below the edge of stability"),
    dataset: str = dataset_option(),
    n_train: int = typer.Option(1024, help="training examples"),
    width: int = width_option(32),
    depth: int = depth_option(2),
    train_steps: int = typer.Option(500, help="training steps before measuring"),
    batch_size: int | None = typer.Option(
        None, "--train-batch-size", "--batch-size", help="training minibatch (default: full batch)"
    ),
    k: int = typer.Option(8, help="number of Lyapunov exponents"),
    lyap_steps: int = typer.Option(400, help="steps averaged by the Lyapunov/divergence runs"),
    warmup: int = typer.Option(50, help="Lyapunov warmup steps"),
    num_iterates: int = typer.Option(500, help="last iterates kept for PH0 / E_alpha"),
    seed: int = seed_option("seed of data, model and sampling"),
    seeds: int = typer.Option(3, help="independent runs for the largest Lyapunov exponent"),
    out: Path = typer.Option(
        Path("chaos_compare"), help="output folder (JSON + figure)", parser=parse_output_folder
    ),
) -> None:
    """Train the same MLP at the edge of stability and well below; compare chaos measures."""
    check_positive_lr(lr_eos, "--lr-eos", "1.5")
    check_positive_lr(lr_below, "--lr-below", "0.1")
    check_finite_threshold("--lr-below", "gd", lr_below)  # (the JSON's 2 / lr)
    if not lr_eos > lr_below:
        raise SharpdimError(
            f"--lr-eos {lr_eos:g} must be larger than --lr-below {lr_below:g}: pass e.g. "
            "--lr-eos 1.5 --lr-below 0.1"
        )
    check_at_least(train_steps, 0, "--train-steps")
    check_at_least(lyap_steps, 1, "--lyap-steps")
    check_at_least(warmup, 0, "--warmup")
    check_at_least(seeds, 1, "--seeds")
    if seed + seeds - 1 > SEED_RANGE[1]:  # the runs use seeds seed .. seed + seeds - 1
        raise SharpdimError(
            f"--seed {seed} with --seeds {seeds} runs up to seed {seed + seeds - 1}, above "
            f"{SEED_RANGE[1]}: pass --seed <= {SEED_RANGE[1] - seeds + 1}"
        )
    check_at_least(num_iterates, 1, "--num-iterates")
    points = min(num_iterates, train_steps + 1)
    if points < MIN_TRAJECTORY_POINTS:
        raise SharpdimError(
            f"--num-iterates {num_iterates} with --train-steps {train_steps} keeps {points} "
            f"trajectory points, but the PH0 dimension needs at least {MIN_TRAJECTORY_POINTS}: "
            f"pass --num-iterates >= {MIN_TRAJECTORY_POINTS} and "
            f"--train-steps >= {MIN_TRAJECTORY_POINTS - 1}"
        )
    _, num_params = _check_model_options(
        dataset=dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        batch_size=batch_size,
        k=k,
        seed=seed,
    )
    check_exact_sd_size(num_params, "pass a smaller --width or --depth")
    prepare_output_dir(out, "--out folder", files=("chaos_compare.json", "chaos_compare.png"))
    opts: dict[str, Any] = dict(
        dataset=dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        train_steps=train_steps,
        batch_size=batch_size,
        k=k,
        lyap_steps=lyap_steps,
        warmup=warmup,
        num_iterates=num_iterates,
        seed=seed,
        seeds=seeds,
    )
    start = time.perf_counter()
    from sharpdim.runner import ResumableRuns

    store_path = prepare_store_path(out)
    hidden = progress_hidden()
    with open_run_store(store_path) as store, Progress(transient=True, disable=hidden) as progress:
        runs: ResumableRuns[dict[str, Any]] = ResumableRuns(
            store,
            encode=dict,
            decode=decode_case,  # a finished measurement whose orbit diverged is "done" there
            status=lambda case: "diverged" if case["status"] == "diverged" else "done",
        )
        cases = {
            name: runs(
                {"command": "chaos compare", "lr": lr, **opts},
                partial(run_case, lr=lr, progress=progress, **opts),
            )
            for name, lr in (("EoS", lr_eos), ("below", lr_below))
        }
    from sharpdim.report.chaos_figures import plot_chaos_comparison

    # the files before any print: a reader closing the pipe early (| head) ends the command
    # at its first print
    figure = out / "chaos_compare.png"
    payload = {
        "settings": {"lr_eos": lr_eos, "lr_below": lr_below, **opts},
        "cases": cases,
        "wall_time_s": time.perf_counter() - start,
        "figure": str(figure),
    }
    write_json(out / "chaos_compare.json", payload, "--out folder", replaces=[figure])
    with output_errors(out, "--out folder"):
        plot_chaos_comparison(cases, figure)
    print_reuse(runs, 2, "cases", store_path)
    Console().print(_table(cases))
    for name, case in cases.items():
        if case.get("status") == "diverged":
            print_line(
                f"{name} (lr={case['lr']:g}): training diverged at step {case['diverged_at']}; "
                "its measures are not computed (null in the JSON)"
            )
        elif case.get("diverged_seeds") or case.get("orbit_diverged_early_seeds"):
            print_line(f"warning: {name} (lr={case['lr']:g}): {_dropped_seeds(case)}")
        if case.get("ph0_zero_persistence"):
            print_line(
                f"warning: {name} (lr={case['lr']:g}): the last iterates coincide (updates "
                "below the float64 resolution of the weights): no PH0 dimension; pass a larger "
                "step size for a trajectory that moves"
            )
        elif case.get("ph0_zero_persistence_loss"):
            print_line(
                f"warning: {name} (lr={case['lr']:g}): the last iterates' per-example losses "
                "coincide (their changes round away in float64): no loss-metric PH0 dimension; "
                "pass a larger step size"
            )
        if case.get("status") == "orbit_diverged":
            lyap = case["lyapunov"]
            line = _orbit_warning(
                case["orbit_diverged_at"], warmup, lyap["num_steps"], lyap_steps, "Lyapunov orbit"
            )
            print_line(f"{name} (lr={case['lr']:g}): {line}")
    print_line(wrote_line(out / "chaos_compare.json", figure))


@app.command("lyapunov")
def lyapunov(
    lr: float = typer.Option(0.5, help="step size of training and of the map"),
    dataset: str = dataset_option(),
    n_train: int = typer.Option(256, help="training examples"),
    width: int = width_option(16),
    depth: int = depth_option(2),
    train_steps: int = typer.Option(1000, help="training steps before measuring"),
    batch_size: int | None = typer.Option(
        None, "--train-batch-size", "--batch-size", help="training minibatch (default: full batch)"
    ),
    k: int = typer.Option(6, help="number of exponents"),
    steps: int = typer.Option(
        300, "--lyap-steps", "--steps", help="steps the exponents average (after --warmup)"
    ),
    warmup: int = typer.Option(50, help="warmup steps"),
    seed: int = seed_option("seed of data, model and sampling"),
    json_out: Path | None = json_option(),
) -> None:
    """Train an MLP, then the top-k Lyapunov spectrum of its optimizer step (Benettin QR)."""
    from sharpdim.curvature.params import get_flat_params, trainable_parameters
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum
    from sharpdim.dynamics.step_maps import TrainingMap
    from sharpdim.training.loop import TrainConfig, train
    from sharpdim.training.losses import mse_loss
    from sharpdim.training.models import build_mlp
    from sharpdim.training.trajectory import fresh_batches

    check_positive_lr(lr, example="0.5")
    check_finite_threshold("--lr", "gd", lr)
    check_at_least(train_steps, 0, "--train-steps")
    check_at_least(steps, 1, "--lyap-steps")
    check_at_least(warmup, 0, "--warmup")
    data, _ = _check_model_options(
        dataset=dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        batch_size=batch_size,
        k=k,
        seed=seed,
    )
    prepare_output_file(json_out, "--json path")
    model = build_mlp(data.input_dim, data.num_outputs, width=width, depth=depth, seed=seed)
    model = model.to(torch.float64)
    config = TrainConfig(
        optimizer="gd" if batch_size is None else "sgd",
        lr=lr,
        batch_size=batch_size,
        steps=train_steps,
        seed=seed,
    )
    trained = train(model, data, config, progress=True)
    training = training_record(
        dataset, data, width=width, depth=depth, activation="tanh", loss="mse", config=config,
        trained=trained, dtype=torch.float64,
    )  # fmt: skip
    if trained.diverged:
        record_diverged(trained, training, json_out)
        return
    batches = fresh_batches(data, batch_size, warmup + steps, torch.Generator().manual_seed(seed))
    phi = TrainingMap(model, mse_loss, batches, optimizer="sgd", lr=lr)
    w = get_flat_params(trainable_parameters(model))
    result = lyapunov_spectrum(
        phi, w, k, steps, warmup=warmup, generator=torch.Generator().manual_seed(seed)
    )
    table = Table(title=f"Top-{k} Lyapunov exponents (lr={lr:g}, {phi.num_params} parameters)")
    table.add_column("i", justify="right")
    table.add_column("lambda_i (per step)", justify="right")
    table.add_column("stderr", justify="right")
    for i, (lam, err) in enumerate(zip(result.exponents, result.stderr, strict=True), 1):
        table.add_row(str(i), f"{float(lam):.5f}", f"{float(err):.1e}")
    if json_out is not None:  # (before any print: a closed pipe ends the command there)
        payload = {
            "result": result.to_dict(),
            "training": {**training, "num_params": phi.num_params},
            "lyapunov": {"k": k, "steps": steps, "warmup": warmup, "lr": lr, "seed": seed},
        }
        write_json(json_out, payload, "--json path")
    Console().print(table)
    Console().print(f"Kaplan-Yorke dimension of the top-{k}: {result.kaplan_yorke:.3f}")
    if result.diverged_at is not None:
        line = _orbit_warning(result.diverged_at, warmup, result.num_steps, steps, "orbit")
        print_line(f"{line}; lower --lr")
    if json_out is not None:
        print_line(wrote_line(json_out))
