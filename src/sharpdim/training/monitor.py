"""Watch the edge of stability during training: loss, sharpness and the optimizer's threshold.

Every ``every`` steps :class:`EoSMonitor` records

* the loss the training loop reports;
* the **sharpness** ``lambda_max(H)``, the largest *algebraic* eigenvalue of the Hessian of
  the loss on a fixed set of examples (the full training set, or its first ``max_examples``
  examples as Cohen et al., ICLR 2021, do with the first 5,000), by Lanczos iteration on
  Hessian-vector products, warm-started from the previous top eigenvector plus a random part;
* the optimizer's **stability threshold**: ``2/eta`` (GD/SGD), ``(2 + 2 mu)/eta`` (heavy-ball),
  ``(2 + 2 mu)/(eta (1 + 2 mu))`` (Nesterov), and for Adam/AdamW the threshold
  ``(2 + 2 beta1)/(eta (1 - beta1))`` on the **preconditioned sharpness**
  ``lambda_max(P^-1 H)`` (Cohen et al., 2022, "Adaptive gradient methods at the edge of
  stability"), computed as the top eigenvalue of the symmetric ``P^-1/2 H P^-1/2``;
  with param groups of different lr ``eta_i``, the thresholds are taken at the largest ``eta``
  and bound ``lambda_max(L P^-1 H)``, ``L = diag(eta_i / eta)`` (``P = I`` without Adam);
* optionally the sharpness dimension (Tuci et al., arXiv 2604.19740, Def. 4.2).

It plugs into :func:`sharpdim.training.loop.train` (``monitor=``) and into any hand-written
PyTorch loop: call ``monitor.on_step(step, model, loss_value, optimizer)`` after
``loss.backward()`` and before ``optimizer.step()`` (see ``examples/monitor_own_loop.py``).
Called there, Adam's preconditioner is the one of the update about to be taken (the optimizer's
second-moment estimate advanced with the current gradient); called elsewhere (no gradients), the
one of the last update.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from sharpdim.checks import check_count, check_flag, check_number, default_generator
from sharpdim.curvature.hessian import HessianOperator, LossFn, Mode, refuse_output_target_loss
from sharpdim.curvature.lanczos import lanczos_eigenvalues
from sharpdim.curvature.operator import LinearOperator
from sharpdim.curvature.params import trainable_parameters
from sharpdim.dynamics.jacobian_spectra import MOMENTUM_OPTIMIZERS
from sharpdim.errors import NonFiniteCurvatureError, NonFiniteLossError, SharpdimError
from sharpdim.module_modes import require_module
from sharpdim.rng import forked_global_rng
from sharpdim.training.datasets import Dataset
from sharpdim.training.losses import get_loss
from sharpdim.training.optimizers import (
    ADAPTIVE,
    adam_diagonal,
    adam_step,
    coupled_decay,
    decoupled_decay,
    lr_scaling,
    optimizer_stability_threshold,
    param_groups_by_id,
    reference_lr,
    same_in_all_groups,
)

WARM_START_NOISE = 0.3
"""Weight of a random unit vector added to the previous top eigenvector to warm-start Lanczos.

The previous eigenvector alone can be an eigenvector of the new Hessian too (exactly, for a
block-diagonal Hessian: a loss summed over parts without shared parameters). Its Krylov space
then never leaves it, and when another eigenvalue overtakes it the old one is returned as
converged after one product (8 reported where lambda_max was 22.5, past 2/eta = 20). The random
part puts every eigenvector in the Krylov space, as a random start does."""


@dataclass(frozen=True)
class EoSRecord:
    """One measurement of :class:`EoSMonitor`.

    Attributes:
        step: the training step (parameters ``w_step``, before its update).
        loss: the loss value the loop reported (``nan`` if none was given).
        sharpness: ``lambda_max(H)`` on the monitor's examples (``nan`` if not measured).
        threshold: the optimizer's stability threshold at ``lr`` (``nan`` without one).
        optimizer: the update rule's name (``"gd"``, ``"momentum"``, ``"adam"``, ...).
        lr: the optimizer's step size, the largest of its param groups' (``nan`` without one).
        preconditioned_sharpness: ``lambda_max(L P^-1 (H + W))`` for Adam/AdamW (``P`` Adam's
            preconditioner), for param groups of different lr or of different coupled weight
            decay (``P = I``), with ``L = diag(lr_i / lr)`` (``lr_i = 0`` for a parameter the
            optimizer does not hold; ``L = I`` when all are equal) and ``W`` the coupled L2
            weight decay (SGD's, Adam's; not AdamW's decoupled one); else ``None``.
        bounded: the quantity the threshold bounds: the preconditioned sharpness if
            measured, else ``sharpness + weight_decay`` (the update sees ``H + wd I``).
        ratio: ``bounded / threshold``; about 1 at the edge of stability.
        converged: whether the Lanczos eigenvalue(s) met their tolerance.
        num_matvecs: Hessian-vector products spent.
        sd: the sharpness dimension when it was measured at this step, else ``None``.
        wall_time_s: seconds this measurement took.
    """

    step: int
    loss: float
    sharpness: float
    threshold: float
    optimizer: str
    lr: float
    preconditioned_sharpness: float | None
    bounded: float
    ratio: float
    converged: bool
    num_matvecs: int
    sd: float | None
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ScaledOperator(LinearOperator):
    """``D (H + W) D`` for diagonals ``D = diag(d)`` and ``W = diag(w)`` (coupled weight decay,
    or none): with ``d = P^-1/2`` it is similar to ``P^-1 (H + W)``."""

    def __init__(
        self, inner: LinearOperator, diagonal: torch.Tensor, shift: torch.Tensor | None = None
    ) -> None:
        self.inner = inner
        self.diagonal = diagonal.to(dtype=inner.dtype, device=inner.device)
        self.shift = None if shift is None else shift.to(dtype=inner.dtype, device=inner.device)

    @property
    def num_params(self) -> int:
        return self.inner.num_params

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        d = self.diagonal[:, None]
        scaled = d * block
        out = self.inner @ scaled
        return d * (out if self.shift is None else out + self.shift[:, None] * scaled)


@torch.no_grad()
def upcoming_adam_preconditioner(
    optimizer: torch.optim.Optimizer,
    params: Sequence[torch.Tensor],
    *,
    bias_correction: bool = True,
    unheld: Literal["error", "freeze"] = "error",
) -> torch.Tensor:
    """Adam's diagonal preconditioner ``P_{t+1}`` for the update about to be taken.

    With the gradients ``g`` in ``.grad`` (Adam: plus ``weight_decay * w``), the second moment
    is advanced as ``v <- beta2 v + (1 - beta2) g^2`` and ``t <- t + 1`` (zero state before the
    first step); then ``P = (1 - beta1^t) (sqrt(v / (1 - beta2^t)) + eps)`` as in
    :func:`sharpdim.training.optimizers.adam_preconditioner` (``bias_correction=False``: without
    ``1 - beta1^t``, the SD's ``preconditioner``). The optimizer is not changed.
    A parameter without a gradient (which the step leaves alone) keeps the last step's ``P``,
    or, without Adam state, gets ``P = inf``: ``P^-1/2 = 0`` freezes its directions. A
    parameter the optimizer does not hold is an error, or with ``unheld="freeze"`` gets
    ``P = inf`` too (it does not move).
    """
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise SharpdimError(
            f"{type(optimizer).__name__} has no Adam preconditioner: pass an Adam/AdamW optimizer"
        )
    bias_correction = check_flag(bias_correction, "bias_correction")
    if not (isinstance(unheld, str) and unheld in ("error", "freeze")):
        raise SharpdimError(f"unheld must be 'error' or 'freeze', got {unheld!r}")
    params = list(params)  # (a generator, model.parameters(), is read twice below)
    group_of = param_groups_by_id(optimizer)
    pieces = []
    for p in params:
        if id(p) not in group_of and unheld == "freeze":
            pieces.append(torch.full((p.numel(),), math.inf, dtype=p.dtype, device=p.device))
            continue
        if id(p) not in group_of:
            raise SharpdimError(
                "a parameter of the model is not in the Adam optimizer: pass the optimizer "
                "that trains this model"
            )
        group = group_of[id(p)]
        state = optimizer.state.get(p, {})
        if p.grad is None:
            if "exp_avg_sq" in state:
                t = float(state["step"])
                pieces.append(adam_diagonal(group, state["exp_avg_sq"], t, bias_correction))
            else:
                pieces.append(torch.full((p.numel(),), math.inf, dtype=p.dtype, device=p.device))
            continue
        grad = p.grad.detach()
        if not decoupled_decay(optimizer, group):  # Adam's L2 decay enters the gradient
            grad = grad + group["weight_decay"] * p.detach()
        beta2 = group["betas"][1]
        v = state.get("exp_avg_sq", torch.zeros_like(p))
        v_new = beta2 * v + (1.0 - beta2) * grad * grad
        t = float(state.get("step", 0.0)) + 1.0
        pieces.append(adam_diagonal(group, v_new, t, bias_correction))
    if not any(
        id(p) in group_of and (p.grad is not None or "exp_avg_sq" in optimizer.state.get(p, {}))
        for p in params
    ):  # (not an inf of diverged gradients: the monitor records that as NaN)
        raise SharpdimError(
            "the Adam optimizer has neither gradients nor state: call this after "
            "loss.backward() or after the optimizer's first step"
        )
    return torch.cat(pieces)


def _adam_sd_inputs(
    optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor], options: dict[str, Any]
) -> dict[str, Any]:
    """The SD's ``preconditioner`` and ``step`` for the Adam update about to be taken:
    ``sqrt(v_hat) + eps`` with the common step count ``t`` (or the ``step`` the caller gave in
    ``sd_options``). When the parameters' counts differ (one skipped a step without a
    gradient), each parameter's ``1 - beta1^t`` is folded into ``P`` instead: the same update,
    in coordinates that differ from the documented ones by that factor. A parameter with
    neither gradient nor Adam state (unused by the loss: a zero Hessian block, so ``J = I``
    there for any ``P``; if only the monitor's loss uses it, the step still leaves it alone)
    gets the largest finite ``P`` of its dtype's square root instead of the ``inf`` that
    freezes it in the sharpness, which ``sharpness_dimension`` refuses: ``J = I`` on it to
    ~1e-10 (float32, float16) or better."""
    unbiased = {
        "preconditioner": _finite(
            upcoming_adam_preconditioner(optimizer, params, bias_correction=False)
        )
    }
    if "step" in options:
        return unbiased
    # with no gradient at all (called after the update) P and t are the last update's (never
    # stepped: the one-line error above, nothing to measure)
    upcoming = any(p.grad is not None for p in params)
    try:
        return {**unbiased, "step": adam_step(optimizer, params, upcoming=upcoming)}
    except SharpdimError:  # no common step count
        return {"preconditioner": _finite(upcoming_adam_preconditioner(optimizer, params))}


def _finite(preconditioner: torch.Tensor) -> torch.Tensor:
    """``preconditioner`` with the ``inf`` of frozen parameters replaced by the square root of
    the dtype's largest number (``P^-1`` about 1e-19 in float32, 1e-154 in float64; a float16
    preconditioner is taken to float32 first)."""
    if torch.finfo(preconditioner.dtype).max < 1e30:  # float16: sqrt(max) is only 256
        preconditioner = preconditioner.float()
    frozen = torch.finfo(preconditioner.dtype).max ** 0.5
    return torch.where(torch.isinf(preconditioner), frozen, preconditioner)


def _nonfinite_gradients(params: Sequence[torch.Tensor], held: dict[int, Any]) -> bool:
    """Whether the ``.grad`` of a parameter in ``held`` (the optimizer's) holds NaN or inf:
    Adam's ``P`` is then NaN, or an ``inf`` that is no frozen direction."""
    return any(
        id(p) in held and p.grad is not None and not bool(torch.isfinite(p.grad).all())
        for p in params
    )


def _examples(data: Any, max_examples: int | None) -> tuple[torch.Tensor, ...]:
    """The monitor's batch: a tuple of tensors with one row per example (``(x, y)``, or
    more, e.g. ``(tokens, targets, mask)``, or one, ``(tokens,)``, for a loss that derives its
    targets from the inputs), cut to ``max_examples`` and copied: the caller's tensors (a
    Dataset's too) may change in place afterwards without changing the monitor's examples."""
    if isinstance(data, Dataset):
        data = data.train_batch()
    if not (isinstance(data, (tuple, list)) and len(data) >= 1):
        raise SharpdimError(
            f"data must be a Dataset or a tuple of tensors ((x, y), (tokens, targets, mask), "
            f"(tokens,), ...), got {_kind(data)}: pass dataset.train_batch() or (inputs, targets)"
        )
    batch = tuple(data)
    if (
        not all(isinstance(t, torch.Tensor) and t.ndim >= 1 for t in batch)
        or len({len(t) for t in batch}) != 1
    ):
        raise SharpdimError(
            "data must be tensors with the same number of examples (rows): pass (x, y) or "
            "(x, y, mask)"
        )
    if max_examples is not None:
        if max_examples < 1:
            raise SharpdimError(f"max_examples={max_examples}: use a positive number or None")
        batch = tuple(t[:max_examples] for t in batch)
    if len(batch[0]) == 0:
        raise SharpdimError(
            "the monitor's data hold no examples: pass a Dataset or (x, y) with at least one"
        )
    # a copy, not views of the caller's tensors: an in-place change of the training data
    # after the monitor was built moved the sharpness when the model's dtype and device were
    # the data's (.to() then returns the tensor itself) but not otherwise (a cast copy)
    batch = tuple(t.detach().clone() for t in batch)
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in batch):
        raise SharpdimError(  # (a non-finite loss is then the model's: a recorded divergence)
            "the monitor's examples hold NaN or inf: pass finite inputs and targets"
        )
    return batch


def _kind(data: Any) -> str:
    """``data``'s type name, ``"an empty tuple"`` (or list) for the one tuple refused."""
    name = type(data).__name__
    return f"an empty {name}" if isinstance(data, (tuple, list)) and not data else name


class EoSMonitor:
    """Records loss, sharpness and the optimizer's EoS threshold every ``every`` steps.

    Args:
        loss_fn: ``loss_fn(model, batch) -> scalar`` or a name (``"mse"``, ``"ce"``).
        data: the examples the Hessian is taken on: a
            :class:`~sharpdim.training.datasets.Dataset` (its training set), a pair
            ``(x, y)`` or any tuple of tensors with one row per example (``(tokens, targets,
            mask)``, or ``(tokens,)`` for a loss that derives its targets from the tokens:
            ``loss_fn`` gets that tuple); copied when the monitor is built (the first
            ``max_examples`` rows) and kept fixed for the whole run.
        every: measure when ``step % every == 0``.
        max_examples: use only the first this many examples (Cohen et al. 2021: 5,000);
            ``None`` = all.
        chunk_size: split the examples into chunks of this size for the Hessian (memory of
            one chunk; the mean loss is the size-weighted sum); ``None`` = one batch.
        chunk_weight: ``chunk_weight(chunk) -> number`` the chunk's share of the loss, in place
            of its size (normalised to sum 1; chunks of weight 0 are left out): for a mean
            over tokens with ignored labels, e.g. ``lambda b: (b[1] != -100).sum()``.
        tol: relative tolerance of the Lanczos eigenvalue.
        max_iter: Lanczos iterations at most (default: the solver's).
        mode: module mode for the Hessian (``"eval"``: dropout off; see
            :class:`~sharpdim.curvature.hessian.HessianOperator`).
        raw_sharpness: also measure the plain ``lambda_max(H)`` when the preconditioned one
            is measured (Adam, or groups of different lr or coupled weight decay; one more
            Lanczos).
        warm_start: start Lanczos from the previous top eigenvector.
        sd_every: also compute the sharpness dimension every this many steps (a multiple
            of ``every``; ``0`` = never) with :func:`sharpdim.dimension.sharpness_dimension`.
        sd_options: keyword arguments for it (e.g. ``method``, ``batch_size``,
            ``num_batches``); ``lr`` and ``optimizer`` come from the live optimizer, and
            unless given here so do ``momentum``, ``betas``, ``weight_decay`` and for
            Adam/AdamW ``adam_eps``, the preconditioner of the update about to be taken
            (:func:`upcoming_adam_preconditioner` without ``1 - beta1^t``) and its ``step``
            count ``t`` (see ``_adam_sd_inputs``); the param groups must agree on those used.
        generator: randomness of Lanczos start vectors and of the SD minibatches
            (default: seed 0).
    """

    def __init__(
        self,
        loss_fn: LossFn | str,
        data: Dataset | tuple[torch.Tensor, ...],
        *,
        every: int = 10,
        max_examples: int | None = 5000,
        chunk_size: int | None = None,
        chunk_weight: Callable[[Any], Any] | None = None,
        tol: float = 1e-4,
        max_iter: int | None = None,
        mode: Mode = "eval",
        raw_sharpness: bool = True,
        warm_start: bool = True,
        sd_every: int = 0,
        sd_options: dict[str, Any] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        every = check_count(every, "every", 1, "measure every N steps, e.g. every=10")
        sd_every = check_count(sd_every, "sd_every", 0, "a multiple of every, or 0 (no SD)")
        if sd_every % every:
            raise SharpdimError(
                f"every={every}, sd_every={sd_every}: need sd_every a multiple of every (0 = no SD)"
            )
        if chunk_size is not None:
            chunk_size = check_count(chunk_size, "chunk_size", 1, "a positive size, or None")
        if max_examples is not None:
            max_examples = check_count(max_examples, "max_examples", 1, "e.g. 5000, or None")
        if max_iter is not None:
            max_iter = check_count(max_iter, "max_iter", 1, "e.g. 200, or None")
        tol = check_number(tol, "tol", "> 0", "1e-4")
        if not (isinstance(mode, str) and mode in ("eval", "train", "keep")):
            raise SharpdimError(f"unknown mode {mode!r}: use 'eval', 'train' or 'keep'")
        raw_sharpness = check_flag(raw_sharpness, "raw_sharpness")
        warm_start = check_flag(warm_start, "warm_start")
        if not (isinstance(loss_fn, str) or callable(loss_fn)):
            raise SharpdimError(
                f"loss_fn must be a loss name or a function (model, batch) -> scalar, got "
                f"{type(loss_fn).__name__}: pass e.g. 'ce' or your loss function"
            )
        refuse_output_target_loss(loss_fn)
        self.loss_fn: LossFn = get_loss(loss_fn) if isinstance(loss_fn, str) else loss_fn
        self.batch = _examples(data, max_examples)
        if isinstance(loss_fn, str) and len(self.batch) != 2:
            raise SharpdimError(
                f"the {loss_fn!r} loss takes a pair (x, y), got {len(self.batch)} tensor(s): "
                "pass (inputs, targets), or your own loss_fn(model, batch) for other tuples"
            )
        self.x: torch.Tensor = self.batch[0]
        self.y: torch.Tensor | None = self.batch[1] if len(self.batch) > 1 else None
        self.every, self.chunk_size, self.tol, self.max_iter = every, chunk_size, tol, max_iter
        if chunk_weight is not None and not callable(chunk_weight):  # (a TypeError mid-run)
            raise SharpdimError(
                f"chunk_weight must be a function chunk -> number, got "
                f"{type(chunk_weight).__name__}: pass e.g. lambda chunk: len(chunk[0]), or None"
            )
        self.chunk_weight = chunk_weight
        self.mode: Mode = mode
        self.raw_sharpness, self.warm_start = raw_sharpness, warm_start
        self.sd_every, self.sd_options = sd_every, _check_sd_options(sd_options)
        self.generator = default_generator(generator)
        self.records: list[EoSRecord] = []
        self._start: dict[str, torch.Tensor] = {}
        self._cast: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    # -- hooks ---------------------------------------------------------------------------
    def on_step(
        self,
        step: int,
        model: nn.Module,
        loss_value: float,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> EoSRecord | None:
        """Measure when ``step % every == 0`` (the :class:`~sharpdim.training.loop.StepMonitor` hook)."""
        step = _checked_step(step, 0)  # (2.5 skipped silently, "4" raised a TypeError)
        if step % self.every:
            return None
        return self.measure(model, optimizer, step=step, loss_value=loss_value)

    __call__ = on_step

    def measure(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        step: int = -1,
        loss_value: float = math.nan,
    ) -> EoSRecord:
        """Measure now, append the record to :attr:`records` and return it.

        Runs inside a forked RNG state, so dropout (``mode="train"``) leaves the global RNG,
        and with it the training run, untouched.
        """
        require_module(model)
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            hint = (
                " (a scheduler's or wrapper's is its .optimizer)"
                if hasattr(optimizer, "optimizer")
                else ""
            )
            raise SharpdimError(
                f"optimizer must be a torch.optim.Optimizer or None, got "
                f"{type(optimizer).__name__}: pass the optimizer that trains the model{hint}"
            )
        step = _checked_step(step, -1)  # (before the measurement, not after it)
        loss = _recorded_loss(loss_value)
        with forked_global_rng(None, model.parameters()):
            return self._measure(model, optimizer, step, loss)

    def _measure(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        step: int,
        loss_value: float,
    ) -> EoSRecord:
        start = time.perf_counter()
        name, lr, threshold = "unknown", math.nan, math.nan
        if optimizer is not None:
            name, threshold = optimizer_stability_threshold(optimizer)
            lr = reference_lr(optimizer)
        try:
            curvature = self._curvature(model, optimizer, name)
        except NonFiniteLossError:  # a diverged model: recorded, as train() records it
            return self._append(step, loss_value, name, lr, threshold, start)
        except NonFiniteCurvatureError as err:
            # after finite measurements: second derivatives that overflow as the run heads
            # for divergence, recorded so a sweep goes on; at the first measurement: a loss
            # that is not twice differentiable here, the user's to fix
            if not any(math.isfinite(r.bounded) for r in self.records):  # (Adam without
                # raw_sharpness measures only the preconditioned value: bounded holds it)
                raise
            warnings.warn(f"step {step}: {err}; recorded as NaN", RuntimeWarning, stacklevel=3)
            return self._append(step, loss_value, name, lr, threshold, start)
        sd = None
        if self.sd_every and step >= 0 and step % self.sd_every == 0 and optimizer is not None:
            sd = self._sharpness_dimension(model, name, lr, optimizer)
        return self._append(step, loss_value, name, lr, threshold, start, *curvature, sd=sd)

    def _curvature(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, name: str
    ) -> tuple[float, float | None, float, bool, int]:
        """``(sharpness, preconditioned sharpness, bounded quantity, converged, matvecs)``."""
        hessian = self._hessian(model)
        scale, decay, shift = None, None, 0.0
        if optimizer is not None:
            held = param_groups_by_id(optimizer)
            if not any(id(p) in held for p in hessian.params):  # (lr scale 0 everywhere)
                raise SharpdimError(
                    "the optimizer holds none of the model's trainable parameters: pass the "
                    "optimizer that trains this model"
                )
            lrs = lr_scaling(optimizer, hessian.params)
            scale = None if lrs is None else lrs.sqrt()  # (L P^-1)^(1/2)
            if name in ADAPTIVE:
                upcoming = upcoming_adam_preconditioner(optimizer, hessian.params, unheld="freeze")
                if bool(torch.isnan(upcoming).any()) or _nonfinite_gradients(hessian.params, held):
                    hessian.loss_and_gradient()  # a diverged model is recorded
                    # (NonFiniteLossError) as in raw mode; gradients that overflow under a
                    # finite loss, a run about to diverge, as second derivatives that overflow
                    raise NonFiniteCurvatureError(
                        "Adam's preconditioner is not finite (NaN or inf gradients or NaN "
                        "optimizer state) although the loss on the monitor's examples is "
                        "finite: check the gradients of the training step"
                    )
                scale = upcoming.rsqrt() if scale is None else scale * upcoming.rsqrt()
            decay = coupled_decay(optimizer, hessian.params)  # the update sees H + diag(decay)
            if decay is not None and scale is None and bool((decay == decay[0]).all()):
                shift, decay = float(decay[0]), None  # lambda_max(H + wd I) = lambda_max(H) + wd
            elif decay is not None and scale is None:
                scale = torch.ones_like(decay)
        matvecs, converged = 0, True
        sharpness, pre = math.nan, None
        if scale is None or self.raw_sharpness:
            sharpness, ok, used = self._top_eigenvalue("raw", hessian)
            matvecs, converged = matvecs + used, converged and ok
        if scale is not None:
            scaled = _ScaledOperator(hessian, scale, decay)
            pre, ok, used = self._top_eigenvalue("preconditioned", scaled)
            matvecs, converged = matvecs + used, converged and ok
        bounded = pre if pre is not None else sharpness + shift
        return sharpness, pre, bounded, converged, matvecs

    def _append(
        self,
        step: int,
        loss_value: float,
        name: str,
        lr: float,
        threshold: float,
        start: float,
        sharpness: float = math.nan,
        pre: float | None = None,
        bounded: float = math.nan,
        converged: bool = False,
        matvecs: int = 0,
        sd: float | None = None,
    ) -> EoSRecord:
        """Append and return the record of one measurement (NaN for a diverged model)."""
        record = EoSRecord(
            step=int(step),
            # (the loss tensor itself, as a loop may pass it: read without its graph)
            loss=loss_value,
            sharpness=float(sharpness),
            threshold=float(threshold),
            optimizer=name,
            lr=lr,
            preconditioned_sharpness=pre,
            bounded=float(bounded),
            ratio=float(bounded / threshold) if name != "unknown" else math.nan,
            converged=bool(converged),
            num_matvecs=int(matvecs),
            sd=sd,
            wall_time_s=time.perf_counter() - start,
        )
        self.records.append(record)
        return record

    # -- results -------------------------------------------------------------------------
    @property
    def history(self) -> dict[str, list[Any]]:
        """Column view of :attr:`records`: ``{"step": [...], "sharpness": [...], ...}``."""
        names = list(EoSRecord.__dataclass_fields__)
        return {n: [getattr(r, n) for r in self.records] for n in names}

    def to_dict(self) -> dict[str, Any]:
        """Settings and the history, as plain Python values."""
        return {
            "every": self.every,
            "num_examples": len(self.x),
            "tol": self.tol,
            "mode": self.mode,
            "records": [r.to_dict() for r in self.records],
        }

    def reset(self) -> None:
        """Forget the records and the warm-start vectors."""
        self.records.clear()
        self._start.clear()

    # -- internals -----------------------------------------------------------------------
    def _examples_like(self, ref: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The examples on ``ref``'s device with its float dtype, cast once per pair (the
        monitor's own copies are kept: a float64 model after a float32 one sees unrounded
        data)."""
        key = (ref.device, ref.dtype)
        if key not in self._cast:
            self._cast[key] = tuple(
                t.to(device=ref.device, dtype=ref.dtype if t.is_floating_point() else None)
                for t in self.batch
            )
        return self._cast[key]

    def _hessian(self, model: nn.Module) -> HessianOperator:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise SharpdimError("the model has no trainable parameters: nothing to monitor")
        batch = self._examples_like(params[0])
        n = len(batch[0])
        if self.chunk_size is None or self.chunk_size >= n:
            return HessianOperator(model, self.loss_fn, batch, mode=self.mode)
        chunks = [
            tuple(t[i : i + self.chunk_size] for t in batch) for i in range(0, n, self.chunk_size)
        ]
        if self.chunk_weight is None:
            return HessianOperator(model, self.loss_fn, batches=chunks, mode=self.mode)
        weights = [self._chunk_weight(c) for c in chunks]
        total = sum(weights)
        if not total > 0:
            raise SharpdimError(
                "chunk_weight is 0 for every chunk: no example counts; check the labels or "
                "the chunk_weight function"
            )
        kept = [(c, w / total) for c, w in zip(chunks, weights, strict=True) if w > 0]
        return HessianOperator(
            model,
            self.loss_fn,
            batches=[c for c, _ in kept],
            weights=[w for _, w in kept],
            mode=self.mode,
        )

    def _chunk_weight(self, chunk: tuple[torch.Tensor, ...]) -> float:
        assert self.chunk_weight is not None
        value = self.chunk_weight(chunk)
        try:
            weight = float(value)
        except (TypeError, ValueError):
            weight = math.nan
        if not (math.isfinite(weight) and weight >= 0):
            raise SharpdimError(
                f"chunk_weight returned {value!r}: return a finite number >= 0 per chunk, "
                "e.g. its count of labels that are not ignored"
            )
        return weight

    def _top_eigenvalue(self, key: str, op: LinearOperator) -> tuple[float, bool, int]:
        """Largest algebraic eigenvalue by Lanczos, warm-started from ``key``'s last vector (plus
        a random part, :data:`WARM_START_NOISE`)."""
        start = self._start.get(key) if self.warm_start else None
        if start is not None and start.numel() != op.num_params:
            start = None
        if start is not None:  # with a random part: see WARM_START_NOISE
            noise = torch.randn(start.shape, generator=self.generator, dtype=torch.float64)
            noise = noise.to(start.device)
            start = start / start.norm() + WARM_START_NOISE * noise / noise.norm()
        result = lanczos_eigenvalues(
            op,
            k=1,
            which="LA",
            tol=self.tol,
            max_iter=self.max_iter,
            generator=self.generator,
            v0=start,
            return_eigenvectors=self.warm_start,
        )
        if self.warm_start and result.eigenvectors is not None:
            self._start[key] = result.eigenvectors[:, 0].detach().clone()
        return (
            float(result.eigenvalues[0]),
            bool(result.converged[0]),
            int(result.num_matvecs),
        )

    def _sharpness_dimension(
        self, model: nn.Module, name: str, lr: float, optimizer: torch.optim.Optimizer
    ) -> float | None:
        """The SD of the update about to be taken (with no gradients: of the last one); ``None`` at ``lr = 0`` (a warm-up's first
        step), whose step is the identity: every exponent 0, no dynamics to measure."""
        from sharpdim.dimension.sharpness_dimension import sharpness_dimension

        if lr == 0:
            return None
        options = {
            "batch_size": min(128, len(self.x)),
            "num_batches": 5,
            "num_bootstrap": 0,
            **self.sd_options,
        }
        one_lr = "sharpness_dimension takes one lr for all parameters; use sd_every=0"
        same_in_all_groups(optimizer, ["lr"], one_lr, prefix="sd_every: ")
        shared = [k for k in ("weight_decay", "betas") if k not in options]
        if name in ADAPTIVE and "adam_eps" not in options:
            shared.append("eps")
        why = "sharpness_dimension takes one value; use sd_every=0 or give it in sd_options"
        same_in_all_groups(optimizer, shared, why, prefix="sd_every: ")
        if lr_scaling(optimizer, trainable_parameters(model)) is not None:
            raise SharpdimError(
                "sd_every: the optimizer does not hold every trainable parameter (the others "
                "do not move, lr 0) and sharpness_dimension takes one lr for all: use "
                "sd_every=0, or freeze the others (requires_grad=False)"
            )
        group = optimizer.param_groups[0]
        sd_name = "sgd" if name == "gd" else name
        live: dict[str, Any] = {
            "mode": self.mode,  # the sharpness's mode, unless sd_options says otherwise
            "weight_decay": float(group.get("weight_decay", 0.0)),
        }  # (and only the hyperparameters sd_name's step uses: the others are refused)
        if sd_name in MOMENTUM_OPTIMIZERS:
            live["momentum"] = float(group["momentum"])
        if name in ADAPTIVE:
            live.update(betas=tuple(group["betas"]), adam_eps=float(group["eps"]))
            if "preconditioner" not in options:  # that of the update about to be taken
                live.update(_adam_sd_inputs(optimizer, trainable_parameters(model), options))
        result = sharpness_dimension(
            model,
            self.loss_fn,
            self.batch,
            lr,
            optimizer=sd_name,
            generator=self.generator,
            **{**live, **options},
        )
        return float(result.sd)


def _check_sd_options(options: Any) -> dict[str, Any]:
    """``sd_options`` as a dict of :func:`~sharpdim.dimension.sharpness_dimension` keywords
    that the monitor does not set itself (a typo failed at the first SD measurement)."""
    import inspect

    from sharpdim.dimension.sharpness_dimension import sharpness_dimension

    if options is None:
        return {}
    if not isinstance(options, dict):
        raise SharpdimError(
            f"sd_options must be a dict, got {type(options).__name__}: pass e.g. "
            "{'method': 'slq', 'num_batches': 8}"
        )
    accepted = set(inspect.signature(sharpness_dimension).parameters)
    own = {"model", "loss_fn", "data", "lr", "optimizer", "generator"}
    unknown = sorted(set(options) - (accepted - own))
    if unknown:
        why = "set by the monitor" if set(unknown) <= own else "not sharpness_dimension options"
        raise SharpdimError(
            f"sd_options {unknown} are {why}: use keywords of sharpness_dimension other than "
            f"{', '.join(sorted(own))}"
        )
    return dict(options)


def _checked_step(step: object, minimum: int) -> int:
    """``step`` as an int ``>= minimum`` (whole floats and numpy ints too), in one line."""
    return check_count(step, "step", minimum, "the training step, a whole number")


def _recorded_loss(value: object) -> float:
    """The loss a record keeps: a real number or a one-element tensor (``None``: ``nan``),
    checked before any curvature is computed, in one line."""
    if value is None:
        return math.nan
    if isinstance(value, torch.optim.Optimizer):
        raise SharpdimError(
            f"loss_value is the {type(value).__name__} optimizer: call "
            "on_step(step, model, loss_value, optimizer)"
        )
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise SharpdimError(
                f"loss_value is a tensor of shape {tuple(value.shape)} and dtype {value.dtype}: "
                "pass the real scalar (mean) loss, e.g. loss.item()"
            )
        value = value.detach()
    if isinstance(value, (str, bytes, bool)):  # ("0.5" and True were read as numbers)
        raise SharpdimError(f"loss_value must be a real number, got {value!r}: pass loss.item()")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SharpdimError(
            f"loss_value must be a real number, got {type(value).__name__}: pass loss.item()"
        ) from None
