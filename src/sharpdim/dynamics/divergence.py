"""Divergence of two nearby trajectories driven by the same batches.

Two orbits of the same (random) map, ``x_{t+1} = phi_t(x_t)`` and ``y_{t+1} = phi_t(y_t)``,
start ``delta`` apart: ``y_0 = x_0 + delta u`` with ``u`` a unit vector. With identical batches
(the same ``phi_t`` for both) their distance ``d_t = ||x_t - y_t||`` grows like
``d_0 exp(lambda_1 t)`` while it is small (``lambda_1`` the largest Lyapunov exponent, see
:mod:`sharpdim.dynamics.lyapunov`) and saturates at the size of the attractor; in a stable
regime it shrinks. The growth rate is the least-squares slope of ``ln d_t`` against ``t`` over
the pre-saturation window: from ``fit_start`` to the first step at which ``d_t`` reaches
``saturation_fraction`` of its maximum over the run (the whole run if that level is not above
``d_0``, i.e. ``d_t`` never grows by ``1 / saturation_fraction``). This is the direct test of
chaotic training of Tuci et al. ("Generalization at the Edge of Stability", arXiv 2604.19740,
Sec. 3): positive rate = sensitive dependence on the initialization.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, check_number, default_generator
from sharpdim.dynamics.lyapunov import _check_next_state, as_step_map
from sharpdim.errors import SharpdimError


@dataclass(frozen=True)
class DivergenceResult:
    """Distance between two nearby trajectories over time.

    Attributes:
        log_distance: ``(T + 1,)`` float64, ``ln d_t`` for ``t = 0..T`` (``-inf`` where the
            orbits coincide exactly); ``exp(log_distance[0])`` is the realised initial
            distance, ``delta`` rounded in the state's dtype (within ``delta / 2`` of it).
        growth_rate: slope of ``ln d_t`` over the fit window (per step); growth_rate_stderr:
            its least-squares standard error (NaN with fewer than 3 points).
        fit_start, fit_stop: the window ``[fit_start, fit_stop)`` of steps used in the fit
            (it ends before the first step at which the orbits coincide).
        saturated: whether the automatic fit window ended before the end of the run
            (``d_t`` reached ``saturation_fraction`` of its maximum).
        delta: the requested initial distance; num_steps: ``T``.
        diverged_at: step at which an orbit became non-finite, else ``None``.
    """

    log_distance: torch.Tensor
    growth_rate: float
    growth_rate_stderr: float
    fit_start: int
    fit_stop: int
    saturated: bool
    delta: float
    num_steps: int
    diverged_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_distance": [v if math.isfinite(v) else None for v in self.log_distance.tolist()],
            "growth_rate": self.growth_rate,
            "growth_rate_stderr": self.growth_rate_stderr,
            "fit_start": self.fit_start,
            "fit_stop": self.fit_stop,
            "saturated": self.saturated,
            "delta": self.delta,
            "num_steps": self.num_steps,
            "diverged_at": self.diverged_at,
        }


def _slope(y: torch.Tensor) -> tuple[float, float]:
    """Least-squares slope of ``y`` against ``0..len-1`` and its standard error."""
    n = y.numel()
    if n < 2:
        return math.nan, math.nan
    t = torch.arange(n, dtype=torch.float64)
    tc = t - t.mean()
    slope = float((tc * (y - y.mean())).sum() / (tc * tc).sum())
    if n < 3:
        return slope, math.nan
    resid = y - y.mean() - slope * tc
    var = float((resid * resid).sum()) / (n - 2) / float((tc * tc).sum())
    return slope, math.sqrt(max(var, 0.0))


def trajectory_divergence(
    step_fn: Any,
    x0: torch.Tensor,
    num_steps: int,
    *,
    delta: float = 1e-8,
    direction: torch.Tensor | None = None,
    perturb_dims: int | None = None,
    generator: torch.Generator | None = None,
    start_step: int = 0,
    fit_start: int = 0,
    fit_stop: int | None = None,
    saturation_fraction: float = 0.1,
) -> DivergenceResult:
    """Run ``x0`` and ``x0 + delta u`` through the same steps; fit the growth of ``ln d_t``.

    Args:
        step_fn: a callable ``x -> x'`` or an object with ``step(x, t)`` (e.g. a
            :class:`~sharpdim.dynamics.step_maps.TrainingMap`: both runs see batch ``t`` at
            step ``t``).
        x0: the initial state (1-D floating tensor; float64 recommended, since ``delta`` must
            be resolvable in the dtype).
        num_steps: steps ``T`` to run (``>= 1``).
        delta: initial distance (``> 0``).
        direction: the perturbation direction (normalized; default: a random Gaussian
            direction from ``generator``, seed 0 when ``None``).
        perturb_dims: perturb and measure only the first this many coordinates (default:
            ``step_fn.num_params`` when it has one, i.e. the parameters of a training state,
            else all).
        start_step: time index of the first step.
        fit_start, fit_stop: the fit window ``[fit_start, fit_stop)``, used as given
            (``fit_stop`` default: automatic); it must hold 2 or more steps of ``0..T``.
        saturation_fraction: the automatic window ends where ``d_t`` first reaches this
            fraction of its maximum over the run, if ``d_0`` is below that level.

    Returns:
        A :class:`DivergenceResult`; a non-finite orbit ends the run (``diverged_at``).

    Raises:
        SharpdimError: a window outside the run, or one the saturation cut leaves with fewer
            than 2 steps after ``fit_start``; a ``delta`` the state's dtype cannot resolve (the
            perturbed start rounds to more than ``delta / 2`` away from ``x0 + delta u``: a
            distance near ``delta`` is not enough, the direction must survive the rounding);
            a step that returns no tensor of the state's shape and dtype.

    Example (a linear map expanding by 2 per step along the first axis):
        >>> A = torch.diag(torch.tensor([2.0, 0.5], dtype=torch.float64))
        >>> x0 = torch.zeros(2, dtype=torch.float64)
        >>> r = trajectory_divergence(lambda x: A @ x, x0, 20, direction=torch.tensor([1.0, 0.0]))
        >>> round(r.growth_rate, 6) == round(math.log(2), 6)
        True
    """
    # only steps are taken: an object with step(x, t) and no jvp is a map too
    fmap: Any = step_fn if callable(getattr(step_fn, "step", None)) else as_step_map(step_fn)
    if not isinstance(x0, torch.Tensor) or x0.ndim != 1 or not x0.is_floating_point():
        raise SharpdimError("x0 must be a 1-D floating tensor: flatten the state first")
    if not bool(torch.isfinite(x0).all()):
        raise SharpdimError("x0 holds NaN or inf: pass a finite starting state")
    num_steps = check_count(num_steps, "num_steps", hint="e.g. 100")
    delta = check_number(delta, "delta", "> 0", "1e-8")
    start_step = check_count(start_step, "start_step", 0, "e.g. 0")
    fit_start = check_count(fit_start, "fit_start", 0, "e.g. 0")
    if fit_stop is not None:
        fit_stop = check_count(fit_stop, "fit_stop", 0, "e.g. 20 (or None: automatic)")
    saturation_fraction = check_number(saturation_fraction, "saturation_fraction", "> 0", "0.1")
    if not saturation_fraction <= 1:
        raise SharpdimError(
            f"saturation_fraction={saturation_fraction}: pass a number in (0, 1], e.g. 0.1"
        )
    if not 0 <= fit_start < num_steps:
        raise SharpdimError(
            f"fit_start={fit_start} for a run of {num_steps} steps: pass 0..{num_steps - 1}"
        )
    if fit_stop is not None and not fit_start + 2 <= fit_stop <= num_steps + 1:
        raise SharpdimError(
            f"fit_stop={fit_stop} with fit_start={fit_start}: the window [fit_start, fit_stop) "
            f"needs 2 or more of the steps 0..{num_steps}, pass {fit_start + 2}..{num_steps + 1}"
        )
    n = x0.numel()
    m = (
        check_count(perturb_dims, "perturb_dims", hint="e.g. the number of parameters")
        if perturb_dims is not None
        else int(getattr(step_fn, "num_params", n))
    )
    if not 1 <= m <= n:
        raise SharpdimError(f"perturb_dims={m} for a {n}-dimensional state: pass 1..{n}")
    if direction is None:
        gen = default_generator(generator)
        u = torch.randn(m, generator=gen, dtype=torch.float64)
    else:
        if (
            not isinstance(direction, torch.Tensor)
            or direction.is_complex()
            or direction.dtype == torch.bool
        ):
            got = direction.dtype if isinstance(direction, torch.Tensor) else type(direction)
            raise SharpdimError(
                f"direction must be a real tensor, got {got}: pass e.g. "
                f"torch.randn({m}, dtype=torch.float64)"
            )
        u = direction.detach().to(torch.float64).reshape(-1)
        if u.numel() != m:
            raise SharpdimError(f"direction has {u.numel()} entries: pass {m}")
        if not bool(torch.isfinite(u).all()):
            raise SharpdimError("the perturbation direction holds NaN or inf: pass a finite one")
    if not float(u.norm()) > 0:
        raise SharpdimError("the perturbation direction is zero: pass a non-zero direction")
    u = u.to(x0.device)
    x = x0.detach().clone()  # (the caller's x0 is never the orbit's state: step may work in place)
    y = x.clone()
    y[:m] = (x[:m].to(torch.float64) + delta * u / u.norm()).to(x.dtype)

    def dist(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a[:m].to(torch.float64) - b[:m].to(torch.float64)).norm())

    d0 = dist(x, y)
    # the realised perturbation against the intended one (its norm alone can land near delta
    # while rounding has dropped most coordinates and turned the direction): within delta / 2,
    # which bounds |d0 - delta| too; float64 rounding leaves ~eps |x| of it
    off = float(((y[:m] - x[:m]).to(torch.float64) - delta * u / u.norm()).norm())
    if not off <= delta / 2:
        finfo = torch.finfo(x.dtype)
        # above the rounding of x + delta u (and of a vector of subnormal entries)
        smallest = max(4 * finfo.eps * float(x[:m].to(torch.float64).norm()), finfo.tiny)
        advice = "use a" if x.dtype == torch.float64 else "use float64 states or a"
        turned = "" if abs(d0 - delta) > delta / 2 else f", {off:.3g} from x0 + delta u"
        raise SharpdimError(
            f"delta={delta:g} is below the resolution of {x.dtype} states (the perturbed "
            f"start is {d0:.3g} away{turned}): {advice} delta of at least ~{smallest:.1g}"
        )
    logs = [math.log(d0)]
    diverged_at: int | None = None
    for i in range(num_steps):
        t = start_step + i
        x_next, y_next = fmap.step(x, t), fmap.step(y, t)
        for state, state_next in ((x, x_next), (y, y_next)):
            if isinstance(state_next, torch.Tensor) and state_next.shape != state.shape:
                raise SharpdimError(
                    f"the step map returned a state of shape {tuple(state_next.shape)} for one "
                    f"of shape {tuple(state.shape)}: a step must return the whole next state"
                )
            _check_next_state(state, state_next, t)  # a tensor of the state's dtype
        x_next, y_next = x_next.detach(), y_next.detach()
        if not (torch.isfinite(x_next).all() and torch.isfinite(y_next).all()):
            diverged_at = i
            break
        x, y = x_next, y_next
        d = dist(x, y)
        logs.append(math.log(d) if d > 0 else -math.inf)
    log_d = torch.tensor(logs, dtype=torch.float64)
    finite = torch.isfinite(log_d)
    # the saturation level, a fraction of the largest distance, only cuts the window if the
    # distance grew past it from below (a run growing less than 1 / saturation_fraction is fit
    # whole)
    level = float(log_d[finite].max()) + math.log(saturation_fraction)
    stop = log_d.numel() if fit_stop is None else min(fit_stop, log_d.numel())
    saturated = False
    if fit_stop is None and log_d[0].item() < level:
        first = int(torch.nonzero(finite & (log_d >= level))[0]) + 1
        saturated, stop = first < stop, first
        if stop < fit_start + 2:
            raise SharpdimError(
                f"the distance saturates at step {stop - 1}, before fit_start={fit_start} "
                "leaves 2 steps to fit: pass a smaller fit_start or an explicit fit_stop"
            )
    if not finite.all():  # the orbits coincide from there on (the same map): end the window
        stop = min(stop, int(torch.nonzero(~finite)[0]))
    start, stop = fit_start, max(stop, fit_start)  # an orbit that diverged early: few points
    rate, err = _slope(log_d[start:stop])
    return DivergenceResult(
        log_distance=log_d,
        growth_rate=rate,
        growth_rate_stderr=err,
        fit_start=start,
        fit_stop=stop,
        saturated=bool(saturated),
        delta=float(delta),
        num_steps=log_d.numel() - 1,
        diverged_at=diverged_at,
    )
