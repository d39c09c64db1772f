"""Randomized trace estimators: Hutchinson and Hutch++.

* **Hutchinson** (Hutchinson 1990): for Rademacher probes ``z_i`` (``E[z z^T] = I``),
  ``tr(H) ~ (1/m) sum_i z_i^T H z_i``, unbiased, with variance
  ``(2/m) sum_{i != j} H_ij^2 <= (2/m) ||H||_F^2`` for a symmetric ``H`` (else that of its
  symmetric part): the error falls like ``1/sqrt(m)``.
* **Hutch++** (Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace
  Estimation", SOSA 2021): spend ``m/3`` products on a sketch ``Q = orth(H S)``, take the trace
  of ``Q^T H Q`` exactly (``m/3`` products), and apply Hutchinson to the deflated
  ``(I - QQ^T) H (I - QQ^T)`` with the remaining products. The top of the spectrum is captured
  exactly, so for matrices with decaying spectra the error falls like ``1/m``.

Both return a standard error: the sample standard deviation of the Hutchinson terms over
``sqrt(#terms)`` (for Hutch++ conditional on the sketch ``Q``; NaN with a single term).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, default_generator
from sharpdim.curvature.operator import LinearOperator, OperatorLike, as_operator

_CHUNK = 32
"""Probes multiplied per operator call (memory ``8 n _CHUNK`` bytes in float64)."""


@dataclass(frozen=True)
class TraceResult:
    """A trace estimate.

    Attributes:
        estimate: the estimate of ``tr(H)``.
        stderr: its standard error (NaN when it cannot be estimated).
        num_matvecs: operator products used.
        method: ``"hutchinson"`` or ``"hutchpp"``.
        num_params: the dimension ``n``.
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    num_params: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "estimate": self.estimate,
            "stderr": self.stderr,
            "num_matvecs": self.num_matvecs,
            "method": self.method,
            "num_params": self.num_params,
        }


def _rademacher(n: int, k: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    z = torch.randint(0, 2, (n, k), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
    return z.to(device)


def _apply(op: LinearOperator, block: torch.Tensor) -> torch.Tensor:
    """``H @ block`` in float64, in chunks of columns."""
    outs = [
        (op @ block[:, i : i + _CHUNK].to(op.dtype)).to(torch.float64)
        for i in range(0, block.shape[1], _CHUNK)
    ]
    return torch.cat(outs, 1)


def _mean_and_stderr(terms: torch.Tensor) -> tuple[float, float]:
    m = terms.numel()
    if m == 0:
        return 0.0, 0.0
    se = float(terms.std(correction=1)) / math.sqrt(m) if m > 1 else float("nan")
    return float(terms.mean()), se


def _hutchinson_terms(
    op: LinearOperator, num: int, gen: torch.Generator, basis: torch.Tensor | None
) -> torch.Tensor:
    """Terms ``z^T P H P z`` (``P = I - Q Q^T`` when ``basis`` is given), chunk by chunk."""
    n, terms = op.num_params, []
    for start in range(0, num, _CHUNK):
        z = _rademacher(n, min(_CHUNK, num - start), gen, op.device)
        if basis is not None:
            z -= basis @ (basis.T @ z)
        terms.append((z * _apply(op, z)).sum(0))
    return torch.cat(terms) if terms else torch.zeros(0, dtype=torch.float64)


def hutchinson_trace(
    H: OperatorLike, num_matvecs: int = 100, *, generator: torch.Generator | None = None
) -> TraceResult:
    """Hutchinson's estimate ``(1/m) sum_i z_i^T H z_i`` of ``tr(H)`` with Rademacher probes.

    Args:
        H: a dense square tensor or a :class:`LinearOperator`.
        num_matvecs: probes ``m`` (one product each).
        generator: the only source of randomness (default: seeded with 0).

    Example:
        >>> A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> hutchinson_trace(A, 5).estimate  # exact for a diagonal matrix
        55.0
    """
    op = as_operator(H, symmetric=False)  # (a trace needs no symmetry)
    m = check_count(num_matvecs, "num_matvecs")
    gen = default_generator(generator)
    est, se = _mean_and_stderr(_hutchinson_terms(op, m, gen, None))
    return TraceResult(est, se, m, "hutchinson", op.num_params)


def hutchpp_trace(
    H: OperatorLike, num_matvecs: int = 99, *, generator: torch.Generator | None = None
) -> TraceResult:
    """Hutch++ estimate of ``tr(H)`` with ``num_matvecs`` products (Meyer et al. 2021).

    ``s = num_matvecs // 3`` products sketch ``Q = orth(H S)`` (``S`` Rademacher, ``n x s``),
    ``s`` more give ``tr(Q^T H Q)``, and the remaining ``num_matvecs - 2 s`` probes ``g``
    estimate ``tr((I - QQ^T) H (I - QQ^T))`` by Hutchinson. When ``s >= n`` the sketch spans
    the whole space and the result is exact (fewer products are then used).

    Args:
        H: a dense square tensor or a :class:`LinearOperator`.
        num_matvecs: total operator products (``>= 3``).
        generator: the only source of randomness (default: seeded with 0).
    """
    op = as_operator(H, symmetric=False)  # (a trace needs no symmetry)
    total = check_count(num_matvecs, "num_matvecs", 3)
    gen = default_generator(generator)
    n = op.num_params
    if n == 0:  # the trace of a 0 x 0 matrix, as hutchinson_trace gives it
        return TraceResult(0.0, 0.0, 0, "hutchpp", 0)
    s = min(total // 3, n)
    sketch = _apply(op, _rademacher(n, s, gen, op.device))
    q, _ = torch.linalg.qr(sketch)
    top = float((q * _apply(op, q)).sum())
    if s == n:
        return TraceResult(top, 0.0, 2 * s, "hutchpp", n)
    rest = total - 2 * s
    tail, se = _mean_and_stderr(_hutchinson_terms(op, rest, gen, q))
    return TraceResult(top + tail, se, total, "hutchpp", n)
