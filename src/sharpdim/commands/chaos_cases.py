"""One case of ``sharpdim chaos``: train an MLP, then measure chaos and trajectory geometry.

:func:`train_and_lyapunov` trains one MLP and takes the top-``k`` Lyapunov spectrum of its
real optimizer step (``chaos lyapunov``); :func:`run_case` adds, for ``chaos compare``, the
largest exponent over independent seeds, the divergence of nearby runs, the sharpness (largest
algebraic Hessian eigenvalue), the sharpness dimension, the PH0 dimension and ``E_1``.
Training that diverges is a recorded outcome, not an error: the case gets ``status``
``"diverged"``, the step ``diverged_at`` and NaN measures. A case whose training finished but
whose Lyapunov orbit (continued from the trained weights) became non-finite gets ``status``
``"orbit_diverged"`` and the step ``orbit_diverged_at``: its exponents average only the steps
completed before it. A seed whose orbit diverged before its first averaged step (in the warmup,
or at the step right after it) has no exponent: it is listed in ``orbit_diverged_early_seeds``
and left out of the mean over seeds, like a seed whose training diverged (``diverged_seeds``).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from sharpdim.commands._common import load_mlp_dataset
from sharpdim.errors import SharpdimError


def full_batch_sharpness(model: torch.nn.Module, loss_fn: Any, batch: Any) -> tuple[float, bool]:
    """Sharpness: the largest *algebraic* Hessian eigenvalue (Lanczos), and if it converged.

    Not the largest in magnitude: at a saddle with eigenvalues ``(2, -6)`` it is ``2``.
    """
    from sharpdim.curvature.hessian import HessianOperator
    from sharpdim.curvature.lanczos import lanczos_eigenvalues

    op = HessianOperator(model, loss_fn, batch, mode="eval")
    top = lanczos_eigenvalues(op, k=1, which="LA", generator=torch.Generator().manual_seed(0))
    return float(top.eigenvalues[0]), bool(top.converged.all())


def train_and_lyapunov(
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
    """Train one MLP (seed ``seed``) and take the top-``k`` Lyapunov spectrum of its step.

    When training diverges (``result["trained"].diverged``) nothing is measured: ``lyap``,
    ``w_star`` and ``phi`` are ``None``.
    """
    from sharpdim.curvature.params import get_flat_params, trainable_parameters
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum
    from sharpdim.dynamics.step_maps import TrainingMap
    from sharpdim.training.loop import TrainConfig
    from sharpdim.training.losses import mse_loss
    from sharpdim.training.models import build_mlp
    from sharpdim.training.trajectory import capture_backward, fresh_batches

    data = load_mlp_dataset(dataset, seed=seed, n_train=n_train, dtype=torch.float64)
    model = build_mlp(data.input_dim, data.num_outputs, width=width, depth=depth, seed=seed)
    model = model.to(torch.float64)
    optimizer = "gd" if batch_size is None else "sgd"
    config = TrainConfig(
        optimizer=optimizer, lr=lr, batch_size=batch_size, steps=train_steps, seed=seed
    )
    # at most train_steps + 1 iterates exist; a larger buffer would only cost memory
    trained, traj = capture_backward(model, data, config, min(num_iterates, train_steps + 1))
    traj = _in_memory(traj)
    if trained.diverged:
        return dict(
            data=data, model=model, trained=trained, traj=traj, w_star=None, phi=None, lyap=None
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


def _in_memory(traj: Any) -> Any:
    """``traj`` with its points in memory and its spill folder (if it spilled to disk)
    removed: the measures copy the points to float64 in memory anyway, and a command must
    not leave files in the temporary directory."""
    if traj.path is None:
        return traj
    points = traj.points.clone()
    shutil.rmtree(Path(traj.path).parent, ignore_errors=True)
    return dataclasses.replace(traj, points=points, path=None)


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN error for one value, both NaN for none)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
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
    main = train_and_lyapunov(num_iterates=num_iterates, seed=seed, **run_opts)
    data, model, trained, traj = main["data"], main["model"], main["trained"], main["traj"]
    w_star, phi, lyap = main["w_star"], main["phi"], main["lyap"]
    if lyap is None:
        return _diverged_case(lr, trained, model, time.perf_counter() - start)
    advance("trained, Lyapunov")
    per_seed, diverged_seeds = [lyap.largest], []
    orbit_diverged_seeds = [seed] if lyap.diverged_at is not None else []
    early_seeds = [seed] if _diverged_early(lyap) else []
    for extra in range(1, seeds):
        other = train_and_lyapunov(num_iterates=1, seed=seed + extra, **run_opts)
        if other["lyap"] is None:
            diverged_seeds.append(seed + extra)
        elif other["lyap"].diverged_at is not None:
            orbit_diverged_seeds.append(seed + extra)
            if _diverged_early(other["lyap"]):
                early_seeds.append(seed + extra)
        per_seed.append(math.nan if other["lyap"] is None else other["lyap"].largest)
        advance(f"Lyapunov of seed {seed + extra}")
    lyap_mean, lyap_sem = _mean_stderr([v for v in per_seed if not math.isnan(v)])
    sharp, sharp_converged = full_batch_sharpness(model, mse_loss, data.train_batch())
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
    losses = per_example_losses(model, points, data.train_batch())
    ph0 = _ph0_measures(points, losses, gen)
    advance("PH0")
    e1 = alpha_weighted_lifetime_sum(points, alpha=1.0)
    e1_loss = alpha_weighted_lifetime_sum(losses, alpha=1.0, metric="loss")
    advance("E_alpha")
    return {
        "lr": lr,
        "status": "done" if lyap.diverged_at is None else "orbit_diverged",
        "diverged_at": None,
        "orbit_diverged_at": lyap.diverged_at,
        "threshold_2_over_lr": 2.0 / lr,
        "sharpness_full_batch": sharp,
        "sharpness_converged": sharp_converged,
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
        "diverged_seeds": diverged_seeds,
        "orbit_diverged_seeds": orbit_diverged_seeds,
        "orbit_diverged_early_seeds": early_seeds,
        "kaplan_yorke_top_k": lyap.kaplan_yorke,
        "divergence": div.to_dict(),
        "divergence_rate": div.growth_rate,
        "divergence_rate_stderr": div.growth_rate_stderr,
        "sd": sd.sd,
        "sd_lambda_1": sd.lambda_1,
        **ph0,
        "e1": e1.value,
        "e1_loss": e1_loss.value,
        "num_iterates": len(traj),
        "wall_time_s": time.perf_counter() - start,
    }


def _diverged_early(lyap: Any) -> bool:
    """Whether a Lyapunov orbit diverged before its first averaged step (no exponent)."""
    return lyap.diverged_at is not None and lyap.num_steps == 0


def _ph0_measures(
    points: torch.Tensor, losses: torch.Tensor, gen: torch.Generator
) -> dict[str, Any]:
    """PH0 dimensions of the iterates (Euclidean) and of their loss vectors, with the fitted
    slopes (a slope >= 1 is an infinite dimension, which JSON stores as null like a missing
    one). A trajectory that did not move (all iterates equal: updates below the resolution of
    its dtype) has no PH0 dimension: None, flagged ``ph0_zero_persistence``; iterates that
    moved but whose per-example losses coincide (rounded alike) have no loss-metric one: None,
    flagged ``ph0_zero_persistence_loss``."""
    from sharpdim.dimension.ph_dimension import ph_dimension
    from sharpdim.errors import ZeroPersistenceError

    out: dict[str, Any] = {"ph0_zero_persistence": False, "ph0_zero_persistence_loss": False}
    for cloud, metric, suffix in ((points, "euclidean", ""), (losses, "loss", "_loss")):
        dim: float | None
        slope: float | None
        r2: float | None
        try:
            ph = ph_dimension(cloud, metric, generator=gen)
            dim, slope, r2 = ph.dimension, ph.slope, ph.r_squared
        except ZeroPersistenceError:
            out[f"ph0_zero_persistence{suffix}"] = True
            dim = slope = r2 = None
        out[f"ph0_dimension{suffix}"] = dim
        out[f"ph0_slope{suffix}"] = slope
        if not suffix:
            out["ph0_dimension_r2"] = r2
    return out


CASE_KEYS = frozenset(
    {
        "lr", "status", "diverged_at", "orbit_diverged_at", "threshold_2_over_lr",
        "sharpness_converged", "train_loss", "test_loss", "train_accuracy", "test_accuracy",
        "num_params", "lyapunov", "largest_lyapunov_per_seed", "diverged_seeds",
        "orbit_diverged_seeds", "orbit_diverged_early_seeds", "divergence", "num_iterates",
        "wall_time_s", "ph0_zero_persistence", "ph0_zero_persistence_loss",
    }
)  # fmt: skip
"""The keys of every case of :func:`run_case` besides :data:`MEASURES`."""

_STATUSES = ("done", "orbit_diverged", "diverged")
_ADDED_LATER = {"ph0_zero_persistence": False, "ph0_slope": None, "ph0_slope_loss": None}
"""Keys of a case added after stores were written, with what an older case means by them."""


def decode_case(stored: Any) -> dict[str, Any]:
    """A stored case back as a dict, checked: every key of a case, a known status and the
    parts a finished case has (its Lyapunov and divergence records); ValueError otherwise."""
    if not isinstance(stored, dict):
        raise ValueError(f"a stored case is a JSON object, got {type(stored).__name__}")
    stored = dict(stored)  # (the caller's dict is left as it is)
    if "ph0_zero_persistence_loss" not in stored:  # (one flag stood for both clouds)
        either = bool(stored.get("ph0_zero_persistence"))
        stored["ph0_zero_persistence"] = either and stored.get("ph0_dimension") is None
        stored["ph0_zero_persistence_loss"] = either and stored.get("ph0_dimension_loss") is None
    stored = {**_ADDED_LATER, **stored}  # cases stored before these keys existed
    if "orbit_diverged_early_seeds" not in stored:
        early = _early_seeds_of_older_case(stored)
        if early is not None:
            stored["orbit_diverged_early_seeds"] = early
    missing = (CASE_KEYS | set(MEASURES)) - set(stored)
    if missing:
        raise ValueError(f"a stored case lacks {', '.join(sorted(missing))}")
    if stored["status"] not in _STATUSES:
        raise ValueError(f"unknown status {stored['status']!r} of a stored case")
    finished = stored["status"] != "diverged"
    for part in ("lyapunov", "divergence"):
        if finished and not isinstance(stored[part], dict):
            raise ValueError(f"a finished stored case has no {part} record")
    return dict(stored)


def _early_seeds_of_older_case(stored: dict[str, Any]) -> list[Any] | None:
    """``orbit_diverged_early_seeds`` of a case stored before that key existed, when its
    other per-seed records tell them apart (``None`` otherwise: the case is computed again).
    Such a seed has a null exponent and is in ``orbit_diverged_seeds``, not ``diverged_seeds``."""
    values = stored.get("largest_lyapunov_per_seed")
    orbit, trained = stored.get("orbit_diverged_seeds"), stored.get("diverged_seeds")
    if not (isinstance(values, list) and isinstance(orbit, list) and isinstance(trained, list)):
        return None
    nan = sum(1 for v in values if v is None or (isinstance(v, float) and math.isnan(v)))
    missing = nan - len(trained)
    return [] if missing == 0 else list(orbit) if missing == len(orbit) else None


def seeds_in_mean(case: dict[str, Any]) -> tuple[int, int]:
    """``(used, total)``: seeds whose largest exponent enters the mean over seeds (those whose
    training finished and whose Lyapunov orbit completed a step after the warmup: not in
    ``diverged_seeds`` or ``orbit_diverged_early_seeds``, stored as null or NaN), and all seeds
    run."""
    values = case.get("largest_lyapunov_per_seed") or []
    used = sum(1 for v in values if v is not None and math.isfinite(v))
    return used, len(values)


MEASURES = (
    "sharpness_full_batch",
    "largest_lyapunov",
    "largest_lyapunov_stderr",
    "largest_lyapunov_seed_mean",
    "largest_lyapunov_seed_stderr",
    "kaplan_yorke_top_k",
    "divergence_rate",
    "divergence_rate_stderr",
    "sd",
    "sd_lambda_1",
    "ph0_dimension",
    "ph0_dimension_r2",
    "ph0_dimension_loss",
    "ph0_slope",
    "ph0_slope_loss",
    "e1",
    "e1_loss",
)
"""The measures of :func:`run_case`, NaN in a case whose training diverged."""


def _diverged_case(
    lr: float, trained: Any, model: torch.nn.Module, seconds: float
) -> dict[str, Any]:
    """The case of a run whose training diverged: its status and step, NaN measures."""
    from sharpdim.curvature.params import trainable_parameters

    return {
        "lr": lr,
        "status": "diverged",
        "diverged_at": trained.diverged_at,
        "orbit_diverged_at": None,
        "threshold_2_over_lr": 2.0 / lr,
        "sharpness_converged": False,
        "train_loss": trained.final_train_loss,
        "test_loss": trained.final_test_loss,
        "train_accuracy": trained.final_train_accuracy,
        "test_accuracy": trained.final_test_accuracy,
        "num_params": sum(p.numel() for p in trainable_parameters(model)),
        "lyapunov": None,
        "largest_lyapunov_per_seed": [],
        "diverged_seeds": [],
        "orbit_diverged_seeds": [],
        "orbit_diverged_early_seeds": [],
        "divergence": None,
        "ph0_zero_persistence": False,
        "ph0_zero_persistence_loss": False,
        **dict.fromkeys(MEASURES, math.nan),
        "num_iterates": 0,
        "wall_time_s": seconds,
    }
