"""``sharpdim demo``: train a small model, summarise its curvature, write a report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console

from sharpdim.checks import SEED_RANGE
from sharpdim.commands._common import (
    MAX_N_TRAIN,
    check_batch_size,
    check_exact_sd_size,
    check_finite_threshold,
    check_positive_lr,
    kv_table,
    mlp_num_params,
    output_errors,
    parse_output_folder,
    prepare_output_dir,
    print_line,
    record_diverged,
    write_json,
)
from sharpdim.curvature.dense import DENSE_LIMIT
from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.summary import SpectrumSummary, spectrum_summary
from sharpdim.dimension.sharpness_dimension import SDResult, sharpness_dimension
from sharpdim.report.html_report import ReportSection, write_html_report
from sharpdim.report.spectrum_figures import plot_spectrum_density
from sharpdim.rng import stage_generator
from sharpdim.training.datasets import load_dataset
from sharpdim.training.loop import TrainConfig, TrainResult, train
from sharpdim.training.losses import mse_loss
from sharpdim.training.models import build_mlp

DIGITS_TRAIN = MAX_N_TRAIN["digits"]
"""Training examples of scikit-learn digits (1,797 images, 297 kept for testing)."""
DIGITS_IN, DIGITS_OUT = 64, 10
OUTPUT_FILES = ("summary.json", "spectrum.png", "report.html")
FIGURES = OUTPUT_FILES[1:]
"""What is written after ``summary.json`` from the same run (an earlier version is removed first)."""


def _check_width(width: int) -> None:
    """The 64-w-w-10 MLP must fit the exact sharpness dimension (before any training)."""
    params = mlp_num_params(DIGITS_IN, DIGITS_OUT, width, 2)
    if params > DENSE_LIMIT:
        largest = 1
        while mlp_num_params(DIGITS_IN, DIGITS_OUT, largest + 1, 2) <= DENSE_LIMIT:
            largest += 1
        check_exact_sd_size(params, f"pass --width {largest} or less")


def demo(
    out: Annotated[
        Path,
        typer.Option(
            help="Folder for the figure, JSON and HTML report.", parser=parse_output_folder
        ),
    ] = Path("sharpdim-demo"),
    n_train: Annotated[
        int, typer.Option(min=10, max=DIGITS_TRAIN, help="Training examples (digits).")
    ] = 1000,
    width: Annotated[
        int,
        typer.Option(
            min=1,
            help="MLP width (2 hidden tanh layers; at most 108, the exact SD's 20,000 "
            "parameters; minutes and GiB near it).",
        ),
    ] = 16,
    lr: Annotated[float, typer.Option(help="SGD step size eta.")] = 0.5,
    batch_size: Annotated[
        int, typer.Option(min=1, help="SGD minibatch size (at most --n-train).")
    ] = 64,
    steps: Annotated[int, typer.Option(min=1, help="SGD steps.")] = 1500,
    sd_batches: Annotated[int, typer.Option(min=1, help="Minibatches for the exact SD.")] = 4,
    slq_runs: Annotated[int, typer.Option(min=1, help="SLQ runs for the density.")] = 5,
    slq_steps: Annotated[int, typer.Option(min=2, help="Lanczos steps per SLQ run.")] = 60,
    seed: Annotated[
        int,
        typer.Option(
            min=SEED_RANGE[0], max=SEED_RANGE[1], help="Seed of data split, init and batches."
        ),
    ] = 0,
) -> None:
    """Train a tanh MLP on scikit-learn digits with SGD, then summarise its curvature.

    Prints the top Hessian eigenvalues (Lanczos), the trace (Hutch++), the stability
    threshold 2/eta and the sharpness dimension of SGD at that step size (Tuci et al.,
    arXiv 2604.19740, Def. 4.2); writes spectrum.png, summary.json and report.html.
    """
    check_positive_lr(lr, example="0.5", dtype=torch.float32)  # (the demo's model)
    check_finite_threshold("--lr", "sgd", lr)
    check_batch_size(batch_size, n_train)
    _check_width(width)
    prepare_output_dir(out, "--out folder", files=OUTPUT_FILES)
    console = Console()
    start = time.perf_counter()
    data = load_dataset("digits", seed=seed, n_train=n_train)
    model = build_mlp(DIGITS_IN, DIGITS_OUT, width=width, depth=2, seed=seed)
    config = TrainConfig(optimizer="sgd", lr=lr, batch_size=batch_size, steps=steps, seed=seed)
    console.print(
        f"training a 64-{width}-{width}-10 tanh MLP on {data.num_train} digits: "
        f"SGD, eta={lr}, batch {config.batch_size}, {steps} steps"
    )
    run = train(model, data, config, progress=True)
    settings = {
        "dataset": "digits", "n_train": data.num_train, "width": width, "depth": 2,
        "activation": "tanh", "loss": "mse", "dtype": "float32", "lr": lr,
        "batch_size": batch_size, "steps": steps, "sd_batches": sd_batches,
        "slq_runs": slq_runs, "slq_steps": slq_steps, "seed": seed,
    }  # fmt: skip
    if run.diverged:  # recorded in summary.json; no figure, no report
        figures = [out / name for name in FIGURES]
        record_diverged(
            run, run.to_dict(), out / "summary.json", "--out folder", replaces=figures,
            extra={"settings": settings},
        )  # fmt: skip
        return

    hessian = HessianOperator(model, mse_loss, data.train_batch())
    with console.status("Hessian spectrum: Lanczos, Hutch++, stochastic Lanczos quadrature"):
        summary = spectrum_summary(
            hessian,
            k=5,
            num_runs=slq_runs,
            num_steps=slq_steps,
            generator=stage_generator(seed, "spectrum"),
        )
    with console.status(f"sharpness dimension: {sd_batches} dense minibatch Hessians"):
        sd_result = sharpness_dimension(
            model,
            mse_loss,
            data.train_batch(),
            lr,
            num_batches=sd_batches,
            batch_size=batch_size,
            generator=stage_generator(seed, "sd"),
        )
    with output_errors(out, "--out folder"):
        _write_outputs(out, run, summary, sd_result, lr, settings)
    _print_summary(console, run, summary, sd_result, lr, out)
    console.print(f"done in {time.perf_counter() - start:.1f} s")


def _rows(run: TrainResult, s: SpectrumSummary, res: SDResult, lr: float) -> dict[str, object]:
    top = ", ".join(f"{v:.4g}" for v in s.top_eigenvalues.tolist())
    return {
        "parameters": s.num_params,
        "final train loss": run.final_train_loss,
        "test accuracy": run.final_test_accuracy,
        "top-5 eigenvalues (full-batch Hessian)": top,
        "all converged": bool(s.converged.all()),
        "smallest eigenvalue": f"{s.bottom_eigenvalue:.4g}"
        + ("" if s.bottom_converged else " (not converged)"),
        "trace (Hutch++)": f"{s.trace:.4g} ± {s.trace_stderr:.2g}",
        "stability threshold 2/eta": 2.0 / lr,
        "sharpness / (2/eta)": s.top_eigenvalues[0].item() * lr / 2.0,
        "sharpness dimension (SGD, exact)": f"{res.sd:.2f}"
        + ("" if res.num_bootstrap == 0 else f" [{res.ci_low:.2f}, {res.ci_high:.2f}]"),
        "RDS sharpness lambda_1": res.lambda_1,
        "expanding directions": res.num_expanding,
    }


def _write_outputs(
    out: Path,
    run: TrainResult,
    s: SpectrumSummary,
    res: SDResult,
    lr: float,
    settings: dict[str, object],
) -> None:
    payload = {
        "settings": settings,
        "training": run.to_dict(),
        "spectrum": s.to_dict(),
        "sharpness_dimension": res.to_dict(),
    }
    figures = [out / name for name in FIGURES]
    write_json(out / "summary.json", payload, "--out folder", replaces=figures)
    png = plot_spectrum_density(
        s.grid,
        s.density,
        out / "spectrum.png",
        top_eigenvalues=s.top_eigenvalues.tolist(),
        threshold=2.0 / lr,
    )
    section = ReportSection(
        "Hessian spectrum and sharpness dimension",
        text="A tanh MLP trained with SGD on scikit-learn digits (MSE to one-hot targets).",
        rows=_rows(run, s, res, lr),
        figures=[png],
    )
    write_html_report(out / "report.html", "sharpdim demo", [section])


def _print_summary(
    console: Console, run: TrainResult, s: SpectrumSummary, res: SDResult, lr: float, out: Path
) -> None:
    rows = _rows(run, s, res, lr).items()
    shown = [(k, f"{v:.6g}" if isinstance(v, float) else str(v)) for k, v in rows]
    console.print(kv_table("Hessian spectrum summary", shown))
    print_line(f"wrote {out / 'spectrum.png'}, {out / 'summary.json'}, {out / 'report.html'}")
