"""Edge-of-stability reproductions as library functions that return result dataclasses.

1. :func:`progressive_sharpening`: Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient descent on
   neural networks typically occurs at the edge of stability" (ICLR 2021). Full-batch GD on a
   tanh MLP with the square loss: the sharpness rises (progressive sharpening) until it
   reaches ``2/eta`` and then hovers there (the edge of stability). Summary: the median of
   ``sharpness / (2/eta)`` over the last ``late_fraction`` of training.
2. :func:`~sharpdim.training.eos_minimalist_experiment.minimalist_experiment`: Zhu, Wang,
   Wang, Zhou & Ge (ICLR 2023), GD on ``0.5 (1 - xyzw)^2``.
3. :func:`optimizer_thresholds`: the same MLP trained with heavy-ball momentum (sharpness
   against ``(2 + 2 mu)/eta``) and with Adam (preconditioned sharpness ``lambda_max(P^-1 H)``
   against ``(2 + 2 beta1)/(eta (1 - beta1))``; Cohen et al. 2022).
4. The toy fractal attractor of Tuci et al. (arXiv 2604.19740, Fig. 6) is
   :func:`sharpdim.training.eos_fractal.fractal_attractor`.

Training runs go through :func:`sharpdim.training.loop.train` with an
:class:`~sharpdim.training.monitor.EoSMonitor`; no files, plots or printing here. Each run of
1 and 3 is independent: its full config (:func:`eos_run_config`) and an ``execute`` hook let a
caller reuse stored runs (the CLI resumes sweeps through :mod:`sharpdim.runner`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from sharpdim.checks import check_count, check_number, check_numbers
from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset
from sharpdim.training.eos_setup import MLPSetup
from sharpdim.training.loop import TrainConfig, train
from sharpdim.training.monitor import EoSMonitor
from sharpdim.training.optimizers import ADAPTIVE, stability_threshold

# progress(run_index, step, total_steps)
Progress = Callable[[int, int, int], None]
# execute(run_config, train) -> the run: train() or a stored run (see eos_run_config)
Execute = Callable[[Mapping[str, Any], Callable[[], "EoSRun"]], "EoSRun"]


@dataclass(frozen=True)
class EoSRun:
    """One monitored training run.

    Attributes:
        optimizer, lr: the update rule and its step size.
        threshold: its stability threshold.
        status, diverged_at: the run's outcome (see :class:`~sharpdim.training.loop.TrainResult`).
        steps, loss, sharpness: the monitor's records (sharpness = ``lambda_max(H)``).
        bounded: the quantity the threshold bounds at each record (sharpness plus any
            coupled weight decay, or the preconditioned sharpness for Adam).
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

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EoSRun:
        """The inverse of :meth:`to_dict`, also on its JSON form (``null`` numbers read as NaN)."""

        def num(value: Any) -> float:
            return math.nan if value is None else float(value)

        def nums(values: Sequence[Any]) -> tuple[float, ...]:
            return tuple(num(v) for v in values)

        low, high = data["late_ratio_range"]
        accuracy = data["final_train_accuracy"]
        diverged_at = data["diverged_at"]
        return cls(
            optimizer=str(data["optimizer"]),
            lr=float(data["lr"]),
            threshold=num(data["threshold"]),
            status=str(data["status"]),
            diverged_at=None if diverged_at is None else int(diverged_at),
            steps=tuple(int(s) for s in data["steps"]),
            loss=nums(data["loss"]),
            sharpness=nums(data["sharpness"]),
            bounded=nums(data["bounded"]),
            late_median_ratio=num(data["late_median_ratio"]),
            late_ratio_range=(num(low), num(high)),
            final_train_loss=num(data["final_train_loss"]),
            final_train_accuracy=None if accuracy is None else float(accuracy),
            wall_time_s=float(data["wall_time_s"]),
        )

    def summarized(self, total_steps: int, late_fraction: float) -> EoSRun:
        """This run with ``late_median_ratio`` and ``late_ratio_range`` taken over the records
        with ``step >= (1 - late_fraction) * total_steps`` (ratio = ``bounded / threshold``)."""
        threshold = self.threshold
        ratio = [b / threshold if threshold else math.nan for b in self.bounded]
        median, spread = _late_stats(self.steps, ratio, total_steps, late_fraction)
        return replace(self, late_median_ratio=median, late_ratio_range=spread)


@dataclass(frozen=True)
class EoSRunsResult:
    """Runs of reproduction 1 (GD at several step sizes) or 3 (momentum, Adam).

    Attributes:
        kind: ``"sharpening"`` or ``"thresholds"``.
        setup: the network and data.
        steps: training steps per run; every: monitor period; late_fraction: see EoSRun.
        runs: one :class:`EoSRun` per step size / optimizer.
        wall_time_s: seconds of all runs (the sum of theirs, reused runs included, so the
            result does not depend on which runs a resumed sweep reused).
    """

    kind: str
    setup: MLPSetup
    steps: int
    every: int
    late_fraction: float
    runs: tuple[EoSRun, ...]
    wall_time_s: float

    def ratios(self) -> dict[str, float]:
        """``{"<optimizer> lr=<eta>": late median ratio}`` (``eta`` as ``repr`` writes it, so
        step sizes that ``:g`` prints alike keep their own entries)."""
        return {f"{r.optimizer} lr={r.lr!r}": r.late_median_ratio for r in self.runs}

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
    # the last late_fraction of the steps; the tolerance keeps a step on the boundary, which
    # (1 - 0.7) * 1000 = 300.00000000000006 dropped
    cut = (1.0 - late_fraction) * total - 1e-9 * max(total, 1)
    late = torch.tensor(
        [r for s, r in zip(steps, ratio, strict=True) if s >= cut and math.isfinite(r)],
        dtype=torch.float64,
    )
    if late.numel() == 0:
        return math.nan, (math.nan, math.nan)
    return float(late.quantile(0.5)), (float(late.min()), float(late.max()))  # even: mean of two


def monitored_run(
    setup: MLPSetup,
    data: Dataset,
    config: TrainConfig,
    *,
    every: int,
    late_fraction: float = 0.3,
    max_examples: int | None = None,
    tol: float = 1e-4,
    progress: Callable[[int, int], None] | None = None,
) -> EoSRun:
    """Train a fresh ``setup`` model with ``config`` under an :class:`EoSMonitor` (its
    Hessian on the first ``max_examples`` training examples; ``None``: all of them)."""
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
    bounded = tuple(r.bounded for r in records)
    run = EoSRun(
        optimizer=config.optimizer,  # (the monitor calls SGD with momentum 0 "gd")
        lr=config.lr,
        threshold=records[0].threshold if records else math.nan,
        status=result.status,
        diverged_at=result.diverged_at,
        steps=tuple(r.step for r in records),
        loss=tuple(r.loss for r in records),
        sharpness=tuple(r.sharpness for r in records),
        bounded=bounded,
        late_median_ratio=math.nan,
        late_ratio_range=(math.nan, math.nan),
        final_train_loss=result.final_train_loss,
        final_train_accuracy=result.final_train_accuracy,
        wall_time_s=time.perf_counter() - start,
    )
    return run.summarized(config.steps, late_fraction)


def _for_run(progress: Progress | None, index: int) -> Callable[[int, int], None] | None:
    """``progress`` with the run index bound."""
    if progress is None:
        return None

    def report(step: int, total: int) -> None:
        progress(index, step, total)

    return report


def _check_common(steps: int, every: int, late_fraction: float) -> None:
    steps = check_count(steps, "steps", hint="e.g. 1000")
    every = check_count(every, "every", hint="e.g. 10")
    late_fraction = check_number(late_fraction, "late_fraction", "> 0", "0.3")
    if not late_fraction <= 1:
        raise SharpdimError(
            f"steps={steps}, every={every}, late_fraction={late_fraction}: need steps >= 1, "
            "every >= 1 and 0 < late_fraction <= 1"
        )


def eos_run_config(
    setup: MLPSetup,
    config: TrainConfig,
    *,
    every: int,
    max_examples: int | None,
    tol: float,
) -> dict[str, Any]:
    """Everything that determines one monitored run, as plain data: the key of a stored run.

    The network and data (``setup``), the training config without the hyperparameters its
    optimizer ignores (momentum for Adam, betas and eps for momentum, all three for GD) and
    the monitor's options. ``late_fraction`` is left out: it only summarises the records
    (:meth:`EoSRun.summarized`), so a stored run serves any late fraction.
    """
    unused: tuple[str, ...] = ("betas", "eps")  # heavy-ball, Nesterov
    if config.optimizer in ("gd", "sgd"):
        unused = ("momentum", "betas", "eps")
    elif config.optimizer in ADAPTIVE:
        unused = ("momentum",)
    train = {k: v for k, v in config.to_dict().items() if k not in unused}
    return {
        "experiment": "eos.monitored_run",
        "setup": dict(setup.__dict__),
        "train": train,
        "monitor": {"every": every, "max_examples": max_examples, "tol": tol},
    }


def _train_now(config: Mapping[str, Any], train: Callable[[], EoSRun]) -> EoSRun:
    return train()


def _run_config(
    name: str, lr: float, setup: MLPSetup, steps: int, hyper: Mapping[str, Any]
) -> TrainConfig:
    """The training config of one monitored run; a step size whose stability threshold is
    not a finite number (a subnormal ``lr``) is refused."""
    config = TrainConfig(
        optimizer=name,
        lr=float(lr),
        steps=steps,
        loss=setup.loss,
        seed=setup.seed,
        keep_snapshots=False,
        **hyper,
    )
    threshold = stability_threshold(
        name, config.lr, **{k: v for k, v in hyper.items() if v is not None}
    )
    if not math.isfinite(threshold):  # (stored as null, it would read back as NaN)
        raise SharpdimError(
            f"lr={config.lr:g} puts the {name} stability threshold at {threshold}: pass a "
            "step size whose threshold is a finite number, e.g. 1e-3"
        )
    return config


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
    execute: Execute | None,
    **hyper: Any,
) -> EoSRunsResult:
    """One :func:`monitored_run` per ``(optimizer, lr)`` on ``setup``'s data, in order.

    ``hyper`` (e.g. ``momentum``, ``betas``) goes to every run's
    :class:`~sharpdim.training.loop.TrainConfig`. Each run goes through
    ``execute(eos_run_config(...), train)`` (default: ``train()``); the data are loaded only
    if some run is trained.
    """
    execute = execute or _train_now
    data: list[Dataset] = []
    configs = [_run_config(name, lr, setup, steps, hyper) for name, lr in runs]  # (all checked
    out = []  # before the first run trains)
    for i, config in enumerate(configs):

        def train(config: TrainConfig = config, index: int = i) -> EoSRun:
            if not data:
                data.append(setup.data())
            return monitored_run(
                setup,
                data[0],
                config,
                every=every,
                late_fraction=late_fraction,
                max_examples=max_examples,
                tol=tol,
                progress=_for_run(progress, index),
            )

        key = eos_run_config(setup, config, every=every, max_examples=max_examples, tol=tol)
        out.append(execute(key, train).summarized(steps, late_fraction))
        if progress is not None:
            progress(i, steps, steps)
    wall = sum(r.wall_time_s for r in out)
    return EoSRunsResult(kind, setup, steps, every, late_fraction, tuple(out), wall)


def progressive_sharpening(
    lrs: Sequence[float] = (0.2, 0.3, 0.5),
    *,
    setup: MLPSetup | None = None,
    steps: int = 2000,
    every: int = 10,
    late_fraction: float = 0.3,
    max_examples: int | None = None,
    tol: float = 1e-4,
    progress: Progress | None = None,
    execute: Execute | None = None,
) -> EoSRunsResult:
    """Reproduction 1: full-batch GD on a tanh MLP with MSE at several step sizes.

    Args:
        lrs: the step sizes ``eta``.
        setup: network and data (default :class:`MLPSetup`: 1,000 digits, width 100, depth 2).
        steps: GD steps per run; every: monitor period.
        late_fraction: the final share of training summarised by the median ratio.
        max_examples: the sharpness is that of the loss on the first this many training
            examples; ``None`` (default): all of them, the full batch that GD trains on.
        tol: passed to :class:`EoSMonitor`.
        progress: ``progress(run_index, step, steps)`` after every step.
        execute: runs each run as ``execute(config, train)``, ``config`` the run's
            :func:`eos_run_config` and ``train()`` the training; ``None`` trains every run.
            The CLI passes a :class:`sharpdim.runner.ResumableRuns` that reuses stored runs.

    Returns:
        :class:`EoSRunsResult` with one GD run per step size.
    """
    _check_common(steps, every, late_fraction)
    lrs = check_numbers(lrs, "lrs", "> 0", "[0.05, 0.1]")
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
        execute=execute,
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
    max_examples: int | None = None,
    tol: float = 1e-4,
    progress: Progress | None = None,
    execute: Execute | None = None,
) -> EoSRunsResult:
    """Reproduction 3: heavy-ball momentum and Adam at their EoS thresholds, full batch.

    Args:
        runs: ``(optimizer, lr)`` pairs; optimizers ``"momentum"``, ``"nesterov"``, ``"adam"``,
            ``"adamw"`` or ``"gd"``.
        momentum, betas: the hyperparameters (torch conventions).
        setup, steps, every, late_fraction, max_examples, tol, progress, execute: as in
            :func:`progressive_sharpening`.

    Returns:
        :class:`EoSRunsResult`; each run's ratio is sharpness / ``(2 + 2 mu)/eta`` for
        momentum and preconditioned sharpness / ``(2 + 2 beta1)/(eta (1 - beta1))`` for Adam.
    """
    _check_common(steps, every, late_fraction)
    example = "[('momentum', 0.2), ('adam', 0.001)]"
    if isinstance(runs, (str, bytes)) or not hasattr(runs, "__iter__"):
        raise SharpdimError(
            f"runs must be (optimizer, lr) pairs, got {runs!r}: pass e.g. {example}"
        )
    runs = list(runs)
    if not runs:
        raise SharpdimError(f"no runs given: pass (optimizer, lr) pairs, e.g. {example}")
    if not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in runs):
        raise SharpdimError(
            f"runs must be (optimizer, lr) pairs, got {runs!r}: pass e.g. {example}"
        )
    pairs = [(name, check_number(lr, "each run's lr", "> 0", example)) for name, lr in runs]
    return _monitored_runs(
        "thresholds",
        pairs,
        setup or MLPSetup(),
        steps=steps,
        every=every,
        late_fraction=late_fraction,
        max_examples=max_examples,
        tol=tol,
        progress=progress,
        execute=execute,
        momentum=momentum,
        betas=betas,
    )
