"""Symmetric linear operators: the common interface of every curvature estimator.

An estimator in :mod:`sharpdim.curvature` accepts either a dense square tensor or a
:class:`LinearOperator`; :func:`as_operator` turns both into an operator, so every estimator
runs on a 10x10 matrix in a test and on a Hessian of 10^6 parameters in practice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, final

import numpy as np
import torch

from sharpdim.checks import native_array
from sharpdim.errors import NonFiniteCurvatureError, SharpdimError


class LinearOperator(ABC):
    """A square linear map ``v -> A v`` on ``R^n`` given by its matrix-vector product.

    Subclasses implement :meth:`_matmat` on a ``(n, k)`` block; ``A @ v`` accepts a vector
    ``(n,)`` or a block ``(n, k)`` and checks the shape.
    """

    @property
    @abstractmethod
    def num_params(self) -> int:
        """The dimension ``n``."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """Dtype of the vectors the operator acts on."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Device of the vectors the operator acts on."""

    @abstractmethod
    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        """Return ``A @ block`` for a ``(n, k)`` block of the operator's dtype and device."""

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_params, self.num_params)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A @ v`` for ``v`` of shape ``(n,)`` or ``(n, k)`` (a tensor or a numpy array)."""
        n = self.num_params
        if not isinstance(v, torch.Tensor):
            try:
                v = torch.as_tensor(native_array(v) if isinstance(v, np.ndarray) else v)
            except (TypeError, ValueError, RuntimeError):
                raise SharpdimError(
                    f"cannot multiply the operator by a {type(v).__name__}: pass a tensor "
                    f"(or numpy array) of shape ({n},) or ({n}, k)"
                ) from None
        if v.dtype == torch.bool:
            raise SharpdimError(
                "cannot multiply the operator by a bool vector (it would read True as 1): "
                "pass a float vector, e.g. v.double()"
            )
        if v.is_complex():
            raise SharpdimError(
                f"cannot multiply the operator by a complex vector ({v.dtype}): multiply the "
                "real and imaginary parts separately"
            )
        if v.ndim not in (1, 2) or v.shape[0] != n:
            raise SharpdimError(
                f"vector of shape {tuple(v.shape)} does not match the operator of size {n}: "
                f"pass a tensor of shape ({n},) or ({n}, k)"
            )
        block = v.to(dtype=self.dtype, device=self.device)
        if block.layout != torch.strided:  # (a sparse vector: its dense values)
            block = block.to_dense()
        # the sum is a cheap filter (it overflows at worst, hence the exact second test); a NaN
        # where the matrix's columns are zero vanished from the product before
        if not block.sum().isfinite() and not torch.isfinite(block).all():
            if v.layout == torch.strided and torch.isfinite(v).all():  # (cast to a narrower dtype)
                raise SharpdimError(
                    f"the vector is finite but overflows the operator's {self.dtype}: scale it "
                    "down (the product is linear: multiply the result back)"
                )
            raise SharpdimError("the vector holds NaN/inf: pass a finite vector to H @ v")
        out = self._finite(self._matmat(block if v.ndim == 2 else block[:, None]))
        return out if v.ndim == 2 else out[:, 0]

    def _finite(self, out: torch.Tensor) -> torch.Tensor:
        """``out``, or a one-line :class:`NonFiniteCurvatureError` where a product of a finite
        vector is not finite (subclasses word it for their operator)."""
        # the sum is a cheap filter (it overflows at worst, hence the exact second test)
        if not out.sum().isfinite() and not torch.isfinite(out).all():
            raise NonFiniteCurvatureError(
                f"{type(self).__name__} returned NaN/inf for a finite vector: the operator is "
                "not finite there (check its _matmat, or use float64 where products overflow)"
            )
        return out

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matvec(v)

    def dense(self) -> torch.Tensor:
        """The full ``n x n`` matrix, built 256 columns at a time into one preallocated output
        (peak memory: the matrix plus one ``n x 256`` identity block and its product, plus a
        :class:`HessianOperator`'s batched intermediates, bounded by
        :data:`~sharpdim.curvature.batched_hvp.MEMORY`)."""
        n = self.num_params
        out = torch.empty(n, n, dtype=self.dtype, device=self.device)
        for i in range(0, n, 256):
            j = min(n, i + 256)
            unit = torch.zeros(n, j - i, dtype=self.dtype, device=self.device)
            unit[i:j].fill_diagonal_(1)
            out[:, i:j] = self._finite(self._dense_columns(unit))
        return out

    def _dense_columns(self, unit: torch.Tensor) -> torch.Tensor:
        """``self @ unit`` for :meth:`dense` (a subclass may take many columns at once)."""
        return self._matmat(unit)

    def to_scipy(self) -> Any:
        """A :class:`scipy.sparse.linalg.LinearOperator` view (float64 numpy in and out)."""
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        def mv(x: Any) -> Any:
            t = torch.as_tensor(x, dtype=self.dtype, device=self.device)
            return self.matvec(t).detach().cpu().double().numpy()

        return ScipyOperator(shape=self.shape, matvec=mv, rmatvec=mv, dtype="float64")


@final
class DenseOperator(LinearOperator):
    """A dense square matrix seen as an operator (used for tests and small problems).

    A matrix that requires grad (an ``nn.Parameter``) is detached: estimates built on it are
    plain tensors and keep no autograd graph. A sparse matrix is taken as its dense values.
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise SharpdimError(
                f"expected a square matrix, got shape {tuple(matrix.shape)}: pass an n x n tensor"
            )
        if not matrix.is_floating_point():
            raise SharpdimError(
                f"the matrix has dtype {matrix.dtype}, not a real floating type: convert it, "
                "e.g. with .double()"
            )
        matrix = matrix.detach() if matrix.requires_grad else matrix
        # a sparse matrix (COO, CSR, ...) as its dense values, as sparse vectors are: slicing
        # it for the symmetry check raised torch's backend errors
        self.matrix = matrix.to_dense() if matrix.layout != torch.strided else matrix

    @property
    def num_params(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        return self.matrix @ block

    def dense(self) -> torch.Tensor:
        return self.matrix


OperatorLike = LinearOperator | torch.Tensor


def as_operator(a: OperatorLike, *, symmetric: bool = True) -> LinearOperator:
    """Wrap a dense square tensor as a :class:`DenseOperator`; return operators unchanged.

    A tensor must be finite and (unless ``symmetric=False``, for the trace estimators)
    symmetric up to ``sqrt(eps) * max|A|`` of its dtype (round-off, as in
    ``HessianOperator.dense()``, passes; a genuinely non-symmetric matrix does not).
    """
    if isinstance(a, LinearOperator):
        return a
    if isinstance(a, torch.Tensor):
        op = DenseOperator(a)
        _check_finite_symmetric(op.matrix, symmetric)
        return op
    raise SharpdimError(
        f"expected a square tensor or a LinearOperator, got {type(a).__name__}: "
        "pass e.g. sharpdim.HessianOperator(model, loss_fn, batch)"
    )


def max_asymmetry(a: torch.Tensor, block: int = 512) -> tuple[float, float]:
    """``(max |a - a^T|, max |a|)`` of a square matrix, by pairs of square tiles above and
    below the diagonal (cache-sized, no ``n^2`` copy: 0.2 s for ``n = 12,960`` in float32);
    a matrix is taken as symmetric when the first is at most ``sqrt(eps)`` times the second."""
    n, scale, asym = a.shape[0], 0.0, 0.0
    for i in range(0, n, block):
        for j in range(i, n, block):
            upper, lower = a[i : i + block, j : j + block], a[j : j + block, i : i + block]
            asym = max(asym, float((upper - lower.T).abs().max()))
            scale = max(scale, float(upper.abs().max()), float(lower.abs().max()))
    return asym, scale


def is_symmetric(asym: float, scale: float, dtype: torch.dtype) -> bool:
    """Whether :func:`max_asymmetry`'s ``(asym, scale)`` is round-off for ``dtype``."""
    return asym <= torch.finfo(dtype).eps ** 0.5 * scale


def _check_finite_symmetric(a: torch.Tensor, symmetric: bool, block: int = 512) -> None:
    """Raise unless ``a`` is finite and ``|a - a^T| <= sqrt(eps) max|a|`` (tiled, no n^2 copy)."""
    for i in range(0, a.shape[0], block):
        if not torch.isfinite(a[i : i + block]).all():
            raise SharpdimError(
                "the matrix holds NaN/inf: pass a finite matrix (check how it was computed)"
            )
    asym, scale = max_asymmetry(a) if symmetric else (0.0, 0.0)
    if not is_symmetric(asym, scale, a.dtype):
        raise SharpdimError(
            f"the matrix is not symmetric (max |A - A^T| = {asym:.3g}, max |A| = {scale:.3g}): "
            "the estimators need a symmetric matrix; pass (A + A.T) / 2 if that is what you mean"
        )
