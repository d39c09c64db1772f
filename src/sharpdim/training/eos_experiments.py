"""Edge-of-stability reproductions as library functions that return result dataclasses.

1. :func:`progressive_sharpening`: Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient descent on
   neural networks typically occurs at the edge of stability" (ICLR 2021). Full-batch GD on a
   tanh MLP with the square loss: the sharpness rises (progressive sharpening) until it
   reaches ``2/eta`` and then hovers there (the edge of stability). Summary: the median of
   ``sharpness / (2/eta)`` over the last ``late_fraction`` of training.
2. :func:`minimalist_experiment`: Zhu, Wang, Wang, Zhou & Ge (ICLR 2023), GD on
   ``0.5 (1 - xyzw)^2`` (see :mod:`sharpdim.training.eos_minimalist`).
3. :func:`optimizer_thresholds`: the same MLP trained with heavy-ball momentum (sharpness
   against ``(2 + 2 mu)/eta``) and with Adam (preconditioned sharpness ``lambda_max(P^-1 H)``
   against ``(2 + 2 beta1)/(eta (1 - beta1))``; Cohen et al. 2022).
4. The toy fractal attractor of Tuci et al. (arXiv 2604.19740, Fig. 6) is
   :func:`sharpdim.training.eos_fractal.fractal_attractor`.

Training runs go through :func:`sharpdim.training.loop.train` with an
:class:`~sharpdim.training.monitor.EoSMonitor`; no files, plots or printing here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset, load_dataset
from sharpdim.training.eos_minimalist import (
    PAPER_INIT,
    MinimalistSummary,
    MinimalistSweep,
    minimalist_sweep,
    summarize_minimalist,
)
from sharpdim.training.loop import TrainConfig, train
from sharpdim.training.models import build_mlp
from sharpdim.training.monitor import EoSMonitor

# progress(run_index, step, total_steps)
Progress = Callable[[int, int, int], None]

BIFURCATION_INIT: tuple[float, ...] = (1.5, 0.6, 1.5, 0.6)


@dataclass(frozen=True)
class MLPSetup:
    """The network and data of reproductions 1 and 3.

    Attributes:
        dataset: ``"digits"`` or ``"mnist1d"`` (any name of ``load_dataset``).
        n_train: training examples (the first ones of the seeded split).
        width, depth: hidden width and number of hidden layers of the tanh MLP.
        activation: hidden activation (``"tanh"`` as in Cohen et al. 2021).
        loss: ``"mse"`` (Cohen et al.'s square loss) or ``"ce"``.
        seed: seed of the data split and of the initialisation.
        dtype: ``"float64"`` or ``"float32"``.
    """

    dataset: str = "digits"
    n_train: int = 1000
    width: int = 100
    depth: int = 2
    activation: str = "tanh"
    loss: str = "mse"
    seed: int = 0
    dtype: str = "float64"

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in ("float64", "float32"):
            raise SharpdimError(f"dtype {self.dtype!r}: use 'float64' or 'float32'")
        return torch.float64 if self.dtype == "float64" else torch.float32

    def data(self) -> Dataset:
        if self.dataset == "mnist1d":
            full = load_dataset("mnist1d", seed=self.seed, n_train=self.n_train, n_test=200)
        else:
            full = load_dataset(self.dataset, seed=self.seed)
        return full.subset(min(self.n_train, full.num_train)).to(dtype=self.torch_dtype())

    def model(self, data: Dataset) -> torch.nn.Module:
        return build_mlp(
            data.input_dim,
            data.num_outputs,
            width=self.width,
            depth=self.depth,
            activation=self.activation,
            seed=self.seed,
            dtype=self.torch_dtype(),
        )


@dataclass(frozen=True)
class EoSRun:
    """One monitored training run.

    Attributes:
        optimizer, lr: the update rule and its step size.
        threshold: its stability threshold.
        status, diverged_at: the run's outcome (see :class:`~sharpdim.training.loop.TrainResult`).
        steps, loss, sharpness: the monitor's records (sharpness = ``lambda_max(H)``).
        bounded: the quantity the threshold bounds at each record (sharpness, or the
            preconditioned sharpness for Adam).
        late_median_ratio: median of ``bounded / threshold`` over the records with
            ``step >= (1 - late_fraction) * steps_total``.
        late_ratio_range: (min, max) of that ratio over the same records.
        final_train_loss, final_train_accuracy: at the end of training.
        wall_time_s: seconds of training plus monitoring.
    """

    optimizer: str
    lr: float
    threshold: float
    status: str
    diverged_at: int | None
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    sharpness: tuple[float, ...]
    bounded: tuple[float, ...]
    late_median_ratio: float
    late_ratio_range: tuple[float, float]
    final_train_loss: float
    final_train_accuracy: float | None
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class EoSRunsResult:
    """Runs of reproduction 1 (GD at several step sizes) or 3 (momentum, Adam).

    Attributes:
        kind: ``"sharpening"`` or ``"thresholds"``.
        setup: the network and data.
        steps: training steps per run; every: monitor period; late_fraction: see EoSRun.
        runs: one :class:`EoSRun` per step size / optimizer.
        wall_time_s: seconds for all runs.
    """

    kind: str
    setup: MLPSetup
    steps: int
    every: int
    late_fraction: float
    runs: tuple[EoSRun, ...]
    wall_time_s: float

    def ratios(self) -> dict[str, float]:
        """``{"<optimizer> lr=<eta>": late median ratio}``."""
        return {f"{r.optimizer} lr={r.lr:g}": r.late_median_ratio for r in self.runs}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "setup": dict(self.setup.__dict__),
            "steps": self.steps,
            "every": self.every,
            "late_fraction": self.late_fraction,
            "ratios": self.ratios(),
            "runs": [r.to_dict() for r in self.runs],
            "wall_time_s": self.wall_time_s,
        }


def _late_stats(
    steps: Sequence[int], ratio: Sequence[float], total: int, late_fraction: float
) -> tuple[float, tuple[float, float]]:
    cut = (1.0 - late_fraction) * total
    late = torch.tensor(
        [r for s, r in zip(steps, ratio, strict=True) if s >= cut and math.isfinite(r)],
        dtype=torch.float64,
    )
    if late.numel() == 0:
        return math.nan, (math.nan, math.nan)
    return float(late.median()), (float(late.min()), float(late.max()))


def monitored_run(
    setup: MLPSetup,
    data: Dataset,
    config: TrainConfig,
    *,
    every: int,
    late_fraction: float = 0.3,
    max_examples: int | None = 5000,
    tol: float = 1e-4,
    progress: Callable[[int, int], None] | None = None,
) -> EoSRun:
    """Train a fresh ``setup`` model with ``config`` under an :class:`EoSMonitor`."""
    start = time.perf_counter()
    model = setup.model(data)
    monitor = EoSMonitor(
        setup.loss, data, every=every, max_examples=max_examples, tol=tol, raw_sharpness=True
    )
    callbacks = []
    if progress is not None:
        callbacks.append(lambda step, *_: progress(step + 1, config.steps))
    optimizer = config.make_optimizer([p for p in model.parameters() if p.requires_grad])
    result = train(model, data, config, monitor=monitor, callbacks=callbacks, optimizer=optimizer)
    if result.status == "ok":  # the final parameters too (Adam: the last step's P)
        optimizer.zero_grad(set_to_none=True)
        monitor.measure(
            model, optimizer, step=result.steps_completed, loss_value=result.final_train_loss
        )
    records = monitor.records
    steps = tuple(r.step for r in records)
    ratio = [r.ratio for r in records]
    median, spread = _late_stats(steps, ratio, config.steps, late_fraction)
    bounded = tuple(
        r.preconditioned_sharpness if r.preconditioned_sharpness is not None else r.sharpness
        for r in records
    )
    return EoSRun(
        optimizer=records[0].optimizer if records else config.optimizer,
        lr=config.lr,
        threshold=records[0].threshold if records else math.nan,
        status=result.status,
        diverged_at=result.diverged_at,
        steps=steps,
        loss=tuple(r.loss for r in records),
        sharpness=tuple(r.sharpness for r in records),
        bounded=bounded,
        late_median_ratio=median,
        late_ratio_range=spread,
        final_train_loss=result.final_train_loss,
        final_train_accuracy=result.final_train_accuracy,
        wall_time_s=time.perf_counter() - start,
    )


def _for_run(progress: Progress | None, index: int) -> Callable[[int, int], None] | None:
    """``progress`` with the run index bound."""
    if progress is None:
        return None

    def report(step: int, total: int) -> None:
        progress(index, step, total)

    return report


def _check_common(steps: int, every: int, late_fraction: float) -> None:
    if steps < 1 or every < 1 or not 0 < late_fraction <= 1:
        raise SharpdimError(
            f"steps={steps}, every={every}, late_fraction={late_fraction}: need steps >= 1, "
            "every >= 1 and 0 < late_fraction <= 1"
        )


def _monitored_runs(
    kind: str,
    runs: Sequence[tuple[str, float]],
    setup: MLPSetup,
    *,
    steps: int,
    every: int,
    late_fraction: float,
    max_examples: int | None,
    tol: float,
    progress: Progress | None,
    **hyper: Any,
) -> EoSRunsResult:
    """One :func:`monitored_run` per ``(optimizer, lr)`` on ``setup``'s data, in order.

    ``hyper`` (e.g. ``momentum``, ``betas``) goes to every run's
    :class:`~sharpdim.training.loop.TrainConfig`.
    """
    data = setup.data()
    start = time.perf_counter()
    out = []
    for i, (name, lr) in enumerate(runs):
        config = TrainConfig(
            optimizer=name,
            lr=float(lr),
            steps=steps,
            loss=setup.loss,
            seed=setup.seed,
            keep_snapshots=False,
            **hyper,
        )
        out.append(
            monitored_run(
                setup,
                data,
                config,
                every=every,
                late_fraction=late_fraction,
                max_examples=max_examples,
                tol=tol,
                progress=_for_run(progress, i),
            )
        )
    return EoSRunsResult(
        kind, setup, steps, every, late_fraction, tuple(out), time.perf_counter() - start
    )


def progressive_sharpening(
    lrs: Sequence[float] = (0.2, 0.3, 0.5),
    *,
    setup: MLPSetup | None = None,
    steps: int = 2000,
    every: int = 10,
    late_fraction: float = 0.3,
    max_examples: int | None = 5000,
    tol: float = 1e-4,
    progress: Progress | None = None,
) -> EoSRunsResult:
    """Reproduction 1: full-batch GD on a tanh MLP with MSE at several step sizes.

    Args:
        lrs: the step sizes ``eta``.
        setup: network and data (default :class:`MLPSetup`: 1,000 digits, width 100, depth 2).
        steps: GD steps per run; every: monitor period.
        late_fraction: the final share of training summarised by the median ratio.
        max_examples, tol: passed to :class:`EoSMonitor`.
        progress: ``progress(run_index, step, steps)`` after every step.

    Returns:
        :class:`EoSRunsResult` with one GD run per step size.
    """
    _check_common(steps, every, late_fraction)
    if not lrs or any(not lr > 0 for lr in lrs):
        raise SharpdimError(f"lrs={list(lrs)}: give one or more positive step sizes")
    return _monitored_runs(
        "sharpening",
        [("gd", lr) for lr in lrs],
        setup or MLPSetup(),
        steps=steps,
        every=every,
        late_fraction=late_fraction,
        max_examples=max_examples,
        tol=tol,
        progress=progress,
    )


def optimizer_thresholds(
    runs: Sequence[tuple[str, float]] = (("momentum", 0.2), ("adam", 0.001)),
    *,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    setup: MLPSetup | None = None,
    steps: int = 2000,
    every: int = 10,
    late_fraction: float = 0.3,
    max_examples: int | None = 5000,
    tol: float = 1e-4,
    progress: Progress | None = None,
) -> EoSRunsResult:
    """Reproduction 3: heavy-ball momentum and Adam at their EoS thresholds, full batch.

    Args:
        runs: ``(optimizer, lr)`` pairs; optimizers ``"momentum"``, ``"nesterov"``, ``"adam"``,
            ``"adamw"`` or ``"gd"``.
        momentum, betas: the hyperparameters (torch conventions).
        setup, steps, every, late_fraction, max_examples, tol, progress: as in
            :func:`progressive_sharpening`.

    Returns:
        :class:`EoSRunsResult`; each run's ratio is sharpness / ``(2 + 2 mu)/eta`` for
        momentum and preconditioned sharpness / ``(2 + 2 beta1)/(eta (1 - beta1))`` for Adam.
    """
    _check_common(steps, every, late_fraction)
    if not runs:
        raise SharpdimError("no runs given: pass (optimizer, lr) pairs, e.g. ('adam', 0.001)")
    return _monitored_runs(
        "thresholds",
        runs,
        setup or MLPSetup(),
        steps=steps,
        every=every,
        late_fraction=late_fraction,
        max_examples=max_examples,
        tol=tol,
        progress=progress,
        momentum=momentum,
        betas=betas,
    )


@dataclass(frozen=True)
class MinimalistExperiment:
    """Reproduction 2: EoS ratios and the bifurcation diagram of the minimalist example.

    Attributes:
        ratios: sweep from ``ratio_init`` (default ``(2, 0.3, 2, 0.3)``) over ``ratio_lrs``,
            with a sharpness trace for a few step sizes; ratio_summary: its classification
            (the EoS step sizes and final sharpness / (2/eta)).
        bifurcation: sweep over a fine grid of step sizes from ``bifurcation_init`` (a less
            unbalanced start, which survives large step sizes long enough to show period
            doubling and chaos); bifurcation_summary: its classification.
        wall_time_s: seconds for both sweeps.
    """

    ratios: MinimalistSweep
    ratio_summary: MinimalistSummary
    bifurcation: MinimalistSweep
    bifurcation_summary: MinimalistSummary
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratios": self.ratio_summary.to_dict(),
            "ratio_init": list(self.ratios.init),
            "ratio_steps": self.ratios.steps,
            "bifurcation": self.bifurcation_summary.to_dict(),
            "bifurcation_init": list(self.bifurcation.init),
            "bifurcation_steps": self.bifurcation.steps,
            "bifurcation_num_lrs": int(self.bifurcation.lrs.numel()),
            "wall_time_s": self.wall_time_s,
        }


def minimalist_experiment(
    *,
    ratio_lrs: Sequence[float] | None = None,
    bifurcation_lrs: Sequence[float] | None = None,
    steps: int = 20_000,
    late: int = 300,
    ratio_init: Sequence[float] = PAPER_INIT,
    bifurcation_init: Sequence[float] = BIFURCATION_INIT,
    trace_lrs: Sequence[float] = (0.05, 0.3, 0.45),
    progress: Callable[[int, int], None] | None = None,
) -> MinimalistExperiment:
    """Reproduction 2 (Zhu et al., ICLR 2023), vectorised over step sizes.

    Args:
        ratio_lrs: step sizes of the ratio sweep (default 0.02, 0.03, ..., 0.54).
        bifurcation_lrs: step sizes of the bifurcation diagram (default 451 values in
            [0.2, 1.1]).
        steps, late: GD steps, and late iterates kept per step size.
        ratio_init, bifurcation_init: the two initial points.
        trace_lrs: step sizes whose sharpness is traced over training (ratio sweep).
        progress: ``progress(done, total)`` in units of 1,000 GD steps of either sweep.
    """
    ratio_grid = torch.arange(2, 55, dtype=torch.float64) / 100 if ratio_lrs is None else ratio_lrs
    bif_grid = (
        torch.linspace(0.2, 1.1, 451, dtype=torch.float64)
        if bifurcation_lrs is None
        else bifurcation_lrs
    )
    start = time.perf_counter()

    def part(offset: int) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, 2 * steps)

    ratios = minimalist_sweep(
        ratio_grid,
        init=ratio_init,
        steps=steps,
        late=late,
        trace_lrs=trace_lrs,
        trace_every=max(1, steps // 4000),
        callback=part(0),
    )
    bifurcation = minimalist_sweep(
        bif_grid, init=bifurcation_init, steps=steps, late=late, callback=part(steps)
    )
    return MinimalistExperiment(
        ratios=ratios,
        ratio_summary=summarize_minimalist(ratios),
        bifurcation=bifurcation,
        bifurcation_summary=summarize_minimalist(bifurcation),
        wall_time_s=time.perf_counter() - start,
    )
