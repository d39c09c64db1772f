"""Top-k Lyapunov exponents of a torch map by the QR (Benettin) method with JVPs.

For a (possibly time-dependent) map ``x_{t+1} = phi_t(x_t)`` on ``R^n`` with Jacobians
``J_t = D phi_t(x_t)``, the Lyapunov exponents are the growth rates of volumes spanned by
tangent vectors (Oseledets 1968). The discrete QR method of Benettin, Galgani, Giorgilli &
Strelcyn (Meccanica 15, 1980) propagates an orthonormal block ``Q_t`` (``n x k``):

    V_{t+1} = J_t Q_t,       V_{t+1} = Q_{t+1} R_{t+1}  (QR, diag R >= 0),
    lambda_i(T) = (1/T) sum_{t=1}^{T} ln R_{t, ii},    lambda_i = lim_{T->inf} lambda_i(T).

In the limit the columns give the ``k`` largest exponents in order,
``lambda_1 >= ... >= lambda_k`` (natural log, per step): column ``i`` estimates ``lambda_i``.
The finite-time estimates ``lambda_i(T)`` need not be ordered: exponents closer together than
their standard errors can come out in any order (e.g. ``-0.00599, -0.00554, -0.00551``), and
they are reported in column order, not sorted.
``J_t Q_t`` only needs ``k`` Jacobian-vector products: never a dense Jacobian. For training
(paper Sec. 3, Tuci et al., "Generalization at the Edge of Stability", arXiv 2604.19740),
``phi_t`` is the real optimizer step with minibatch ``B_t`` of a fixed sequence
(:class:`sharpdim.dynamics.step_maps.TrainingMap`), so the result is the Lyapunov spectrum of
the random dynamical system along that batch sequence. Its Kaplan–Yorke dimension (paper
Def. 4.2, computed by :func:`sharpdim.dimension.kaplan_yorke.kaplan_yorke_dimension`) is that
of the top-``k`` exponents; when all ``k`` partial sums are non-negative it equals ``k`` and is
only a lower bound of the full spectrum's dimension.

The standard error of each exponent comes from batch means: the ``T`` local stretches
``ln R_{t, ii}`` are split into ``B = num_blocks`` consecutive blocks of ``n_b`` steps (sizes
differ by at most one; every step counts) with means ``m_b`` around the exponent ``m`` and
``stderr^2 = sum_b n_b (m_b - m)^2 / ((B - 1) T)``, which is
``std(block means)^2 / B`` for equal blocks.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from sharpdim.checks import check_count, check_flag, default_generator
from sharpdim.curvature.second_order import refuse_once_differentiable
from sharpdim.dimension.kaplan_yorke import kaplan_yorke_dimension
from sharpdim.errors import SharpdimError


@runtime_checkable
class StepMap(Protocol):
    """A time-dependent map with JVPs, e.g. :class:`~sharpdim.dynamics.step_maps.TrainingMap`."""

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor: ...

    def jvp(
        self, x: torch.Tensor, t: int, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


def _load_jvp_decompositions() -> None:
    """Import torch's forward-AD decompositions once, hiding the deprecation warning that
    torch 2.13 emits from its own ``torch.jit.script`` use on that first import."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


def _check_next_state(x: torch.Tensor, x_next: Any, t: int) -> None:
    """A one-line error for a map's output that is not a state of ``x``'s shape and dtype."""
    if not isinstance(x_next, torch.Tensor):
        raise SharpdimError(
            f"step_fn returned a {type(x_next).__name__} at step {t}: it must return a state "
            "(a tensor of the shape and dtype it was given)"
        )
    if x_next.shape != x.shape:
        raise SharpdimError(
            f"step_fn maps a state of shape {tuple(x.shape)} to one of shape "
            f"{tuple(x_next.shape)} at step {t}: it must return a state of the shape it was given"
        )
    if x_next.dtype != x.dtype:
        raise SharpdimError(
            f"step_fn maps a {x.dtype} state to a {x_next.dtype} one at step {t}: it must "
            f"return a state of the dtype it was given (compute in {x.dtype}, or pass an x0 "
            f"of {x_next.dtype})"
        )


def _check_tangents(v: Any, x: torch.Tensor, k: int, t: int) -> None:
    """A one-line error for a map's JVP output that is not an ``(n, k)`` block of ``x``'s
    dtype."""
    want = (x.numel(), k)
    if not (isinstance(v, torch.Tensor) and tuple(v.shape) == want and v.dtype == x.dtype):
        got = f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise SharpdimError(
            f"step_fn's jvp returned tangents {got} at step {t}: it must return J_t applied "
            f"to each tangent column, a {want} block of {x.dtype}"
        )


def _all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or inf (a ``meta`` tensor, which holds no data, does)."""
    return t.device.type == "meta" or bool(torch.isfinite(t).all())


def _check_jvp_mode(jvp_mode: str) -> None:
    if jvp_mode not in ("forward", "reverse"):
        raise SharpdimError(f"unknown jvp_mode {jvp_mode!r}: use 'forward' or 'reverse'")


class FunctionMap:
    """A plain autonomous map ``x -> f(x)`` seen as a :class:`StepMap`.

    Args:
        fn: a differentiable torch function of a 1-D tensor.
        jvp_mode: ``"forward"``: ``torch.func.jvp`` (forward mode), the ``k`` products batched
            with ``torch.func.vmap`` (or a loop, see ``vectorize``); ``"reverse"``: the
            double-backward identity ``J v = d/du <J^T u, v>`` on one reverse-mode graph
            (usually faster for small maps, where torch.func's per-call overhead dominates).
        vectorize: batch the forward-mode JVPs with ``vmap``; if ``fn`` does not support vmap
            (data-dependent control flow, in-place ops) it falls back to a loop.

    ``fn`` gets a fresh copy of the state at every call, so a map that works in place
    (``x.mul_(2)``) leaves the caller's state and the orbit alone. Its output is checked
    (a tensor of the state's shape and dtype) before any tangent is pushed through it.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        *,
        jvp_mode: str = "forward",
        vectorize: bool = True,
    ) -> None:
        _check_jvp_mode(jvp_mode)
        self.fn, self.jvp_mode = fn, jvp_mode
        self.vectorize = check_flag(vectorize, "vectorize")

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        with torch.no_grad():
            return self.fn(x.clone())

    def jvp(
        self, x: torch.Tensor, t: int, tangents: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vec = tangents.ndim == 1
        dx = tangents[:, None] if vec else tangents
        if self.jvp_mode == "reverse":
            y, out = self._reverse(x, t, dx)
        else:
            y, out = self._forward(x, t, dx)
        return y.detach(), (out[:, 0] if vec else out).detach()

    def _forward(
        self, x: torch.Tensor, t: int, dx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _load_jvp_decompositions()
        y = self.step(x, t)
        _check_next_state(x, y, t)

        def push(v: torch.Tensor) -> torch.Tensor:
            # (in the state's dtype: torch 2.13's jvp of `1.4 * x[0]`, a Python float times a
            # 0-dim float32 tensor, returns a float64 tangent while the map's output is float32)
            return torch.func.jvp(self.fn, (x.clone(),), (v,))[1].to(y.dtype)

        if self.vectorize:
            try:
                return y, torch.func.vmap(push, in_dims=1, out_dims=1)(dx)
            except Exception:  # vmap-incompatible function: fall back to a loop
                self.vectorize = False
        try:
            return y, torch.stack([push(dx[:, j]) for j in range(dx.shape[1])], dim=1)
        except (RuntimeError, NotImplementedError) as err:
            _refuse_leaving_torch(err)
            op = re.search(r"Trying to use forward AD with (\w+)", str(err))
            if op:  # (cdist, pdist, ctc_loss, segment_reduce: torch has no forward formula)
                raise SharpdimError(
                    f"step_fn uses {op.group(1)}, which forward mode (torch.func.jvp) cannot "
                    "differentiate: use jvp_mode='reverse', or write it with other ops"
                ) from None
            if not any(sign in str(err) for sign in _NO_FORWARD_FUNCTION):
                raise
            raise SharpdimError(
                "step_fn uses a custom autograd.Function that forward mode (torch.func.jvp) "
                "cannot differentiate: give it setup_context and jvp staticmethods, or use "
                "jvp_mode='reverse' (if its backward is differentiable)"
            ) from None

    def _reverse(
        self, x: torch.Tensor, t: int, dx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            try:
                y = self.fn(leaf.clone())  # (a copy: fn may work in place)
            except RuntimeError as err:
                _refuse_leaving_torch(err)
                raise
            _check_next_state(x, y, t)
            u = torch.zeros_like(y, requires_grad=True)
            vjp = None
            cols: list[torch.Tensor | None] = [None] * dx.shape[1]
            try:
                if y.requires_grad:
                    refuse_once_differentiable(y, "step_fn", _FORWARD_INSTEAD, inputs=[leaf])
                    (vjp,) = torch.autograd.grad(y, leaf, u, create_graph=True, allow_unused=True)
                if vjp is not None and vjp.requires_grad:
                    cols = [
                        torch.autograd.grad(vjp, u, dx[:, j], retain_graph=True, allow_unused=True)[
                            0
                        ]
                        for j in range(dx.shape[1])
                    ]
            except RuntimeError as err:
                if "modified by an inplace operation" not in str(err):
                    raise
                raise SharpdimError(
                    "step_fn overwrites in place a value its backward needs (e.g. x[0] = "
                    "f(x[0])), which reverse mode cannot differentiate: use jvp_mode='forward', "
                    "or write the new state into a fresh tensor (torch.stack)"
                ) from None
            if y.requires_grad and any(c is None for c in cols):
                _check_twice_differentiable(y, leaf)  # J = 0, or a backward with no graph?
        out = [torch.zeros_like(y) if c is None else c for c in cols]
        return y, torch.stack(out, dim=1)


_FORWARD_INSTEAD = (
    "use jvp_mode='forward' (the Function then needs a jvp staticmethod) or make its backward "
    "differentiable"
)

_NO_FORWARD_FUNCTION = (
    "must override the setup_context staticmethod",
    "must implement the jvp function for custom autograd.Function",
)
"""Signs of torch's refusal to push a forward-mode tangent through a custom autograd.Function
(one without ``setup_context``, or without ``jvp``)."""


_LEFT_TORCH = (
    "Cannot access data pointer of Tensor that doesn't have storage",  # forward-mode dual
    "Can't call numpy() on Tensor that requires grad",  # reverse mode
)
"""Signs of a step function that leaves torch through ``x.numpy()``. (``x.tolist()`` or
``float(x)`` leave no sign: they read values, and the map looks constant, Jacobian 0.)"""


def _refuse_leaving_torch(err: Exception) -> None:
    """A one-line error if ``err`` says ``step_fn`` left torch, where no derivative follows."""
    if any(sign in str(err) for sign in _LEFT_TORCH):
        raise SharpdimError(
            "step_fn leaves torch (e.g. through .numpy()), so its Jacobian cannot be taken: "
            "write the map with torch operations"
        ) from None


def _check_twice_differentiable(y: torch.Tensor, leaf: torch.Tensor) -> None:
    """A one-line error when ``J^T u`` had no graph in ``u`` (so the double-backward ``J v``
    came out empty) although ``y`` does depend on ``leaf``: its backward cannot be
    differentiated again (a ``once_differentiable`` autograd.Function, a backward through
    numpy), and ``J = 0`` would be a silent lie. A map that truly does not depend on its input
    (``round``, a constant, some coordinates only) passes: its first-order ``J^T r`` vanishes
    for the fixed Gaussian ``r`` (which only an exactly zero ``J`` gives, almost surely)."""
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(y.device, y.dtype)
    (probe,) = torch.autograd.grad(y, leaf, r, retain_graph=True, allow_unused=True)
    if probe is not None and bool((probe != 0).any()):
        raise SharpdimError(
            "step_fn's backward cannot be differentiated again (e.g. an autograd.Function "
            "with a once_differentiable backward), which jvp_mode='reverse' needs for J v: use "
            "jvp_mode='forward' or make the backward differentiable"
        )


def as_step_map(step_fn: Any, *, jvp_mode: str = "forward", vectorize: bool = True) -> StepMap:
    """``step_fn`` itself when it has ``step``/``jvp``; a :class:`FunctionMap` for a callable."""
    _check_jvp_mode(jvp_mode)
    if isinstance(step_fn, StepMap):
        return step_fn
    if callable(step_fn):
        return FunctionMap(step_fn, jvp_mode=jvp_mode, vectorize=vectorize)
    raise SharpdimError(
        f"step_fn is a {type(step_fn).__name__}: pass a callable x -> x' or an object with "
        "step(x, t) and jvp(x, t, tangents) (e.g. a TrainingMap)"
    )


@dataclass(frozen=True)
class LyapunovResult:
    """The top-``k`` Lyapunov spectrum of a map.

    Attributes:
        exponents: ``(k,)`` float64, the finite-time estimates ``lambda_1(T), ...,
            lambda_k(T)`` in the order of the QR columns (column ``i`` estimates
            ``lambda_i``; natural log per step), averaged over the steps completed after the
            warmup. Descending only in the limit ``T -> inf``: close exponents can come out
            unsorted, and they are not reordered.
        stderr: ``(k,)`` batch-means standard errors (NaN with fewer than 2 steps).
        finite_time: ``(T, k)``: ``lambda_i(t)`` after ``t = 1..T`` steps (running means).
        log_stretches: ``(T, k)``: the local stretches ``ln R_{t, ii}``.
        kaplan_yorke: Kaplan–Yorke dimension of ``exponents`` (a lower bound of the full
            spectrum's when it equals ``k``); kaplan_yorke_j_star: its ``j*``.
        num_steps: steps averaged (``T``); warmup: steps run and discarded before them
            (fewer than asked when the orbit diverged inside the warmup).
        state_dim: ``n``; k: number of exponents.
        diverged_at: step index (counted from the start, warmup included) at which the state
            or the tangents became non-finite; ``None`` if they never did.
        final_state: the state after the last step; final_vectors: ``(n, k)`` the
            orthonormal tangent block (continue a run from them).
    """

    exponents: torch.Tensor
    stderr: torch.Tensor
    finite_time: torch.Tensor
    log_stretches: torch.Tensor
    kaplan_yorke: float
    kaplan_yorke_j_star: float
    num_steps: int
    warmup: int
    state_dim: int
    k: int
    diverged_at: int | None
    final_state: torch.Tensor
    final_vectors: torch.Tensor

    @property
    def largest(self) -> float:
        """``lambda_1(T)``, column 1's estimate (not always the maximum of ``exponents``)."""
        return float(self.exponents[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the trajectory tensors are left out except the finite-time curve)."""
        return {
            "exponents": self.exponents.tolist(),
            "stderr": self.stderr.tolist(),
            "finite_time": self.finite_time.tolist(),
            "kaplan_yorke": self.kaplan_yorke,
            "kaplan_yorke_j_star": self.kaplan_yorke_j_star,
            "num_steps": self.num_steps,
            "warmup": self.warmup,
            "state_dim": self.state_dim,
            "k": self.k,
            "diverged_at": self.diverged_at,
        }


def _qr_positive(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduced QR with ``diag R >= 0``; returns ``(Q, |diag R|)``."""
    q, r = torch.linalg.qr(v)
    diag = torch.diagonal(r)
    sign = torch.where(diag < 0, -torch.ones_like(diag), torch.ones_like(diag))
    return q * sign, diag.abs()


def _batch_stderr(logs: torch.Tensor, num_blocks: int) -> torch.Tensor:
    steps, k = logs.shape
    blocks = min(num_blocks, steps)
    if blocks < 2:
        return torch.full((k,), math.nan, dtype=torch.float64)
    parts = torch.tensor_split(logs, blocks)  # every step, sizes differ by at most one
    sizes = torch.tensor([len(p) for p in parts], dtype=logs.dtype)[:, None]
    means = torch.stack([p.mean(dim=0) for p in parts])
    spread = (sizes * (means - logs.mean(dim=0)) ** 2).sum(dim=0)
    return (spread / ((blocks - 1) * steps)).sqrt()


def lyapunov_spectrum(
    step_fn: Any,
    x0: torch.Tensor,
    k: int,
    num_steps: int,
    *,
    warmup: int = 0,
    generator: torch.Generator | None = None,
    initial_vectors: torch.Tensor | None = None,
    start_step: int = 0,
    num_blocks: int = 10,
    jvp_mode: str = "forward",
    vectorize: bool = True,
) -> LyapunovResult:
    """Top-``k`` Lyapunov exponents of ``step_fn`` along the orbit of ``x0`` (Benettin QR).

    Each step pushes the orthonormal block ``Q`` through ``J_t`` with ``k`` JVPs and
    re-orthonormalizes it, ``J_t Q_t = Q_{t+1} R_{t+1}``; ``lambda_i`` is the mean of
    ``ln R_{t, ii}`` over the ``num_steps`` steps after ``warmup`` steps (during which the
    orbit and ``Q`` evolve but nothing is recorded). ``|R_ii|`` is floored at the dtype's
    smallest normal number so that a singular step gives a large negative, finite log.

    Args:
        step_fn: a callable ``x -> x'`` (autonomous map; JVPs by ``torch.func.jvp``, batched
            with ``vmap``) or an object with ``step(x, t)`` and ``jvp(x, t, tangents)``
            (e.g. :class:`~sharpdim.dynamics.step_maps.TrainingMap`: ``t`` picks the batch).
        x0: initial state, a finite 1-D float32 or float64 tensor (float64 for tight
            exponents; half precision is refused: sums of its log-stretches mean nothing).
        k: number of exponents, ``1 <= k <= n``.
        num_steps: steps averaged (``>= 1``).
        warmup: steps discarded first (transient of the orbit and alignment of ``Q``).
        generator: draws the random initial block (default seed 0).
        initial_vectors: an ``(n, k)`` finite real tensor, the initial block instead
            (orthonormalized).
        start_step: time index of the first step (``t`` runs from it).
        num_blocks: blocks of the batch-means standard error (``>= 2``; fewer steps than
            blocks use one block a step).
        jvp_mode: for a plain callable: ``"forward"`` (``torch.func.jvp``) or ``"reverse"``
            (double backward), see :class:`FunctionMap`.
        vectorize: batch the forward-mode JVPs of a plain callable with ``vmap``.

    Returns:
        A :class:`LyapunovResult`. If the orbit becomes non-finite, the run stops there and
        the exponents average the steps completed (``diverged_at`` says where).

    Raises:
        SharpdimError: bad arguments, or a map that returns a state of another shape or
            dtype, or tangents that are not an ``(n, k)`` block of the state's dtype.

    Example (a linear map: the exponents are the log moduli of its eigenvalues):
        >>> A = torch.tensor([[2.0, 0.0], [0.0, -0.5]], dtype=torch.float64)
        >>> x0, q0 = torch.ones(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64)
        >>> r = lyapunov_spectrum(lambda x: A @ x, x0, 2, 50, initial_vectors=q0)
        >>> [round(v, 4) for v in r.exponents.tolist()]
        [0.6931, -0.6931]
    """
    fmap = as_step_map(step_fn, jvp_mode=jvp_mode, vectorize=vectorize)
    if not isinstance(x0, torch.Tensor) or x0.ndim != 1 or not x0.is_floating_point():
        raise SharpdimError("x0 must be a 1-D floating tensor: flatten the state first")
    if x0.dtype not in (torch.float32, torch.float64):
        raise SharpdimError(
            f"x0 is {x0.dtype}, too coarse for Lyapunov exponents (sums of log-stretches in "
            "it mean nothing): pass a float32 or float64 x0 and map"
        )
    if not _all_finite(x0):
        raise SharpdimError("x0 holds NaN or inf: pass a finite starting state")
    n = x0.numel()
    k = check_count(k, "k", hint="the number of exponents")
    if k > n:
        raise SharpdimError(f"k={k} exponents of a {n}-dimensional map: pass 1 <= k <= {n}")
    num_steps = check_count(num_steps, "num_steps", hint="e.g. 100")
    warmup = check_count(warmup, "warmup", minimum=0, hint="e.g. 0")
    hint = "2 or more, e.g. 10 (one block has no spread to estimate an error from)"
    num_blocks = check_count(num_blocks, "num_blocks", minimum=2, hint=hint)
    start_step = check_count(start_step, "start_step", minimum=0, hint="e.g. 0")
    x = x0.detach().clone()  # (the caller's x0 is never the orbit's state)
    if initial_vectors is None:
        gen = default_generator(generator)
        block = torch.randn(n, k, generator=gen, dtype=torch.float64).to(x.device, x.dtype)
    else:
        if (
            not isinstance(initial_vectors, torch.Tensor)
            or initial_vectors.is_complex()
            or initial_vectors.dtype == torch.bool
        ):
            what = (  # (a numpy array's dtype read as if float64 were the problem)
                initial_vectors.dtype
                if isinstance(initial_vectors, torch.Tensor)
                else type(initial_vectors).__name__
            )
            raise SharpdimError(
                f"initial_vectors must be a real tensor of shape ({n}, {k}), got {what}: "
                "pass e.g. torch.eye(n, k, dtype=x0.dtype)"
            )
        if initial_vectors.shape != (n, k):
            raise SharpdimError(
                f"initial_vectors has shape {tuple(initial_vectors.shape)}: pass ({n}, {k})"
            )
        if not _all_finite(initial_vectors):
            raise SharpdimError("initial_vectors hold NaN or inf: pass a finite block")
        block = initial_vectors.detach().to(x.device, x.dtype)
    q, _ = _qr_positive(block)
    tiny = torch.finfo(x.dtype).tiny
    logs: list[torch.Tensor] = []
    diverged_at: int | None = None
    for i in range(warmup + num_steps):
        x_next, v = fmap.jvp(x, start_step + i, q)
        _check_next_state(x, x_next, start_step + i)
        _check_tangents(v, x, k, start_step + i)
        if not (torch.isfinite(x_next).all() and torch.isfinite(v).all()):
            diverged_at = i
            break
        q_next, stretch = _qr_positive(v.detach())
        x, q = x_next.detach(), q_next
        if i >= warmup:
            # the results live on the CPU whatever the map's device (k numbers a step)
            logs.append(torch.log(stretch.to("cpu", torch.float64).clamp_min(tiny)))
    log_stretches = torch.stack(logs) if logs else torch.empty(0, k, dtype=torch.float64)
    steps = log_stretches.shape[0]
    counts = torch.arange(1, steps + 1, dtype=torch.float64)[:, None]
    finite_time = torch.cumsum(log_stretches, 0) / counts
    if steps:
        exponents = finite_time[-1].clone()
        ky = kaplan_yorke_dimension(exponents)
        ky_dim, ky_j = ky.dimension, ky.j_star
    else:
        exponents = torch.full((k,), math.nan, dtype=torch.float64)
        ky_dim, ky_j = math.nan, math.nan
    return LyapunovResult(
        exponents=exponents,
        stderr=_batch_stderr(log_stretches, num_blocks),
        finite_time=finite_time,
        log_stretches=log_stretches,
        kaplan_yorke=ky_dim,
        kaplan_yorke_j_star=ky_j,
        num_steps=steps,
        warmup=warmup if diverged_at is None else min(warmup, diverged_at),
        state_dim=n,
        k=k,
        diverged_at=diverged_at,
        final_state=x,
        final_vectors=q,
    )
