"""Lanczos tridiagonalization with partial (Simon 1984) or no reorthogonalization.

Full reorthogonalization (:func:`~sharpdim.curvature.lanczos.lanczos_tridiagonal`) keeps every
Lanczos vector orthogonal to the whole basis to working precision, at the price of one
Gram–Schmidt pass over the basis per step, which reads it twice: ``8 m n`` bytes for a float32
basis of ``m`` vectors of length ``n``, which exceeds the cost of a Hessian-vector product for
large models and small batches (see ``docs/benchmarks.md``).

*Partial* reorthogonalization (H. D. Simon, "The Lanczos algorithm with partial
reorthogonalization", Math. Comp. 42, 1984) keeps the basis only *semi-orthogonal*,
``|v_j . v_k| <= sqrt(eps)``. Simon proved this is enough for the computed ``T_m`` to equal the
orthogonal projection of ``H`` onto the Krylov space up to working precision, so its Ritz
values and Gauss-quadrature nodes and weights (stochastic Lanczos quadrature) are as accurate
as with full reorthogonalization. The level of orthogonality is not measured but *estimated*
by Simon's recurrence for ``omega_{j,k} ~ v_j . v_k``:

    beta_j omega_{j+1,k} = beta_k omega_{j,k+1} + (alpha_k - alpha_j) omega_{j,k}
                           + beta_{k-1} omega_{j,k-1} - beta_{j-1} omega_{j-1,k} + noise,

and the new vector is orthogonalized against the whole basis only when some
``|omega_{j+1,k}| > sqrt(eps)`` — and then at the next step too, as the recurrence for that step
still carries the large ``omega_{j,k}``. Between those steps a Lanczos step costs one product
and a few vector operations.

*No* reorthogonalization (:func:`lanczos_tridiagonal_plain`, the recurrence with local
orthogonalization only) keeps just three vectors; its basis loses orthogonality, yet its Gauss
quadrature still integrates the probe's spectral measure to about the accuracy of an
``m``-point rule (Greenbaum 1989), which is all SLQ needs: the cheapest choice when the basis
itself is not wanted.

Both are *approximations of the paper's method* (Tuci et al., arXiv 2604.19740, App. C, use
full reorthogonalization); :func:`~sharpdim.curvature.slq.slq_spectrum` uses them only when
asked (``reorthogonalization="partial"`` or ``"none"``).
"""

from __future__ import annotations

import math

import torch

from sharpdim.curvature.krylov_basis import (
    basis_dtype,
    basis_storage,
    end_level,
    row_norms,
)
from sharpdim.curvature.lanczos import tridiagonal_steps
from sharpdim.curvature.operator import OperatorLike, as_operator

_NOISE = 8.0
"""Rounding added per step to Simon's estimates, in units of ``eps``. With ``1`` or ``2`` the
estimates fall behind the true loss of orthogonality of a float32 basis on wide spectra
(eigenvalues 1e-8 .. 1e4: the basis collapses and Ritz values leave the spectrum), and with
``4`` the 278,800-parameter benchmark Hessian (batch 128) ends 20% above ``sqrt(eps)``; ``8``
keeps the test spectra and that Hessian semi-orthogonal with a margin of 2x or more (17-24
Gram-Schmidt passes per 100 steps there). PROPACK's worst-case ``sqrt(n)/2`` would
reorthogonalize nearly every step."""


def _gram_schmidt(w: torch.Tensor, basis: torch.Tensor) -> None:
    """Orthogonalize ``w`` against the rows of ``basis`` in place: classical Gram–Schmidt twice.

    The estimates restart from ``eps`` after this pass, so it must leave ``w`` orthogonal to
    working precision. One pass against a basis that is only semi-orthogonal leaves up to
    ``sqrt(eps)`` times what it removed, and the DGKS test (a second pass only when the norm
    drops below ``1/sqrt(2)``) rarely asks for more: on negative spectra the basis then
    collapsed (``max |V V^T - I|`` 0.98-0.9994). Two passes always suffice ("twice is enough":
    Giraud, Langou, Rozložník & van den Eshof, Numer. Math. 101, 2005).
    """
    for _ in range(2):
        w.addmv_(basis.T, torch.mv(basis, w), alpha=-1.0)


def _omega_step(
    cur: torch.Tensor,
    prev: torch.Tensor,
    alpha: torch.Tensor,
    beta: torch.Tensor,
    j: int,
    eps: float,
    psi: float,
) -> torch.Tensor:
    """Simon's estimates ``omega_{j+1,k}`` (k = 0..j) from ``omega_{j,.}`` and ``omega_{j-1,.}``.

    ``cur[k] = omega_{j,k}`` (k = 0..j, ``cur[j] = 1``); ``prev[k] = omega_{j-1,k}`` (k = 0..j-1);
    ``beta[j]`` is the new coefficient. The rounding term is added with the sign of the rest,
    so the estimate errs on the side of reorthogonalizing.
    """
    nxt = torch.empty(j + 1, dtype=torch.float64)
    nxt[j] = psi
    if j == 0:
        return nxt
    k = torch.arange(j)
    num = beta[:j] * cur[1 : j + 1] + (alpha[:j] - alpha[j]) * cur[:j]
    num[1:] += beta[: j - 1] * cur[: j - 1]
    num -= beta[j - 1] * prev[:j]
    noise = eps * (beta[k] + beta[j])
    num += torch.where(num >= 0, noise, -noise)
    nxt[:j] = num / beta[j]
    return nxt


def lanczos_tridiagonal_partial(
    H: OperatorLike,
    num_steps: int,
    v0: torch.Tensor,
    *,
    return_basis: bool = False,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``num_steps`` Lanczos steps from ``v0`` keeping the basis semi-orthogonal (Simon 1984).

    Same contract as :func:`~sharpdim.curvature.lanczos.lanczos_tridiagonal`: returns
    ``(alpha, beta, Q)`` with the diagonal ``alpha`` (m,), the off-diagonal ``beta`` (m-1,) of
    ``T_m`` (float64) and, with ``return_basis``, the basis ``Q`` as rows ``(m, n)``, whose
    rows are orthogonal to each other to about ``sqrt(eps)`` of the operator's dtype. Stops
    early when the Krylov space of ``v0`` is invariant. ``workspace``: as there.
    """
    return _lanczos(H, num_steps, v0, return_basis, workspace, semi_orthogonal=True)


def lanczos_tridiagonal_plain(
    H: OperatorLike,
    num_steps: int,
    v0: torch.Tensor,
    *,
    return_basis: bool = False,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``num_steps`` steps of the plain Lanczos recurrence (local orthogonalization only).

    No Gram–Schmidt against earlier vectors: the basis loses orthogonality as Ritz values
    converge and extreme Ritz values reappear as "ghost" copies. Greenbaum (1989) showed that
    the computed ``T_m`` is nevertheless the exact Lanczos matrix of a matrix whose eigenvalues
    lie in tiny intervals around those of ``H``, the probe's weight split among each cluster;
    so its Gauss quadrature still integrates the spectral measure of ``v0`` (the quantity SLQ
    needs), a ghost sharing its eigenvalue's weight (Knizhnerman 1996; Chen, Trogdon & Ubaru,
    ICML 2021). Only three vectors are kept unless ``return_basis``: memory ``O(n)``.
    Same contract as :func:`lanczos_tridiagonal_partial`, without its orthogonality bound.
    """
    return _lanczos(H, num_steps, v0, return_basis, workspace, semi_orthogonal=False)


def _lanczos(
    H: OperatorLike,
    num_steps: int,
    v0: torch.Tensor,
    return_basis: bool,
    workspace: torch.Tensor | None,
    *,
    semi_orthogonal: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The Lanczos recurrence with (``semi_orthogonal``) or without Simon's safeguard."""
    op = as_operator(H)
    n = op.num_params
    steps, v0 = tridiagonal_steps(op, num_steps, v0)
    dtype = basis_dtype(op.dtype)
    eps = torch.finfo(dtype).eps
    level = math.sqrt(eps)
    floor = end_level(dtype)  # (as in full reorthogonalization)
    eps1 = eps * _NOISE  # rounding per step, also what a Gram-Schmidt pass leaves behind
    keep = semi_orthogonal or return_basis  # else three rotating rows suffice
    rows = steps + 1 if keep else min(3, steps + 1)
    V = basis_storage(op, rows, workspace)
    first = v0.to(dtype=dtype, device=op.device)  # (normalized in the basis' dtype: a
    V[0] = first / row_norms(first)  # float16 v0's own norm overflowed)
    alpha = torch.zeros(steps, dtype=torch.float64)
    beta = torch.zeros(steps, dtype=torch.float64)
    cur = torch.ones(1, dtype=torch.float64)  # omega_{0,0}
    prev = torch.zeros(0, dtype=torch.float64)
    anorm, force, m = 0.0, False, steps
    for j in range(steps):
        vj = V[j % rows]
        w = V[(j + 1) % rows]
        w.copy_((op @ vj.to(op.dtype)).reshape(-1))
        if j > 0:
            w.add_(V[(j - 1) % rows], alpha=-float(beta[j - 1]))
        a = float(torch.dot(w, vj))
        w.add_(vj, alpha=-a)
        c = float(torch.dot(w, vj))  # second local pass: alpha to working precision
        w.add_(vj, alpha=-c)
        alpha[j] = a + c
        if j + 1 == steps:
            break
        b = float(row_norms(w))
        # ||H v_j|| <= |alpha_j| + beta_j + beta_{j-1} <= anorm: the scale of breakdown
        anorm = max(anorm, abs(float(alpha[j])) + b + (float(beta[j - 1]) if j else 0.0))
        if b <= floor * anorm or j + 1 >= n:
            m = j + 1
            break
        beta[j] = b
        if semi_orthogonal:
            nxt = _omega_step(cur, prev, alpha, beta, j, eps1, eps1 * anorm / b)
            if force or bool((nxt[:j].abs() > level).any()):
                _gram_schmidt(w, V[: j + 1])
                b = float(row_norms(w))
                if b <= floor * anorm:
                    m = j + 1
                    break
                beta[j] = b
                nxt[:j] = eps1  # what the pass leaves, and the local rounding against v_j
                nxt[j] = eps1 * anorm / b
                force = not force  # the next vector too: its recurrence still holds omega_{j,.}
            prev, cur = cur, torch.cat([nxt, torch.ones(1, dtype=torch.float64)])
        w.div_(b)
    basis = V[:m].to(torch.float64) if return_basis else None
    return alpha[:m].clone(), beta[: m - 1].clone(), basis
