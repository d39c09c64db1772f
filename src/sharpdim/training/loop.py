"""The training loop: full-batch GD, SGD, momentum, Adam/AdamW on an in-memory dataset.

One step ``s = 0, 1, ..., steps - 1``: take batch ``B_s`` (the full training set when
``batch_size`` is ``None``, else the next minibatch of a seeded per-epoch permutation), compute
``L_{B_s}(w_s)`` and its gradient, check for divergence, call the monitor and the callbacks
(parameters still ``w_s``, gradients in ``.grad``), then update ``w_s -> w_{s+1}``.

A run is deterministic given ``TrainConfig.seed`` and the model's initial parameters: the batch
order comes from a ``torch.Generator`` and anything else random in the model (dropout) draws
from PyTorch's global RNG seeded inside a forked RNG state, which is restored afterwards.
Checkpoints hold the state of both (and of the optimizer), and ``train(..., resume_from=path)``
continues a run from one: the resumed run's parameters equal the uninterrupted run's bit for bit.

Divergence never raises: a non-finite loss, a loss above
``divergence_factor * max(|L_0|, 1)`` (or above ``divergence_threshold``) or non-finite
parameters end the run with ``status="diverged"`` and the step where it was seen. Each step
tests its batch loss ``L_{B_s}(w_s)`` before its update; the parameters after the last update
are tested the same way on the full training loss, in training mode (for SGD: not the
minibatch loss).
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from sharpdim.checks import (
    check_betas,
    check_count,
    check_flag,
    check_number,
    check_seed,
    plain_scalar,
)
from sharpdim.curvature.hessian import refuse_output_target_loss, require_graph, scalar_loss
from sharpdim.curvature.params import get_flat_params
from sharpdim.errors import SharpdimError
from sharpdim.module_modes import ModeScope, restored_modes
from sharpdim.rng import forked_global_rng, python_random_kept
from sharpdim.training.checkpoint import (
    check_same_dtypes,
    prepare_checkpoint_dir,
    read_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from sharpdim.training.datasets import Dataset
from sharpdim.training.loop_state import (
    BatchStream,
    check_same_data,
    check_same_loss,
    check_same_modules,
    check_same_run,
    data_fingerprint,
    loss_label,
    module_structure,
    resumed_limit,
    run_fields,
)
from sharpdim.training.losses import LossFn, evaluate, get_loss
from sharpdim.training.optimizers import OPTIMIZERS, check_optimizer_options, make_optimizer


class StepMonitor(Protocol):
    """Anything with ``on_step(step, model, loss_value, optimizer)`` (e.g. ``EoSMonitor``)."""

    def on_step(
        self, step: int, model: nn.Module, loss_value: float, optimizer: torch.optim.Optimizer
    ) -> Any: ...


Callback = Callable[[int, nn.Module, float, torch.optim.Optimizer], Any]


# float fields and an example value of each; the optional ones (None allowed) last
_FLOATS = {"lr": "0.01", "momentum": "0.9", "eps": "1e-8", "weight_decay": "0"}
_OPTIONAL_FLOATS = {"divergence_threshold": "1e3", "stop_loss": "0.01"}


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of one training run.

    Attributes:
        optimizer: ``"gd"``, ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"``, ``"adamw"``.
        lr: step size ``eta``.
        momentum: momentum ``mu`` (heavy-ball and Nesterov only).
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's ``eps``.
        weight_decay: L2 coefficient (decoupled for AdamW).
        batch_size: minibatch size; ``None`` = full batch (gradient descent).
        steps: number of optimizer steps.
        loss: ``"mse"`` (one-hot targets, Cohen et al. 2021) or ``"ce"``.
        seed: seed of the batch order (and of dropout).
        eval_every: evaluate train and test loss/accuracy every this many steps (``0``: only
            at the end).
        log_every: record the step's minibatch loss in the history every this many steps.
        checkpoint_steps: after how many updates to take a checkpoint (``0`` = the initial
            parameters, ``steps`` = the final ones).
        checkpoint_dir: where to ``torch.save`` the checkpoints; ``None`` = none on disk.
        keep_snapshots: keep a flat copy of the parameters at each checkpoint step in memory.
        divergence_factor: diverged when the loss exceeds this times ``max(|L_0|, 1)``
            (``inf``: only a non-finite loss or non-finite parameters).
        divergence_threshold: diverged when the loss exceeds this (optional, absolute).
        stop_loss: stop early (status ``"ok"``) once the step's loss falls below this.
    """

    optimizer: str = "gd"
    lr: float = 0.01
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    batch_size: int | None = None
    steps: int = 1000
    loss: str = "mse"
    seed: int = 0
    eval_every: int = 0
    log_every: int = 1
    checkpoint_steps: tuple[int, ...] = ()
    checkpoint_dir: str | None = None
    keep_snapshots: bool = True
    divergence_factor: float = 1e6
    divergence_threshold: float | None = None
    stop_loss: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise SharpdimError(
                f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}"
            )
        get_loss(self.loss)
        object.__setattr__(self, "seed", check_seed(self.seed))
        # ("no" is truthy: it kept the snapshots)
        object.__setattr__(
            self, "keep_snapshots", check_flag(self.keep_snapshots, "keep_snapshots")
        )
        for name, minimum in (("steps", 0), ("eval_every", 0), ("log_every", 1)):
            object.__setattr__(self, name, check_count(getattr(self, name), name, minimum))
        # plain floats: a numpy or tensor scalar (an lr from np.logspace) would reach the
        # optimizer and the checkpoints, which torch.load(weights_only=True) then refuses
        for name, example in _FLOATS.items():
            object.__setattr__(self, name, check_number(getattr(self, name), name, "any", example))
        for name, example in _OPTIONAL_FLOATS.items():
            value = plain_scalar(getattr(self, name))
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if value is not None and not (real and math.isfinite(value)):
                raise SharpdimError(
                    f"{name} must be a finite number or None, got {value!r}: pass e.g. {example}"
                )
            object.__setattr__(self, name, None if value is None else float(value))
        factor = plain_scalar(self.divergence_factor)  # inf: only a non-finite loss diverges
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            raise SharpdimError(
                f"divergence_factor must be a number > 1, got {factor!r}: pass e.g. 1e6"
            )
        object.__setattr__(self, "divergence_factor", float(factor))
        if not self.lr > 0 or not self.divergence_factor > 1:
            raise SharpdimError(
                f"lr={self.lr}, divergence_factor={self.divergence_factor}: need lr > 0 and a "
                "divergence factor > 1"
            )
        object.__setattr__(self, "betas", check_betas(self.betas))  # (a pair for every optimizer)
        check_optimizer_options(
            self.optimizer,
            self.lr,
            self.momentum,
            self.betas,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )
        if self.batch_size is not None:
            size = check_count(self.batch_size, "batch_size", hint="a positive size or None")
            object.__setattr__(self, "batch_size", size)
        if isinstance(self.checkpoint_steps, (str, bytes)) or not isinstance(
            self.checkpoint_steps, Iterable
        ):
            raise SharpdimError(
                f"checkpoint_steps must be a sequence of steps, got {self.checkpoint_steps!r}: "
                "pass e.g. (0, 100)"
            )
        if self.checkpoint_dir is not None and not isinstance(self.checkpoint_dir, (str, PathLike)):
            raise SharpdimError(
                f"checkpoint_dir must be a path or None, got {self.checkpoint_dir!r}: "
                "pass e.g. 'checkpoints'"
            )
        wanted = [check_count(s, "a checkpoint step", 0) for s in self.checkpoint_steps]
        bad = [s for s in wanted if s > self.steps]
        if bad:
            raise SharpdimError(f"checkpoint steps {bad} are outside [0, {self.steps}]")
        object.__setattr__(self, "checkpoint_steps", tuple(sorted(set(wanted))))

    def make_optimizer(self, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
        """The ``torch.optim`` optimizer this configuration describes."""
        return make_optimizer(
            self.optimizer,
            params,
            lr=self.lr,
            momentum=self.momentum,
            betas=self.betas,
            eps=self.eps,
            weight_decay=self.weight_decay,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        status: ``"ok"`` or ``"diverged"``.
        diverged_at: the step whose loss (or parameters) first showed divergence, else ``None``
            (``steps_completed`` when the full training loss after the last update did: the
            loop tests each step's batch loss before its update, for SGD a minibatch loss).
        steps_completed: optimizer updates actually applied.
        final_train_loss, final_test_loss: full-set losses at the last parameters
            (``nan`` when the test set is empty; possibly ``inf``/``nan`` after divergence).
        final_train_accuracy, final_test_accuracy: accuracies, ``None`` for regression.
        history: ``(step, minibatch loss)`` pairs every ``log_every`` steps.
        evaluations: dicts ``{"step", "train_loss", "test_loss", "train_accuracy",
            "test_accuracy"}`` every ``eval_every`` steps and at the end of a run that did not
            diverge (a diverged run's last values are the ``final_*`` fields).
        checkpoint_paths: step -> file written (when ``checkpoint_dir`` is set).
        snapshots: step -> flat parameter vector (when ``keep_snapshots``).
        wall_time_s: seconds spent in :func:`train`.
    """

    status: str
    diverged_at: int | None
    steps_completed: int
    final_train_loss: float
    final_test_loss: float
    final_train_accuracy: float | None
    final_test_accuracy: float | None
    history: tuple[tuple[int, float], ...]
    evaluations: tuple[dict[str, Any], ...] = ()
    checkpoint_paths: Mapping[int, str] = field(default_factory=dict)
    snapshots: Mapping[int, torch.Tensor] = field(default_factory=dict)
    wall_time_s: float = 0.0

    @property
    def diverged(self) -> bool:
        return self.status == "diverged"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain Python values: snapshots as lists, and the step keys of
        ``checkpoint_paths`` and ``snapshots`` as strings (as JSON writes them), so the dict
        also goes into a :class:`~sharpdim.runner.store.ResultsStore` as it is."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "snapshots"}
        out["history"] = [list(h) for h in self.history]
        out["evaluations"] = [dict(e) for e in self.evaluations]
        out["checkpoint_paths"] = {str(k): v for k, v in self.checkpoint_paths.items()}
        out["snapshots"] = {str(k): v.tolist() for k, v in self.snapshots.items()}
        return out


def _overflow_free_step(optimizer: torch.optim.Optimizer) -> bool:
    """``optimizer.step()``, or ``False`` where torch raised because a step size overflows the
    parameters' dtype (e.g. Adam's ``lr / (1 - beta1)`` beyond float32). torch updates group
    by group, so with several groups the parameters are copied first and put back: an earlier
    group's update is not left applied when a later group overflows."""
    groups = optimizer.param_groups
    risky = len(groups) > 1 and any(_may_overflow(g) for g in groups)
    kept = [p.detach().clone() for g in groups for p in g["params"]] if risky else []
    try:
        optimizer.step()
    except RuntimeError as err:
        if "overflow" not in str(err):
            raise
        with torch.no_grad():
            for p, before in zip((p for g in groups for p in g["params"]), kept, strict=False):
                p.copy_(before)
        return False
    return True


def _may_overflow(group: dict[str, Any]) -> bool:
    """Whether a step size of ``group`` may not fit its parameters' dtype (torch then raises
    inside ``step()``): ``lr``, Adam's ``lr / (1 - beta1)`` or ``lr * weight_decay`` within a
    factor 2 of the dtype's largest value. Only then is copying the parameters worth it."""
    try:  # (a custom optimizer's group may hold no numbers there: copy, to be safe)
        lr, decay = float(group.get("lr", 0.0)), float(group.get("weight_decay", 0.0) or 0.0)
        beta1 = float(group["betas"][0]) if "betas" in group else 0.0
    except (TypeError, ValueError, IndexError):
        return True
    scale = max(abs(lr), abs(lr * decay), abs(decay)) / max(1.0 - beta1, 1e-300)
    largest = min((torch.finfo(p.dtype).max for p in group["params"] if p.is_floating_point()),
                  default=math.inf)  # fmt: skip
    return not scale < largest / 2


def _parameters_finite(params: Sequence[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def _evaluation(step: int, model: nn.Module, loss_fn: LossFn, dataset: Dataset) -> dict[str, Any]:
    train_loss, train_acc = evaluate(model, loss_fn, dataset.train_batch())
    test_loss, test_acc = evaluate(model, loss_fn, dataset.test_batch())
    return {
        "step": step,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "train_accuracy": train_acc,
        "test_accuracy": test_acc,
    }


def _check_train_arguments(
    model: Any,
    dataset: Any,
    config: Any,
    monitor: Any,
    callbacks: Any,
    loss_fn: Any,
    optimizer: Any,
    resume_from: Any,
) -> None:
    """One-line errors for arguments of :func:`train` of the wrong kind (they failed deep in
    the loop with an AttributeError or TypeError)."""
    kinds = [
        (isinstance(model, nn.Module), "model", model, "a torch.nn.Module"),
        (
            isinstance(dataset, Dataset),
            "dataset",
            dataset,
            "a Dataset, e.g. load_dataset('digits')",
        ),
        (isinstance(config, TrainConfig), "config", config, "a TrainConfig"),
        (
            monitor is None or callable(getattr(monitor, "on_step", None)),
            "monitor",
            monitor,
            "an object with on_step(step, model, loss, optimizer), e.g. an EoSMonitor (a "
            "function goes in callbacks=[...])",
        ),
        (
            not isinstance(callbacks, (str, bytes))
            and isinstance(callbacks, Sequence)
            and all(callable(c) for c in callbacks),
            "callbacks",
            callbacks,
            "a list of functions (step, model, loss, optimizer) -> None",
        ),
        (
            loss_fn is None or isinstance(loss_fn, str) or callable(loss_fn),
            "loss_fn",
            loss_fn,
            "a loss name ('ce', 'mse') or a function (model, batch) -> scalar",
        ),
        (
            optimizer is None or isinstance(optimizer, torch.optim.Optimizer),
            "optimizer",
            optimizer,
            "None or a torch.optim.Optimizer over the model's parameters (a name such as "
            "'sgd' goes in TrainConfig(optimizer=...))",
        ),
        (
            resume_from is None or isinstance(resume_from, (str, PathLike)),
            "resume_from",
            resume_from,
            "None or the path of a checkpoint file, e.g. checkpoint_path(folder, 100)",
        ),
    ]
    for ok, name, value, what in kinds:
        if not ok:
            raise SharpdimError(f"{name} must be {what}, got {type(value).__name__}")
    if dataset.num_train == 0 and config.steps > 0:
        raise SharpdimError(
            "the dataset has no training examples: pass a dataset with n_train >= 1"
        )


def _checked_loss_fn(loss_fn: Callable[..., Any]) -> LossFn:
    """``loss_fn`` with its value checked by :func:`~sharpdim.curvature.hessian.scalar_loss`
    (a non-finite value passes: in the loop it is a divergence, a recorded outcome)."""
    refuse_output_target_loss(loss_fn)

    def checked(model: nn.Module, batch: Any) -> torch.Tensor:
        return scalar_loss(loss_fn(model, batch))

    return checked


def _end_loss(model: nn.Module, loss_fn: LossFn, dataset: Dataset) -> float:
    """The full training loss at the final parameters in training mode, as the loop's own
    test sees a loss (eval mode would read batch norm's lagging running statistics: 5e7 against
    0.9 in a short run); buffers left alone, run in a fork of the RNG by the caller."""
    with ModeScope(model, "train"), torch.no_grad():
        return float(loss_fn(model, dataset.train_batch()))


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    monitor: StepMonitor | None = None,
    callbacks: Sequence[Callback] = (),
    loss_fn: LossFn | str | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = False,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``dataset`` as ``config`` says.

    Args:
        model: the network (its parameters are updated in place).
        dataset: a :class:`~sharpdim.training.datasets.Dataset`; floating tensors are cast to
            the model's dtype and device.
        config: the hyperparameters.
        monitor: an object whose ``on_step(step, model, loss_value, optimizer)`` is called at
            every step after the backward pass and before the update (parameters ``w_s``,
            ``loss_value = L_{B_s}(w_s)``), e.g. ``EoSMonitor``.
        callbacks: callables with the same arguments, called right after the monitor.
        loss_fn: a custom ``loss_fn(model, batch)`` (or a loss name) instead of
            ``config.loss``.
        optimizer: a ready optimizer over the model's parameters instead of ``config``'s.
        progress: show a rich progress bar.
        resume_from: a checkpoint written by an earlier ``train`` with the same ``config``,
            dataset and model architecture: load the parameters, the optimizer state, the
            batch order and the global RNG (dropout) from it and run its step up to
            ``config.steps``, bit-identically to the uninterrupted run. ``history`` and
            ``evaluations`` then start at the checkpoint's step. Checkpoints without the
            loop's state (older versions, or ``save_checkpoint`` called without
            ``loop_state``) replay the batch order from ``config.seed``; dropout then
            restarts from the seed, and the divergence limit is set from the loss at the
            checkpoint's step instead of step 0 (so such a run may diverge later than the
            uninterrupted one); a checkpoint the resumed run writes at that step records the
            limit as unknown (NaN), so a run resumed from it sets it the same way. A refused
            checkpoint leaves the model and optimizer as they were.

    Returns:
        A :class:`TrainResult`; divergence is reported in it, never raised. Each step's batch
        loss is tested before its update, and the full training loss after the last update
        (for SGD the in-loop test is on the minibatch loss, this one on the full set).
    """
    start = time.perf_counter()
    _check_train_arguments(
        model, dataset, config, monitor, callbacks, loss_fn, optimizer, resume_from
    )
    progress = check_flag(progress, "progress")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SharpdimError("the model has no trainable parameters: nothing to train")
    loss_name = loss_label(loss_fn, config)
    if loss_fn is None or isinstance(loss_fn, str):
        loss_fn = get_loss(config.loss if loss_fn is None else loss_fn)
    else:  # (a vector, a float or a detached loss failed deep in the loop)
        loss_fn = _checked_loss_fn(loss_fn)
    dataset = dataset.to(dtype=params[0].dtype, device=params[0].device)
    if optimizer is None and config.lr > torch.finfo(params[0].dtype).max:
        raise SharpdimError(
            f"lr={config.lr:g} does not fit in the model's {params[0].dtype} (largest "
            f"{torch.finfo(params[0].dtype).max:.3g}): pass a smaller lr or a float64 model"
        )
    if optimizer is not None:  # (one over another model instance trained nothing: "ok")
        held = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if not held & {id(p) for p in params}:
            raise SharpdimError(
                "the optimizer holds none of the model's trainable parameters (built over "
                "another model?): pass an optimizer over model.parameters()"
            )
    optimizer = config.make_optimizer(params) if optimizer is None else optimizer
    if config.steps > 0 and config.batch_size is not None:  # (before a checkpoint is written)
        dataset.check_batch_size(config.batch_size)
    checkpoints = set(config.checkpoint_steps)
    if config.checkpoint_dir is not None and checkpoints:
        prepare_checkpoint_dir(config.checkpoint_dir)
    first, loop_state = 0, None
    stream = BatchStream(dataset, config.batch_size, config.seed)
    fingerprint = functools.cache(lambda: data_fingerprint(dataset))  # (once: it reads all)
    if resume_from is not None:
        saved = read_checkpoint(resume_from)
        loop_state = saved.get("loop")
        check_same_dtypes(saved, resume_from, model)  # (before the data, cast to the model's)
        if loop_state is not None and "config" in loop_state:
            check_same_run(loop_state["config"], config, resume_from)
        if loop_state is not None and "data" in loop_state:
            check_same_data(loop_state["data"], dataset, resume_from, fingerprint)
        if loop_state is not None and "loss_fn" in loop_state:  # (since 2026-11-24)
            check_same_loss(loop_state["loss_fn"], loss_name, resume_from)
        if loop_state is not None and "modules" in loop_state:
            check_same_modules(loop_state["modules"], model, resume_from)
        if saved["step"] > config.steps:  # (every refusal before the model is overwritten)
            raise SharpdimError(
                f"{resume_from} is at step {saved['step']}, past steps={config.steps}: "
                "raise steps or resume from an earlier checkpoint"
            )
        if loop_state is not None:
            stream.restore(loop_state["batches"], str(resume_from))
        else:
            stream.skip(saved["step"])  # an older checkpoint: replay the batch order
        first = restore_checkpoint(saved, resume_from, model, optimizer)
    history: list[tuple[int, float]] = []
    evaluations: list[dict[str, Any]] = []
    paths: dict[int, str] = {}
    snapshots: dict[int, torch.Tensor] = {}

    def checkpoint(step: int) -> None:  # called inside the forked RNG state
        if step not in checkpoints:
            return
        # Once per step: after a stop_loss break at this step, the batches and RNG moved on.
        checkpoints.discard(step)
        if config.checkpoint_dir is not None:
            state = {
                "batches": stream.state(),
                "rng": torch.get_rng_state(),
                "limit": limit,
                "config": run_fields(config),
                "data": fingerprint(),
                "loss_fn": loss_name,
                "modules": module_structure(model),
            }
            if params[0].device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(params[0].device)
            paths[step] = str(
                save_checkpoint(Path(config.checkpoint_dir), step, model, optimizer, state)
            )
        if config.keep_snapshots:
            snapshots[step] = get_flat_params(params).cpu()

    status, diverged_at, step = "ok", None, first
    # NaN until the loss it comes from is seen (a checkpoint at this step records it so)
    limit = resumed_limit(loop_state, config)
    bar = _progress_bar(config.steps - first) if progress else None
    # the global CPU generator and that of the model's CUDA device, seeded and restored after;
    # every submodule's train/eval flag restored after the run (it runs in training mode)
    with (
        forked_global_rng(config.seed, params[:1]),
        torch.enable_grad(),  # (no_grad around)
        restored_modes(model),
    ):
        if loop_state is not None:
            torch.set_rng_state(loop_state["rng"])
            if "cuda_rng" in loop_state and params[0].device.type == "cuda":
                torch.cuda.set_rng_state(loop_state["cuda_rng"], params[0].device)
        model.train()
        try:
            for step in range(first, config.steps):
                checkpoint(step)
                if config.eval_every and step % config.eval_every == 0:
                    evaluations.append(_evaluation(step, model, loss_fn, dataset))
                    model.train()
                batch = next(stream)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model, batch)
                value = float(loss.detach())
                if math.isfinite(value):  # (a detached NaN/inf is a divergence, recorded)
                    require_graph(loss)
                if step == 0 or math.isnan(limit):
                    limit = config.divergence_factor * max(abs(value), 1.0)
                    if config.divergence_threshold is not None:
                        limit = min(limit, config.divergence_threshold)
                if not math.isfinite(value) or value > limit:
                    status, diverged_at = "diverged", step
                    break
                if step % config.log_every == 0:
                    history.append((step, value))
                loss.backward()
                if monitor is not None:
                    monitor.on_step(step, model, value, optimizer)
                for callback in callbacks:
                    callback(step, model, value, optimizer)
                if config.stop_loss is not None and value < config.stop_loss:
                    break
                if not _overflow_free_step(optimizer):
                    status, diverged_at = "diverged", step + 1  # (that update not applied)
                    break
                if bar is not None:
                    bar[0].update(bar[1], advance=1, description=f"loss {value:.4g}")
                if not _parameters_finite(params):
                    status, diverged_at = "diverged", step + 1
                    step += 1
                    break
            else:
                step = config.steps
        finally:
            if bar is not None:
                bar[0].stop()
        with forked_global_rng(None, params[:1]):  # (the checkpoint keeps the run's RNG)
            final = _evaluation(step, model, loss_fn, dataset)
            # the loop tests each step's loss before its update: this tests the last update's
            # (the full training loss in training mode; before the final checkpoint, which a
            # diverged end skips)
            if status == "ok" and step > first:
                end = _end_loss(model, loss_fn, dataset)
                if not math.isfinite(end) or end > limit:
                    status, diverged_at = "diverged", step
        if status == "ok":
            checkpoint(step)
    if status == "ok" and (not evaluations or evaluations[-1]["step"] != step):
        evaluations.append(final)
    return TrainResult(
        status=status,
        diverged_at=diverged_at,
        steps_completed=step,
        final_train_loss=final["train_loss"],
        final_test_loss=final["test_loss"],
        final_train_accuracy=final["train_accuracy"],
        final_test_accuracy=final["test_accuracy"],
        history=tuple(history),
        evaluations=tuple(evaluations),
        checkpoint_paths=paths,
        snapshots=snapshots,
        wall_time_s=time.perf_counter() - start,
    )


def _interactive(console: Any) -> bool:
    """Whether a live progress bar shows (a terminal or a notebook); on a pipe it only left
    a blank line."""
    return bool(console.is_terminal or console.is_jupyter)


def _progress_bar(total: int) -> tuple[Any, Any]:
    with python_random_kept():  # (rich's first import draws from Python's random)
        from rich import get_console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        disable=not _interactive(get_console()),  # (piped: it only left a blank first line)
    )
    task = bar.add_task("training", total=total)
    bar.start()
    return bar, task
