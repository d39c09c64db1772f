"""Kaplan–Yorke (Lyapunov) dimension of a spectrum of exponents: the sharpness dimension's formula.

Paper Def. 4.2 (Tuci et al., "Generalization at the Edge of Stability", arXiv 2604.19740), in
the Kaplan–Yorke form (Kaplan & Yorke 1979): for exponents ``lambda_1 >= ... >= lambda_d``,

    j* = max{ i : lambda_1 + ... + lambda_i >= 0 },
    SD = 0                                              if lambda_1 < 0,
    SD = d                                              if j* = d,
    SD = j* + (lambda_1 + ... + lambda_{j*}) / |lambda_{j*+1}|   otherwise.

The same number is the root of a piecewise-linear function, which extends the formula to a
*measure* of exponents (atoms ``l_i`` with masses ``m_i >= 0``, total mass ``d``). Sort the
atoms in descending order and let ``l(s)``, ``0 <= s <= d``, be the non-increasing step
function that takes the value ``l_i`` on an interval of length ``m_i`` (the quantile function
of the measure, scaled to ``[0, d]``). Its running integral

    S(x) = int_0^x l(s) ds

is concave with ``S(0) = 0``. For unit masses ``S(i) = lambda_1 + ... + lambda_i`` and ``S`` is
linear on ``[j*, j* + 1]`` with slope ``lambda_{j*+1} < 0``, so the root of ``S`` in that
interval is ``j* + S(j*) / |lambda_{j*+1}|``: Def. 4.2 is "the largest ``x`` in ``[0, d]`` with
``S(x) >= 0``" (0 when ``l(0) = lambda_1 < 0``, ``d`` when ``S(d) >= 0``). For general masses,
with ``N`` the mass and ``S`` the sum ``sum m_i l_i`` of all atoms above the first atom ``l``
at which the running sum turns negative,

    SD = N + S / |l|.

:func:`kaplan_yorke_dimension` applies Def. 4.2 to a vector; :func:`kaplan_yorke_measure` to a
weighted measure (used by the SD-SLQ/KDE/PS estimators). Both are exact on unit masses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import real_tensor
from sharpdim.errors import SharpdimError


@dataclass(frozen=True)
class KaplanYorkeResult:
    """The Kaplan–Yorke dimension of a spectrum.

    Attributes:
        dimension: the dimension, in ``[0, d]`` (``d`` the total mass / number of exponents).
        j_star: ``j*`` of Def. 4.2: the number (or, for a measure, the mass) of leading
            exponents whose running sum is still non-negative; 0 when ``lambda_1 < 0``.
        exponents: the exponents sorted in descending order (float64).
        masses: their masses (all ones for a plain vector).
        total_mass: ``d``.
    """

    dimension: float
    j_star: float
    exponents: torch.Tensor
    masses: torch.Tensor
    total_mass: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension,
            "j_star": self.j_star,
            "exponents": self.exponents.tolist(),
            "masses": self.masses.tolist(),
            "total_mass": self.total_mass,
        }


def _as_float64_vector(x: Any, name: str, flatten: bool = True) -> torch.Tensor:
    try:
        t = real_tensor(x, f"`{name}`", word_errors=False)
    except SharpdimError:
        raise
    except (TypeError, ValueError, RuntimeError):
        raise SharpdimError(
            f"`{name}` of type {type(x).__name__} is not a numeric vector: pass a 1-d tensor"
        ) from None
    if not flatten and t.ndim > 1:
        raise SharpdimError(
            f"`{name}` has shape {tuple(t.shape)}: pass one vector of exponents (for per-batch "
            "rows, their mean over batches, e.g. rds_exponents(rows).exponents)"
        )
    t = t.reshape(-1)
    if t.numel() == 0:
        raise SharpdimError(f"`{name}` is empty: pass at least one exponent")
    if not torch.isfinite(t).all():
        if name == "masses":
            hint = "pass finite weights"
        elif bool(torch.isposinf(t).any()):
            hint = "an exponent overflowed (a diverged step or Hessian): pass finite exponents"
        else:
            hint = (
                "guard the logarithms (ln(sigma + eps)) before computing a Kaplan–Yorke dimension"
            )
        raise SharpdimError(f"`{name}` holds NaN or inf: {hint}")
    return t


def kaplan_yorke_measure(values: Any, masses: Any) -> KaplanYorkeResult:
    """Kaplan–Yorke dimension of a measure of exponents (atoms ``values`` with ``masses``).

    The largest ``x`` in ``[0, d]`` with ``S(x) = int_0^x l(s) ds >= 0``, ``l`` the descending
    quantile function of the measure and ``d = sum(masses)`` (see the module docstring):
    ``SD = N + S / |l|`` at the first atom ``l`` where the running sum turns negative, ``N``
    and ``S`` the mass and the sum of the atoms above it. Atoms with equal values are
    interchangeable, so the result does not depend on how ties are ordered.

    Args:
        values: exponents ``l_i`` (any shape; flattened).
        masses: non-negative masses ``m_i`` of the same number of elements.

    Returns:
        A :class:`KaplanYorkeResult`; ``j_star`` is the mass ``N`` above the crossing.

    Example:
        >>> r = kaplan_yorke_measure([0.5, -1.0], [2.0, 2.0])
        >>> round(r.dimension, 6)  # 2 * 0.5 = 1 spread over atoms of -1: one more unit
        3.0
    """
    v = _as_float64_vector(values, "values")
    m = _as_float64_vector(masses, "masses")
    if v.shape != m.shape:
        raise SharpdimError(
            f"{v.numel()} values but {m.numel()} masses: give one mass per exponent"
        )
    if (m < 0).any():
        raise SharpdimError("masses must be non-negative: pass weights >= 0")
    total = float(m.sum())
    if total <= 0:
        raise SharpdimError("the masses sum to 0: pass a measure with positive total mass")
    order = torch.argsort(v, descending=True, stable=True)
    v, m = v[order], m[order]
    keep = m > 0
    vk, mk = v[keep], m[keep]
    if float(vk[0]) < 0:
        return KaplanYorkeResult(0.0, 0.0, v, m, total)
    running = torch.cumsum(mk * vk, 0)
    negative = torch.nonzero(running < 0)
    if negative.numel() == 0:
        return KaplanYorkeResult(total, total, v, m, total)
    i = int(negative[0])  # first atom at which S turns negative; its value is < 0
    mass_above = float(mk[:i].sum())
    sum_above = float(running[i - 1]) if i > 0 else 0.0
    dim = mass_above + sum_above / abs(float(vk[i]))
    return KaplanYorkeResult(min(max(dim, 0.0), total), mass_above, v, m, total)


def kaplan_yorke_dimension(exponents: Any) -> KaplanYorkeResult:
    """Kaplan–Yorke dimension of a vector of exponents: paper Def. 4.2 exactly.

    ``j* = max{i : lambda_1 + ... + lambda_i >= 0}``; ``SD = 0`` if ``lambda_1 < 0``, ``d`` if
    ``j* = d``, else ``j* + (lambda_1 + ... + lambda_{j*}) / |lambda_{j*+1}|``. The exponents
    are sorted in descending order first.

    Args:
        exponents: Lyapunov exponents or RDS sharpnesses ``lambda_k`` (a vector or scalar;
            any order, finite).

    Returns:
        A :class:`KaplanYorkeResult` with an integer-valued ``j_star``.

    Example (the worked example of the design: GD on ``0.5 x^T diag(3, 1, 0.1) x``,
    ``eta = 0.9``, exponents ``ln|1 - 0.9 alpha|``):
        >>> import math
        >>> lam = [math.log(abs(1 - 0.9 * a)) for a in (3.0, 1.0, 0.1)]
        >>> r = kaplan_yorke_dimension(lam)
        >>> round(r.dimension, 5), r.j_star
        (2.18949, 2.0)
    """
    lam = _as_float64_vector(exponents, "exponents", flatten=False)
    lam = torch.sort(lam, descending=True).values
    d = lam.numel()
    ones = torch.ones(d, dtype=torch.float64)
    if float(lam[0]) < 0:
        return KaplanYorkeResult(0.0, 0.0, lam, ones, float(d))
    partial = torch.cumsum(lam, 0)
    j_star = int(torch.nonzero(partial >= 0).max()) + 1  # partial sums are concave in i
    if j_star == d:
        return KaplanYorkeResult(float(d), float(d), lam, ones, float(d))
    dim = j_star + float(partial[j_star - 1]) / abs(float(lam[j_star]))
    return KaplanYorkeResult(min(max(dim, 0.0), d), float(j_star), lam, ones, float(d))
