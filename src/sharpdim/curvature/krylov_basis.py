"""The orthonormal (block) Krylov basis behind :mod:`sharpdim.curvature.lanczos`.

Rows of ``V`` (in the operator's dtype, float32 or float64) with the projected matrix ``T``
(float64): each step multiplies the pending block by ``H``, orthogonalizes the products against
the vectors coupled to it (the three-term recurrence, or the kept Ritz vectors after a thick
restart) and then against the whole basis (classical Gram–Schmidt, a second pass only when the
DGKS criterion asks), and records the coefficients in ``T``. A direction that vanishes
(shorter than :func:`breakdown_level` of ``||H||``: an invariant subspace) is replaced by a
random one, which starts a new *round* (see :func:`sharpdim.curvature.lanczos.lanczos_eigenvalues`).
"""

from __future__ import annotations

import torch

from sharpdim.curvature.operator import LinearOperator
from sharpdim.errors import SharpdimError

_BREAKDOWN = 1e-10
"""A new direction shorter than this fraction of ``||H||`` marks an invariant subspace."""
_NOISE_ULPS = 8
"""... or shorter than this many machine epsilons of the basis dtype times ``||H||``: the
convergence floor of :func:`~sharpdim.curvature.lanczos.lanczos_eigenvalues`."""


_NORM_RANGE = (1e-15, 1e15)
"""Norms in this range are exact to rounding in float32's unscaled sum of squares."""


def row_norms(w: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``w`` (of ``w`` itself if 1-D), in ``w``'s dtype.

    torch sums float32 squares unscaled: a norm above ~1e19 overflows to ``inf`` and one
    below ~1e-19 loses digits to subnormal squares (a basis of an operator with ``||H||``
    of 1e20 or 1e-22 was normalized wrongly and Lanczos returned wrong values, marked
    converged). Norms outside :data:`_NORM_RANGE` are recomputed in float64; float64 norms
    outside :data:`_NORM_RANGE_64` (an operator with ``||H||`` of 1e160) are scaled.
    """
    norms = torch.linalg.vector_norm(w, dim=-1)
    if w.dtype == torch.float32:
        lo, hi = _NORM_RANGE
        if not bool(((norms > lo) & (norms < hi)).all()):
            norms = torch.linalg.vector_norm(w, dim=-1, dtype=torch.float64).to(w.dtype)
    elif w.dtype == torch.float64:  # (the same unscaled sum: 1e300 entries gave inf)
        lo, hi = _NORM_RANGE_64
        if not bool(((norms > lo) & (norms < hi)).all()):
            top = w.abs().amax(dim=-1, keepdim=True)
            usable = (top > 0) & torch.isfinite(top)  # (an inf entry keeps its inf norm)
            top = torch.where(usable, top, torch.ones_like(top))
            scaled = top.squeeze(-1) * torch.linalg.vector_norm(w / top, dim=-1)
            norms = torch.where(usable.squeeze(-1), scaled, norms)
    return norms


_NORM_RANGE_64 = (1e-140, 1e140)
"""Norms in this range are exact to rounding in float64's unscaled sum of squares (for up to
~1e16 entries); outside it each row is scaled by its largest entry first."""


def _copy_columns_to_rows(rows: torch.Tensor, columns: torch.Tensor) -> None:
    """``rows.copy_(columns.T)``, one column at a time.

    torch copies a transposed contiguous ``(n, b)`` block through a generic strided kernel:
    1.0 ms for one column of 94,218 floats against 34 us column by column, 4x slower at
    b = 2-8 (2-core CI CPU, torch 2.13). A matrix-free operator that returns a fresh
    contiguous block spent 40% of its Lanczos time there (``docs/benchmarks.md``).
    """
    for j in range(columns.shape[1]):
        rows[j].copy_(columns[:, j])


def breakdown_level(dtype: torch.dtype) -> float:
    """A new Lanczos direction shorter than this fraction of ``||H||`` is an invariant subspace:
    ``max(1e-10, 8 eps)`` of the basis dtype. In float32 the rounding noise of one product is
    far above ``1e-10 ||H||``, and a noise direction would pass for a real one, hiding the
    multiplicities that the rounds of :func:`~sharpdim.curvature.lanczos.lanczos_eigenvalues`
    find; ``8 eps`` is the solver's convergence floor, so the coupling a breakdown drops
    (recorded in :attr:`KrylovBasis.dropped`) moves no Ritz value by more than the floor (at
    ``64 eps`` the steps inside a narrow float32 bulk were cut as breakdowns, and values
    2-4 floors off were marked converged)."""
    return max(_BREAKDOWN, _NOISE_ULPS * torch.finfo(dtype).eps)


def end_level(dtype: torch.dtype) -> float:
    """A tridiagonalization (SLQ) ends where its next direction is shorter than this fraction
    of ``||H||``: ``max(1e-10, eps)``, one rounding unit. It starts no rounds, so a noise
    direction costs only a node of negligible weight, while ending early at
    :func:`breakdown_level` cut float32 runs on a Hessian's narrow bulk (width ~1e-5 of its
    top eigenvalue) after 5 of 40 steps, its mass squeezed into two nodes."""
    return max(_BREAKDOWN, torch.finfo(dtype).eps)


def basis_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the Krylov basis for an operator of ``dtype`` (float32 or float64)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float64


def basis_storage(
    op: LinearOperator, rows: int, workspace: torch.Tensor | None = None
) -> torch.Tensor:
    """Room for ``rows`` basis vectors of ``op``: a view of ``workspace`` when it fits.

    Reusing one workspace across Lanczos runs (as :func:`~sharpdim.curvature.slq.slq_spectrum`
    does) saves allocating and first-touching ``rows x n`` floats per run, which on large models
    costs as much as several products. The contents are never read before being written.
    """
    dtype, n = basis_dtype(op.dtype), op.num_params
    if (
        workspace is not None
        and workspace.dtype == dtype
        and workspace.device == op.device
        and workspace.ndim == 2
        and workspace.shape[0] >= rows
        and workspace.shape[1] == n
    ):
        return workspace[:rows]
    return torch.empty(rows, n, dtype=dtype, device=op.device)


class KrylovBasis:
    """Orthonormal (block) Krylov basis (operator dtype) with its projected matrix (float64).

    Rows ``0..m-1`` of ``V`` are *processed* vectors (their products are projected into
    ``T[:m, :m]``); rows ``m..m+nb-1`` hold the pending block, whose coupling to the processed
    ones is ``T[m:m+nb, :m]``; so ``H V_m^T = V_m^T T_m + V_pend^T T[m:m+nb, :m]``.
    """

    def __init__(
        self,
        op: LinearOperator,
        capacity: int,
        start: torch.Tensor,
        generator: torch.Generator | None,
        restart_on_breakdown: bool,
        workspace: torch.Tensor | None = None,
    ) -> None:
        self.op, self.n = op, op.num_params
        self.gen, self.restart_on_breakdown = generator, restart_on_breakdown
        dev = op.device
        self.dtype = basis_dtype(op.dtype)
        self.V = basis_storage(op, capacity, workspace)
        self.T = torch.zeros(capacity, capacity, dtype=torch.float64, device=dev)
        self.m, self.nb, self.matvecs = 0, 0, 0
        self.fills, self.rounds, self.hnorm = 0, 0, 0.0
        self.level = breakdown_level(self.dtype) if restart_on_breakdown else end_level(self.dtype)
        """New directions shorter than ``level * hnorm`` vanish (see :func:`breakdown_level`)."""
        self.dropped = 0.0
        """The longest direction dropped as vanished so far (a coupling left out of ``T``:
        the Ritz values are those of an operator within it of ``H``)."""
        self.loose = False
        """Whether a round was started by hand beside a Krylov sequence that goes on (see
        :meth:`add_round`): the earlier rows are then not invariant, and every later round is
        judged through the pending block alone."""
        self.round_of = torch.zeros(capacity, dtype=torch.long, device=dev)
        """Per row, its *round*: 0 for the Krylov sequence of the start block, ``r`` for that
        of the random block that replaced the ``r``-th invariant subspace (see
        :func:`_round_state`; only needed to decide when to stop); a converged Ritz vector
        locked at a restart: ``-(r + 2)`` if round ``r`` found it, else ``-1``."""
        block = start.to(dtype=self.dtype, device=dev).reshape(self.n, -1).T.contiguous()
        if not bool(torch.isfinite(block).all()) or float(row_norms(block).max()) == 0:
            raise SharpdimError("the start vector is zero or not finite: pass a finite v0 != 0")
        floor = _BREAKDOWN * row_norms(block)
        q, _ = self._orthonormalize(block.clone(), self.V[:0], random_fill=True, floor=floor)
        self.V[: q.shape[0]] = q
        self.nb = q.shape[0]
        self.dropped = 0.0  # (a dependent start column is no coupling)

    # -- orthogonalization ----------------------------------------------------------------
    @staticmethod
    def _project(w: torch.Tensor, basis: torch.Tensor, *, passes: int = 2) -> torch.Tensor:
        """Remove the components of the rows of ``w`` along ``basis``; return the coefficients.

        Classical Gram–Schmidt with matrix products, ``passes`` times, plus one more pass when
        the last one shortened a row below ``1/sqrt(2)`` (the DGKS criterion: a big removal
        leaves rounding errors of the size of what was removed).
        """
        coef = torch.zeros(w.shape[0], basis.shape[0], dtype=w.dtype, device=w.device)
        if basis.shape[0] == 0:
            return coef
        for i in range(passes + 1):
            before = row_norms(w)
            c = torch.mm(w, basis.T)
            w.addmm_(c, basis, alpha=-1.0)
            coef += c
            if i + 1 >= passes and not bool((row_norms(w) < 0.7071 * before).any()):
                break
        return coef

    def _random_row(self) -> torch.Tensor:
        row = torch.randn(self.n, generator=self.gen, dtype=torch.float64)
        return row.to(dtype=self.dtype, device=self.V.device)

    def _orthonormalize(
        self, w: torch.Tensor, basis: torch.Tensor, *, random_fill: bool, floor: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Orthonormalize the rows of ``w`` (already orthogonal to ``basis``) among themselves.

        Returns ``(Q, R)`` with ``w_i = sum_l R[l, i] q_l``. A row no longer than ``floor[i]``
        (it vanished: an invariant subspace) is replaced by a random direction with zero coupling
        when ``random_fill`` and the basis has room, else dropped; rows beyond dimension ``n``
        are dropped.
        """
        room = basis.shape[0] < self.n
        if w.shape[0] == 1 and room:
            length = row_norms(w)
            if float(length) > float(floor[0]):  # (in place: callers pass a scratch w)
                return w.div_(length[:, None]), length.reshape(1, 1)
        rows: list[torch.Tensor] = []
        coefs: list[torch.Tensor] = []
        for i in range(w.shape[0]):
            x = w[i : i + 1].clone()
            prev = torch.stack(rows) if rows else x[:0]
            before = float(row_norms(x))
            coef = self._project(x, prev)[0]
            norm = float(row_norms(x))
            if prev.shape[0] and float(floor[i]) < norm < 0.7071 * before:
                # cancellation: what rounding left along the basis (~eps ||x||) would be blown
                # up by 1 / norm (float32 block runs lost orthogonality, Ritz values outside
                # the spectrum); project it out again (those coefficients are rounding)
                again = self._project(x, torch.cat([basis, prev]))[0]
                coef = coef + again[basis.shape[0] :]
                norm = float(row_norms(x))
            col = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
            col[: coef.numel()] = coef
            if basis.shape[0] + len(rows) >= self.n:
                coefs.append(col)
                continue
            if norm > float(floor[i]) and norm > 0:
                rows.append((x / norm)[0])
                col[len(rows) - 1] = norm
            else:
                self.dropped = max(self.dropped, norm)  # (a coupling left out of T)
                if random_fill:
                    self.fills += 1
                    r = self._random_row()[None]
                    self._project(r, torch.cat([basis, prev]))
                    rows.append((r / row_norms(r))[0])
            coefs.append(col)
        q = torch.stack(rows) if rows else w[:0]
        return q, torch.stack(coefs, 1)[: q.shape[0]]

    # -- one block step -------------------------------------------------------------------
    def step(self) -> None:
        """Multiply the pending block by ``H``, project it, and make the next pending block."""
        m, nb = self.m, self.nb
        x = self.V[m : m + nb]
        hx = self.op @ x.T.to(self.op.dtype)
        self.matvecs += nb
        if m + 2 * nb <= self.V.shape[0]:  # work in the rows the next block will occupy
            w = self.V[m + nb : m + 2 * nb]
        else:
            w = torch.empty(nb, self.n, dtype=self.dtype, device=hx.device)
        _copy_columns_to_rows(w, hx)
        # a direction vanishes relative to ||H||, estimated by the largest ||H x|| so far (a
        # null vector's product is rounding noise of its own size, not a new direction), below
        # breakdown_level of it
        self.hnorm = max(self.hnorm, float(row_norms(w).max()))
        floor = torch.full((nb,), self.hnorm * self.level, dtype=w.dtype, device=w.device)
        # coef[i, j] = v_j . H x_i: first against the vectors coupled to x (the three-term
        # recurrence, or the kept Ritz vectors after a restart), then one full pass over the
        # basis (a second one only if the DGKS criterion asks for it)
        # (the coupled vectors and x form one contiguous run of rows: the previous block, or
        # the kept Ritz vectors right after a restart, so a view of V serves without a copy)
        coupled = torch.nonzero(self.T[m : m + nb, :m].abs().sum(0)).reshape(-1)
        lo = int(coupled.min()) if coupled.numel() else m
        coef = torch.zeros(nb, m + nb, dtype=self.dtype, device=w.device)
        coef[:, lo:] = self._project(w, self.V[lo : m + nb], passes=1)
        coef += self._project(w, self.V[: m + nb], passes=1)
        self.T[: m + nb, m : m + nb] = coef.T
        self.T[m : m + nb, : m + nb] = coef
        diag = self.T[m : m + nb, m : m + nb]
        self.T[m : m + nb, m : m + nb] = (diag + diag.T) / 2
        self.m = m + nb
        self.fills = 0
        q, r = self._orthonormalize(
            w, self.V[: self.m], random_fill=self.restart_on_breakdown, floor=floor
        )
        q, r = q[: self.V.shape[0] - self.m], r[: self.V.shape[0] - self.m]
        self.nb = q.shape[0]
        if self.nb == 0:
            return
        if self.fills:  # a direction vanished: the new block starts a round
            self.rounds += 1
        self.round_of[self.m : self.m + self.nb] = self.rounds
        if q.data_ptr() != self.V[self.m].data_ptr():  # (already in place on the fast path)
            self.V[self.m : self.m + self.nb] = q
        self.T[self.m : self.m + self.nb, : self.m] = 0
        self.T[self.m : self.m + self.nb, m : self.m] = r  # q_l . H x_i
        self.T[: self.m, self.m : self.m + self.nb] = self.T[self.m : self.m + self.nb, : self.m].T

    def add_round(self, loose: bool = False) -> bool:
        """Start a round without a breakdown: add a random direction, orthogonal to the basis
        and the pending block and with zero coupling, to the pending block (which then grows
        by one). ``False`` (nothing done) when the basis has no room for it. ``loose``: the
        earlier rows are far from invariant (a numerical zero's round, or one beside a round
        kept open by its locked copies): sets :attr:`loose`."""
        row = self.m + self.nb
        if row + 1 > min(self.n, self.V.shape[0]):
            return False
        r = self._random_row()[None]
        self._project(r, self.V[:row])
        norm = float(row_norms(r))
        if not norm > 0:
            return False
        self.V[row] = r[0] / norm
        self.T[row, :] = 0
        self.T[:, row] = 0
        self.rounds += 1
        self.round_of[row] = self.rounds
        self.loose |= loose
        self.nb += 1
        return True

    def round_rows(self, r: int) -> torch.Tensor:
        """Indices of the processed rows of round ``r``, locked ones included."""
        own = self.round_of[: self.m]
        return torch.nonzero((own == r) | (own == -(r + 2))).reshape(-1)

    # -- Ritz pairs and restart -----------------------------------------------------------
    def ritz(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ritz values (ascending), vectors in the basis coordinates, residual norms."""
        m, nb = self.m, self.nb
        theta, s = torch.linalg.eigh(self.T[:m, :m])
        if nb == 0:
            res = torch.zeros(m, dtype=torch.float64, device=theta.device)
        else:
            res = (self.T[m : m + nb, :m] @ s).norm(dim=0)
        return theta, s, res

    def restart(
        self, s_keep: torch.Tensor, theta_keep: torch.Tensor, locked: torch.Tensor | None = None
    ) -> None:
        """Compress the basis to the Ritz vectors ``V^T s_keep`` plus the pending block.

        ``locked`` marks kept Ritz vectors that have converged: after an invariant subspace
        they are locked, and the current round goes on in their complement; one that lies
        mostly (more than half its weight) in the current round's rows stays that round's
        (``-(rounds + 2)``), others are marked ``-1``."""
        m, nb, k = self.m, self.nb, s_keep.shape[1]
        y = s_keep.T.to(self.dtype) @ self.V[:m]
        pending = self.V[m : m + nb].clone()
        coupling = self.T[m : m + nb, :m] @ s_keep
        self.T.zero_()  # (rows of V past the pending block are written before they are read)
        if self.rounds:
            own = self.round_rows(self.rounds)
            in_round = s_keep[own].pow(2).sum(0) > 0.5
            self.round_of[: k + nb] = self.rounds
            if locked is not None:
                self.round_of[:k][locked] = -1
                self.round_of[:k][locked & in_round] = -(self.rounds + 2)
        self.V[:k] = y
        self.V[k : k + nb] = pending
        self.T[:k, :k] = torch.diag(theta_keep)
        self.T[k : k + nb, :k] = coupling
        self.T[:k, k : k + nb] = coupling.T
        self.m = k
