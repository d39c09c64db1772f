"""Trajectory capture: the last iterates of a training run, or simulated steps from ``w*``.

Trajectory-based complexity measures (PH0 dimension, Birdal et al., NeurIPS 2021; the
data-dependent variant of Dupuis et al., ICML 2023; ``E_alpha``, Andreeva et al. 2024) are
computed on a set of iterates ``{w_t}`` near the end of training. Two ways to get them:

* **backward**: the last ``N`` iterates of an actual run. :class:`IterateRecorder` is a
  :func:`~sharpdim.training.loop.train` callback holding a ring buffer of ``N`` flat parameter
  vectors (every ``every``-th step); when ``N x d`` exceeds ``max_memory_bytes`` the buffer is
  a ``.npy`` memmap on disk instead of RAM. :func:`capture_backward` trains and records.
* **forward**: ``N`` steps of the real optimizer step (:class:`TrainingMap`) from a given
  ``w*`` with fresh minibatches (:func:`capture_forward`).

:func:`per_example_losses` turns a trajectory into the per-example loss vectors on which the
loss-based pseudo-metric of Dupuis et al. is defined.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sharpdim.checks import check_count, check_flag, default_generator
from sharpdim.curvature.params import get_flat_params, set_flat_params, trainable_parameters
from sharpdim.dynamics.step_maps import TrainingMap
from sharpdim.errors import SharpdimError
from sharpdim.module_modes import restored_modes
from sharpdim.training.datasets import Dataset
from sharpdim.training.loop import TrainConfig, TrainResult, train
from sharpdim.training.losses import cross_entropy_terms, get_loss, squared_errors


@dataclass(frozen=True)
class Trajectory:
    """Iterates of a run, oldest first.

    Attributes:
        points: ``(N, d)`` float tensor (memmap-backed when ``path`` is set).
        steps: ``(N,)`` int64 step index of each iterate.
        losses: ``(N,)`` float64 minibatch loss at each iterate (NaN where unknown).
        path: the ``.npy`` file holding ``points`` when spilled to disk, else ``None``.
        kind: ``"backward"`` or ``"forward"``.
        diverged_at: forward only: the step ``t`` whose update gave a non-finite state (the
            run ends there, the iterates up to ``w_t`` are kept), else ``None``.
    """

    points: torch.Tensor
    steps: torch.Tensor
    losses: torch.Tensor
    path: str | None
    kind: str
    diverged_at: int | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_points": len(self),
            "dim": int(self.points.shape[1]) if self.points.ndim == 2 else 0,
            "steps": self.steps.tolist(),
            "losses": [v if math.isfinite(v) else None for v in self.losses.tolist()],
            "path": self.path,
            "kind": self.kind,
            "diverged_at": self.diverged_at,
        }


_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _reserve(path: Path) -> None:
    """Allocate the blocks of the (sparse) file ``path`` now: ENOSPC is then a one-line error
    here, not a SIGBUS when a row is written through the memmap."""
    if not hasattr(os, "posix_fallocate"):  # (macOS, Windows: the free-space check only)
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # (a filesystem without it)
            return
        raise SharpdimError(
            f"cannot reserve {_size(size)} for {path} ({exc.strerror or exc}): pass a "
            "spill_dir with more space, or record fewer iterates"
        ) from exc
    finally:
        os.close(fd)


class IterateRecorder:
    """A ``train`` callback keeping the last ``num_iterates`` flat parameter vectors.

    Called as ``recorder(step, model, loss_value, optimizer)`` (parameters ``w_step``, before
    the update); records every ``every``-th step in a ring buffer, in RAM or, when
    ``num_iterates * d * itemsize > max_memory_bytes``, in a ``.npy`` memmap in a new folder
    of its own inside ``spill_dir`` (the system's temporary directory by default), which must
    have twice that free (the ring, and its copy in time order at :meth:`finish`); the space
    is reserved when the ring is made. Steps and losses stay in RAM (16 bytes an iterate).
    :meth:`finish` optionally appends the final parameters and returns the
    :class:`Trajectory` in time order.
    """

    def __init__(
        self,
        num_iterates: int,
        *,
        every: int = 1,
        max_memory_bytes: int = 256 * 2**20,
        spill_dir: str | Path | None = None,
    ) -> None:
        num_iterates = check_count(num_iterates, "num_iterates")
        every = check_count(every, "every")
        max_memory_bytes = check_count(max_memory_bytes, "max_memory_bytes", 0)
        self.num_iterates, self.every = num_iterates, every
        self.max_memory_bytes = max_memory_bytes
        self.spill_dir = spill_dir
        self._buffer: np.ndarray | None = None
        self._path: Path | None = None
        try:  # (in RAM whatever max_memory_bytes says: 16 bytes an iterate)
            self._steps = np.zeros(num_iterates, dtype=np.int64)
            self._losses = np.full(num_iterates, np.nan)
        except MemoryError:
            raise SharpdimError(
                f"num_iterates={num_iterates} needs {_size(16 * num_iterates)} of RAM for the "
                "steps and losses alone: record fewer iterates"
            ) from None
        self._count = 0
        self._dtype: torch.dtype = torch.float32
        self._handed_over: str | None = None  # the file finish() moved a spilled ring to

    @property
    def count(self) -> int:
        """Iterates recorded so far (including overwritten ones)."""
        return self._count

    @property
    def on_disk(self) -> bool:
        return self._path is not None

    def _allocate(self, w: torch.Tensor) -> np.ndarray:
        self._dtype = w.dtype
        np_dtype = _NP_DTYPES.get(w.dtype)
        if np_dtype is None:
            raise SharpdimError(f"cannot record parameters of dtype {w.dtype}: use float32/64")
        shape = (self.num_iterates, w.numel())
        nbytes = shape[0] * shape[1] * np.dtype(np_dtype).itemsize
        if nbytes <= self.max_memory_bytes:
            return np.empty(shape, dtype=np_dtype)
        try:  # a folder of its own, so recorders sharing spill_dir never share files
            if self.spill_dir is not None:
                Path(self.spill_dir).mkdir(parents=True, exist_ok=True)
            folder = tempfile.mkdtemp(prefix="sharpdim-trajectory-", dir=self.spill_dir)
        except OSError as exc:
            raise SharpdimError(
                f"cannot create a spill folder in {self.spill_dir} ({exc.strerror or exc}): "
                "pass a writable spill_dir"
            ) from exc
        self._path = Path(folder) / "ring.npy"
        # the ring and finish()'s copy of it; a memmap of a sparse file on a full disk dies by
        # SIGBUS at the first row written, so the space is checked and the ring's reserved
        free = shutil.disk_usage(folder).free
        if free < 2 * nbytes:
            self._give_up_spill()
            raise SharpdimError(
                f"recording {shape[0]} iterates of {shape[1]} parameters needs {_size(2 * nbytes)}"
                f" on disk (the ring and its copy at finish()), {Path(folder).parent} has "
                f"{_size(free)} free: "
                "pass a spill_dir with more space, or record fewer iterates"
            )
        ring = np.lib.format.open_memmap(self._path, mode="w+", dtype=np_dtype, shape=shape)
        try:
            _reserve(self._path)
        except SharpdimError:
            del ring
            self._give_up_spill()
            raise
        return ring

    def _give_up_spill(self) -> None:
        """Remove the spill folder made for a ring that is not kept."""
        if self._path is not None:
            shutil.rmtree(self._path.parent, ignore_errors=True)
            self._path = None

    def _check_not_handed_over(self) -> None:
        if self._handed_over is not None:
            raise SharpdimError(
                f"this recorder's iterates went to {self._handed_over} at finish() (a ring on "
                "disk is handed over, not copied): start a new IterateRecorder"
            )

    def record(self, step: int, w: torch.Tensor, loss_value: float = math.nan) -> None:
        """Store ``w`` (flat) as the iterate of ``step``."""
        self._check_not_handed_over()
        if not isinstance(w, torch.Tensor):
            raise SharpdimError(
                f"an iterate must be a tensor, got {type(w).__name__}: pass the flat "
                "parameters, e.g. get_flat_params(model.parameters())"
            )
        flat = w.detach().reshape(-1).cpu()
        if self._buffer is None:
            self._buffer = self._allocate(flat)
        if flat.numel() != self._buffer.shape[1]:
            raise SharpdimError(
                f"iterate of size {flat.numel()} but the recorder holds {self._buffer.shape[1]}"
            )
        slot = self._count % self.num_iterates
        self._buffer[slot] = flat.to(self._dtype).numpy()
        self._steps[slot], self._losses[slot] = step, loss_value
        self._count += 1

    def __call__(self, step: int, model: nn.Module, loss_value: float, optimizer: Any) -> None:
        if step % self.every == 0:
            self.record(step, get_flat_params(trainable_parameters(model)), loss_value)

    def finish(self, final: tuple[int, torch.Tensor] | None = None) -> Trajectory:
        """The recorded iterates in time order (``final = (step, w)`` appended first).

        ``final`` is skipped when its step is already the last recorded one (a run stopped by
        ``stop_loss`` ends on a recorded iterate). A ring spilled to disk is handed over to
        the returned trajectory's file, which ends the recorder (later calls are refused); one
        in RAM is copied and may go on recording (``final`` is not kept in it).
        """
        self._check_not_handed_over()
        last = int(self._steps[(self._count - 1) % self.num_iterates]) if self._count else None
        slot, undo = self._count % self.num_iterates, None
        if final is not None and final[0] != last:  # recorded, and undone below for a RAM ring
            row = None if self._buffer is None else self._buffer[slot].copy()
            undo = (row, self._steps[slot], self._losses[slot])
            self.record(final[0], final[1])
        if self._buffer is None:
            raise SharpdimError("no iterate was recorded: train for at least one step")
        n = min(self._count, self.num_iterates)
        start = self._count % self.num_iterates if self._count > self.num_iterates else 0
        order = (np.arange(n) + start) % self.num_iterates
        steps = torch.from_numpy(self._steps[order].copy())
        losses = torch.from_numpy(self._losses[order].copy())
        if self._path is None:
            points = torch.from_numpy(np.ascontiguousarray(self._buffer[order]))
            if undo is not None:  # the recorder goes on from its own last iterate
                row, self._steps[slot], self._losses[slot] = undo
                self._count -= 1
                if row is None:
                    self._buffer = None
                else:
                    self._buffer[slot] = row
            return Trajectory(points, steps, losses, None, "backward")
        out_path = self._path.with_name("trajectory.npy")
        out = np.lib.format.open_memmap(
            out_path, mode="w+", dtype=self._buffer.dtype, shape=(n, self._buffer.shape[1])
        )
        try:
            _reserve(out_path)
        except SharpdimError:
            del out
            out_path.unlink()
            raise
        chunk = max(1, (64 * 2**20) // max(1, self._buffer.shape[1] * self._buffer.itemsize))
        for i in range(0, n, chunk):
            out[i : i + chunk] = self._buffer[order[i : i + chunk]]
        out.flush()
        del self._buffer
        self._buffer = None
        self._path.unlink()
        self._path = None
        self._handed_over = str(out_path)
        return Trajectory(torch.from_numpy(out), steps, losses, str(out_path), "backward")


def capture_backward(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    num_iterates: int,
    *,
    every: int = 1,
    include_final: bool = True,
    max_memory_bytes: int = 256 * 2**20,
    spill_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[TrainResult, Trajectory]:
    """Train ``model`` with ``config`` and keep its last ``num_iterates`` iterates.

    Returns:
        ``(train result, trajectory)``; with ``include_final`` the parameters after the last
        update are the trajectory's last point (step ``steps_completed``). A diverged run's
        trajectory ends at the last iterate before the one that diverged (no final point);
        one that diverged at step 0 gives an empty trajectory (``points`` of shape ``(0, d)``
        in the parameters' dtype, no steps), so its divergence stays a recorded outcome.
    """
    include_final = check_flag(include_final, "include_final")
    recorder = IterateRecorder(
        num_iterates, every=every, max_memory_bytes=max_memory_bytes, spill_dir=spill_dir
    )
    result = train(model, dataset, config, callbacks=[recorder], progress=progress)
    params = trainable_parameters(model)
    if result.diverged and recorder.count == 0:  # (diverged at step 0: nothing recorded)
        dim = sum(p.numel() for p in params)
        return result, Trajectory(
            torch.empty(0, dim, dtype=params[0].dtype),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, dtype=torch.float64),
            None,
            "backward",
        )
    final = None
    if include_final and result.status == "ok":
        final = (result.steps_completed, get_flat_params(params))
    return result, recorder.finish(final)


def fresh_batches(
    dataset: Dataset, batch_size: int | None, num_steps: int, generator: torch.Generator
) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """``t -> batch``: an independent uniform minibatch per step (full batch for ``None``).

    The indices are drawn up front, so the same ``t`` always gives the same batch.
    """
    _check_dataset(dataset)
    n = dataset.num_train
    if batch_size is None:
        full = dataset.train_batch()
        return lambda t: full
    batch_size = check_count(batch_size, "batch_size", hint="a positive size or None")
    if not 1 <= batch_size <= n:
        raise SharpdimError(f"batch_size={batch_size} is not in [1, {n}]: choose one in that range")
    idx = torch.stack(
        [torch.randperm(n, generator=generator)[:batch_size] for _ in range(num_steps)]
    )
    x, y = dataset.x_train, dataset.y_train
    return lambda t: (x[idx[t % num_steps]], y[idx[t % num_steps]])


def _check_dataset(dataset: Any) -> None:
    if not isinstance(dataset, Dataset):
        raise SharpdimError(
            f"dataset must be a Dataset, got {type(dataset).__name__}: pass e.g. "
            "load_dataset('digits'), or Dataset(name, x_train, y_train, x_test, y_test, "
            "num_classes) for your own tensors"
        )


def capture_forward(
    model: nn.Module,
    dataset: Dataset,
    w_star: torch.Tensor,
    num_steps: int,
    *,
    lr: float,
    optimizer: str = "sgd",
    batch_size: int | None = None,
    loss: str = "mse",
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    every: int = 1,
    **map_options: Any,
) -> Trajectory:
    """``num_steps`` steps of the real optimizer from ``w*`` with fresh minibatches.

    The optimizer state starts at zero (momentum, Adam moments). The trajectory holds
    ``w*`` and every ``every``-th iterate after it (``num_steps // every + 1`` points). A
    diverging run (non-finite loss or state at step ``t``) ends there with ``diverged_at = t``.

    Args:
        model: the network (its parameters are not modified).
        dataset: training data; w_star: flat parameters to start from.
        lr, optimizer, map_options: the step (see :class:`TrainingMap`).
        batch_size: minibatch size (``None``: full batch, i.e. gradient descent).
        loss: ``"mse"`` or ``"ce"``; loss_fn: a custom ``loss_fn(model, batch)`` instead.
        generator: draws the minibatches (default seed 0).
        num_steps, every: whole numbers ``>= 0`` and ``>= 1`` (an int, a whole float such as
            ``5.0`` or a 0-dim tensor of one; bools and fractions are refused).
    """
    num_steps = check_count(num_steps, "num_steps", 0, "e.g. 100")
    every = check_count(every, "every", hint="e.g. 1")
    _check_dataset(dataset)
    if not isinstance(w_star, torch.Tensor) or w_star.is_complex() or w_star.dtype == torch.bool:
        got = w_star.dtype if isinstance(w_star, torch.Tensor) else type(w_star).__name__
        raise SharpdimError(
            f"w_star must be a real tensor of flat parameters, got {got}: pass e.g. "
            "get_flat_params(trainable_parameters(model)) or a trajectory's point"
        )
    params = trainable_parameters(model)
    data = dataset.to(dtype=params[0].dtype, device=params[0].device)
    gen = default_generator(generator)
    batches = fresh_batches(data, batch_size, max(num_steps, 1), gen)
    fn = get_loss(loss) if loss_fn is None else loss_fn
    phi = TrainingMap(model, fn, batches, optimizer=optimizer, lr=lr, **map_options)
    w = w_star.detach().to(params[0].dtype).reshape(-1)
    if w.numel() != phi.num_params:
        raise SharpdimError(f"w_star has {w.numel()} entries, the model {phi.num_params}")
    x = torch.cat([w] + [torch.zeros_like(w)] * (phi.num_blocks - 1))
    points, steps = [w.clone()], [0]
    diverged_at: int | None = None
    for t in range(num_steps):
        x = phi.step(x, t)
        if not torch.isfinite(x).all():
            diverged_at = t
            break
        if (t + 1) % every == 0:
            points.append(phi.params(x).clone())
            steps.append(t + 1)
    return Trajectory(
        torch.stack(points),
        torch.tensor(steps, dtype=torch.int64),
        torch.full((len(steps),), math.nan, dtype=torch.float64),
        None,
        "forward",
        diverged_at,
    )


def _example_losses(model: nn.Module, loss: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example losses of the named loss (same conventions as ``training.losses``)."""
    out = model(x)
    if out.ndim > 2:
        raise SharpdimError(
            f"per-example losses need one output row per example, got outputs of shape "
            f"{tuple(out.shape)}: use a model with outputs (n, C), e.g. last_only=True"
        )
    if loss == "mse":
        return squared_errors(out, y)
    return cross_entropy_terms(out, y, reduction="none")


@torch.no_grad()
def per_example_losses(
    model: nn.Module,
    points: torch.Tensor,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    loss: str = "mse",
) -> torch.Tensor:
    """``(N, n)`` float64 losses ``l(w_i, z_j)`` of each iterate on each example of ``batch``.

    These vectors carry the data-dependent pseudo-metric of Dupuis et al. (ICML 2023),
    ``rho_S(w, w') = (1/n) sum_j |l(w, z_j) - l(w', z_j)|`` (``metric="loss"`` of
    :func:`sharpdim.dimension.ph_dimension.ph_dimension`). Evaluated in eval mode; the model's
    parameters and mode are restored.
    """
    get_loss(loss)
    if loss == "cross_entropy":
        loss = "ce"
    if not (
        isinstance(batch, (tuple, list))
        and len(batch) == 2
        and all(isinstance(t, torch.Tensor) for t in batch)
    ):
        raise SharpdimError(
            f"batch must be a pair (x, y) of tensors, got {type(batch).__name__}"
            f"{f' of {len(batch)}' if isinstance(batch, (tuple, list)) else ''}: per-example "
            "losses are those of loss='mse' or 'ce' on (inputs, targets)"
        )
    params = trainable_parameters(model)
    saved = get_flat_params(params).clone()
    x, y = batch
    x = x.to(saved.dtype) if x.is_floating_point() else x
    y = y.to(saved.dtype) if y.is_floating_point() else y
    rows = []
    with restored_modes(model):
        model.eval()
        try:
            for w in points:
                set_flat_params(params, torch.as_tensor(w).to(saved.dtype))
                rows.append(_example_losses(model, loss, x, y).to(torch.float64))
        finally:
            set_flat_params(params, saved)
    return torch.stack(rows)
