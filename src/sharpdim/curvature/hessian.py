"""Hessian-vector products of any PyTorch model and loss.

``H = d^2 L(w) / dw^2`` for ``L(w) = loss_fn(model, batch)``, or for the full-batch loss
``L(w) = sum_b weight_b * loss_fn(model, batch_b)`` over a list of batches, with the
default weights ``n_b / N`` (``loss_fn`` returns a mean over its batch).

``H v`` is computed by double backward, ``H v = d/dw <grad L(w), v>`` (Pearlmutter 1994).
For a single batch the gradient graph is built once and reused across matvecs, which on a CPU
is faster than forward-over-reverse (see ``docs/benchmarks.md``). For a list of batches the
graph of one batch at a time is built, used and freed, so memory stays that of one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, final

import torch
from torch import nn

from sharpdim.curvature.operator import LinearOperator
from sharpdim.curvature.params import flatten, trainable_parameters, unflatten
from sharpdim.errors import SharpdimError

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Mode = Literal["eval", "train", "keep"]


def batch_size(batch: Any) -> int:
    """Number of examples in a batch: the leading dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    if isinstance(batch, dict) and batch:
        return batch_size(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size(batch[0])
    raise SharpdimError(
        f"cannot tell the size of a batch of type {type(batch).__name__}: "
        "pass `weights=` explicitly or use tensors, tuples, lists or dicts of tensors"
    )


def checked_loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    """``loss_fn(model, batch)``, checked to be a finite real scalar tensor."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise SharpdimError(
            f"loss_fn must return a scalar tensor, got {shape}: reduce it, e.g. with .mean()"
        )
    if not torch.isfinite(loss.detach()).all():
        raise SharpdimError(
            f"loss is not finite ({loss.item()}): the model has diverged or the input holds "
            "NaN/inf; check the data and the parameters before computing curvature"
        )
    return loss.reshape(())


class _ModeScope:
    """Puts the model in train or eval mode for the duration of a block, then restores it."""

    def __init__(self, model: nn.Module, mode: Mode) -> None:
        self.model, self.mode = model, mode
        self.saved = [m.training for m in model.modules()]

    def __enter__(self) -> None:
        if self.mode != "keep":
            self.model.train(self.mode == "train")

    def __exit__(self, *exc: object) -> None:
        for m, was_training in zip(self.model.modules(), self.saved):
            m.training = was_training


@final
class HessianOperator(LinearOperator):
    """The Hessian of ``loss_fn(model, batch)`` with respect to the model's parameters.

    Args:
        model: any ``nn.Module``; the Hessian is taken at its current parameters.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; any loss (classification,
            regression, language modelling, custom).
        batch: one batch (a minibatch ``B`` gives the Hessian ``H_B`` of the paper).
        params: optional subset of the parameters (e.g. one layer); others are held fixed.
        batches: instead of ``batch``, a list of batches for the full-batch Hessian
            ``sum_b weight_b H_b``, accumulated one batch at a time (memory of one batch).
        weights: per-batch weights; default ``n_b / N`` (``loss_fn`` returns a batch mean).
        mode: ``"eval"`` (default: dropout off, batch norm uses running statistics, so the
            operator is deterministic and symmetric), ``"train"`` (the loss the optimizer
            sees; batch-norm statistics of the batch, one dropout mask frozen per graph), or
            ``"keep"`` the model's current mode. The model's modes are restored afterwards.
        reuse_graph: keep the gradient graph of a single batch between matvecs (faster,
            holds the activations' memory). Ignored for ``batches``.

    The operator notices in-place changes of the parameters (an optimizer step) and rebuilds
    its graph, so it always describes the current parameters.

    Example:
        >>> import torch
        >>> X = torch.randn(20, 3, dtype=torch.float64)
        >>> y = torch.randn(20, dtype=torch.float64)
        >>> model = torch.nn.Linear(3, 1, bias=False).double()
        >>> mse = lambda m, b: ((m(b[0]).squeeze(-1) - b[1]) ** 2).mean()
        >>> H = HessianOperator(model, mse, (X, y))
        >>> torch.allclose(H.dense(), 2 / 20 * X.T @ X)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any = None,
        params: Iterable[torch.Tensor] | None = None,
        *,
        batches: Sequence[Any] | None = None,
        weights: Sequence[float] | None = None,
        mode: Mode = "eval",
        reuse_graph: bool = True,
    ) -> None:
        if (batch is None) == (batches is None):
            raise SharpdimError(
                "give exactly one of `batch` (one minibatch) or `batches` (a list for the "
                "full-batch Hessian)"
            )
        if mode not in ("eval", "train", "keep"):
            raise SharpdimError(f"unknown mode {mode!r}: use 'eval', 'train' or 'keep'")
        self.model, self.loss_fn, self.mode = model, loss_fn, mode
        self.params = trainable_parameters(model, params)
        self.batches = [batch] if batches is None else list(batches)
        if not self.batches:
            raise SharpdimError("`batches` is empty: pass at least one batch")
        if weights is None:
            sizes = [batch_size(b) for b in self.batches]
            weights = [n / sum(sizes) for n in sizes]
        if len(weights) != len(self.batches):
            raise SharpdimError(
                f"{len(weights)} weights for {len(self.batches)} batches: give one weight per batch"
            )
        self.weights = [float(w) for w in weights]
        self.reuse_graph = reuse_graph and len(self.batches) == 1
        self._graph: tuple[list[torch.Tensor], list[int]] | None = None
        self._versions: list[int] = []

    # -- LinearOperator interface -------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        if self.reuse_graph:
            return self._hvp(self._cached_graph(), block)
        out = torch.zeros_like(block)
        for b, w in zip(self.batches, self.weights):
            out += w * self._hvp(self._gradient_graph(b), block)
        return out

    # -- extras ---------------------------------------------------------------------------
    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The (weighted) loss and its flat gradient at the current parameters."""
        total, grad = 0.0, torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        for b, w in zip(self.batches, self.weights):
            with _ModeScope(self.model, self.mode):
                loss = checked_loss(self.model, self.loss_fn, b)
            gs = torch.autograd.grad(loss, self.params, allow_unused=True)
            grad += w * flatten([torch.zeros_like(p) if g is None else g for g, p in zip(gs, self.params)])
            total += w * float(loss)
        return total, grad

    # -- internals ------------------------------------------------------------------------
    def _gradient_graph(self, batch: Any) -> tuple[list[torch.Tensor], list[int]]:
        """Gradients with their graph, and the indices of those that depend on ``w``."""
        with torch.enable_grad(), _ModeScope(self.model, self.mode):
            loss = checked_loss(self.model, self.loss_fn, batch)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [grads[i] for i in live], live  # type: ignore[misc]

    def _cached_graph(self) -> tuple[list[torch.Tensor], list[int]]:
        versions = [p._version for p in self.params]
        if self._graph is None or versions != self._versions:
            self._graph = self._gradient_graph(self.batches[0])
            self._versions = versions
        return self._graph

    def _hvp(self, graph: tuple[list[torch.Tensor], list[int]], block: torch.Tensor) -> torch.Tensor:
        """``H @ block`` column by column (vmap'd double backward was slower on CPU)."""
        grads, live = graph
        out = torch.zeros_like(block)
        if not grads:
            return out  # the loss is at most linear in the parameters: H = 0
        live_params = [self.params[i] for i in live]
        for j in range(block.shape[1]):
            vs = unflatten(block[:, j], self.params)
            hv = torch.autograd.grad(
                grads,
                live_params,
                grad_outputs=[vs[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            by_param: list[torch.Tensor] = [torch.zeros_like(p) for p in self.params]
            for i, h in zip(live, hv):
                if h is not None:
                    by_param[i] = h
            out[:, j] = flatten(by_param)
        return out
