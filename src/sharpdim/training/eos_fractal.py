"""The toy fractal attractor of Tuci et al. (arXiv 2604.19740, Fig. 6).

Noisy gradient descent on the two-dimensional loss

    L(x) = 0.5 * ||x||^2 - A * cos(k x_1) * cos(k x_2)

with the update ``x <- x - eta * grad L(x) + xi``, ``xi ~ N(0, sigma^2 I)`` drawn afresh for
every particle and step (a random dynamical system). Its derivatives:

* ``grad L(x) = (x_1 + A k sin(k x_1) cos(k x_2),  x_2 + A k cos(k x_1) sin(k x_2))``;
* ``H(x) = I + A k^2 [[c_1 c_2, -s_1 s_2], [-s_1 s_2, c_1 c_2]]`` with ``c_i = cos(k x_i)``,
  ``s_i = sin(k x_i)``, whose eigenvalues are ``1 + A k^2 (c_1 c_2 +- s_1 s_2)``
  ``= 1 + A k^2 cos(k (x_1 -+ x_2))``.

With the paper's ``A = 2, k = 4`` the global minimum ``x = 0`` has sharpness
``1 + A k^2 = 33`` while ``2 / eta = 13.3`` for ``eta = 0.15``: gradient descent cannot settle
in the deep central wells. Without noise the particles end on flatter stationary points or
cycles; with the noise they spread over a fractal-looking cloud, about half of it in regions
of sharpness above ``2 / eta`` (see ``docs/reproductions.md``). Everything is vectorised over
particles. For ``eta > 2`` the linear part ``x <- (1 - eta) x`` expands (``|1 - eta| > 1``)
and the particles run away; a run in which any particle diverged is recorded as
``status="diverged"`` with NaN measures (:func:`fractal_diverged`). At ``eta = 2`` exactly
the linear part neither contracts nor expands and the particles spread (``|x|`` of a few
hundred after 250 steps) without diverging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, check_number, default_generator
from sharpdim.errors import SharpdimError


def fractal_loss(
    x: torch.Tensor, *, amplitude: float = 2.0, frequency: float = 4.0
) -> torch.Tensor:
    """``0.5 ||x||^2 - A cos(k x_1) cos(k x_2)`` for points ``x (..., 2)``."""
    k = frequency
    return 0.5 * (x**2).sum(dim=-1) - amplitude * torch.cos(k * x[..., 0]) * torch.cos(
        k * x[..., 1]
    )


def fractal_gradient(
    x: torch.Tensor, *, amplitude: float = 2.0, frequency: float = 4.0
) -> torch.Tensor:
    """Analytic gradient of :func:`fractal_loss`, shape ``(..., 2)``."""
    k, a = frequency, amplitude
    c1, c2 = torch.cos(k * x[..., 0]), torch.cos(k * x[..., 1])
    s1, s2 = torch.sin(k * x[..., 0]), torch.sin(k * x[..., 1])
    return torch.stack((x[..., 0] + a * k * s1 * c2, x[..., 1] + a * k * c1 * s2), dim=-1)


def fractal_hessian(
    x: torch.Tensor, *, amplitude: float = 2.0, frequency: float = 4.0
) -> torch.Tensor:
    """Analytic Hessian of :func:`fractal_loss`, shape ``(..., 2, 2)``."""
    k, a = frequency, amplitude
    c1, c2 = torch.cos(k * x[..., 0]), torch.cos(k * x[..., 1])
    s1, s2 = torch.sin(k * x[..., 0]), torch.sin(k * x[..., 1])
    diag = 1.0 + a * k**2 * c1 * c2
    off = -a * k**2 * s1 * s2
    return torch.stack((torch.stack((diag, off), -1), torch.stack((off, diag), -1)), -2)


def fractal_sharpness(
    x: torch.Tensor, *, amplitude: float = 2.0, frequency: float = 4.0
) -> torch.Tensor:
    """Largest Hessian eigenvalue, the larger of ``1 + A k^2 cos(k(x_1 -+ x_2))`` (for
    ``A < 0`` that of the smaller cosine)."""
    scale = amplitude * frequency * frequency
    minus = 1.0 + scale * torch.cos(frequency * (x[..., 0] - x[..., 1]))
    plus = 1.0 + scale * torch.cos(frequency * (x[..., 0] + x[..., 1]))
    return torch.maximum(minus, plus)


def fractal_step(
    x: torch.Tensor,
    noise: torch.Tensor,
    *,
    lr: float = 0.15,
    amplitude: float = 2.0,
    frequency: float = 4.0,
) -> torch.Tensor:
    """One noisy GD step ``x - lr * grad L(x) + noise`` for all particles at once."""
    return x - lr * fractal_gradient(x, amplitude=amplitude, frequency=frequency) + noise


DIVERGENCE_FACTOR = 1e6
"""A particle has diverged once its loss exceeds this times ``max(|its initial loss|, 1)``
(the default of :class:`~sharpdim.training.loop.TrainConfig`)."""


def fractal_diverged(
    x: torch.Tensor, loss: torch.Tensor, initial_loss: torch.Tensor
) -> torch.Tensor:
    """Per particle: position or loss not finite, or loss above
    ``DIVERGENCE_FACTOR * max(|initial_loss|, 1)``."""
    limit = DIVERGENCE_FACTOR * initial_loss.abs().clamp(min=1.0)
    return ~torch.isfinite(x).all(dim=-1) | ~torch.isfinite(loss) | ~(loss <= limit)


@dataclass(frozen=True)
class FractalResult:
    """Particles of the noisy GD random dynamical system after ``steps`` steps.

    Attributes:
        initial, final: ``(n, 2)`` positions at the start and the end.
        final_loss, final_sharpness: per particle at the end.
        lr, amplitude, frequency, noise_std, steps, init_range: the settings.
        eos_fraction: share of final particles where the sharpness exceeds ``2 / lr``.
        mean_loss: mean final loss.
        box_dimension: box-counting slope of the final cloud over ``box_sizes`` (a rough
            summary; with noise the cloud is not a true fractal at scales below ``noise_std``).
        box_sizes, box_counts: the boxes used (no counts when diverged).
        num_diverged: particles that diverged (:func:`fractal_diverged`); if any did, the
            run's ``status`` is ``"diverged"`` and the ensemble measures above are NaN.
    """

    initial: torch.Tensor
    final: torch.Tensor
    final_loss: torch.Tensor
    final_sharpness: torch.Tensor
    lr: float
    amplitude: float
    frequency: float
    noise_std: float
    steps: int
    init_range: float
    eos_fraction: float
    mean_loss: float
    box_dimension: float
    box_sizes: tuple[float, ...]
    box_counts: tuple[int, ...]
    num_diverged: int

    @property
    def threshold(self) -> float:
        return 2.0 / self.lr

    @property
    def status(self) -> str:
        return "diverged" if self.num_diverged else "done"

    @property
    def diverged_fraction(self) -> float:
        return self.num_diverged / self.final.shape[0]

    @property
    def median_sharpness(self) -> float:
        if self.num_diverged:
            return math.nan
        ordered = self.final_sharpness.sort().values  # quantile() refuses above 2^24 values
        n = ordered.numel()
        return float((ordered[(n - 1) // 2] + ordered[n // 2]) / 2)

    def to_dict(self, *, with_points: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "num_particles": int(self.final.shape[0]),
            "status": self.status,
            "num_diverged": self.num_diverged,
            "diverged_fraction": self.diverged_fraction,
            "lr": self.lr,
            "amplitude": self.amplitude,
            "frequency": self.frequency,
            "noise_std": self.noise_std,
            "steps": self.steps,
            "init_range": self.init_range,
            "threshold": self.threshold,
            "max_minimum_sharpness": 1.0 + self.amplitude * self.frequency * self.frequency,
            "eos_fraction": self.eos_fraction,
            "mean_loss": self.mean_loss,
            "median_sharpness": self.median_sharpness,
            "box_dimension": self.box_dimension,
            "box_sizes": list(self.box_sizes),
            "box_counts": list(self.box_counts),
        }
        if with_points:
            out["final"] = self.final.tolist()
        return out


def _check_box_sizes(sizes: Any) -> tuple[float, ...]:
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise SharpdimError(
            f"box_sizes must be a sequence of sides, got {sizes!r}: pass e.g. (0.2, 0.1)"
        )
    out = tuple(check_number(s, "a box size", "> 0", "(0.4, 0.2, 0.1, 0.05)") for s in sizes)
    if not out:
        raise SharpdimError(
            "box_sizes is empty: pass box sides (two or more for a slope), e.g. (0.2, 0.1)"
        )
    return out


def _cells(points: torch.Tensor, finite: torch.Tensor, size: float) -> torch.Tensor:
    """Rows that are equal exactly for points in the same box of side ``size``: the float64
    ``floor(x / size)`` (a cast to int64 wrapped above 9.2e18), each coordinate tagged 0; a
    coordinate whose quotient overflows is its own box (floats that far apart are farther
    apart than ``size``), tagged 1; a non-finite one is 0 tagged 2."""
    quotient = torch.floor(points / size)
    overflow = finite & ~torch.isfinite(quotient)
    key = torch.where(overflow, points, torch.where(finite, quotient, 0.0))
    tag = overflow.to(torch.float64) + 2.0 * (~finite).to(torch.float64)
    return torch.cat([key, tag], dim=1) if bool(tag.any()) else key  # (all 0: the keys alone)


def box_counting_dimension(
    points: torch.Tensor, sizes: tuple[float, ...]
) -> tuple[float, tuple[int, ...]]:
    """Least-squares slope of ``log N(s)`` against ``log(1/s)``; ``N(s)`` = occupied boxes of side s
    (NaN with a single side). Non-finite coordinates all share one cell (of their column)."""
    sizes = _check_box_sizes(sizes)
    if not isinstance(points, torch.Tensor) or points.ndim == 0 or points.numel() == 0:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise SharpdimError(
            f"points must be a non-empty (N, D) tensor, got {shape}: pass the final iterates"
        )
    counts = []
    points = points.to(torch.float64).reshape(points.shape[0], -1)  # (rows of a 1-D input)
    finite = torch.isfinite(points)
    for size in sizes:
        counts.append(int(torch.unique(_cells(points, finite, size), dim=0).shape[0]))
    x = torch.tensor([math.log(1.0 / s) for s in sizes], dtype=torch.float64)
    y = torch.tensor([math.log(c) for c in counts], dtype=torch.float64)
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum()) if len(sizes) > 1 else math.nan
    return slope, tuple(counts)


def fractal_attractor(
    num_particles: int = 20_000,
    *,
    steps: int = 250,
    lr: float = 0.15,
    amplitude: float = 2.0,
    frequency: float = 4.0,
    noise_std: float = 0.1,
    init_range: float = 3.0,
    box_sizes: tuple[float, ...] = (0.4, 0.2, 0.1, 0.05),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> FractalResult:
    """Run noisy GD from ``num_particles`` uniform starting points in ``[-r, r]^2``.

    Args:
        num_particles: particles moved together (one row each).
        steps: noisy GD steps (paper: 250).
        lr: step size ``eta`` (paper: 0.15).
        amplitude, frequency: ``A`` and ``k`` of the loss (paper: 2 and 4).
        noise_std: ``sigma`` of the additive Gaussian noise (paper: 0.1).
        init_range: ``r`` of the uniform initial square.
        box_sizes: box sides for :func:`box_counting_dimension`.
        generator: source of the initial points and the noise (default: seed 0).
        dtype: float dtype of the particles.

    Returns:
        A :class:`FractalResult`; with any particle diverged, its ``status`` is
        ``"diverged"`` and its ensemble measures NaN.
    """
    num_particles = check_count(num_particles, "num_particles")
    steps = check_count(steps, "steps", 0)
    lr = check_number(lr, "lr", "> 0", "0.15")
    noise_std = check_number(noise_std, "noise_std", ">= 0", "0.1")
    init_range = check_number(init_range, "init_range", "> 0", "3.0")
    amplitude = check_number(
        amplitude, "amplitude", ">= 0", "2.0 (the central minimum has sharpness 1 + A k^2)"
    )
    frequency = check_number(frequency, "frequency", "any", "4.0")
    box_sizes = _check_box_sizes(box_sizes)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SharpdimError(f"dtype must be a floating dtype, got {dtype}: pass torch.float64")
    if not math.isfinite(amplitude * frequency * frequency):
        raise SharpdimError(
            f"amplitude={amplitude}, frequency={frequency}: the central sharpness needs a "
            "finite 1 + A k^2: pass smaller values"
        )
    gen = default_generator(generator)
    opts = {"amplitude": amplitude, "frequency": frequency}
    x = (2.0 * torch.rand(num_particles, 2, generator=gen, dtype=dtype) - 1.0) * init_range
    initial = x.clone()
    for _ in range(steps):
        noise = noise_std * torch.randn(num_particles, 2, generator=gen, dtype=dtype)
        x = fractal_step(x, noise, lr=lr, **opts)
    sharp = fractal_sharpness(x, **opts)
    loss = fractal_loss(x, **opts)
    diverged = int(fractal_diverged(x, loss, fractal_loss(initial, **opts)).sum())
    dim, counts = box_counting_dimension(x, box_sizes) if not diverged else (math.nan, ())
    return FractalResult(
        initial=initial,
        final=x,
        final_loss=loss,
        final_sharpness=sharp,
        lr=lr,
        amplitude=amplitude,
        frequency=frequency,
        noise_std=noise_std,
        steps=steps,
        init_range=init_range,
        eos_fraction=math.nan if diverged else float((sharp > 2.0 / lr).to(torch.float64).mean()),
        mean_loss=math.nan if diverged else float(loss.mean()),
        box_dimension=dim,
        box_sizes=tuple(box_sizes),
        box_counts=counts,
        num_diverged=diverged,
    )
