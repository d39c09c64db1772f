"""The LinearOperator interface, DenseOperator and as_operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sharpdim.curvature.operator import DenseOperator, LinearOperator, as_operator
from sharpdim.errors import SharpdimError
from tests.curvature.models import DTYPE


def _matrix(n: int, seed: int = 0) -> torch.Tensor:
    a = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    return a + a.T


class _Diagonal(LinearOperator):
    """A matrix-free operator, to test the base class (``dense`` in blocks of 256)."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d = d
        self.calls: list[int] = []

    @property
    def num_params(self) -> int:
        return int(self.d.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        return self.d.dtype

    @property
    def device(self) -> torch.device:
        return self.d.device

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(block.shape[1]))
        return self.d[:, None] * block


def test_dense_operator_products() -> None:
    a = _matrix(6)
    op = DenseOperator(a)
    v, block = a[:, 0].clone(), a[:, :3].clone()
    assert op.shape == (6, 6) and op.num_params == 6
    assert op.dtype == DTYPE and op.device == torch.device("cpu")
    assert torch.equal(op @ v, a @ v)
    assert torch.equal(op @ block, a @ block)
    assert op.dense() is a


def test_base_dense_builds_in_blocks() -> None:
    d = torch.arange(1.0, 301.0, dtype=DTYPE)
    op = _Diagonal(d)
    assert torch.equal(op.dense(), torch.diag(d))
    assert op.calls == [256, 44]


def test_vector_is_cast_to_operator_dtype() -> None:
    op = DenseOperator(_matrix(4).float())
    out = op @ torch.ones(4, dtype=DTYPE)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("shape", [(5,), (3,), (4, 2, 1), ()])
def test_shape_mismatch(shape: tuple[int, ...]) -> None:
    with pytest.raises(SharpdimError, match=r"does not match the operator of size 4: pass"):
        DenseOperator(_matrix(4)) @ torch.zeros(shape, dtype=DTYPE)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_non_real_floating_matrix_is_rejected(dtype: torch.dtype) -> None:
    with pytest.raises(SharpdimError, match="not a real floating type"):
        as_operator(torch.eye(4).to(dtype))


def test_non_square_matrix_is_rejected() -> None:
    with pytest.raises(SharpdimError, match="square"):
        DenseOperator(torch.zeros(3, 4))
    with pytest.raises(SharpdimError, match="square"):
        as_operator(torch.zeros(3))


def test_as_operator() -> None:
    a = _matrix(3)
    op = DenseOperator(a)
    assert as_operator(op) is op
    wrapped = as_operator(a)
    assert isinstance(wrapped, DenseOperator) and wrapped.matrix is a
    with pytest.raises(SharpdimError, match="LinearOperator"):
        as_operator(a.tolist())  # type: ignore[arg-type]


def test_to_scipy_matches() -> None:
    a = _matrix(5)
    sp = DenseOperator(a).to_scipy()
    x = np.arange(5.0)
    np.testing.assert_allclose(sp.matvec(x), a.numpy() @ x, rtol=1e-14)
    np.testing.assert_allclose(sp.rmatvec(x), a.numpy() @ x, rtol=1e-14)
    assert sp.shape == (5, 5)


def test_non_symmetric_or_non_finite_matrix_is_rejected() -> None:
    from sharpdim.curvature.lanczos import lanczos_eigenvalues

    upper = torch.triu(torch.ones(5, 5, dtype=DTYPE))  # every eigenvalue 1
    with pytest.raises(SharpdimError, match="not symmetric") as err:
        lanczos_eigenvalues(upper, k=1)
    assert "\n" not in str(err.value)
    bad = _matrix(4)
    bad[1, 2] = float("nan")
    with pytest.raises(SharpdimError, match="NaN/inf"):
        as_operator(bad)
    a = _matrix(300)  # round-off asymmetry is accepted (float64 and float32)
    noise = 1e-14 * torch.randn(300, 300, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    assert as_operator(a + noise).num_params == 300
    assert as_operator((a @ a).float()).num_params == 300


def test_numpy_vectors_are_converted() -> None:
    a = _matrix(6)
    op = DenseOperator(a)
    ones = np.ones(6)
    torch.testing.assert_close(op @ ones, a @ torch.ones(6, dtype=DTYPE))
    torch.testing.assert_close(op @ np.eye(6, 2, dtype=np.float32), a[:, :2])
    with pytest.raises(SharpdimError, match="tensor") as err:
        op @ "abc"  # type: ignore[operator]
    assert "\n" not in str(err.value)


def test_reversed_and_byte_swapped_numpy_vectors_are_converted() -> None:
    """A reversed view (negative strides) was refused as 'pass a tensor (or numpy array)'."""
    a = _matrix(6)
    op = DenseOperator(a)
    x = np.arange(12.0)
    torch.testing.assert_close(op @ x[::-2], a @ torch.tensor(x[::-2].copy(), dtype=DTYPE))
    torch.testing.assert_close(op @ x[:6].astype(">f8"), a @ torch.arange(6.0, dtype=DTYPE))


def test_bool_vectors_are_refused() -> None:
    """A bool vector was read as 0/1 without a word."""
    op = DenseOperator(_matrix(6))
    for v in (torch.ones(6, dtype=torch.bool), np.ones(6, dtype=bool)):
        with pytest.raises(SharpdimError, match=r"^cannot multiply the operator by a bool vector"):
            op @ v
