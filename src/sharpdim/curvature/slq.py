"""Stochastic Lanczos quadrature (SLQ): a discrete estimate of a spectral density.

For a symmetric ``H`` (n x n) with eigenpairs ``(lambda_i, u_i)`` and a unit vector ``v``, the
spectral measure ``mu_v = sum_i (u_i^T v)^2 delta_{lambda_i}`` satisfies
``v^T f(H) v = int f d mu_v``. ``m`` Lanczos steps from ``v`` give the tridiagonal ``T_m`` with
eigenpairs ``(theta_l, U_{:, l})``; the Gauss quadrature rule with nodes ``theta_l`` and weights
``tau_l = (U_{1l})^2`` (summing to 1) integrates every polynomial of degree ``<= 2m - 1``
exactly against ``mu_v`` (Golub & Meurant, *Matrices, Moments and Quadrature*, 2010).

With a Rademacher probe ``z`` (``||z||^2 = n``) and ``v = z / sqrt(n)``, ``E[mu_v]`` is the
spectral density ``phi = (1/n) sum_i delta_{lambda_i}``; averaging the rules of ``R``
independent runs estimates it (Ubaru, Chen & Saad, SIAM J. Matrix Anal. Appl. 38, 2017;
Ghorbani, Krishnan & Xiao, ICML 2019; the SLQ step of Tuci et al., arXiv 2604.19740, Sec. 5).
So ``sum_l tau_l theta_l^p`` equals ``z^T H^p z / n`` — the Hutchinson estimate of
``(1/n) tr H^p`` with the same probe — exactly (to rounding) for ``p <= 2m - 1``.

Each run may use a different operator, e.g. the Hessian of a fresh minibatch, through a factory
``factory(run_index, generator)`` called once per run; the operator is fixed within a run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, default_generator
from sharpdim.curvature.krylov_basis import basis_storage
from sharpdim.curvature.lanczos import lanczos_tridiagonal
from sharpdim.curvature.operator import LinearOperator, OperatorLike, as_operator
from sharpdim.curvature.partial_reorth import (
    lanczos_tridiagonal_partial,
    lanczos_tridiagonal_plain,
)
from sharpdim.errors import SharpdimError

_TRIDIAGONALIZATIONS = {
    "full": lanczos_tridiagonal,
    "partial": lanczos_tridiagonal_partial,
    "none": lanczos_tridiagonal_plain,
}
REORTHOGONALIZATIONS = tuple(_TRIDIAGONALIZATIONS)


def check_reorthogonalization(name: str) -> None:
    """Raise a one-line error unless ``name`` is one of :data:`REORTHOGONALIZATIONS`."""
    if not isinstance(name, str) or name not in _TRIDIAGONALIZATIONS:  # (a list: unhashable)
        raise SharpdimError(
            f"unknown reorthogonalization {name!r}: use one of {', '.join(REORTHOGONALIZATIONS)}"
        )


OperatorFactory = Callable[[int, torch.Generator], OperatorLike]


@dataclass(frozen=True)
class SLQResult:
    """Nodes and weights of ``num_runs`` Gauss quadrature rules (float64, ``(runs, m)``).

    Each row of ``weights`` sums to 1. A run whose Krylov space became invariant after
    ``j < m`` steps (its probe's measure has only ``j`` atoms) is padded with zero-weight
    nodes equal to its last node; ``steps`` holds the Lanczos steps of each run.
    The estimated spectral density is ``(1/R) sum_{r,l} weights[r, l] delta_{nodes[r, l]}``;
    multiply by ``num_params`` for a measure of mass ``n`` (the eigenvalue count).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    num_params: int
    steps: torch.Tensor

    @property
    def num_runs(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.nodes.shape[1])

    def expectation(self, f: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """Estimate of ``(1/n) tr f(H) = int f d phi`` (``f`` acts elementwise on tensors)."""
        return float((self.weights * f(self.nodes)).sum(1).mean())

    def moment(self, p: int) -> float:
        """Estimate of ``(1/n) tr H^p``; equals the Hutchinson estimate for ``p <= 2m - 1``."""
        return float(self.run_moments(p).mean())

    def run_moments(self, p: int) -> torch.Tensor:
        """Per-run quadrature estimates ``sum_l tau_{r,l} theta_{r,l}^p`` (shape ``(runs,)``)."""
        return (self.weights * self.nodes**p).sum(1)

    def moment_stderr(self, p: int) -> float:
        """Standard error of :meth:`moment` over runs (NaN for one run)."""
        if self.num_runs < 2:
            return float("nan")
        return float(self.run_moments(p).std(correction=1) / self.num_runs**0.5)

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All nodes and their weights ``weights / num_runs`` as flat vectors (mass 1)."""
        return self.nodes.reshape(-1), self.weights.reshape(-1) / self.num_runs

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_params": self.num_params,
            "num_runs": self.num_runs,
            "num_steps": self.num_steps,
            "steps": self.steps.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
        }


def gauss_quadrature(alpha: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes (ascending) and weights of the Gauss rule of the Jacobi matrix ``(alpha, beta)``."""
    t = torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
    theta, u = torch.linalg.eigh(t)
    w = u[0] ** 2
    return theta, w / w.sum()


def _check_factory(factory: Any) -> None:
    """Refuse anything but a callable taking ``(run_index, generator)``."""
    if not callable(factory):
        raise SharpdimError(
            f"expected a tensor, a LinearOperator or a factory, got {type(factory).__name__}: "
            "pass e.g. HessianOperator(model, loss_fn, batch)"
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(0, None)
    except TypeError:
        raise SharpdimError(
            f"the factory has the signature {signature}, but it is called as "
            "factory(run_index, generator): accept both arguments, e.g. lambda run, gen: ..."
        ) from None


def _resolve(source: Any, run: int, gen: torch.Generator) -> LinearOperator:
    if isinstance(source, LinearOperator):
        return source
    return as_operator(source(run, gen))


def slq_spectrum(
    H_or_factory: OperatorLike | OperatorFactory,
    num_runs: int = 10,
    num_steps: int = 80,
    *,
    generator: torch.Generator | None = None,
    reorthogonalization: str = "full",
) -> SLQResult:
    """Stochastic Lanczos quadrature with Rademacher probes and full reorthogonalization.

    Args:
        H_or_factory: a symmetric tensor or :class:`LinearOperator` used by every run, or a
            factory ``factory(run_index, generator) -> operator or tensor`` called once per
            run (e.g. the Hessian of a fresh minibatch); all operators must share ``n``.
        num_runs: independent probes ``R``.
        num_steps: Lanczos steps per run; ``m = min(num_steps, n)`` nodes per run.
        generator: the only source of randomness (default: a generator seeded with 0). Per
            run, the factory is called first, then the probe is drawn.
        reorthogonalization: ``"full"`` (the paper's SD-SLQ: every Lanczos vector orthogonal
            to the whole basis) or ``"partial"`` (Simon 1984: semi-orthogonal basis, a
            Gram–Schmidt pass only when the estimated loss of orthogonality exceeds
            ``sqrt(eps)``; same nodes and weights to working precision, much less memory
            traffic on large models) or ``"none"`` (local orthogonalization only, three
            vectors of memory; the quadrature still integrates the probe's measure, ghost
            copies of converged Ritz values sharing its weight; Greenbaum 1989); see
            :mod:`sharpdim.curvature.partial_reorth`.

    Returns:
        :class:`SLQResult` with ``nodes`` and ``weights`` of shape ``(num_runs, m)``.
    """
    num_runs, num_steps = check_count(num_runs, "num_runs"), check_count(num_steps, "num_steps")
    if isinstance(H_or_factory, torch.Tensor):  # checked once, not once per run
        H_or_factory = as_operator(H_or_factory)
    if not isinstance(H_or_factory, LinearOperator):
        _check_factory(H_or_factory)
    check_reorthogonalization(reorthogonalization)
    tridiagonal = _TRIDIAGONALIZATIONS[reorthogonalization]
    gen = default_generator(generator)
    all_nodes, all_weights, steps = [], [], []
    n: int | None = None
    m = 0
    work: torch.Tensor | None = None
    for run in range(num_runs):
        op = _resolve(H_or_factory, run, gen)
        if n is None:
            n = op.num_params
            if n == 0:
                raise SharpdimError(
                    "the operator has dimension 0 (no parameters): it has no spectrum"
                )
            m = min(num_steps, n)
        elif op.num_params != n:
            raise SharpdimError(
                f"run {run} has an operator of size {op.num_params}, the first had {n}: "
                "the factory must return operators of one dimension"
            )
        z = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int64).to(torch.float64) * 2 - 1
        rows = m + 1 if reorthogonalization != "none" else min(3, m + 1)
        work = basis_storage(op, rows, work)  # one basis buffer for all runs
        alpha, beta, _ = tridiagonal(op, m, z.to(op.device), workspace=work)
        theta, w = gauss_quadrature(alpha.detach().cpu(), beta.detach().cpu())
        j = theta.numel()
        steps.append(j)
        if j < m:  # invariant Krylov space: pad with zero-weight copies of the last node
            theta = torch.cat([theta, theta[-1:].expand(m - j)])
            w = torch.cat([w, torch.zeros(m - j, dtype=torch.float64)])
        all_nodes.append(theta)
        all_weights.append(w)
    return SLQResult(
        nodes=torch.stack(all_nodes),
        weights=torch.stack(all_weights),
        num_params=int(n or 0),
        steps=torch.tensor(steps),
    )
