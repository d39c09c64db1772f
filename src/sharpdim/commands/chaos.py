"""``sharpdim chaos ...``: Lyapunov spectra, divergence and trajectory geometry of training.

* ``sharpdim chaos lyapunov``: train a small MLP, then the top-k Lyapunov spectrum of the real
  optimizer step at the end of training (:func:`sharpdim.dynamics.lyapunov.lyapunov_spectrum`
  on a :class:`~sharpdim.dynamics.step_maps.TrainingMap`).
* ``sharpdim chaos compare``: the same MLP trained at the edge of stability and well below it;
  for each run the largest Lyapunov exponent (also as mean and standard error over ``--seeds``
  independent runs), the divergence rate of two runs ``delta`` apart
  (same batches), the Kaplan–Yorke dimension of the top-k spectrum, the sharpness dimension,
  the PH0 dimension (Euclidean and loss pseudo-metric) and ``E_1`` of the last iterates; a
  table, a JSON file and a figure.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from sharpdim.commands._common import (
    dataset_option,
    depth_option,
    json_option,
    seed_option,
    width_option,
    write_json,
    wrote_line,
)
from sharpdim.errors import SharpdimError

app = typer.Typer(
    help="Chaos and trajectory geometry: Lyapunov spectra, divergence, PH0 dimension, E_alpha.",
    no_args_is_help=True,
)


def _power_sharpness(model: torch.nn.Module, loss_fn: Any, batch: Any, iters: int = 100) -> float:
    """Largest Hessian eigenvalue (in magnitude; positive near a minimum) by power iteration."""
    from sharpdim.curvature.hessian import HessianOperator

    op = HessianOperator(model, loss_fn, batch, mode="eval")
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(0), dtype=op.dtype)
    lam = 0.0
    for _ in range(iters):
        w = op @ (v / v.norm())
        lam = float(torch.dot(w, v / v.norm()))
        v = w
    return lam


def _train_and_lyapunov(
    *,
    lr: float,
    dataset: str,
    n_train: int,
    width: int,
    depth: int,
    train_steps: int,
    batch_size: int | None,
    k: int,
    lyap_steps: int,
    warmup: int,
    num_iterates: int,
    seed: int,
) -> dict[str, Any]:
    """Train one MLP (seed ``seed``) and take the top-``k`` Lyapunov spectrum of its step."""
    from sharpdim.curvature.params import get_flat_params, trainable_parameters
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum
    from sharpdim.dynamics.step_maps import TrainingMap
    from sharpdim.training.datasets import load_dataset
    from sharpdim.training.loop import TrainConfig
    from sharpdim.training.losses import mse_loss
    from sharpdim.training.models import build_mlp
    from sharpdim.training.trajectory import capture_backward, fresh_batches

    data = load_dataset(dataset, seed=seed, n_train=n_train, dtype=torch.float64)
    model = build_mlp(data.input_dim, data.num_outputs, width=width, depth=depth, seed=seed)
    model = model.to(torch.float64)
    optimizer = "gd" if batch_size is None else "sgd"
    config = TrainConfig(
        optimizer=optimizer, lr=lr, batch_size=batch_size, steps=train_steps, seed=seed
    )
    trained, traj = capture_backward(model, data, config, num_iterates)
    if trained.diverged:
        raise SharpdimError(
            f"training at lr={lr:g} (seed {seed}) diverged at step {trained.diverged_at}: "
            "lower the lr"
        )
    w_star = get_flat_params(trainable_parameters(model))
    batches = fresh_batches(
        data, batch_size, warmup + lyap_steps, torch.Generator().manual_seed(seed + 1)
    )
    phi = TrainingMap(model, mse_loss, batches, optimizer="sgd", lr=lr)
    lyap = lyapunov_spectrum(
        phi, w_star, k, lyap_steps, warmup=warmup, generator=torch.Generator().manual_seed(seed)
    )
    return dict(
        data=data, model=model, trained=trained, traj=traj, w_star=w_star, phi=phi, lyap=lyap
    )


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN error for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def run_case(
    *,
    lr: float,
    dataset: str = "digits",
    n_train: int = 1024,
    width: int = 32,
    depth: int = 2,
    train_steps: int = 500,
    batch_size: int | None = None,
    k: int = 8,
    lyap_steps: int = 400,
    warmup: int = 50,
    delta: float = 1e-8,
    num_iterates: int = 500,
    sd_batches: int = 4,
    seed: int = 0,
    seeds: int = 3,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train MLPs by GD/SGD at ``lr`` and measure every chaos/geometry quantity of their end.

    The largest Lyapunov exponent is measured on ``seeds`` independent runs (data split,
    initialisation and batches from seeds ``seed, seed + 1, ...``) and reported as their mean
    with the standard error over runs; the other quantities come from the run of ``seed``.
    """
    from sharpdim.dimension.lifetime_sum import alpha_weighted_lifetime_sum
    from sharpdim.dimension.ph_dimension import ph_dimension
    from sharpdim.dimension.sharpness_dimension import sharpness_dimension
    from sharpdim.dynamics.divergence import trajectory_divergence
    from sharpdim.training.losses import mse_loss
    from sharpdim.training.trajectory import per_example_losses

    if seeds < 1:
        raise SharpdimError(f"seeds={seeds}: pass seeds >= 1")
    start = time.perf_counter()
    task = progress.add_task(f"lr={lr:g}", total=4 + seeds) if progress is not None else None

    def advance(what: str) -> None:
        if progress is not None and task is not None:
            progress.update(task, advance=1, description=f"lr={lr:g}: {what}")

    run_opts: dict[str, Any] = dict(
        lr=lr,
        dataset=dataset,
        n_train=n_train,
        width=width,
        depth=depth,
        train_steps=train_steps,
        batch_size=batch_size,
        k=k,
        lyap_steps=lyap_steps,
        warmup=warmup,
    )
    main = _train_and_lyapunov(num_iterates=num_iterates, seed=seed, **run_opts)
    data, model, trained, traj = main["data"], main["model"], main["trained"], main["traj"]
    w_star, phi, lyap = main["w_star"], main["phi"], main["lyap"]
    advance("trained, Lyapunov")
    per_seed = [lyap.largest]
    for extra in range(1, seeds):
        other = _train_and_lyapunov(num_iterates=1, seed=seed + extra, **run_opts)
        per_seed.append(other["lyap"].largest)
        advance(f"Lyapunov of seed {seed + extra}")
    lyap_mean, lyap_sem = _mean_stderr(per_seed)
    sharp = _power_sharpness(model, mse_loss, data.train_batch())
    div = trajectory_divergence(
        phi, w_star, lyap_steps, delta=delta, generator=torch.Generator().manual_seed(seed)
    )
    advance("divergence")
    sd_bs = data.num_train if batch_size is None else batch_size
    sd = sharpness_dimension(
        model,
        mse_loss,
        data.train_batch(),
        lr,
        method="exact",
        num_batches=1 if batch_size is None else sd_batches,
        batch_size=sd_bs,
        generator=torch.Generator().manual_seed(seed),
        num_bootstrap=0,
    )
    advance("SD")
    points = traj.points.to(torch.float64)
    gen = torch.Generator().manual_seed(seed)
    ph = ph_dimension(points, generator=gen)
    losses = per_example_losses(model, points, data.train_batch())
    ph_loss = ph_dimension(losses, "loss", generator=gen)
    advance("PH0")
    e1 = alpha_weighted_lifetime_sum(points, alpha=1.0)
    e1_loss = alpha_weighted_lifetime_sum(losses, alpha=1.0, metric="loss")
    advance("E_alpha")
    return {
        "lr": lr,
        "threshold_2_over_lr": 2.0 / lr,
        "sharpness_full_batch": sharp,
        "train_loss": trained.final_train_loss,
        "test_loss": trained.final_test_loss,
        "train_accuracy": trained.final_train_accuracy,
        "test_accuracy": trained.final_test_accuracy,
        "num_params": phi.num_params,
        "lyapunov": lyap.to_dict(),
        "largest_lyapunov": lyap.largest,
        "largest_lyapunov_stderr": float(lyap.stderr[0]),
        "largest_lyapunov_per_seed": per_seed,
        "largest_lyapunov_seed_mean": lyap_mean,
        "largest_lyapunov_seed_stderr": lyap_sem,
        "kaplan_yorke_top_k": lyap.kaplan_yorke,
        "divergence": div.to_dict(),
        "divergence_rate": div.growth_rate,
        "divergence_rate_stderr": div.growth_rate_stderr,
        "sd": sd.sd,
        "sd_lambda_1": sd.lambda_1,
        "ph0_dimension": ph.dimension,
        "ph0_dimension_r2": ph.r_squared,
        "ph0_dimension_loss": ph_loss.dimension,
        "e1": e1.value,
        "e1_loss": e1_loss.value,
        "num_iterates": len(traj),
        "wall_time_s": time.perf_counter() - start,
    }


_ROWS = [
    ("sharpness (full batch)", "sharpness_full_batch"),
    ("2 / lr", "threshold_2_over_lr"),
    ("largest Lyapunov exponent", "largest_lyapunov"),
    ("  its stderr (time blocks)", "largest_lyapunov_stderr"),
    ("  mean over seeds", "largest_lyapunov_seed_mean"),
    ("  its stderr (over seeds)", "largest_lyapunov_seed_stderr"),
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


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def _table(cases: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Edge of stability vs well below: chaos and trajectory geometry")
    table.add_column("quantity")
    for name, case in cases.items():
        table.add_column(f"{name} (lr={case['lr']:g})", justify="right")
    for label, key in _ROWS:
        if key is None:
            vals = [f"{c['train_loss']:.4g} / {c['test_loss']:.4g}" for c in cases.values()]
        else:
            vals = [_fmt(c[key]) for c in cases.values()]
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
    batch_size: int | None = typer.Option(None, help="minibatch size (default: full batch GD)"),
    k: int = typer.Option(8, help="number of Lyapunov exponents"),
    lyap_steps: int = typer.Option(400, help="steps averaged by the Lyapunov/divergence runs"),
    warmup: int = typer.Option(50, help="Lyapunov warmup steps"),
    num_iterates: int = typer.Option(500, help="last iterates kept for PH0 / E_alpha"),
    seed: int = seed_option("seed of data, model and sampling"),
    seeds: int = typer.Option(3, help="independent runs for the largest Lyapunov exponent"),
    out: Path = typer.Option(Path("chaos_compare"), help="output folder (JSON + figure)"),
) -> None:
    """Train the same MLP at the edge of stability and well below; compare chaos measures."""
    if not lr_eos > lr_below > 0:
        raise SharpdimError(f"need lr_eos > lr_below > 0, got {lr_eos:g} and {lr_below:g}")
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
    with Progress(transient=True) as progress:
        cases = {
            "EoS": run_case(lr=lr_eos, progress=progress, **opts),
            "below": run_case(lr=lr_below, progress=progress, **opts),
        }
    Console().print(_table(cases))
    from sharpdim.report.chaos_figures import plot_chaos_comparison

    figure = plot_chaos_comparison(cases, out / "chaos_compare.png")
    payload = {
        "settings": {"lr_eos": lr_eos, "lr_below": lr_below, **opts},
        "cases": cases,
        "wall_time_s": time.perf_counter() - start,
        "figure": str(figure),
    }
    write_json(out / "chaos_compare.json", payload)
    Console().print(wrote_line(out / "chaos_compare.json", figure))


@app.command("lyapunov")
def lyapunov(
    lr: float = typer.Option(0.5, help="step size of training and of the map"),
    dataset: str = dataset_option(),
    n_train: int = typer.Option(256, help="training examples"),
    width: int = width_option(16),
    depth: int = depth_option(2),
    train_steps: int = typer.Option(1000, help="training steps before measuring"),
    batch_size: int | None = typer.Option(None, help="minibatch size (default: full batch GD)"),
    k: int = typer.Option(6, help="number of exponents"),
    steps: int = typer.Option(300, help="steps averaged"),
    warmup: int = typer.Option(50, help="warmup steps"),
    seed: int = seed_option("seed of data, model and sampling"),
    json_out: Path | None = json_option(),
) -> None:
    """Train an MLP, then the top-k Lyapunov spectrum of its optimizer step (Benettin QR)."""
    from sharpdim.curvature.params import get_flat_params, trainable_parameters
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum
    from sharpdim.dynamics.step_maps import TrainingMap
    from sharpdim.training.datasets import load_dataset
    from sharpdim.training.loop import TrainConfig, train
    from sharpdim.training.losses import mse_loss
    from sharpdim.training.models import build_mlp
    from sharpdim.training.trajectory import fresh_batches

    data = load_dataset(dataset, seed=seed, n_train=n_train, dtype=torch.float64)
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
    if trained.diverged:
        raise SharpdimError(f"training diverged at step {trained.diverged_at}: lower --lr")
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
    Console().print(table)
    Console().print(f"Kaplan-Yorke dimension of the top-{k}: {result.kaplan_yorke:.3f}")
    if json_out is not None:
        write_json(json_out, {"result": result.to_dict(), "training": config.to_dict()})
