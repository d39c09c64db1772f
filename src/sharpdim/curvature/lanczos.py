"""Extreme eigenvalues of a symmetric operator by thick-restart Lanczos.

The Lanczos process (Lanczos 1950) builds an orthonormal basis ``V_m`` of the Krylov space
``span{v, Hv, ..., H^{m-1} v}`` and the projection ``T_m = V_m^T H V_m`` (tridiagonal in exact
arithmetic). The eigenpairs ``(theta_i, s_i)`` of ``T_m`` (Ritz values and vectors) approximate
the extreme eigenpairs of ``H``, and the residual of the Ritz vector ``y_i = V_m s_i`` is known
without another product:

    ||H y_i - theta_i y_i|| = ||B_m s_i[last block]||      (= |beta_m s_{m,i}| for one vector),

which bounds the eigenvalue error (``|theta_i - lambda| <= residual``, and ``<= residual^2 / gap``).

Implementation choices:

* **Full reorthogonalization** (two passes of classical Gram–Schmidt with matrix products,
  a third when the second removes much): every new vector is orthogonal to the whole basis to
  working precision, so no spurious copies of converged eigenvalues appear (Parlett, *The
  Symmetric Eigenvalue Problem*, 1998, ch. 13). The basis is kept in the operator's dtype
  (float32 for a float32 model: orthogonal to the accuracy of the products ``H v`` themselves,
  at half the memory traffic of a float64 basis, which dominates the cost of a step on large
  models); ``T`` and its eigendecomposition are always float64.
* **Thick restart** (Wu & Simon, SIAM J. Matrix Anal. Appl. 22, 2000): when the basis reaches
  ``max_basis`` vectors it is compressed to the most wanted Ritz vectors plus the residual
  vector, so memory stays ``n x max_basis`` however many products convergence needs.
* **Blocks** (``block_size > 1``): a block Krylov space finds eigenvalues of multiplicity up to
  the block size, which a single start vector cannot in exact arithmetic.
* **Convergence per eigenvalue**: a wanted Ritz value is converged when its residual is at most
  ``max(tol * |theta|, 8 * eps * ||T||)``, where ``eps`` is the machine epsilon of the operator's
  dtype (the accuracy of a product ``H v`` itself; below it no residual can be trusted), or,
  if longer, the longest coupling a breakdown left out of ``T``.
* **Invariant subspaces** (a new direction shorter than ``max(1e-10, 8 eps) ||H||``, the
  floor above): the process goes on
  from a random vector in the complement (a *round*), and zero residuals do not end it until
  the latest round can no longer change the wanted values (:func:`_round_state`): a
  rank-deficient Hessian's repeated zeros are all counted.

``which="LA"`` (largest algebraic, e.g. the sharpness ``lambda_max(H)``, *not* the largest
magnitude), ``"SA"`` (smallest algebraic) or ``"both"`` (both ends from one Krylov space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from sharpdim.checks import (
    check_count,
    check_flag,
    check_number,
    default_generator,
    native_array,
)
from sharpdim.curvature.krylov_basis import KrylovBasis, breakdown_level
from sharpdim.curvature.operator import LinearOperator, OperatorLike, as_operator
from sharpdim.errors import SharpdimError

Which = Literal["LA", "SA", "both"]


@dataclass(frozen=True)
class LanczosResult:
    """Extreme eigenvalues found by :func:`lanczos_eigenvalues` (all tensors float64).

    Attributes:
        eigenvalues: ``"LA"``: the ``k`` largest, descending; ``"SA"``: the ``k`` smallest,
            ascending; ``"both"``: the ``k`` largest followed by the ``k`` smallest, the whole
            vector descending (all ``n`` eigenvalues when ``2k >= n``), so
            ``eigenvalues[:k]`` are the largest and ``eigenvalues[-k:]`` the smallest.
        converged: per eigenvalue, whether its residual met the tolerance.
        residuals: per eigenvalue, ``||H y - theta y||`` of its Ritz vector (unit norm).
        eigenvectors: the Ritz vectors as columns ``(n, len(eigenvalues))`` when requested.
        num_matvecs: operator products used (columns of blocks counted one by one).
        num_restarts: thick restarts performed.
        which, k, tol: the request.
    """

    eigenvalues: torch.Tensor
    converged: torch.Tensor
    residuals: torch.Tensor
    eigenvectors: torch.Tensor | None
    num_matvecs: int
    num_restarts: int
    which: str
    k: int
    tol: float

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def largest(self) -> torch.Tensor:
        """The ``k`` largest eigenvalues, descending (``"LA"`` or ``"both"``)."""
        if self.which == "SA":
            raise SharpdimError("this result holds the smallest eigenvalues: use which='LA'/'both'")
        return self.eigenvalues[: self.k]

    @property
    def smallest(self) -> torch.Tensor:
        """The ``k`` smallest eigenvalues, ascending (``"SA"`` or ``"both"``)."""
        if self.which == "LA":
            raise SharpdimError("this result holds the largest eigenvalues: use which='SA'/'both'")
        if self.which == "SA":
            return self.eigenvalues
        return torch.flip(self.eigenvalues[-self.k :], [0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "which": self.which,
            "k": self.k,
            "tol": self.tol,
            "eigenvalues": self.eigenvalues.tolist(),
            "converged": self.converged.tolist(),
            "residuals": self.residuals.tolist(),
            "num_matvecs": self.num_matvecs,
            "num_restarts": self.num_restarts,
        }


def tridiagonal_steps(op: LinearOperator, num_steps: Any, v0: Any) -> tuple[int, torch.Tensor]:
    """Validate a tridiagonalization's arguments: the number of steps, ``min(num_steps, n)``,
    and ``v0`` as a float64 tensor (an integer tensor, array or list is converted)."""
    n = op.num_params
    steps = check_count(num_steps, "num_steps", hint="a number of Lanczos steps, e.g. 30")
    start = _as_start(v0, n, 1)
    if start.ndim != 1 or start.shape[0] != n:
        raise SharpdimError(f"v0 has shape {tuple(start.shape)}: pass a vector of shape ({n},)")
    start = start if start.is_floating_point() else start.to(torch.float64)
    if not bool(torch.isfinite(start).all()) or float(start.norm()) == 0:
        raise SharpdimError("the start vector is zero or not finite: pass a finite v0 != 0")
    return min(steps, n), start


def lanczos_tridiagonal(
    H: OperatorLike,
    num_steps: int,
    v0: torch.Tensor,
    *,
    return_basis: bool = False,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``num_steps`` Lanczos steps from ``v0`` with full reorthogonalization.

    Returns ``(alpha, beta, Q)``: the diagonal ``alpha`` (m,) and off-diagonal ``beta``
    (m-1,) of the tridiagonal ``T_m = Q^T H Q`` (float64) and, with ``return_basis``, the
    orthonormal basis ``Q`` as rows ``(m, n)`` (first row ``v0 / ||v0||``). The process stops
    early, with ``m < num_steps``, when the Krylov space of ``v0`` is invariant (then ``T_m``
    holds the whole spectral measure of ``v0``) or when ``m = n``. ``workspace``: optional
    ``(>= num_steps + 1, n)`` tensor of the basis dtype (see :func:`basis_storage`) to hold
    the basis instead of a fresh allocation.
    """
    op = as_operator(H)
    return_basis = check_flag(return_basis, "return_basis")
    steps, v0 = tridiagonal_steps(op, num_steps, v0)
    basis = KrylovBasis(op, steps + 1, v0, None, restart_on_breakdown=False, workspace=workspace)
    while basis.m < steps and basis.nb > 0:
        basis.step()
    m = basis.m
    t = basis.T[:m, :m]
    alpha = t.diagonal().clone()
    beta = t.diagonal(-1).clone()
    return alpha, beta, basis.V[:m].to(torch.float64) if return_basis else None


def _priority(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of ``theta`` (ascending) from most to least wanted."""
    m = theta.numel()
    up = torch.arange(m, device=theta.device)
    if which == "SA":
        return up
    down = torch.flip(up, [0])
    if which == "LA":
        return down
    order = torch.stack([down, up], 1).reshape(-1)  # top, bottom, 2nd top, 2nd bottom, ...
    seen: set[int] = set()
    out = []
    for i in order.tolist():
        if i not in seen:
            seen.add(i)
            out.append(i)
    return torch.tensor(out, device=theta.device)


def _leading_runs(ok: torch.Tensor, which: str, k: int) -> torch.Tensor:
    """``ok`` (in the result's order) kept only while every value before it at its end of the
    spectrum is ok too: the i-th largest is certified only once the i - 1 above it are
    (a converged Ritz value below an unconverged one may have eigenvalues missing above it;
    with as few Ritz values as wanted, the far end's extreme converges first)."""
    if which != "both":
        return _run(ok)
    top = min(k, ok.numel())
    return torch.cat([_run(ok[:top]), _run(ok[top:].flip(0)).flip(0)])


def _run(flags: torch.Tensor) -> torch.Tensor:
    """``flags`` up to its first ``False``, ``False`` from there on."""
    return torch.cumprod(flags.to(torch.int64), 0).bool()


def _round_state(
    basis: KrylovBasis,
    theta: torch.Tensor,
    which: str,
    k: int,
    tol: float,
    floor: float,
    ask_blocked: bool,
) -> tuple[bool, bool]:
    """``(settled, blocked)``: whether further rounds after an invariant subspace can no longer
    change the answer, and, if not (and ``ask_blocked``), whether only copies the current round
    found and locked keep it open (then the next round must start by hand: thick restarts keep
    the round from the breakdown that would start it).

    From a random start, an invariant Krylov space holds one vector of every eigenspace, so
    its orthogonal complement holds only further copies of eigenvalues already found; the
    Krylov sequence of a random vector there (a *round*) finds copies of a subset of them, and
    so does every later round. Small residuals alone would stop right after the breakdown and
    miss multiplicities (e.g. a rank-deficient Hessian's zeros for ``"SA"``). So once a round
    has begun, its most extreme Ritz value at each wanted end must have converged and be no
    more extreme than the ``k``-th wanted value: then no later copy can enter. A round that
    has itself ended in an invariant subspace is exact and decides before the next one starts.
    At a thick restart the converged Ritz vectors are locked: the round goes on in their
    complement, and those it found itself still count as its own (else a copy it found, once
    locked, would no longer keep it from settling on the interior values that follow).
    """
    if basis.rounds == 0 or basis.m >= basis.n:  # (a basis of the whole space is exact)
        return True, False
    judged = basis.rounds
    rows = basis.round_rows(judged)
    if rows.numel() == 0:  # the new round has no products yet: judge the complete one before
        judged -= 1
        rows = basis.round_rows(judged)
    if rows.numel() == 0:
        return False, False
    if _rows_settled(basis, rows, theta, which, k, tol, floor):
        return True, False
    if not ask_blocked or judged != basis.rounds:
        return False, False
    live = rows[basis.round_of[rows] >= 0]
    return False, live.numel() == 0 or _rows_settled(basis, live, theta, which, k, tol, floor)


def _rows_settled(
    basis: KrylovBasis,
    rows: torch.Tensor,
    theta: torch.Tensor,
    which: str,
    k: int,
    tol: float,
    floor: float,
) -> bool:
    """The round test of :func:`_round_state` on the Ritz pairs of ``rows`` alone."""
    m, nb = basis.m, basis.nb
    t_round, s_round = torch.linalg.eigh(basis.T[rows][:, rows])
    # residuals through every other row and the pending block: the earlier rounds' rows are
    # invariant but for rounding, unless only part of a block broke down (its other rows go on
    # with the earlier sequence and stay coupled to it); after a round started by hand beside
    # a sequence that goes on, the earlier rows are not invariant, and rounds are judged
    # through the pending block alone
    coupling = basis.T[m : m + nb, rows]
    if not basis.loose:
        earlier = torch.ones(m, dtype=torch.bool, device=rows.device)
        earlier[rows] = False
        c = basis.T[:m][earlier][:, rows]
        # (entries below the breakdown level are the rounding of a vanished direction's
        # products, e.g. 1e-13 ||H|| for a null vector's: zero)
        c = c.masked_fill(c.abs() <= breakdown_level(basis.dtype) * basis.hnorm, 0.0)
        coupling = torch.cat([coupling, c])
    res = (coupling @ s_round).norm(dim=0)

    def settled(i: int, kth: float, sign: float) -> bool:
        top = float(t_round[i])
        return float(res[i]) <= max(tol * abs(top), floor) and sign * (top - kth) <= max(
            tol * abs(kth), floor
        )

    ok = True
    if which in ("LA", "both"):
        ok = ok and settled(-1, float(theta[-k]), 1.0)
    if which in ("SA", "both"):
        ok = ok and settled(0, float(theta[k - 1]), -1.0)
    return ok


def _zero_needs_round(basis: KrylovBasis, wanted: torch.Tensor, zero: float) -> bool:
    """Whether the first Krylov sequence has converged to a (numerical) zero among the wanted
    values: on a rank-deficient Hessian mostly a multiple eigenvalue that one sequence sees
    only once, while its Krylov space need not become invariant to rounding (no breakdown
    starts a round), so a round is started by hand. Later rounds start on breakdowns only: a
    round started by hand leaves the earlier rows non-invariant, so only the large null space
    of a rank-deficient operator justifies it."""
    if basis.m >= basis.n:  # a basis of the whole space: exact
        return False
    return basis.rounds == 0 and bool((wanted.abs() <= zero).any())


def _check(
    op: LinearOperator, k: Any, which: str, tol: Any, block_size: Any
) -> tuple[int, float, int]:
    """The checked ``(k, tol, block_size)`` as Python numbers."""
    n = op.num_params
    if which not in ("LA", "SA", "both"):
        raise SharpdimError(
            f"unknown which={which!r}: use 'LA' (largest algebraic), 'SA' (smallest) or 'both'"
        )
    k = check_count(k, "k", hint=f"the number of eigenvalues wanted, at most {n}")
    if k > n:
        raise SharpdimError(
            f"k={k} exceeds the dimension {n} of the operator: ask for at most {n} eigenvalues"
        )
    tol = check_number(tol, "tol", "> 0", "1e-6")
    block_size = check_count(block_size, "block_size", hint=f"a block size in [1, {n}]")
    if block_size > n:
        raise SharpdimError(f"block_size must be in [1, {n}], got {block_size}")
    return k, tol, block_size


def _as_start(v0: Any, n: int, b: int) -> torch.Tensor:
    """``v0`` as a real tensor (numpy arrays and lists are converted; complex is refused)."""
    try:  # (a reversed or big-endian array in a layout torch can wrap)
        start = torch.as_tensor(native_array(v0) if isinstance(v0, np.ndarray) else v0)
    except (TypeError, ValueError, RuntimeError):
        start = None
    if start is None or start.is_complex() or start.dtype == torch.bool:
        what = type(v0).__name__ if start is None else f"a {start.dtype} tensor"
        raise SharpdimError(
            f"v0 must be a real tensor of shape ({n},) or ({n}, {b}), got {what}: pass "
            "a float tensor or numpy array"
        )
    if start.is_floating_point() and start.numel() and bool(torch.isfinite(start).all()):
        # its direction is what counts: 1e200 or 1e-200 entries had norms of inf or 0, and
        # the start was replaced or refused; outside a window that float32 bases and norms
        # take (entries beyond ~1e19 or below ~1e-19 square out of float32's range) it is
        # scaled in float64 by a power of two, which is exact
        top = start.detach().abs().amax().double()
        if top > 0 and not _START_WINDOW[0] < top < _START_WINDOW[1]:
            start = torch.ldexp(start.double(), -torch.frexp(top).exponent)
    return start


_START_WINDOW = (2.0**-60, 2.0**60)


def lanczos_eigenvalues(
    H: OperatorLike,
    k: int = 5,
    which: Which = "LA",
    *,
    tol: float = 1e-6,
    max_iter: int | None = None,
    generator: torch.Generator | None = None,
    v0: torch.Tensor | None = None,
    block_size: int = 1,
    max_basis: int | None = None,
    return_eigenvectors: bool = False,
) -> LanczosResult:
    """The ``k`` largest and/or smallest algebraic eigenvalues of a symmetric operator.

    Args:
        H: a dense symmetric tensor or a :class:`LinearOperator` (e.g. ``HessianOperator``).
        k: how many eigenvalues at each wanted end (``1 <= k <= n``).
        which: ``"LA"`` largest algebraic (the sharpness), ``"SA"`` smallest, ``"both"``.
        tol: relative residual tolerance, ``||H y - theta y|| <= tol |theta|`` per eigenvalue.
        max_iter: at most this many operator products (default ``max(1000, 10 max_basis)``);
            eigenvalues not converged by then are reported with ``converged=False``.
        generator: source of the random start vector (default: a generator seeded with 0).
        v0: start vector ``(n,)`` (with ``block_size > 1``: the block's first column, the
            others random) or block ``(n, block_size)`` instead of a random one. The answer
            is certified only for eigenvectors the start has a part on: a ``v0`` that is (to
            ``tol``) an eigenvector returns its eigenvalue, converged, whatever lies beyond;
            to warm-start, add a random part (as :class:`~sharpdim.training.EoSMonitor` does).
        block_size: vectors per Krylov block; use ``>= m`` to resolve multiplicity ``m``.
        max_basis: basis vectors kept before a thick restart
            (default ``min(n, max(2 k_wanted + 40, 80))``; memory ``n max_basis`` values of
            the operator's dtype: 4 or 8 bytes each).
        return_eigenvectors: also return the Ritz vectors (float64 columns).

    Returns:
        :class:`LanczosResult`.

    Example:
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> [round(x, 6) for x in lanczos_eigenvalues(A, k=3, which="LA").eigenvalues.tolist()]
        [100.0, 99.0, 98.0]
    """
    op = as_operator(H)
    return_eigenvectors = check_flag(return_eigenvectors, "return_eigenvectors")
    k, tol, block_size = _check(op, k, which, tol, block_size)
    n, b = op.num_params, block_size
    wanted = min(2 * k, n) if which == "both" else k
    if max_basis is None:
        max_basis = max(2 * wanted + 40, 80)
    max_basis = min(check_count(max_basis, "max_basis", hint="a basis size, or None"), n)
    if max_basis < min(n, wanted + 2 * b):
        raise SharpdimError(
            f"max_basis={max_basis} is too small for {wanted} eigenvalues with block_size={b}: "
            f"use at least {wanted + 2 * b}"
        )
    budget = (
        max(1000, 10 * max_basis)
        if max_iter is None
        else check_count(max_iter, "max_iter", hint="a number of products, or None")
    )
    # whole blocks (a block past the budget is not taken), but no more than n: the block that
    # reaches the dimension is cut to it
    least = min(-(-max(wanted, b) // b) * b, n)
    if budget < least:
        raise SharpdimError(
            f"max_iter={max_iter} products cannot give {wanted} eigenvalues with blocks of "
            f"{b}: use max_iter >= {least} (or leave it unset)"
        )
    gen = default_generator(generator)
    if v0 is None:
        start = torch.randn(n, b, generator=gen, dtype=torch.float64)
    else:
        v0 = _as_start(v0, n, b)
        if v0.shape not in ((n,), (n, b)):
            raise SharpdimError(
                f"v0 has shape {tuple(v0.shape)}: pass a tensor of shape ({n},) or ({n}, {b})"
            )
        start = v0.reshape(n, -1).to(torch.float64)
        if start.shape[1] < b:  # one vector for a block: the other columns are random
            extra = torch.randn(n, b - start.shape[1], generator=gen, dtype=torch.float64)
            start = torch.cat([start.cpu(), extra], 1)
    basis = KrylovBasis(op, max_basis + b, start, gen, restart_on_breakdown=True)
    eps = torch.finfo(op.dtype).eps if op.dtype.is_floating_point else 2.0**-52
    restarts = hand_round = hand_limit = lock_round = lock_limit = 0
    floor_round = False
    while True:
        basis.step()
        theta, s, res = basis.ritz()
        m = basis.m
        prio = _priority(theta, which)
        idx = prio[: min(wanted, m)]
        hmax = float(theta.abs().max()) if m else 0.0
        # accuracy of one product, or the longest coupling a breakdown dropped (the Ritz
        # values are exact for an operator that far from H)
        floor = max(8 * eps * hmax, basis.dropped)
        ok = res[idx] <= torch.clamp(tol * theta[idx].abs(), min=floor)
        zero = max(floor, eps**0.5 * hmax)  # a numerical zero
        more = _zero_needs_round(basis, theta[idx], zero)
        # a round started by hand may take as many products again as came before it; then
        # (e.g. thick restarts keep trimming it) the first sequence's answer stands
        # (a round started because the basis is invariant only to the floor, not to tol,
        # also gives up where the budget ends: the first sequence's answer then stands)
        spent = basis.matvecs + basis.nb > budget
        gave_up = (
            hand_round > 0
            and basis.rounds == hand_round
            and (basis.matvecs >= hand_limit or (floor_round and spent))
        )
        # a round started beside one kept open by its own locked copies gets as many products
        # again as came before it; thick restarts that keep trimming it (a small max_basis
        # full of locked vectors) leave the copies uncertified: the values are flagged
        stuck = lock_round > 0 and basis.rounds == lock_round and basis.matvecs >= lock_limit
        all_ok = idx.numel() == wanted and bool(ok.all())
        round_ok, blocked = (
            (True, False)
            if idx.numel() < k
            else _round_state(basis, theta, which, k, tol, floor, ask_blocked=all_ok)
        )
        # every Ritz residual as small as the wanted values need: the basis is invariant to the
        # accuracy asked for, though its next direction was not short enough to count as a
        # breakdown (a matrix with 20-30 distinct values leaves 1e-10 to 1e-7 ||H|| of
        # rounding there), so a round must start by hand; in the first sequence only (a
        # float32 bulk a few floors wide keeps every residual that small without being
        # invariant, and a round started at every step grew the block until max_iter)
        # (not where a wanted value is a numerical zero: that round is started by `more`)
        smallest = float(theta[idx].abs().min()) if all_ok else 0.0
        # (with 4 floors as the least: the floor is what float32 products leave, and at
        # tol <= 1e-6 no float32 residual reaches tol * smallest, so a repeated value was missed)
        near = max(tol * smallest, 4 * floor)
        invariant = all_ok and m < n and smallest > zero and float(res.max()) <= near
        to_floor = invariant and float(res.max()) > tol * smallest  # (not to tol)
        unseen = invariant and basis.rounds == 0 and not (to_floor and spent)
        settled = not more and not unseen and (gave_up or round_ok)
        if (all_ok and settled) or stuck or basis.nb == 0 or spent:
            break
        room = basis.matvecs + basis.nb + 1 <= budget  # (a round grows the next block by one)
        if all_ok and more and room and basis.add_round(loose=True):
            hand_round, hand_limit, floor_round = basis.rounds, 2 * basis.matvecs, False
        elif (unseen or blocked) and room and basis.add_round(loose=blocked):
            if blocked:  # (its sequence goes on beside the new one, whose products are bounded)
                lock_round, lock_limit = basis.rounds, 2 * basis.matvecs
            elif to_floor:  # (bounded like a round started by hand)
                hand_round, hand_limit, floor_round = basis.rounds, 2 * basis.matvecs, True
        full = m + 2 * basis.nb > basis.V.shape[0]
        if full and m + basis.nb < n:  # thick restart (unless the next step spans the space)
            keep = min(m - basis.nb, wanted + max(basis.nb, (m - wanted) // 2))
            kept = prio[:keep]
            locked = res[kept] <= torch.clamp(tol * theta[kept].abs(), min=floor)
            basis.restart(s[:, kept], theta[kept], locked)
            restarts += 1
    order = torch.argsort(theta[idx], descending=which != "SA")
    idx = idx[order]
    vecs = None
    if return_eigenvectors:
        vecs = (s[:, idx].T.to(basis.dtype) @ basis.V[:m]).T.to(torch.float64).contiguous()
    return LanczosResult(
        eigenvalues=theta[idx].cpu(),
        converged=(_leading_runs(ok[order], which, k) & settled).cpu(),
        residuals=res[idx].cpu(),
        eigenvectors=vecs,
        num_matvecs=basis.matvecs,
        num_restarts=restarts,
        which=which,
        k=k,
        tol=float(tol),
    )
