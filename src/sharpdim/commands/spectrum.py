"""``sharpdim spectrum``: the Hessian spectrum of a small model trained on an offline dataset.

Trains an MLP (as ``sharpdim sd compute`` does), then measures the full-batch training-loss
Hessian with the curvature engine: the ``k`` largest and/or smallest algebraic eigenvalues
(:func:`~sharpdim.curvature.lanczos.lanczos_eigenvalues`, convergence per eigenvalue), the
trace (:func:`~sharpdim.curvature.trace.hutchpp_trace`) and the SLQ density
(:func:`~sharpdim.curvature.slq.slq_spectrum`, Gaussian KDE). ``--exact`` checks the Lanczos
values against ``eigvalsh`` of the dense Hessian. ``--chunk-size`` accumulates the Hessian
over chunks of the training set, so memory is that of one chunk.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from torch import nn

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
    output_errors,
    parse_output_file,
    prepare_output_file,
    print_line,
    record_diverged,
    remove_stale,
    seed_option,
    train_batch_size_option,
    train_mlp,
    train_steps_option,
    training_record,
    width_option,
    write_json,
)
from sharpdim.curvature.dense import DENSE_LIMIT
from sharpdim.curvature.density import kde_density
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.lanczos import LanczosResult, lanczos_eigenvalues
from sharpdim.curvature.slq import slq_spectrum
from sharpdim.curvature.trace import hutchpp_trace
from sharpdim.errors import SharpdimError
from sharpdim.report.figure_file import check_figure_format
from sharpdim.report.spectrum_figures import plot_spectrum_density
from sharpdim.rng import stage_generator
from sharpdim.training.datasets import Dataset
from sharpdim.training.loop import TrainConfig
from sharpdim.training.losses import get_loss
from sharpdim.training.optimizers import stability_threshold

WHICH = ("LA", "SA", "both")
THRESHOLDS = {
    "gd": "2/eta",
    "sgd": "2/eta",
    "momentum": "(2+2mu)/eta",
    "nesterov": "(2+2mu)/(eta(1+2mu))",
}
"""The optimizers whose stability threshold bounds the sharpness, with its formula."""


def _values(values: torch.Tensor, converged: torch.Tensor) -> str:
    """``"12.3, 4.56*"``: the values, a ``*`` after each one Lanczos did not converge."""
    flags = converged.tolist()
    return ", ".join(
        f"{v:.6g}{'' if ok else '*'}" for v, ok in zip(values.tolist(), flags, strict=True)
    )


def _check_options(
    k: int,
    which: str,
    tol: float,
    max_iter: int | None,
    chunk_size: int | None,
    counts: tuple[int, int, int],
) -> None:
    """The options that do not depend on the data; ``counts`` are --trace-matvecs,
    --slq-runs and --slq-steps."""
    if which not in WHICH:
        raise SharpdimError(f"unknown --which {which!r}: use one of {', '.join(WHICH)}")
    check_at_least(k, 1, "--k")
    if not 0 < tol < 1:
        raise SharpdimError(f"--tol must be in (0, 1), got {tol}: pass e.g. --tol 1e-6")
    if max_iter is not None:
        check_at_least(max_iter, 1, "--max-iter")
    if chunk_size is not None:
        check_at_least(chunk_size, 1, "--chunk-size")
    for value, least, flag in zip(
        counts, (3, 1, 2), ("--trace-matvecs", "--slq-runs", "--slq-steps"), strict=True
    ):
        check_at_least(value, least, flag)


def _check_sizes(num_params: int, k: int, which: str, max_iter: int | None, exact: bool) -> None:
    """The options that depend on the model's size, checked before training."""
    if k > num_params:
        raise SharpdimError(f"--k {k} exceeds the {num_params} parameters: pass --k {num_params}")
    wanted = min(2 * k, num_params) if which == "both" else k
    if max_iter is not None and max_iter < wanted:
        raise SharpdimError(
            f"--max-iter {max_iter} products cannot give {wanted} eigenvalues (--k {k} "
            f"--which {which}): pass --max-iter {wanted} or more, or leave it unset"
        )
    if exact and num_params > DENSE_LIMIT:
        raise SharpdimError(
            f"--exact needs the dense Hessian of {num_params:,} parameters, above "
            f"{DENSE_LIMIT:,}: drop --exact or use a smaller --width/--depth"
        )


def _check_outputs(json_out: Path | None, png: Path | None) -> None:
    """The figure's format one matplotlib writes, two paths, both files writable (checked in
    that order: a refused option creates no folder)."""
    if png is not None:
        check_figure_format(png, "--png path")
        if json_out is not None and json_out.resolve() == png.resolve():
            raise SharpdimError(f"--json and --png both name {png}: give two different paths")
    prepare_output_file(json_out, "--json path")
    prepare_output_file(png, "--png path")


def _hessian(model: nn.Module, loss: str, data: Dataset, chunk_size: int | None) -> HessianOperator:
    """The full-batch training-loss Hessian, over chunks of ``chunk_size`` examples if given."""
    loss_fn = get_loss(loss)
    if chunk_size is not None and chunk_size < data.num_train:
        chunks = list(data.batches(chunk_size, drop_last=False))
        return HessianOperator(model, loss_fn, batches=chunks)
    return HessianOperator(model, loss_fn, data.train_batch())


def _extremes(result: LanczosResult) -> list[tuple[str, str]]:
    """Table rows of the largest and/or smallest eigenvalues (``*``: not converged)."""
    k, rows = result.k, []
    if result.which != "SA":
        rows.append((f"largest {k} eigenvalues", _values(result.largest, result.converged[:k])))
    if result.which != "LA":
        flags = (
            torch.flip(result.converged[-k:], [0]) if result.which == "both" else result.converged
        )
        rows.append((f"smallest {k} eigenvalues", _values(result.smallest, flags)))
    return rows


def _max_error(result: LanczosResult, exact: torch.Tensor) -> float:
    """``max_i |theta_i - lambda_i| / ||H||_2`` of the Lanczos values against ascending ``exact``
    (relative to the norm: the smallest eigenvalues are often near 0)."""
    k, pairs = result.k, []
    if result.which != "SA":
        pairs.append((result.largest, exact.flip(0)[:k]))
    if result.which != "LA":
        pairs.append((result.smallest, exact[:k]))
    norm = float(exact.abs().max())
    error = max(float((found - ref).abs().max()) for found, ref in pairs)
    return error / norm if norm > 0 else error


def spectrum(
    dataset: str = dataset_option(),
    n_train: int | None = typer.Option(None, help="training examples (dataset default if unset)"),
    width: int = width_option(32),
    depth: int = depth_option(2),
    activation: str = activation_option(),
    loss: str = loss_option(),
    lr: float = typer.Option(0.1, help="training step size eta"),
    optimizer: str = optimizer_option(),
    momentum: float | None = momentum_option(),
    train_batch_size: int | None = train_batch_size_option(),
    train_steps: int = train_steps_option(),
    k: int = typer.Option(5, help="eigenvalues at each wanted end of the spectrum"),
    which: str = typer.Option("both", help="LA (largest algebraic) | SA (smallest) | both"),
    tol: float = typer.Option(1e-6, help="Lanczos relative residual tolerance, in (0, 1)"),
    max_iter: int | None = typer.Option(None, help="at most this many Lanczos products"),
    chunk_size: int | None = typer.Option(
        None, help="accumulate the Hessian over chunks of this many examples (default: one)"
    ),
    trace_matvecs: int = typer.Option(90, help="Hessian-vector products of Hutch++"),
    slq_runs: int = typer.Option(10, help="SLQ runs (Rademacher probes) for the density"),
    slq_steps: int = typer.Option(80, help="Lanczos steps per SLQ run"),
    exact: bool = typer.Option(
        False, "--exact/--no-exact", help=f"check against eigvalsh (<= {DENSE_LIMIT:,} params)"
    ),
    float64: bool = float64_option(),
    seed: int = seed_option("seed of data, model, training and the estimators' probes"),
    json_out: Path | None = json_option(),
    png: Path | None = typer.Option(
        None, "--png", help="save the spectral density figure here", parser=parse_output_file
    ),
) -> None:
    """Train an MLP briefly, then print its Hessian's extreme eigenvalues, trace and density."""
    _check_options(k, which, tol, max_iter, chunk_size, (trace_matvecs, slq_runs, slq_steps))
    dtype = torch.float64 if float64 else torch.float32
    momentum = check_training_options(optimizer, lr, momentum, train_steps, train_batch_size, dtype)
    data, num_params = mlp_data(
        dataset, n_train=n_train, width=width, depth=depth, seed=seed, activation=activation,
        dtype=dtype, loss=loss,
    )  # fmt: skip
    check_train_batch_size(train_batch_size, data)
    _check_sizes(num_params, k, which, max_iter, exact)  # (before building the model)
    _check_outputs(json_out, png)
    model = build_data_mlp(data, width, depth, activation, seed, dtype)
    config = TrainConfig(
        optimizer=optimizer, lr=lr, momentum=momentum, batch_size=train_batch_size,
        steps=train_steps, loss=loss, seed=seed,
    )  # fmt: skip
    trained, _, _ = train_mlp(model, data, config)
    training = training_record(
        dataset, data, width=width, depth=depth, activation=activation, loss=loss,
        config=config, trained=trained, dtype=dtype,
    )  # fmt: skip
    if png is not None:  # an earlier figure never stays beside this run's JSON
        remove_stale([png], "--png path")
    if trained.diverged:
        record_diverged(trained, training, json_out)
        return

    start = time.perf_counter()
    hessian = _hessian(model, loss, data, chunk_size)
    console = Console()
    with console.status("Lanczos: the extreme eigenvalues"):
        eig = lanczos_eigenvalues(
            hessian,
            k,
            which,  # type: ignore[arg-type]
            tol=tol,
            max_iter=max_iter,
            generator=stage_generator(seed, "lanczos"),
        )
    with console.status("Hutch++: the trace"):
        trace = hutchpp_trace(
            hessian, num_matvecs=trace_matvecs, generator=stage_generator(seed, "trace")
        )
    with console.status("stochastic Lanczos quadrature: the density"):
        slq = slq_spectrum(
            hessian, num_runs=slq_runs, num_steps=slq_steps, generator=stage_generator(seed, "slq")
        )
    grid, density = kde_density(slq.nodes, slq.weights)
    rows = [("parameters", f"{num_params:,}"), *_extremes(eig)]
    stderr = f" ± {trace.stderr:.2g}" if math.isfinite(trace.stderr) else " (no standard error)"
    rows.append(("trace (Hutch++)", f"{trace.estimate:.6g}{stderr}"))
    record: dict[str, Any] = {"num_params": num_params, "lanczos": eig.to_dict()}
    record.update(trace=trace.to_dict(), slq={"nodes": slq.nodes, "weights": slq.weights})
    threshold = None
    if optimizer in THRESHOLDS and which != "SA":  # Adam's bounds P^-1 H, not H
        threshold = stability_threshold(optimizer, lr, momentum=momentum)
        rows.append((f"stability threshold {THRESHOLDS[optimizer]}", f"{threshold:.6g}"))
        ratio = float(eig.largest[0]) / threshold
        rows.append(("sharpness / threshold", f"{ratio:.4g}"))
        record.update(threshold=threshold, sharpness_over_threshold=ratio)
    if exact:
        with console.status("--exact: the dense Hessian and its eigvalsh"):
            reference = torch.linalg.eigvalsh(hessian.dense().to(torch.float64))
        error = _max_error(eig, reference)
        rows.append(("max |Lanczos - eigvalsh| / ||H||", f"{error:.2e}"))
        record.update(exact_eigenvalues=reference, max_error_over_norm=error)
    seconds = time.perf_counter() - start
    rows.append(("Lanczos products / curvature time", f"{eig.num_matvecs} / {seconds:.2f} s"))
    # the files before the table: a reader that closes the pipe early (| head) ends the
    # command at its first print, and the results must be on disk by then
    if json_out is not None:  # the numbers first, then the figure
        record.update(chunk_size=chunk_size, max_iter=max_iter)
        payload = {"spectrum": record, "training": training}
        write_json(json_out, payload, "--json path")
    if png is not None:
        top = eig.largest.tolist() if which != "SA" else []
        with output_errors(png, "--png path"):
            plot_spectrum_density(grid, density, png, top_eigenvalues=top, threshold=threshold)
    console.print(kv_table("Hessian spectrum of the full-batch training loss", rows))
    if not eig.all_converged:
        print_line("* not converged: raise --max-iter or --tol")
    written = [str(path) for path in (json_out, png) if path is not None]
    if written:
        print_line("wrote " + " and ".join(written))
