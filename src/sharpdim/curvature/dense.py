"""Dense Hessians for small models, with a size guard.

Building ``H`` costs ``d`` Hessian-vector products and ``8 d^2`` bytes in float64; its
eigendecomposition ``O(d^3)``. Above ``max_params`` (default :data:`DENSE_LIMIT`) the
request is refused with a message that names the iterative methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from sharpdim.checks import check_count, check_flag
from sharpdim.curvature.hessian import HessianOperator, LossFn, Mode
from sharpdim.curvature.operator import LinearOperator
from sharpdim.errors import TooLargeError

DENSE_LIMIT = 20_000
"""Default largest number of parameters for which a dense Hessian is built."""


def check_dense_size(num_params: int, max_params: int | None = DENSE_LIMIT) -> None:
    """Refuse a dense ``num_params x num_params`` computation above ``max_params``."""
    if max_params is not None:
        max_params = check_count(max_params, "max_params", 0, "a parameter count, or None")
    if max_params is not None and num_params > max_params:
        gib = 8 * num_params**2 / 2**30
        raise TooLargeError(
            f"a dense Hessian of {num_params:,} parameters ({gib:.1f} GiB in float64) exceeds "
            f"max_params={max_params:,}: use lanczos_eigenvalues / slq_spectrum / "
            "hutchinson_trace (or method='slq'|'kde'|'ps' for the sharpness dimension), "
            "or raise max_params"
        )


def dense_operator_matrix(op: LinearOperator, max_params: int | None = DENSE_LIMIT) -> torch.Tensor:
    """The dense matrix of an operator, refusing above ``max_params``."""
    check_dense_size(op.num_params, max_params)
    return op.dense()


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    params: Iterable[torch.Tensor] | None = None,
    *,
    mode: Mode = "eval",
    max_params: int | None = DENSE_LIMIT,
    symmetrize: bool = True,
    seed: int | None = None,
) -> torch.Tensor:
    """The dense Hessian ``d^2 loss_fn(model, batch) / dw^2`` (``d x d``).

    Built from ``d`` Hessian-vector products on one reused gradient graph. With
    ``symmetrize`` the result is ``(H + H^T) / 2``, which removes round-off asymmetry.
    ``mode`` and ``seed`` (of train-mode dropout) are those of :class:`HessianOperator`.
    """
    symmetrize = check_flag(symmetrize, "symmetrize")
    op = HessianOperator(model, loss_fn, batch, params, mode=mode, seed=seed)
    h = dense_operator_matrix(op, max_params)
    return symmetrize_(h) if symmetrize else h


def symmetrize_(h: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """Replace a square matrix by ``(H + H^T) / 2`` in place, by tiles (no full temporaries)."""
    n = h.shape[0]
    for i in range(0, n, block):
        for j in range(i, n, block):
            upper, lower = h[i : i + block, j : j + block], h[j : j + block, i : i + block]
            avg = (upper + lower.T) / 2
            upper.copy_(avg)
            lower.copy_(avg.T)
    return h
