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

import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, final

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sharpdim.checks import check_flag, check_seed, unordered
from sharpdim.curvature.batched_hvp import batch_columns, batched_hvp, saved_bytes
from sharpdim.curvature.operator import LinearOperator, is_symmetric, max_asymmetry
from sharpdim.curvature.params import flatten, strided, trainable_parameters, unflatten
from sharpdim.curvature.second_order import refuse_once_differentiable
from sharpdim.errors import NonFiniteCurvatureError, NonFiniteLossError, SharpdimError
from sharpdim.module_modes import ModeScope, uncompiled
from sharpdim.rng import forked_global_rng, peek_seed

LossFn = Callable[[nn.Module, Any], torch.Tensor]
Mode = Literal["eval", "train", "keep"]


def batch_size(batch: Any) -> int:
    """Number of examples in a batch: the leading dimension of its first top-level tensor.

    A tensor, or a tuple, list or dict (the inputs come first, as in ``(x, y, ...)``) holding
    at least one tensor of one or more dimensions at its top level; other items (strings,
    numbers, nested containers) are passed over. A list of examples, whose items are all
    containers (``[(x_1, y_1), (x_2, y_2), ...]``), is refused: its tensors are per example;
    so is a list of tensors whose leading dimensions differ (``[seq_1, seq_2, ...]`` of
    varying lengths), which cannot be told from one of per-example tensors.
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.ndim else 1
    items = list(batch.values()) if isinstance(batch, dict) else batch
    if isinstance(items, (tuple, list)) and items:
        examples = all(isinstance(t, (tuple, list, dict)) for t in items)
        if isinstance(batch, list) and all(isinstance(t, torch.Tensor) for t in items):
            examples = len({t.shape[0] for t in items if t.ndim}) > 1
        first = next((t for t in items if isinstance(t, torch.Tensor) and t.ndim), None)
        if not examples and first is not None:
            return int(first.shape[0])
    raise SharpdimError(
        f"cannot tell the size of a batch of type {type(batch).__name__}: "
        "pass `weights=` explicitly or use a tensor, or a tuple, list or dict whose first "
        "tensor has the batch dimension first"
    )


def checked_loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    """``loss_fn(model, batch)``, checked to be a finite real scalar tensor."""
    refuse_output_target_loss(loss_fn)
    loss = scalar_loss(loss_fn(model, batch))
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLossError(
            f"loss is not finite ({loss.detach().item()}): the model has diverged, the input holds "
            "NaN/inf, or a mean is over no elements (e.g. every target is cross-entropy's "
            "ignore_index); check the data and the parameters before computing curvature"
        )
    return loss


def require_loss_fn(loss_fn: Any) -> None:
    """A one-line error unless ``loss_fn`` is a function ``(model, batch) -> scalar`` (None
    failed at the first product with a raw TypeError)."""
    if not callable(loss_fn):
        raise SharpdimError(
            f"loss_fn must be callable as loss_fn(model, batch) -> scalar, got "
            f"{type(loss_fn).__name__}: pass a function such as sharpdim.training.losses.mse_loss"
        )
    refuse_output_target_loss(loss_fn)


def refuse_output_target_loss(loss_fn: Any) -> None:
    """A one-line error for torch's own losses (an ``nn.CrossEntropyLoss()`` module or its
    ``forward``, an ``F.cross_entropy``-like or ``torch.*`` function, or a
    ``functools.partial`` of one), which take ``(output, target)``, not ``(model, batch)``:
    they failed deep inside torch with a TypeError."""
    inner = loss_fn
    while isinstance(inner, functools.partial):  # (partial(F.cross_entropy, label_smoothing=.1))
        inner = inner.func
    owner = getattr(inner, "__self__", None)  # (nn.MSELoss().forward; not another method)
    call = getattr(inner, "__name__", None) in ("forward", "__call__")
    module = owner if isinstance(owner, nn.modules.loss._Loss) and call else inner
    if isinstance(module, nn.modules.loss._Loss):  # (it failed deep inside torch)
        raise SharpdimError(
            f"loss_fn is a {type(module).__name__}, which takes (output, target), not "
            "(model, batch): wrap it, e.g. loss_fn=lambda model, batch: "
            "criterion(model(batch[0]), batch[1])"
        )
    name = getattr(inner, "__name__", None)
    for prefix, home in (("F", F), ("torch", torch)):  # (by identity: an adapter made with
        # functools.wraps(F.mse_loss) takes (model, batch) and is fine)
        if isinstance(name, str) and getattr(home, name, None) is inner:
            raise SharpdimError(
                f"loss_fn is {prefix}.{name}, which takes tensors (output, target), not (model, "
                f"batch): wrap it, e.g. loss_fn=lambda model, batch: "
                f"{prefix}.{name}(model(batch[0]), batch[1])"
            )


def scalar_loss(loss: Any) -> torch.Tensor:
    """``loss`` (what a ``loss_fn`` returned) as a 0-dim tensor, checked to be one real
    floating-point number (finite or not: the training loop records a non-finite one)."""
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else None
        raise SharpdimError(
            f"loss_fn must return a scalar tensor, got {got or type(loss).__name__}: reduce it, "
            "e.g. with .mean()"
        )
    if not loss.is_floating_point():
        raise SharpdimError(
            f"loss_fn must return a real floating-point scalar, got dtype {loss.dtype}: compute "
            "a real loss from the model's floating outputs (e.g. .real or .abs() of a complex one)"
        )
    return loss.reshape(())


def require_graph(loss: torch.Tensor) -> None:
    """A one-line error if ``loss`` has no gradient graph to differentiate."""
    if not loss.requires_grad and torch.is_inference_mode_enabled():
        raise SharpdimError(
            "the loss has no gradient graph inside torch.inference_mode(): call this outside "
            "the inference_mode block"
        )
    if not loss.requires_grad:
        raise SharpdimError(
            "loss_fn returned a loss without a gradient graph: do not compute it under "
            "torch.no_grad() or .detach() it, and make it depend on the parameters"
        )


def math_attention() -> Any:
    """A context in which ``F.scaled_dot_product_attention`` uses its math backend.

    The fused (flash, memory-efficient) kernels have no double backward, so every forward
    whose gradient is differentiated again (Hessian-vector products) runs inside it.
    """
    return sdpa_kernel(SDPBackend.MATH)


def _differentiable_loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    """:func:`checked_loss` that must also carry a graph to differentiate."""
    try:
        loss = checked_loss(model, loss_fn, batch)
    except RuntimeError as err:
        if "Inference tensors cannot be saved for backward" not in str(err):
            raise
        raise SharpdimError(
            "the batch (or a tensor loss_fn uses) was made under torch.inference_mode(), and "
            "autograd cannot differentiate through it: make it outside inference_mode, or "
            "pass a .clone() made outside it"
        ) from None
    require_graph(loss)
    return loss


def _batch_weights(batches: list[Any], weights: Sequence[float] | None) -> list[float]:
    """Checked per-batch weights; by default ``n_b / N`` (one batch: ``[1.0]``)."""
    if weights is None and len(batches) == 1:
        return [1.0]
    if weights is None:
        sizes = [batch_size(b) for b in batches]
        if sum(sizes) == 0:
            raise SharpdimError("every batch is empty: pass batches holding examples")
        return [n / sum(sizes) for n in sizes]
    if unordered(weights) or not hasattr(weights, "__len__"):  # (a dict: its keys; 0-dim)
        raise SharpdimError(
            f"weights must be a sequence of one number per batch, got {weights!r}: pass e.g. "
            f"{[1.0 / len(batches)] * min(len(batches), 3)}"
        )
    if len(weights) != len(batches):
        raise SharpdimError(
            f"{len(weights)} weights for {len(batches)} batches: give one weight per batch"
        )
    try:
        out = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise SharpdimError(
            f"weights must be real numbers, got {list(weights)!r}: pass one float per batch"
        ) from None
    if not all(math.isfinite(w) for w in out):
        raise SharpdimError(f"weights must be finite, got {out}: pass one finite float per batch")
    return out


def _batch_tensors(batch: Any, depth: int = 0) -> list[torch.Tensor]:
    """The tensors in ``batch`` (a tensor, or tuples, lists and dicts of them, nested up to
    8 deep), watched by identity and version: an in-place change of the inputs or targets
    rebuilds the graph (a target changed so was silently ignored, an input raised autograd's
    "modified by an inplace operation")."""
    if isinstance(batch, torch.Tensor):
        return [batch]
    if depth >= 8 or not isinstance(batch, (tuple, list, dict)):
        return []
    items = batch.values() if isinstance(batch, dict) else batch
    return [t for item in items for t in _batch_tensors(item, depth + 1)]


def _same_values(copy: torch.Tensor, t: torch.Tensor) -> bool:
    """Whether ``t`` still holds the values of ``copy``: NaN where NaN was (a NaN in a tensor
    the loss never reaches must not rebuild the graph at every product); ``True`` for a dtype
    torch cannot compare (e.g. complex32: its version counter alone is watched)."""
    try:
        if torch.equal(copy, t):
            return True
        nan = copy.isnan() & t.isnan() if copy.is_floating_point() else False
        return bool(((copy == t) | nan).all())
    except (NotImplementedError, RuntimeError):
        return True


def _storage(t: torch.Tensor) -> int | None:
    """Where ``t``'s values live (``None`` for a layout without one storage, e.g. sparse)."""
    return t.data_ptr() if t.layout == torch.strided else None


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
            sees; batch-norm statistics of the batch, one dropout mask per batch), or
            ``"keep"`` the model's current mode. The model's modes are restored afterwards.
            Randomness in the forward pass (dropout) is drawn once per batch and replayed
            for every later pass on it, so the operator stays one fixed symmetric matrix.
        reuse_graph: keep the gradient graph between matvecs (faster, holds the activations'
            memory); applies to one batch (``batch``, or ``batches`` of length 1) only.
        seed: seed of that randomness (batch ``b`` uses ``seed + b``, in a fork of the global
            generator, which is never advanced); default: peeked from the global generator's
            state when the operator first runs the model.

    The operator notices in-place changes (an optimizer step, fused or not,
    ``load_state_dict``, :func:`~sharpdim.curvature.params.set_flat_params`, writes through
    ``p.data``) of the model's parameters and buffers and of ``params``, and a new storage for
    one (``model.to(...)``, ``p.data = t``), in-place changes of the batch's tensors, and a
    submodule swapped for another, and rebuilds its graph: it compares autograd's version
    counters and the parameters' and buffers' values themselves with those at the build (a
    copy of them is kept; fused optimizers and ``p.data`` writes leave the counters alone).
    A parameter *replaced* by a new tensor is refused. The batch's tensors are watched by
    their version counters only: writes that bypass them (a shared numpy buffer refilled,
    ``x.data`` writes) need :meth:`refresh`, as do other changes of the model (a norm's
    ``eps``, dropout's ``p``) and of tensors ``loss_fn`` captures.
    Computing curvature never changes the model: its train/eval flags and its buffers
    (batch-norm running statistics) are restored.

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
        seed: int | None = None,
    ) -> None:
        if (batch is None) == (batches is None):
            given = "both" if batch is not None else "neither"
            raise SharpdimError(
                f"got {given} of `batch` and `batches`: give exactly one, `batch` (one "
                "minibatch) or `batches` (a list for the full-batch Hessian)"
            )
        if mode not in ("eval", "train", "keep"):
            raise SharpdimError(f"unknown mode {mode!r}: use 'eval', 'train' or 'keep'")
        model = uncompiled(model)  # (a torch.compile wrapper has no double backward)
        require_loss_fn(loss_fn)
        self.model, self.loss_fn, self.mode = model, loss_fn, mode
        self.params = trainable_parameters(model, params)
        complex_or_int = sorted({str(p.dtype) for p in self.params if not p.is_floating_point()})
        if complex_or_int:
            raise SharpdimError(
                f"the parameters are {', '.join(complex_or_int)}: the Hessian needs real floating "
                "parameters (split a complex parameter into its real and imaginary parts)"
            )
        kinds = {(p.dtype, p.device) for p in self.params}
        if len(kinds) > 1:
            raise SharpdimError(
                f"the parameters mix dtypes/devices {sorted(str(k) for k in kinds)}: "
                "move the model to one dtype and device (e.g. model.double()) first"
            )
        self.batches = [batch] if batches is None else list(batches)
        if not self.batches:
            raise SharpdimError("`batches` is empty: pass at least one batch")
        self.weights = _batch_weights(self.batches, weights)
        self.reuse_graph = check_flag(reuse_graph, "reuse_graph") and len(self.batches) == 1
        self._graph: tuple[list[torch.Tensor], list[int]] | None = None
        self._tracked_at_build: tuple[list[Any], ...] | None = None
        self._values_at_build: list[torch.Tensor | None] = []
        self._seed = None if seed is None else check_seed(seed)
        self._dense_width: int | None = None  # columns per batched product in dense()

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
        if self.reuse_graph and self.weights[0] == 0:  # one chunk, left out (all padding)
            out = torch.zeros_like(block)
        elif self.reuse_graph:
            out = self._hvp(self._cached_graph(), block)
            out = out if self.weights[0] == 1.0 else self.weights[0] * out
        else:
            out = torch.zeros_like(block)
            for i, w in enumerate(self.weights):
                if w != 0:  # (a chunk of weight 0, e.g. all padding, may have a NaN loss)
                    out += w * self._hvp(self._gradient_graph(i), block)
        return out  # (checked by matvec, through _finite)

    def dense(self) -> torch.Tensor:
        """The full Hessian (see :meth:`LinearOperator.dense`), refused when it is not
        symmetric beyond round-off (``max |H - H^T| > sqrt(eps) max |H|``): autograd's second
        derivative of some layer is then wrong (``torch._weight_norm`` under torch 2.13), and
        every estimate built on it would be too."""
        h = super().dense()
        asym, scale = max_asymmetry(h)
        if not is_symmetric(asym, scale, h.dtype):
            raise SharpdimError(
                f"the Hessian is not symmetric (max |H - H^T| = {asym:.3g}, max |H| = "
                f"{scale:.3g}): autograd's second derivative of a layer of this model is wrong "
                "(e.g. weight_norm under torch 2.13), or the loss computes in lower precision "
                f"than the {str(h.dtype).removeprefix('torch.')} parameters (autocast, TF32 "
                "convolutions on a GPU): write such a layer with plain ops, and compute exact "
                "curvature without autocast or TF32 (see docs/curvature.md, Pitfalls)"
            )
        return h

    def _dense_columns(self, unit: torch.Tensor) -> torch.Tensor:
        """Columns of :meth:`dense`: with a kept graph that saves little, in batched double
        backwards (:mod:`~sharpdim.curvature.batched_hvp`: many times faster for small
        models), else (or where torch cannot batch) one by one."""
        if not (self.reuse_graph and self.weights[0] != 0):
            return self._matmat(unit)
        if self._dense_width is None and self.num_params < 16:  # too few columns to gain
            self._dense_width = 1
        if self._dense_width is None:  # once: the graph's size depends on shapes only
            self._graph = None  # (measured on a build of its own: one graph alive at a time)
            saved = saved_bytes(lambda: self._gradient_graph(0))
            self._dense_width = 1 if saved is None else batch_columns(saved)
        grads, live = self._cached_graph()
        if not grads:
            self._dense_width = 1  # the loss is at most linear in the parameters: H = 0
        if self._dense_width == 1:
            return self._matmat(unit)
        out = batched_hvp(grads, self.params, live, unit, self._dense_width)
        if out is None:
            self._dense_width = 1  # torch cannot batch this model: one column at a time
            return self._matmat(unit)
        return out if self.weights[0] == 1.0 else self.weights[0] * out  # (dense() checks it)

    def _finite(self, out: torch.Tensor) -> torch.Tensor:
        """``out``, or a one-line error where the products are not finite."""
        # the sum is a cheap filter (it overflows at worst, hence the exact second test); the
        # vector itself was checked by LinearOperator.matvec
        if not out.sum().isfinite() and not torch.isfinite(out).all():
            raise NonFiniteCurvatureError(
                "H @ v is not finite although the loss is finite, so the Hessian holds NaN or inf: "
                "second derivatives overflow (use a float64 model) or are undefined at these "
                "parameters (e.g. sqrt or norm at 0; or the gradient itself is NaN, as with "
                "torch.where(p > 0, p * log(p), 0) at p = 0); use a loss that is twice "
                "differentiable there (e.g. MSE, not RMSE) or other parameters"
            )
        return out

    # -- extras ---------------------------------------------------------------------------
    def loss_and_gradient(self) -> tuple[float, torch.Tensor]:
        """The (weighted) loss and its flat gradient at the current parameters."""
        self._check_params_in_model()
        total, grad = 0.0, torch.zeros(self.num_params, dtype=self.dtype, device=self.device)
        for i, (b, w) in enumerate(zip(self.batches, self.weights, strict=True)):
            if w == 0:
                continue
            with (
                torch.enable_grad(),
                math_attention(),
                self._same_randomness(i),
                ModeScope(self.model, self.mode),
            ):
                loss = _differentiable_loss(self.model, self.loss_fn, b)
            gs = torch.autograd.grad(loss, self.params, allow_unused=True)
            grad += w * flatten(
                [
                    torch.zeros_like(p) if g is None else g
                    for g, p in zip(gs, self.params, strict=False)
                ]
            )
            total += w * float(loss.detach())
        return total, grad

    def refresh(self) -> None:
        """Drop the cached gradient graph; the next matvec rebuilds it.

        Needed only after changes the operator does not watch: in-place changes of a tensor
        captured by ``loss_fn``, and changes of the model other than its parameters, buffers
        and submodules (a hyperparameter such as a norm's ``eps`` or dropout's ``p``, hooks).
        """
        self._graph = None

    # -- internals ------------------------------------------------------------------------
    @contextmanager
    def _same_randomness(self, index: int) -> Iterator[None]:
        """Every forward pass on batch ``index`` draws the same random numbers.

        The pass runs in a fork of the global generator (and of the CUDA generators of the
        parameters' devices) seeded with ``seed + index``, so in train mode a dropout mask is
        fixed per batch for the operator's lifetime, batches get different masks, and the
        caller's generator is never advanced. Without ``seed`` one is peeked from the global
        generator's state at the first pass.
        """
        if self._seed is None:
            self._seed = peek_seed(torch.random.default_generator)
        with forked_global_rng((self._seed + index) % 2**32, self.params):
            yield

    def _gradient_graph(self, index: int) -> tuple[list[torch.Tensor], list[int]]:
        """Gradients of batch ``index`` with their graph, and the indices of the live ones."""
        self._check_params_in_model()
        with (
            torch.enable_grad(),
            math_attention(),
            self._same_randomness(index),
            ModeScope(self.model, self.mode),
        ):
            loss = _differentiable_loss(self.model, self.loss_fn, self.batches[index])
            refuse_once_differentiable(loss, "the loss", inputs=self.params)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        return [strided(grads[i]) for i in live], live

    def _check_params_in_model(self) -> None:
        """Refuse parameters the model no longer holds (the loss does not reach a replaced
        tensor, so its rows would silently read zero) or that no longer require grad."""
        own = {id(p) for p in self.model.parameters()}
        gone = [tuple(p.shape) for p in self.params if id(p) not in own]
        if gone:
            raise SharpdimError(
                f"{len(gone)} of the operator's parameter tensors (shapes {gone[:3]}) are no "
                "longer parameters of the model (replaced, e.g. by load_state_dict(assign=True) "
                "or layer.weight = nn.Parameter(...)): build a new HessianOperator"
            )
        frozen = [tuple(p.shape) for p in self.params if not p.requires_grad]
        if frozen:
            raise SharpdimError(
                f"{len(frozen)} of the operator's parameter tensors (shapes {frozen[:3]}) no "
                "longer require grad (frozen after the operator was built): build a new "
                "HessianOperator, whose default parameters are the trainable ones"
            )

    def _tensors_to_track(self) -> list[torch.Tensor]:
        """``params``, all of the model's parameters and its buffers (each tensor once)."""
        seen: dict[int, torch.Tensor] = {}
        for t in [*self.params, *self.model.parameters(), *self.model.buffers()]:
            seen.setdefault(id(t), t)
        return list(seen.values())

    def _cached_graph(self) -> tuple[list[torch.Tensor], list[int]]:
        """The reused gradient graph, rebuilt when any tracked tensor changed in place.

        Tracking every parameter (not only ``params``) matters for a subset: an update of
        another layer changes this block of the Hessian too.
        """
        tensors = self._tensors_to_track()
        graph = self._graph
        if (
            graph is None
            or self._tracked_state(tensors) != self._tracked_at_build
            or self._values_changed(tensors)
        ):
            graph = self._graph = self._gradient_graph(0)
            tensors = self._tensors_to_track()
            self._tracked_at_build = self._tracked_state(tensors)
            self._values_at_build = [
                t.detach().clone() if t.layout == torch.strided else None for t in tensors
            ]
        return graph

    def _values_changed(self, tensors: list[torch.Tensor]) -> bool:
        """Whether a tracked tensor's values differ from the copy taken at the build (writes
        that leave version counters alone: fused optimizer steps, ``p.data``). Called only
        when identities and storages match, so the lists are aligned."""
        return not all(
            copy is None or _same_values(copy, t)
            for copy, t in zip(self._values_at_build, tensors, strict=True)
        )

    def _tracked_state(self, tracked: list[torch.Tensor]) -> tuple[list[Any], ...]:
        """Identity, storage, version and ``requires_grad`` of every tracked tensor (of
        :meth:`_tensors_to_track`) and of the batch's tensors, the identity and type of every
        submodule (a module swapped in), and (``mode="keep"``) the modules' train/eval flags:
        a graph built under other values describes another Hessian (or, for a parameter
        frozen since, none). (``model.to(...)``/``.double()`` swap a parameter's storage
        without a new version.)"""
        modules = list(self.model.modules())
        flags = [m.training for m in modules] if self.mode == "keep" else []
        # (inference tensors have no version counter, and cannot change in place outside
        # inference mode: teacher targets made under torch.inference_mode())
        inputs = [t for t in _batch_tensors(self.batches[0]) if not t.is_inference()]
        every = [*tracked, *inputs]
        where = [(id(t), _storage(t), t.dtype, t.device, t.requires_grad) for t in every]
        kinds = [(id(m), type(m)) for m in modules]
        return where, [t._version for t in every], flags, kinds

    def _hvp(
        self, graph: tuple[list[torch.Tensor], list[int]], block: torch.Tensor
    ) -> torch.Tensor:
        """``H @ block`` column by column (a batched double backward was slower on CPU for
        large products; :meth:`dense` batches, see :mod:`~sharpdim.curvature.batched_hvp`)."""
        grads, live = graph
        if not grads:
            return torch.zeros_like(block)  # the loss is at most linear in the parameters: H = 0
        out = torch.empty_like(block)
        live_params = [self.params[i] for i in live]
        sizes = [p.numel() for p in self.params]
        for j in range(block.shape[1]):
            vs = unflatten(block[:, j], self.params)
            hv = torch.autograd.grad(
                grads,
                live_params,
                grad_outputs=[vs[i] for i in live],
                retain_graph=True,
                allow_unused=True,
            )
            by_param: list[torch.Tensor | None] = [None] * len(self.params)
            for i, h in zip(live, hv, strict=True):
                by_param[i] = h
            for piece, block_h in zip(out[:, j].split(sizes), by_param, strict=True):
                if block_h is None:  # a parameter the loss does not reach (twice): zero block
                    piece.zero_()
                else:
                    piece.copy_(strided(block_h).reshape(-1))
        return out
