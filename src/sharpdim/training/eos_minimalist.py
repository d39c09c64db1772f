"""The minimalist edge-of-stability example: GD on a scalar deep linear network.

Zhu, Wang, Wang, Zhou & Ge, "Understanding Edge-of-Stability Training Dynamics with a
Minimalist Example" (ICLR 2023) study gradient descent on

    L(theta) = 0.5 * (1 - theta_1 * theta_2 * ... * theta_d)^2,    d = 4: theta = (x, y, z, w).

With ``p = prod_k theta_k`` and ``q_i = prod_{k != i} theta_k`` (the product of the others):

* gradient ``dL/dtheta_i = -(1 - p) q_i``;
* Hessian ``H_ij = q_i q_j - (1 - p) r_ij`` with ``r_ij = prod_{k not in {i, j}} theta_k`` for
  ``i != j`` and ``r_ii = 0``.

On the minimum manifold ``p = 1`` the Hessian is ``q q^T``: one non-zero eigenvalue
``||q||^2 = sum_i 1 / theta_i^2 >= d`` (equality at ``|theta_i| = 1``). Gradient descent from an
unbalanced point such as ``(2, 0.3, 2, 0.3)`` with a small step converges to a sharp minimum
(sharpness about 8.78); with ``2/eta`` below that it enters the edge of stability, oscillates
and converges instead to a flatter minimum whose sharpness lies just below ``2/eta``. Above
``eta = 2/d`` no minimum is stable: the late iterates follow period-2 orbits, then period
doubling and chaos, before divergence.

Everything here is vectorised over a batch of step sizes: ``theta`` has shape ``(E, d)``,
one row per step size, updated at once. Pure functions of tensors; deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, check_number, check_numbers, real_tensor
from sharpdim.errors import SharpdimError

PAPER_INIT: tuple[float, ...] = (2.0, 0.3, 2.0, 0.3)


def _others_product(theta: torch.Tensor, skip: Sequence[int]) -> torch.Tensor:
    """``prod_{k not in skip} theta_k`` over the last axis (no division: theta may be 0)."""
    keep = [k for k in range(theta.shape[-1]) if k not in skip]
    if not keep:
        return torch.ones(theta.shape[:-1], dtype=theta.dtype, device=theta.device)
    return theta[..., keep].prod(dim=-1)


def minimalist_loss(theta: torch.Tensor) -> torch.Tensor:
    """``0.5 * (1 - prod_k theta_k)^2`` over the last axis of ``theta (..., d)``."""
    return 0.5 * (1.0 - theta.prod(dim=-1)) ** 2


def minimalist_gradient(theta: torch.Tensor) -> torch.Tensor:
    """``dL/dtheta_i = -(1 - p) q_i`` with ``q_i`` the product of the other factors."""
    d = theta.shape[-1]
    q = torch.stack([_others_product(theta, [i]) for i in range(d)], dim=-1)
    return -(1.0 - theta.prod(dim=-1)).unsqueeze(-1) * q


def minimalist_hessian(theta: torch.Tensor) -> torch.Tensor:
    """``H_ij = q_i q_j - (1 - p) r_ij`` (see the module docstring); shape ``(..., d, d)``."""
    d = theta.shape[-1]
    q = torch.stack([_others_product(theta, [i]) for i in range(d)], dim=-1)
    r = torch.zeros((*theta.shape, d), dtype=theta.dtype, device=theta.device)
    for i in range(d):
        for j in range(i + 1, d):
            r[..., i, j] = r[..., j, i] = _others_product(theta, [i, j])
    residual = (1.0 - theta.prod(dim=-1))[..., None, None]
    return q.unsqueeze(-1) * q.unsqueeze(-2) - residual * r


def minimalist_sharpness(theta: torch.Tensor) -> torch.Tensor:
    """Largest algebraic eigenvalue of :func:`minimalist_hessian` (NaN rows stay NaN)."""
    out = torch.full(theta.shape[:-1], math.nan, dtype=theta.dtype, device=theta.device)
    ok = torch.isfinite(theta).all(dim=-1)
    if bool(ok.any()):
        out[ok] = torch.linalg.eigvalsh(minimalist_hessian(theta[ok]))[..., -1]
    return out


@dataclass(frozen=True)
class MinimalistSweep:
    """Gradient descent on the minimalist loss for many step sizes at once.

    Attributes:
        lrs: step sizes ``eta``, shape ``(E,)``.
        init: the common initial point.
        steps: GD steps taken.
        final_theta: ``(E, d)`` last iterates (NaN after divergence).
        final_loss, final_sharpness: at the last iterate, ``(E,)``.
        diverged_at: ``(E,)`` step of divergence, ``-1`` if none.
        late_products: ``(E, late)`` the product ``prod_k theta_k`` over the last ``late`` steps.
        late_sharpness: ``(E, late)`` the sharpness over the same steps.
        lyapunov: ``(E,)`` largest Lyapunov exponent of the GD map over the last ``late``
            steps, ``(1/late) sum_t ln ||J_t v_t||`` with ``J_t = I - eta H(theta_t)`` and
            ``v_t`` the renormalised tangent (Benettin et al. 1980): ``> 0`` signals chaos,
            about ``0`` a point or cycle on the flat minimum manifold. The tangent starts
            ``late`` steps earlier (so it has aligned with the most expanding direction
            before the average begins) from a fixed generic vector: a symmetric start such as
            ``(1, ..., 1)`` stays in the invariant subspace of a symmetric ``init`` like
            ``(2, 0.3, 2, 0.3)`` and misses exponents outside it.
        periods: ``(E,)`` smallest period ``P <= max_period`` of the late products (within
            ``period_tol``), ``1`` = converged to a point, ``0`` = no period found
            (chaotic or not yet settled), ``-1`` = diverged.
        trace_steps, trace_sharpness: for ``trace_lrs``, the sharpness every ``trace_every``
            steps, ``(T,)`` and ``(len(trace_lrs), T)``.
        trace_lrs: the step sizes traced.
        max_period: the longest period looked for (a window of ``late`` samples tests periods
            up to ``late - 1``).
    """

    lrs: torch.Tensor
    init: tuple[float, ...]
    steps: int
    final_theta: torch.Tensor
    final_loss: torch.Tensor
    final_sharpness: torch.Tensor
    diverged_at: torch.Tensor
    late_products: torch.Tensor
    late_sharpness: torch.Tensor
    lyapunov: torch.Tensor
    periods: torch.Tensor
    trace_lrs: tuple[float, ...] = ()
    trace_steps: torch.Tensor | None = None
    trace_sharpness: torch.Tensor | None = None
    max_period: int = 64

    @property
    def diverged(self) -> torch.Tensor:
        return self.diverged_at >= 0

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (NaN kept as float NaN)."""
        out: dict[str, Any] = {
            "lrs": self.lrs.tolist(),
            "init": list(self.init),
            "steps": self.steps,
            "final_loss": self.final_loss.tolist(),
            "final_sharpness": self.final_sharpness.tolist(),
            "diverged_at": self.diverged_at.tolist(),
            "periods": self.periods.tolist(),
            "lyapunov": self.lyapunov.tolist(),
            "trace_lrs": list(self.trace_lrs),
            "max_period": self.max_period,
        }
        if self.trace_steps is not None and self.trace_sharpness is not None:
            out["trace_steps"] = self.trace_steps.tolist()
            out["trace_sharpness"] = self.trace_sharpness.tolist()
        return out


def detect_periods(
    series: torch.Tensor, *, max_period: int = 64, tol: float = 1e-7, point_tol: float = 1e-6
) -> torch.Tensor:
    """Smallest period of each row of ``series (E, T)``, or 0 when none up to ``max_period``.

    Row ``e`` has period 1 when its range ``max_t s_t - min_t s_t`` is at most ``point_tol``
    (settled to a point at that resolution, even if a tiny oscillation is still decaying),
    else period ``P`` when ``|s_{t+P} - s_t| <= tol * max(1, |s_t|)`` for every ``t`` of the
    window; rows with a non-finite value get ``-1``. Period ``P`` needs ``P + 1`` samples, so a
    window of ``T`` samples finds periods up to ``T - 1`` (a single sample: 0, undetermined).
    """
    e, t = series.shape
    out = torch.zeros(e, dtype=torch.long)
    finite = torch.isfinite(series).all(dim=1)
    out[~finite] = -1
    if t < 2:  # one sample has no spread to judge: every finite row undetermined
        return out
    spread = series.max(dim=1).values - series.min(dim=1).values
    out[finite & (spread <= point_tol)] = 1
    for period in range(1, min(max_period, t - 1) + 1):
        gap = (series[:, period:] - series[:, :-period]).abs()
        scale = series[:, :-period].abs().clamp(min=1.0)
        match = (gap <= tol * scale).all(dim=1) & finite & (out == 0)
        out[match] = period
    return out


def _generic_unit_vector(d: int) -> torch.Tensor:
    """A fixed unit vector with no symmetry among its coordinates (Gaussian, seed 0)."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return v / v.norm()


def minimalist_sweep(
    lrs: torch.Tensor | Sequence[float],
    *,
    init: Sequence[float] = PAPER_INIT,
    steps: int = 20_000,
    late: int = 200,
    trace_lrs: Sequence[float] = (),
    trace_every: int = 10,
    max_period: int = 64,
    period_tol: float = 1e-7,
    blowup: float = 1e6,
    callback: Callable[[int, int], None] | None = None,
) -> MinimalistSweep:
    """Run GD ``theta <- theta - eta * grad L(theta)`` for every ``eta`` in ``lrs`` at once.

    Args:
        lrs: the step sizes (float64 is used throughout).
        init: initial point ``theta_0`` (default the paper-style ``(2, 0.3, 2, 0.3)``).
        steps: GD steps.
        late: how many final iterates to keep (bifurcation diagram, period detection).
        trace_lrs: step sizes whose sharpness is also recorded every ``trace_every`` steps.
        max_period, period_tol: see :func:`detect_periods`.
        blowup: a run has diverged once a coordinate exceeds this in magnitude (or is NaN).
        callback: ``callback(done, total)`` called every 1,000 steps (progress bars).

    Returns:
        A :class:`MinimalistSweep`.
    """
    try:
        # (bool and complex refused, as for trace_lrs: True was step size 1.0, and a complex
        # tensor lost its imaginary part with only a warning)
        lr = real_tensor(lrs, "lrs", word_errors=False).reshape(-1)
    except SharpdimError:
        raise
    except (TypeError, ValueError, RuntimeError):
        raise SharpdimError(
            f"lrs must be a list of step sizes, got {lrs!r}: pass e.g. [0.1, 0.3]"
        ) from None
    steps = check_count(steps, "steps")
    late = check_count(late, "late")
    trace_every = check_count(trace_every, "trace_every")
    max_period = check_count(max_period, "max_period", hint="e.g. 64")
    period_tol = check_number(period_tol, "period_tol", ">= 0", "1e-7")
    blowup = check_number(blowup, "blowup", "> 0", "1e6")
    if lr.numel() == 0 or not bool((lr > 0).all()) or not bool(torch.isfinite(lr).all()):
        raise SharpdimError("lrs must be a non-empty list of positive step sizes: e.g. 0.1 0.3")
    start = check_numbers(init, "init", "any", "(1.0, 0.5)")
    if len(start) < 2 or steps < 1 or not 1 <= late <= steps or trace_every < 1:
        raise SharpdimError(
            f"init of {len(start)} factors, steps={steps}, late={late}: need >= 2 factors, "
            "steps >= 1, 1 <= late <= steps and trace_every >= 1"
        )
    e, d = lr.numel(), len(start)
    trace = torch.tensor(
        check_numbers(trace_lrs, "trace_lrs", "> 0", "[0.1]", allow_empty=True), dtype=torch.float64
    )
    all_lr = torch.cat([lr, trace])
    theta = torch.tensor(start, dtype=torch.float64).repeat(all_lr.numel(), 1)
    diverged_at = torch.full((all_lr.numel(),), -1, dtype=torch.long)
    late_theta: list[torch.Tensor] = []
    tangent = _generic_unit_vector(d).repeat(e, 1)
    log_growth = torch.zeros(e, dtype=torch.float64)
    tangent_from = max(0, steps - 2 * late)  # aligns over `late` steps, then is averaged
    trace_rows: list[torch.Tensor] = []
    trace_steps: list[int] = []
    for step in range(steps):
        if trace.numel() and step % trace_every == 0:
            trace_steps.append(step)
            trace_rows.append(minimalist_sharpness(theta[e:]))
        if step >= tangent_from:  # tangent dynamics v <- (I - eta H) v at theta_step
            hv = (minimalist_hessian(theta[:e]) @ tangent.unsqueeze(-1)).squeeze(-1)
            tangent = tangent - lr[:, None] * hv
            norm = tangent.norm(dim=1)
            if step >= steps - late:
                log_growth += norm.log()
            tangent = tangent / norm[:, None]
        theta = theta - all_lr[:, None] * minimalist_gradient(theta)
        bad = ~torch.isfinite(theta).all(dim=1) | (theta.abs() > blowup).any(dim=1)
        fresh = bad & (diverged_at < 0)
        diverged_at[fresh] = step + 1
        theta[bad] = math.nan
        if step >= steps - late:
            late_theta.append(theta[:e].clone())
        if callback is not None and (step + 1) % 1000 == 0:
            callback(step + 1, steps)
    final = theta[:e]
    late_stack = torch.stack(late_theta, dim=1)  # (E, late, d)
    late_products = late_stack.prod(dim=-1)
    late_sharpness = minimalist_sharpness(late_stack.reshape(-1, d)).reshape(e, late)
    return MinimalistSweep(
        lrs=lr,
        init=tuple(start),  # (checked once: `init` may be a generator, now used up)
        steps=steps,
        final_theta=final,
        final_loss=minimalist_loss(final),
        final_sharpness=minimalist_sharpness(final),
        diverged_at=diverged_at[:e],
        late_products=late_products,
        late_sharpness=late_sharpness,
        lyapunov=torch.where(diverged_at[:e] >= 0, math.nan, log_growth / late),
        periods=detect_periods(late_products, max_period=max_period, tol=period_tol),
        trace_lrs=tuple(float(v) for v in trace.tolist()),
        trace_steps=torch.tensor(trace_steps) if trace_steps else None,
        trace_sharpness=torch.stack(trace_rows, dim=1) if trace_rows else None,
        max_period=max_period,
    )


@dataclass(frozen=True)
class MinimalistSummary:
    """What a sweep shows, in numbers.

    Attributes:
        reference_sharpness: sharpness reached with the smallest step size (close to the
            gradient-flow limit); NaN when that run did not converge.
        eos_lrs: converged step sizes with ``2/eta`` below ``reference_sharpness`` (they must
            have gone through the edge of stability).
        eos_ratios: final sharpness / (2/eta) for them.
        first_period: ``{P: smallest eta whose late iterates have period P}``, P = 2, 4, 8, ...
        first_chaotic: smallest ``eta`` with no period and a Lyapunov exponent above
            ``lyapunov_tol`` (NaN if none, and NaN when the window of ``late`` samples is too
            short to test every period up to ``max_period``: there "no period found" is not
            chaos, and the exponent is averaged over too few steps).
        max_lyapunov: largest Lyapunov exponent over the non-diverged step sizes.
        first_diverged: smallest diverged ``eta`` (NaN if none).
    """

    reference_sharpness: float
    eos_lrs: tuple[float, ...]
    eos_ratios: tuple[float, ...]
    first_period: dict[int, float]
    first_chaotic: float
    max_lyapunov: float
    first_diverged: float

    def ratio_stats(self) -> dict[str, float]:
        """min / median / max of the EoS ratios (NaN when there are none)."""
        if not self.eos_ratios:
            return {"min": math.nan, "median": math.nan, "max": math.nan}
        r = torch.tensor(self.eos_ratios, dtype=torch.float64)
        return {"min": float(r.min()), "median": float(r.quantile(0.5)), "max": float(r.max())}

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference_sharpness": self.reference_sharpness,
            "eos_lrs": list(self.eos_lrs),
            "eos_ratios": list(self.eos_ratios),
            "eos_ratio_stats": self.ratio_stats(),
            "first_period": {str(k): v for k, v in self.first_period.items()},
            "first_chaotic": self.first_chaotic,
            "max_lyapunov": self.max_lyapunov,
            "first_diverged": self.first_diverged,
        }


def summarize_minimalist(
    sweep: MinimalistSweep, *, loss_tol: float = 1e-12, lyapunov_tol: float = 0.01
) -> MinimalistSummary:
    """Classify the step sizes of a sweep (see :class:`MinimalistSummary`).

    A run counts as converged when its final loss is below ``loss_tol`` and its late
    products have period 1 (with a window of one sample, which cannot show a period, by the
    loss alone).
    """
    order = torch.argsort(sweep.lrs)
    lrs, sharp = sweep.lrs[order], sweep.final_sharpness[order]
    periods, loss, lyap = sweep.periods[order], sweep.final_loss[order], sweep.lyapunov[order]
    window = sweep.late_products.shape[1]
    settled = (periods == 1) | ((periods == 0) & (window < 2))
    converged = settled & (loss < loss_tol)
    reference = float(sharp[0]) if bool(converged[0]) else math.nan
    threshold = 2.0 / lrs
    eos = converged & (threshold < reference)
    first_period: dict[int, float] = {}
    for period in (2, 4, 8, 16, 32, 64):
        hit = (periods == period).nonzero()
        if hit.numel():
            first_period[period] = float(lrs[hit[0, 0]])
    tested = window > sweep.max_period  # every period up to max_period could have shown
    chaotic = ((periods == 0) & (lyap > lyapunov_tol) & tested).nonzero()
    diverged = (periods == -1).nonzero()
    finite = torch.isfinite(lyap)
    return MinimalistSummary(
        reference_sharpness=reference,
        eos_lrs=tuple(lrs[eos].tolist()),
        eos_ratios=tuple((sharp[eos] / threshold[eos]).tolist()),
        first_period=first_period,
        first_chaotic=float(lrs[chaotic[0, 0]]) if chaotic.numel() else math.nan,
        max_lyapunov=float(lyap[finite].max()) if bool(finite.any()) else math.nan,
        first_diverged=float(lrs[diverged[0, 0]]) if diverged.numel() else math.nan,
    )
