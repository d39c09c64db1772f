"""Losses in the form ``loss_fn(model, batch) -> scalar`` used by every curvature operator.

``batch = (x, y)``; integer ``y`` are class labels, floating ``y`` regression targets.

* :func:`mse_loss`: ``L = (1/n) sum_i 0.5 * ||f(x_i) - t_i||^2`` with ``t_i`` the one-hot
  vector of the label (classification, as in Cohen et al., ICLR 2021, "Gradient descent on
  neural networks typically occurs at the edge of stability") or the target itself
  (regression). The factor 0.5 and the sum over outputs follow Cohen et al., so sharpness
  values are comparable with theirs.
* :func:`cross_entropy_loss`: ``L = (1/n) sum_i -log softmax(f(x_i))_{y_i}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sharpdim.errors import SharpdimError
from sharpdim.module_modes import restored_modes

LossFn = Callable[[nn.Module, Any], torch.Tensor]


IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise SharpdimError(
            f"a batch must be a pair (x, y), got {type(batch).__name__}: pass (inputs, targets)"
        )
    if not isinstance(batch[1], torch.Tensor):
        raise SharpdimError(
            f"the targets y must be a tensor, got {type(batch[1]).__name__}: pass "
            "torch.as_tensor(y)"
        )
    return batch[0], batch[1]


def _no_bool_labels(y: torch.Tensor) -> None:
    if y.dtype == torch.bool or y.is_complex():
        raise SharpdimError(f"class labels must be integers, got {y.dtype}: pass y.long()")


def _label_shape(y: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Integer labels in the shape of ``outputs`` without its class dim 1: ``(N,)`` for
    ``(N, C)`` (a column ``(N, 1)`` is taken as ``(N,)``), ``(N, T)`` for ``(N, C, T)``."""
    _no_bool_labels(y)
    want = (outputs.shape[0], *outputs.shape[2:]) if outputs.ndim > 1 else outputs.shape
    if y.shape == (outputs.shape[0], 1) and outputs.ndim == 2:
        y = y.reshape(-1)
    if y.shape != want:
        raise SharpdimError(
            f"labels of shape {tuple(y.shape)} do not fit outputs {tuple(outputs.shape)} "
            f"(classes along dim 1): pass labels of shape {tuple(want)}, one per example"
        )
    return y


def _check_labels(y: torch.Tensor, num_outputs: int, ignore: int | None = None) -> None:
    """Raise unless every class label (other than ``ignore``) lies in ``0 .. num_outputs - 1``."""
    if y.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(y))
    if lo >= 0 and hi < num_outputs:  # the common case: one reduction
        return
    labels = y if ignore is None else y[y != ignore]
    if labels.numel() and int(labels.min()) < 0:
        hint = (
            "the mse loss has no ignore_index: use the 'ce' loss for padded targets"
            if int(labels.min()) == IGNORE_INDEX
            else "pass class labels 0, 1, 2, ..."
        )
        raise SharpdimError(f"labels must be >= 0, got {int(labels.min())}: {hint}")
    if labels.numel() and bool((labels >= num_outputs).any()):
        raise SharpdimError(
            f"labels range over {int(labels.min())}..{int(labels.max())} but the model has "
            f"{num_outputs} outputs: give the model one output per class (the dataset's "
            "num_classes)"
        )


def mse_targets(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The regression targets for ``outputs``: one-hot labels, or ``y`` in ``outputs``' shape."""
    if not y.is_floating_point():
        y = _label_shape(y, outputs)
        _check_labels(y, outputs.shape[-1])
        return F.one_hot(y.long(), outputs.shape[-1]).to(outputs.dtype)
    if y.numel() != outputs.numel() or (outputs.ndim and y.shape[:1] != outputs.shape[:1]):
        raise SharpdimError(
            f"targets of shape {tuple(y.shape)} do not match outputs {tuple(outputs.shape)}: "
            "give the model one output per target"
        )
    return y.reshape(outputs.shape).to(outputs.dtype)


def _core_shape(shape: torch.Size) -> tuple[int, ...]:
    """The batch dimension and the others but those of size 1."""
    return (shape[0], *(s for s in shape[1:] if s != 1)) if len(shape) else ()


def squared_errors(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``0.5 * ||f(x_i) - t_i||^2`` for outputs ``(N, ...)``: one-hot ``t_i`` for
    integer labels, else the regression targets, of the outputs' shape up to size-1 dimensions
    (``(N,)`` for ``(N, 1)``; anything else is refused, not re-paired by a reshape)."""
    if outputs.ndim == 0:
        raise SharpdimError(
            "the model returned a 0-dim output: return one row per example, shape (N, ...)"
        )
    if y.is_floating_point() and _core_shape(y.shape) != _core_shape(outputs.shape):
        raise SharpdimError(
            f"targets of shape {tuple(y.shape)} do not match outputs {tuple(outputs.shape)}: "
            "give the model one output per target, in the targets' layout"
        )
    out2d = outputs.flatten(1) if outputs.ndim > 1 else outputs.unsqueeze(1)
    return 0.5 * (out2d - mse_targets(out2d, y)).pow(2).sum(dim=1)


def mse_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Squared loss ``(1/n) sum_i 0.5 * ||f(x_i) - t_i||^2`` (one-hot ``t_i`` for labels)."""
    x, y = _unpack(batch)
    out = model(x)
    if out.ndim > 2 and not y.is_floating_point():
        raise SharpdimError(
            f"mse with class labels needs outputs of shape (N, C), got {tuple(out.shape)}: use "
            "the 'ce' loss for per-token classes (N, C, T), or regression targets of the "
            "outputs' shape"
        )
    return squared_errors(out, y).mean()


def cross_entropy_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean cross-entropy of the logits ``f(x)`` against integer labels ``y``."""
    x, y = _unpack(batch)
    _no_float_labels(y)
    return cross_entropy_terms(model(x), y)


def _no_float_labels(y: torch.Tensor) -> None:
    if y.is_floating_point():
        raise SharpdimError(
            "cross-entropy needs integer class labels but the targets are floating point: "
            "use the 'mse' loss for regression"
        )


def cross_entropy_terms(
    logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``F.cross_entropy(logits, y, reduction=...)`` after the label checks of the 'ce' loss:
    integer labels in ``0 .. C-1`` (or ``IGNORE_INDEX``), classes along dim 1, a label column
    ``(N, 1)`` taken as ``(N,)``."""
    _no_float_labels(y)
    if logits.ndim > 1:  # classes along dim 1, as F.cross_entropy reads them
        y = _label_shape(y, logits)
        _check_labels(y, logits.shape[1], ignore=IGNORE_INDEX)
    else:  # one unbatched example: logits (C,), a 0-dim label
        _no_bool_labels(y)
        if logits.ndim == 0 or y.ndim != 0:
            raise SharpdimError(
                f"unbatched logits of shape {tuple(logits.shape)} need one 0-dim label, got "
                f"labels of shape {tuple(y.shape)}: pass batched logits (N, C) and labels (N,)"
            )
        _check_labels(y, logits.shape[0], ignore=IGNORE_INDEX)
    labels = y if y.dtype == torch.int64 else y.long()  # (int32 too)
    return F.cross_entropy(logits, labels, reduction=reduction)


LOSSES: dict[str, LossFn] = {
    "mse": mse_loss,
    "ce": cross_entropy_loss,
    "cross_entropy": cross_entropy_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss function called ``name``: ``"mse"`` or ``"ce"`` (alias ``"cross_entropy"``)."""
    if not isinstance(name, str) or name not in LOSSES:  # (a list: unhashable)
        raise SharpdimError(f"unknown loss {name!r}: use one of {', '.join(LOSSES)}")
    return LOSSES[name]


@torch.no_grad()
def accuracy(model: nn.Module, batch: Any) -> float:
    """Share of examples whose arg-max output (over dim 1, the classes, as in the losses)
    equals the integer label; labels ``-100`` (cross-entropy's ``ignore_index``, e.g. padding)
    are left out, as the loss leaves them."""
    x, y = _unpack(batch)
    if y.is_floating_point():
        raise SharpdimError("accuracy needs integer class labels: it is undefined for regression")
    _no_bool_labels(y)
    counted = y != IGNORE_INDEX
    if not bool(counted.any()):
        return float("nan")
    out = model(x)
    pred = out.argmax(dim=1 if out.ndim > 1 else 0)  # classes along dim 1, as the losses read
    if out.ndim == 2 and y.shape == (out.shape[0], 1):  # a column of labels, as the losses
        y, counted = y.reshape(-1), counted.reshape(-1)
    if pred.shape != y.shape:
        raise SharpdimError(
            f"outputs of shape {tuple(out.shape)} give predictions of shape {tuple(pred.shape)} "
            f"for labels of shape {tuple(y.shape)}: put the classes along dim 1, e.g. (N, C) "
            "or (N, C, T)"
        )
    _check_labels(y, out.shape[1] if out.ndim > 1 else out.shape[0], ignore=IGNORE_INDEX)
    return float((pred == y)[counted].double().mean())


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, batch: Any) -> tuple[float, float | None]:
    """``(loss, accuracy)`` on a batch in eval mode; accuracy is ``None`` for regression.

    An empty batch (``n_test=0``) gives ``(nan, None)``, a test accuracy of ``None`` also for
    classification. The model's train/eval mode is restored afterwards.
    """
    with restored_modes(model):
        model.eval()
        _, y = _unpack(batch)
        if y.numel() == 0:
            return float("nan"), None
        loss = float(loss_fn(model, batch).detach())
        acc = None if y.is_floating_point() else accuracy(model, batch)
    return loss, acc
