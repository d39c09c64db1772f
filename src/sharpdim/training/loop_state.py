"""What a checkpoint needs to continue a :func:`~sharpdim.training.loop.train` run exactly.

:class:`BatchStream` is the loop's sequence of batches (the full batch forever, or seeded
permutations epoch after epoch) with a state to save and restore; :func:`run_fields` are the
config fields that shape the trajectory, which a resumed run must share
(:func:`check_same_run`), together with the loss used (:func:`loss_label`) and the model's
modules (:func:`module_structure`); :func:`resumed_limit` is the divergence limit a resumed run
starts with.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, final

import torch
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Batch, Dataset
from sharpdim.training.losses import LOSSES

if TYPE_CHECKING:
    from sharpdim.training.loop import TrainConfig


@final
class BatchStream:
    """Full batch forever, or minibatches of fresh seeded permutations, epoch after epoch.

    :meth:`state` is what a checkpoint needs to continue the same sequence: the generator's
    state at the start of the current epoch and how many of that epoch's batches were taken.
    """

    def __init__(self, dataset: Dataset, batch_size: int | None, seed: int) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch_start, self.taken = self.generator.get_state(), 0
        self.epoch: Iterator[Batch] | None = None

    def __next__(self) -> Batch:
        if self.batch_size is None:
            return self.dataset.train_batch()
        while True:
            if self.epoch is None:
                self.epoch_start, self.taken = self.generator.get_state(), 0
                self.epoch = self.dataset.batches(self.batch_size, self.generator)
            batch = next(self.epoch, None)
            if batch is not None:
                self.taken += 1
                return batch
            self.epoch = None

    def state(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "epoch_start": self.epoch_start, "taken": self.taken}

    def restore(self, state: Mapping[str, Any], path: str | Path) -> None:
        if state["batch_size"] != self.batch_size:
            raise SharpdimError(
                f"{path} was written with batch_size={state['batch_size']}, not "
                f"{self.batch_size}: resume with the configuration of the interrupted run"
            )
        if self.batch_size is None:
            return
        self.generator.set_state(state["epoch_start"])
        self.epoch_start, self.taken = state["epoch_start"], int(state["taken"])
        self.epoch = self.dataset.batches(self.batch_size, self.generator)
        for _ in range(self.taken):
            if next(self.epoch, None) is None:
                raise SharpdimError(
                    f"{path} is {self.taken} batches into an epoch, more than this dataset "
                    "has: resume with the dataset of the interrupted run"
                )

    def skip(self, count: int) -> None:
        for _ in range(count):
            next(self)


_RUN_FIELDS = (
    "optimizer",
    "lr",
    "momentum",
    "betas",
    "eps",
    "weight_decay",
    "batch_size",
    "loss",
    "seed",
    "divergence_factor",
    "divergence_threshold",
)
"""The fields of a :class:`TrainConfig` that shape the trajectory (a resume must match them)."""


def run_fields(config: TrainConfig) -> dict[str, Any]:
    return {name: _plain(getattr(config, name)) for name in _RUN_FIELDS}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def check_same_run(saved: Mapping[str, Any], config: TrainConfig, path: str | Path) -> None:
    """Refuse to resume a checkpoint under a config that would train differently."""
    now = run_fields(config)
    differ = [
        f"{k}={_plain(saved.get(k))!r} (now {now[k]!r})"
        for k in now
        if _plain(saved.get(k)) != now[k]
    ]
    if differ:
        raise SharpdimError(
            f"{path} was written with {', '.join(differ)}: resume with the configuration of "
            "the interrupted run"
        )


def loss_label(loss_fn: Any, config: TrainConfig) -> str:
    """The loss a run trains on, as a checkpoint records it: a built-in loss by its function's
    name (so ``"ce"`` and ``"cross_entropy"`` agree), a custom ``loss_fn`` by its module and
    qualified name (its code cannot be compared)."""
    if loss_fn is None or isinstance(loss_fn, str):
        name = config.loss if loss_fn is None else loss_fn
        return LOSSES[name].__name__ if name in LOSSES else name
    if loss_fn in LOSSES.values():  # (get_loss("ce") itself)
        return str(loss_fn.__name__)
    function = getattr(loss_fn, "func", loss_fn)  # (a functools.partial: its function)
    qualname = getattr(function, "__qualname__", type(function).__qualname__)
    return f"{getattr(function, '__module__', None)}.{qualname}"


def check_same_loss(saved: str, now: str, path: str | Path) -> None:
    """Refuse to resume a checkpoint with another loss than it was written with."""
    if saved != now:
        raise SharpdimError(
            f"{path} was written with the loss {saved} (now {now}): resume with the loss_fn "
            "of the interrupted run"
        )


_STATEFUL_REPRS = (nn.ParameterList, nn.ParameterDict)
"""torch.nn modules whose ``extra_repr`` lists their tensors (and devices), not settings."""


def module_structure(model: nn.Module) -> list[list[str]]:
    """Each submodule's name, class and, for the layers of ``torch.nn.modules``, settings
    (``extra_repr``): what a checkpoint's state dict does not show (an activation, a dropout
    rate, a layer norm's eps). Other modules are named by their class alone: a user's own
    ``extra_repr``, or quantization observers' (``torch.ao``), may show values that change in
    training."""

    def settings(module: nn.Module) -> str:
        layer = type(module).__module__.startswith("torch.nn.modules.")
        if not layer or isinstance(module, _STATEFUL_REPRS):
            return ""
        return " ".join(module.extra_repr().split())  # (one line in a message)

    return [
        [name, type(module).__qualname__, settings(module)]
        for name, module in model.named_modules()
    ]


def check_same_modules(saved: list[list[str]], model: nn.Module, path: str | Path) -> None:
    """Refuse to resume a checkpoint on a model whose modules differ from those it was written
    from, though their parameters fit (e.g. ReLU for Tanh)."""
    now = module_structure(model)
    if [list(entry) for entry in saved] == now:
        return
    was, new = _first_difference(saved, now)
    raise SharpdimError(
        f"{path} was written from another model ({was}; now {new}): build the model with the "
        "architecture of the interrupted run"
    )


def _first_difference(saved: list[list[str]], now: list[list[str]]) -> tuple[str, str]:
    def word(entry: list[str] | None) -> str:
        if entry is None:
            return "no such module"
        name, kind, settings = entry
        return f"module {name or '(root)'!r} {kind}({settings})"

    for index in range(max(len(saved), len(now))):
        old = list(saved[index]) if index < len(saved) else None
        new = now[index] if index < len(now) else None
        if old != new:
            return word(old), word(new)
    return "", ""  # (not reached: the lists differ)


def resumed_limit(loop_state: Mapping[str, Any] | None, config: TrainConfig) -> float:
    """The divergence limit a run resumed from a checkpoint with ``loop_state`` starts with;
    NaN when it is not known yet (it is then set from the loss at the checkpoint's step).

    Unknown: a checkpoint without loop state, one that holds NaN (written at its run's first
    step, before that step's loss was seen), or one that holds ``inf`` under a config that
    bounds the loss (a ``divergence_threshold`` or a finite ``divergence_factor``): earlier
    versions wrote the unknown limit as ``inf``, and a run resumed from such a file never
    diverged by its loss again. (An ``inf`` that is real under such a config, a step-0 loss
    above ``float max / divergence_factor``, is then also set from the checkpoint's step.)
    """
    if loop_state is None:
        return math.nan
    limit = float(loop_state["limit"])
    bounded = config.divergence_threshold is not None or math.isfinite(config.divergence_factor)
    return math.nan if limit == math.inf and bounded else limit


def data_fingerprint(dataset: Dataset, *, sampled: bool = False) -> dict[str, Any]:
    """Which training set a run trains on: its size, input shape and a SHA-256 of every
    example (inputs and targets as float64, so a cast to the model's dtype keeps it).

    ``sampled=True`` hashes 64 evenly spaced examples only: the fingerprint that checkpoints
    written before 2026-11-24 hold (they have no ``"rows"`` entry), which missed a change in
    any other example (relabelled examples of a label-noise study).
    """
    import hashlib

    n = dataset.num_train
    if sampled:
        rows = torch.linspace(0, n - 1, min(n, 64)).round().long() if n else torch.zeros(0).long()
        parts = (dataset.x_train[rows], dataset.y_train[rows])
    else:
        parts = (dataset.x_train, dataset.y_train)
    digest = hashlib.sha256()
    for part in parts:
        # in chunks of rows (the same bytes in the same order as one update): the float64
        # copy of 60,000 MNIST images alone is 376 MB
        per_chunk = max(1, 2**22 // max(1, part[0].numel() if len(part) else 1))
        for start in range(0, len(part), per_chunk):
            chunk = part[start : start + per_chunk].detach().to("cpu", torch.float64).contiguous()
            digest.update(chunk.numpy().data)  # (the buffer itself: the same bytes, no copy)
    fingerprint: dict[str, Any] = {
        "num_train": n,
        "input_shape": list(dataset.x_train.shape[1:]),
        "sha256": digest.hexdigest(),
    }
    if not sampled:
        fingerprint["rows"] = "all"
    return fingerprint


def check_same_data(
    saved: Mapping[str, Any],
    dataset: Dataset,
    path: str | Path,
    fingerprint: Callable[[], dict[str, Any]] | None = None,
) -> None:
    """Refuse to resume a checkpoint on another training set than the one it was written on
    (``fingerprint``: the dataset's :func:`data_fingerprint`, when the caller has it)."""
    if "rows" not in saved:  # (an older checkpoint's sampled fingerprint)
        now = data_fingerprint(dataset, sampled=True)
    else:
        now = data_fingerprint(dataset) if fingerprint is None else fingerprint()
    if dict(saved) != now:
        was = f"{saved.get('num_train')} examples of shape {saved.get('input_shape')}"
        raise SharpdimError(
            f"{path} was written on another training set ({was}; now {now['num_train']} of "
            f"shape {now['input_shape']}, or other values): resume on the data of the "
            "interrupted run"
        )
