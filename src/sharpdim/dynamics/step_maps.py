"""The real optimizer step as a map on a flat state vector, with its Jacobian-vector products.

A training step with minibatch ``B_t`` is a map ``x_{t+1} = phi_t(x_t)`` on the optimizer
state ``x`` (paper Sec. 3, Tuci et al., arXiv 2604.19740: SGD as a random dynamical system).
:class:`TrainingMap` implements the update rules of ``torch.optim`` exactly (same order of
operations, same conventions), so that Lyapunov exponents and Jacobian spectra are those of the
optimizer a user actually runs:

* ``"sgd"``: ``x = w``; ``g = grad L_B(w) + wd w``; ``w' = w - lr g``.
* ``"momentum"`` / ``"nesterov"`` (torch.optim.SGD, ``dampening = 0``): ``x = [w, v]``;
  ``v' = mu v + g``; ``w' = w - lr v'`` (heavy ball) or ``w' = w - lr (g + mu v')`` (Nesterov).
  torch's first step sets ``v = g``, which is ``mu * 0 + g``: start from ``v = 0``.
* ``"adam"`` / ``"adamw"`` (torch.optim.Adam/AdamW, ``amsgrad=False``): ``x = [w, m, v]``;
  ``g = grad L_B(w) (+ wd w for Adam)``; AdamW first decays ``w <- (1 - lr wd) w``;
  ``m' = b1 m + (1 - b1) g``; ``v' = b2 v + (1 - b2) g^2``;
  ``w' = w - (lr / c1) m' / (sqrt(v') / sqrt(c2) + eps)``, ``c_i = 1 - b_i^s`` with the step
  number ``s = step_offset + t + 1`` of the map's call index ``t``.

``jvp`` propagates tangents ``dx`` with Hessian-vector products by double backward on one
gradient graph (``dg = H_B dw + wd dw``); ``jacobian`` builds the dense Jacobian with
``torch.autograd.functional.jacobian`` (tests and brute-force references only). The model is
never modified: for the duration of one loss evaluation its parameter slots point at views of
the state vector, and are restored afterwards.

``phi_t`` is a fixed map: the loss of step ``t`` runs under a forked global RNG seeded from
``(seed, t)``, so dropout draws the same masks at every call of step ``t`` (both orbits of a
divergence test, the step and its JVP/Jacobian) and the caller's RNG is left untouched. A
non-finite loss (a diverged orbit) gives a NaN state, which the callers record as divergence.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from sharpdim.checks import check_betas, check_count, check_number, check_seed
from sharpdim.curvature.hessian import (
    LossFn,
    Mode,
    checked_loss,
    math_attention,
    require_loss_fn,
)
from sharpdim.curvature.params import get_flat_params, trainable_parameters
from sharpdim.curvature.second_order import refuse_once_differentiable
from sharpdim.dynamics.jacobian_spectra import optimizer_kind
from sharpdim.errors import SharpdimError
from sharpdim.module_modes import ModeScope, uncompiled
from sharpdim.rng import forked_global_rng


def _orbit_loss(model: nn.Module, loss_fn: LossFn, batch: Any) -> torch.Tensor:
    """:func:`checked_loss` that lets a non-finite scalar through: on an orbit it is divergence."""
    loss = loss_fn(model, batch)
    if isinstance(loss, torch.Tensor) and loss.numel() == 1 and not torch.isfinite(loss).all():
        return loss.reshape(())
    return checked_loss(model, lambda m, b: loss, batch)


def _check_step(t: Any) -> int:
    return check_count(t, "the step t", 0, "0, 1, 2, ... (the batch index of this step)")


def _step_seed(seed: int, t: int) -> int:
    """A 32-bit seed for step ``t`` of a map seeded ``seed`` (splitmix64's finalizer of the
    pair): torch's CPU generator keeps only the low 32 bits of a seed."""
    z = ((seed % 2**32) << 32) | (t % 2**32)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return (z ^ (z >> 31)) % 2**32


def refuse_tensor_tuple(batches: Any) -> None:
    """A one-line error for ``batches`` given as a tuple of tensors: one ``(x, y)`` batch
    would be read as the two batches ``x`` and ``y``."""
    if isinstance(batches, tuple) and all(isinstance(b, torch.Tensor) for b in batches):
        raise SharpdimError(
            "batches is a tuple of tensors: one (x, y) batch or several one-tensor batches? "
            "pass a list: [(x, y)] for one batch, [(x1, y1), (x2, y2), ...] or [b1, b2, ...]"
        )


class _ParameterSwap:
    """Puts tensors in place of a model's trainable parameters for a block, then restores them.

    The model's ``_parameters`` entries are pointed at views of one flat vector (so autograd
    differentiates with respect to that vector) and put back on exit, even after an error.
    This is what ``torch.func.functional_call`` does, without its per-call bookkeeping (which
    cost 0.15-0.25 of a training step per call on the benchmark MLP of
    ``benchmarks/bench_chaos.py``). Tied parameters (one tensor in several modules) get the
    same view everywhere; frozen parameters stay as they are.
    """

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor]) -> None:
        index = {id(p): i for i, p in enumerate(params)}
        self.slots: list[tuple[nn.Module, str, nn.Parameter, int]] = [
            (m, name, p, index[id(p)])
            for m in model.modules()
            for name, p in m._parameters.items()
            if p is not None and id(p) in index
        ]
        self.sizes = [p.numel() for p in params]
        self.shapes = [p.shape for p in params]
        self.views: list[torch.Tensor] = []
        # a sparse embedding's gradient of a view of the state cannot be reshaped: the swapped
        # model takes dense gradients (the same values)
        self.embeddings = [
            m for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
        ]
        self.sparse_flags: list[bool] = []

    def __call__(self, flat: torch.Tensor) -> _ParameterSwap:
        self.views = [
            c.view(shape) for c, shape in zip(flat.split(self.sizes), self.shapes, strict=True)
        ]
        return self

    def __enter__(self) -> None:
        for m, name, _, i in self.slots:
            m._parameters[name] = self.views[i]  # type: ignore[assignment]  # a plain view
        self.sparse_flags = [m.sparse for m in self.embeddings]  # (as they are now)
        for m in self.embeddings:
            m.sparse = False

    def __exit__(self, *exc: object) -> None:
        for m, name, p, _ in self.slots:
            m._parameters[name] = p
        for m, flag in zip(self.embeddings, self.sparse_flags, strict=True):
            m.sparse = flag
        self.views = []


class TrainingMap:
    """One step of a torch.optim optimizer as a map ``x -> phi_t(x)`` on a flat state.

    Args:
        model: the network; its current parameters give :meth:`initial_state`.
        loss_fn: ``loss_fn(model, batch) -> scalar``.
        batches: a sequence of batches (index ``t`` modulo its length) or a callable
            ``t -> batch``; a tuple of tensors is refused (one batch ``(x, y)`` is ``[(x, y)]``).
        optimizer: ``"sgd"``, ``"momentum"``, ``"nesterov"``, ``"adam"`` or ``"adamw"``.
        lr: step size (``> 0``); momentum: ``mu`` (heavy ball / Nesterov, in ``(0, 1)``);
        betas, eps: Adam's (``b_i`` in ``[0, 1)``, ``eps >= 0``);
        weight_decay: L2 decay (SGD, Adam) or decoupled decay (AdamW), ``>= 0``.
        mode: module mode during the loss (``"train"`` default: the loss the optimizer sees).
        step_offset: Adam steps already taken before ``t = 0`` (bias correction), ``>= 0``.
        seed: base of the per-step seeds of the loss's randomness (dropout masks of step
            ``t`` are those of seed ``(seed, t)``).

    Example:
        >>> model = torch.nn.Linear(2, 1, bias=False).double()
        >>> data = (torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> phi = TrainingMap(model, mse, [data], lr=0.5)
        >>> x0 = phi.initial_state()
        >>> torch.allclose(phi.step(x0, 0), 0.5 * x0)  # H = I: w' = w - 0.5 w
        True
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any] | Callable[[int], Any],
        *,
        optimizer: str = "sgd",
        lr: float,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mode: Mode = "train",
        step_offset: int = 0,
        seed: int = 0,
    ) -> None:
        optimizer = optimizer_kind(optimizer)
        require_loss_fn(loss_fn)
        if not callable(batches) and not isinstance(batches, Sequence):
            raise SharpdimError(
                f"batches must be a list of batches or a function t -> batch, got "
                f"{type(batches).__name__}: pass e.g. [(x, y)]"
            )
        if not callable(batches) and len(batches) == 0:
            raise SharpdimError("`batches` is empty: pass at least one batch")
        refuse_tensor_tuple(batches)
        if mode not in ("eval", "train", "keep"):
            raise SharpdimError(f"unknown mode {mode!r}: use 'eval', 'train' or 'keep'")
        model = uncompiled(model)  # (a torch.compile wrapper has no double backward)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.batches, self.mode, self.seed = batches, mode, check_seed(seed)
        # the ranges of jacobian_spectra.StepSpectrumConfig (b_i < 1 keeps c_i = 1 - b_i^s > 0)
        self.lr = check_number(lr, "lr", "> 0", "0.1")
        # momentum and betas are checked only where the update rule uses them (as TrainConfig)
        uses_momentum = optimizer in ("momentum", "nesterov")
        self.momentum: Any = (
            check_number(momentum, "momentum", "in (0, 1)", "0.9 (momentum 0 is optimizer='sgd')")
            if uses_momentum
            else momentum
        )
        self.betas: Any = check_betas(betas) if optimizer in ("adam", "adamw") else betas
        self.eps = check_number(eps, "eps", ">= 0", "1e-08")
        self.weight_decay = check_number(weight_decay, "weight_decay", ">= 0", "0.0")
        hint = "the number of Adam steps already taken (0 for a fresh optimizer)"
        self.step_offset = check_count(step_offset, "step_offset", minimum=0, hint=hint)
        self._params = trainable_parameters(model)
        self._swap = _ParameterSwap(model, self._params)

    # -- sizes -----------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self._params)

    @property
    def num_blocks(self) -> int:
        """Number of ``d``-blocks in the state: 1 (SGD), 2 (momentum) or 3 (Adam)."""
        return {"sgd": 1, "momentum": 2, "nesterov": 2, "adam": 3, "adamw": 3}[self.optimizer]

    @property
    def state_dim(self) -> int:
        return self.num_blocks * self.num_params

    def initial_state(self) -> torch.Tensor:
        """The model's current parameters followed by zero optimizer state."""
        w = get_flat_params(self._params)
        return torch.cat([w] + [torch.zeros_like(w)] * (self.num_blocks - 1))

    def params(self, x: torch.Tensor) -> torch.Tensor:
        """The parameter part ``w`` of a state."""
        return x[: self.num_params]

    def _check_state(self, x: torch.Tensor, t: Any = 0) -> int:
        """The step ``t`` as an int; a one-line error for a state that is not a
        ``(state_dim,)`` tensor of the model's dtype (e.g. the parameters alone of a momentum
        or Adam map), or a step that is not a whole number ``>= 0``."""
        t = _check_step(t)
        if not isinstance(x, torch.Tensor):
            raise SharpdimError(
                f"the state must be a tensor, got {type(x).__name__}: start from initial_state()"
            )
        if tuple(x.shape) != (self.state_dim,):
            raise SharpdimError(
                f"the state has shape {tuple(x.shape)}, the {self.optimizer} map's has "
                f"({self.state_dim},) (parameters, then the optimizer's buffers): start from "
                "initial_state()"
            )
        dtype = self._params[0].dtype if self._params else x.dtype
        if x.dtype != dtype:
            raise SharpdimError(
                f"the state is {x.dtype}, the model's parameters {dtype}: make them match "
                f"(model.to({x.dtype}) with batches of that dtype, or state.to({dtype}))"
            )
        return t

    def batch(self, t: int) -> Any:
        if callable(self.batches):
            return self.batches(t)
        return self.batches[t % len(self.batches)]

    # -- the map ---------------------------------------------------------------------------
    @contextmanager
    def _step_rng(self, t: int) -> Iterator[None]:
        """Forks the global RNG (CPU, and the model's CUDA device) seeded from ``(seed, t)``."""
        with forked_global_rng(_step_seed(self.seed, t), self._params[:1]):
            yield

    def loss_and_grad(
        self, w: torch.Tensor, t: int, *, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, grad L_B(w), w_leaf)``: with ``create_graph`` the gradient keeps its graph.

        The loss runs under the RNG of step ``t``; a non-finite loss gives a NaN gradient.
        """
        t = _check_step(t)
        leaf = w if (create_graph and w.requires_grad) else w.detach().requires_grad_(True)
        with torch.enable_grad():
            with (
                ModeScope(self.model, self.mode),
                self._swap(leaf),
                self._step_rng(t),
                math_attention(),  # (fused attention kernels have no double backward)
            ):
                loss = _orbit_loss(self.model, self.loss_fn, self.batch(t))
            if not torch.isfinite(loss):
                return loss.detach(), torch.full_like(leaf.detach(), math.nan), leaf
            if not loss.requires_grad:
                raise SharpdimError(
                    "the loss does not depend on the model's parameters (computed under "
                    "no_grad, or from detached outputs): return loss_fn(model, batch) with its "
                    "graph"
                )
            if create_graph:
                refuse_once_differentiable(loss, "the loss", inputs=[leaf])
            (grad,) = torch.autograd.grad(loss, leaf, create_graph=create_graph)
        return loss, grad, leaf

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """One optimizer step with batch ``t``: ``phi_t(x)`` (no graph).

        ``x`` is a ``(state_dim,)`` state of the model's dtype, e.g. :meth:`initial_state`.
        """
        return self._step(x, t, differentiable=False).detach()

    def _step(
        self, x: torch.Tensor, t: int, *, differentiable: bool, freeze_second_moment: bool = False
    ) -> torch.Tensor:
        t = self._check_state(x, t)
        d = self.num_params
        w = x[:d]
        _, g, _ = self.loss_and_grad(w, t, create_graph=differentiable)
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        # torch.add(a, b, alpha=c), as torch.optim writes it, rounds a + c b once (fused),
        # unlike a + c * b: the forms below are torch.optim's own, so orbits match bit for bit
        if self.optimizer in ("sgd", "momentum", "nesterov", "adam") and wd:
            g = torch.add(g, w, alpha=wd)
        if self.optimizer == "sgd":
            return torch.add(w, g, alpha=-lr)
        if self.optimizer in ("momentum", "nesterov"):
            v = mu * x[d:] + g
            step = torch.add(g, v, alpha=mu) if self.optimizer == "nesterov" else v
            return torch.cat([torch.add(w, step, alpha=-lr), v])
        b1, b2 = self.betas
        s = self.step_offset + t + 1
        c1, c2 = 1 - b1**s, 1 - b2**s
        if self.optimizer == "adamw":
            w = w * (1 - lr * wd)
        m, v = _adam_moments(x[d : 2 * d], x[2 * d :], g, b1, b2)
        vp = v.detach() if freeze_second_moment else v
        # sqrt(v), with derivative 0 where v = 0 (autograd's is inf there, and 0 * inf = NaN
        # filled whole columns of jacobian()); the same convention as jvp
        nonzero = vp != 0
        root = torch.where(nonzero, torch.where(nonzero, vp, torch.ones_like(vp)).sqrt(), 0.0)
        w_next = torch.addcdiv(w, m, root / c2**0.5 + self.eps, value=-(lr / c1))
        return torch.cat([w_next, m, v])

    def jvp(
        self, x: torch.Tensor, t: int, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(phi_t(x), J_t(x) @ tangents)`` for tangents ``(state_dim,)`` or ``(state_dim, k)``.

        One forward and one ``create_graph`` backward give the gradient (used for the step
        itself) and its graph; then one double backward per tangent on that shared graph gives
        ``H_B dw`` (Pearlmutter 1994); no dense Jacobian. The loop beat batching the ``k``
        products with ``is_grads_batched=True`` (vmap) on CPU: 24 vs 32 training steps for
        ``k = 16`` on the benchmark MLP.
        """
        t = self._check_state(x, t)
        if not (
            isinstance(tangents, torch.Tensor)
            and tangents.is_floating_point()
            and tangents.ndim in (1, 2)
        ):
            shape = tuple(tangents.shape) if isinstance(tangents, torch.Tensor) else None
            raise SharpdimError(
                f"tangents must be a floating tensor ({self.state_dim},) or ({self.state_dim}, "
                f"k), got {type(tangents).__name__} {shape or ''}: pass a vector or a block"
            )
        vec = tangents.ndim == 1
        dx = tangents[:, None] if vec else tangents
        if dx.shape[0] != self.state_dim:
            raise SharpdimError(
                f"tangents have {dx.shape[0]} rows, the state has {self.state_dim}: "
                f"pass a ({self.state_dim}, k) block"
            )
        d, lr, mu, wd = self.num_params, self.lr, self.momentum, self.weight_decay
        w = x[:d].detach()
        loss, g_graph, leaf = self.loss_and_grad(w, t, create_graph=True)
        if not torch.isfinite(loss):  # diverged orbit: a NaN state, recorded by the caller
            nan = torch.full((self.state_dim,), math.nan, dtype=x.dtype, device=x.device)
            return nan, torch.full_like(tangents, math.nan)
        dw = dx[:d].to(w.dtype)
        hd = torch.zeros_like(dw)  # stays zero where the gradient is constant (linear loss)
        for j in range(dw.shape[1] if g_graph.requires_grad else 0):
            (hd[:, j],) = torch.autograd.grad(  # one double backward per tangent, shared graph
                g_graph,
                leaf,
                dw[:, j],
                retain_graph=j + 1 < dw.shape[1],
                allow_unused=True,
                materialize_grads=True,
            )
        g = g_graph.detach()
        if self.optimizer in ("sgd", "momentum", "nesterov", "adam") and wd:
            g, hd = torch.add(g, w, alpha=wd), hd + wd * dw  # (the forms of _step)
        if self.optimizer == "sgd":
            out_x, out_dx = torch.add(w, g, alpha=-lr), dw - lr * hd
        elif self.optimizer in ("momentum", "nesterov"):
            v = mu * x[d:] + g
            dv = mu * dx[d:] + hd
            if self.optimizer == "nesterov":
                out_w = torch.add(w, torch.add(g, v, alpha=mu), alpha=-lr)
                out_dw = dw - lr * (hd + mu * dv)
            else:
                out_w, out_dw = torch.add(w, v, alpha=-lr), dw - lr * dv
            out_x, out_dx = torch.cat([out_w, v]), torch.cat([out_dw, dv])
        else:
            out_x, out_dx = self._adam_jvp(x, t, g, hd, dx)
        return out_x.detach(), (out_dx[:, 0] if vec else out_dx).detach()

    def _adam_jvp(
        self, x: torch.Tensor, t: int, g: torch.Tensor, hd: torch.Tensor, dx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        d, lr, wd = self.num_params, self.lr, self.weight_decay
        b1, b2 = self.betas
        s = self.step_offset + t + 1
        c1, c2 = 1 - b1**s, 1 - b2**s
        w, dw = x[:d], dx[:d]
        if self.optimizer == "adamw":
            w, dw = w * (1 - lr * wd), dw * (1 - lr * wd)
        m, v = _adam_moments(x[d : 2 * d], x[2 * d :], g, b1, b2)
        dm = b1 * dx[d : 2 * d] + (1 - b1) * hd
        dv = b2 * dx[2 * d :] + 2 * (1 - b2) * g[:, None] * hd
        root = v.sqrt()
        denom = root / c2**0.5 + self.eps
        # d sqrt(v) = dv / (2 sqrt(v)); where v = 0 the map is not differentiable: use 0
        safe = torch.where(root > 0, root, torch.ones_like(root))
        droot = torch.where((root > 0)[:, None], dv / (2 * safe[:, None]), torch.zeros_like(dv))
        ddenom = droot / c2**0.5
        w_next = torch.addcdiv(w, m, denom, value=-(lr / c1))
        dw_next = dw - (lr / c1) * (dm / denom[:, None] - (m / denom**2)[:, None] * ddenom)
        return torch.cat([w_next, m, v]), torch.cat([dw_next, dm, dv])

    def jacobian(
        self, x: torch.Tensor, t: int, *, freeze_second_moment: bool = False
    ) -> torch.Tensor:
        """Dense Jacobian ``d phi_t / dx`` by ``torch.autograd.functional.jacobian``.

        For tests and brute-force references on tiny models (``state_dim^2`` entries). With
        ``freeze_second_moment`` (Adam only) the new second moment ``v'`` is treated as a
        constant, the frozen-preconditioner approximation of
        :mod:`sharpdim.dynamics.jacobian_spectra`. At a state whose loss is not finite (a
        diverged orbit) it is all NaN, as :meth:`jvp`'s tangents are.
        """
        x = x.detach()
        t = self._check_state(x, t)
        if not torch.isfinite(self.loss_and_grad(x[: self.num_params], t)[0]):
            # (its constant NaN gradient has no graph: autograd would drop the Hessian term)
            return torch.full((self.state_dim,) * 2, math.nan, dtype=x.dtype, device=x.device)
        return torch.autograd.functional.jacobian(
            lambda z: self._step(
                z, t, differentiable=True, freeze_second_moment=freeze_second_moment
            ),
            x,
            vectorize=False,
        )


def _adam_moments(
    m: torch.Tensor, v: torch.Tensor, g: torch.Tensor, b1: float, b2: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b1 m + (1 - b1) g, b2 v + (1 - b2) g^2)`` in torch.optim.Adam's operations (``lerp``,
    ``mul`` then ``addcmul``): the same rounding, so an orbit follows the real optimizer's bit
    for bit instead of drifting from it (1e-4 after 200 float32 steps)."""
    return torch.lerp(m, g, 1 - b1), torch.addcmul(v * b2, g, g, value=1 - b2)
