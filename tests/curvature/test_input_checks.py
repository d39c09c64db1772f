"""Argument checks of the curvature engine that must fire before any product, with one line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from sharpdim.curvature import (
    DenseOperator,
    HessianOperator,
    dense_hessian,
    histogram_density,
    kde_density,
    lanczos_eigenvalues,
    spectrum_summary,
)
from sharpdim.curvature.operator import LinearOperator
from sharpdim.errors import SharpdimError
from tests.curvature.models import tiny_linear_problem


class CountingOperator(LinearOperator):
    """``diag(1..n)`` that counts its products (columns)."""

    def __init__(self, n: int) -> None:
        self.diag = torch.arange(1.0, n + 1, dtype=torch.float64)
        self.products = 0

    @property
    def num_params(self) -> int:
        return self.diag.numel()

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _matmat(self, block: torch.Tensor) -> torch.Tensor:
        self.products += block.shape[1]
        return self.diag[:, None] * block


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grid_size": 1}, "grid_size must be an integer >= 2, got 1"),
        ({"num_runs": 0}, "num_runs must be an integer >= 1, got 0"),
        ({"num_steps": 0}, "num_steps must be an integer >= 1, got 0"),
        ({"trace_matvecs": 2}, "trace_matvecs must be an integer >= 3, got 2"),
        ({"bottom_tol": 0}, "bottom_tol must be a finite number > 0, got 0"),
        ({"tol": float("nan")}, "tol must be a finite number > 0, got nan"),
    ],
)
def test_spectrum_summary_checks_before_any_product(options: dict[str, Any], message: str) -> None:
    op = CountingOperator(50)
    with pytest.raises(SharpdimError, match=message.replace("(", r"\(")):
        spectrum_summary(op, **options)
    assert op.products == 0


def test_block_lanczos_keeps_within_max_iter() -> None:
    for b, max_iter in ((3, 11), (4, 10), (2, 7)):
        op = CountingOperator(200)
        result = lanczos_eigenvalues(op, k=1, block_size=b, max_iter=max_iter, tol=1e-12)
        assert op.products == result.num_matvecs <= max_iter
        assert max_iter - b < result.num_matvecs  # stopped only when a block did not fit
    with pytest.raises(SharpdimError, match="use max_iter >= 3"):
        lanczos_eigenvalues(CountingOperator(20), k=1, block_size=3, max_iter=2)
    # a partial last block was accepted, then not taken: 2 of k=3 values, 9 of 10 for "both"
    for k, which, b, max_iter, least in ((3, "LA", 2, 3, 4), (5, "both", 3, 10, 12)):
        with pytest.raises(SharpdimError, match=rf"use max_iter >= {least} \(or leave it unset\)"):
            lanczos_eigenvalues(
                CountingOperator(20), k=k, which=which, block_size=b, max_iter=max_iter
            )
        result = lanczos_eigenvalues(
            CountingOperator(20), k=k, which=which, block_size=b, max_iter=least
        )
        assert result.eigenvalues.numel() == (2 * k if which == "both" else k)
    # a last block cut at the dimension: max_iter = n suffices (refused for a while)
    a = torch.diag(torch.arange(1.0, 8.0, dtype=torch.float64))
    for k, which, b in ((7, "LA", 3), (2, "both", 3)):
        result = lanczos_eigenvalues(a, k=k, which=which, block_size=b, max_iter=7)
        assert result.all_converged
        want = list(range(7, 7 - k, -1)) + ([] if which == "LA" else list(range(k, 0, -1)))
        assert result.eigenvalues.tolist() == pytest.approx(want, abs=1e-12)


def test_complex_vectors_are_refused() -> None:
    op = DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(SharpdimError, match="complex vector"):
        op @ torch.ones(3, dtype=torch.complex128)
    with pytest.raises(SharpdimError, match="v0 must be a real tensor of shape"):
        lanczos_eigenvalues(op, k=1, v0=torch.ones(3, dtype=torch.complex128))


def test_v0_as_list_or_numpy_array() -> None:
    A = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
    expected = lanczos_eigenvalues(A, k=2, v0=torch.ones(10, dtype=torch.float64)).eigenvalues
    for v0 in ([1.0] * 10, np.ones(10)):
        got = lanczos_eigenvalues(A, k=2, v0=v0).eigenvalues
        assert torch.allclose(got, torch.tensor([10.0, 9.0], dtype=torch.float64))
        assert torch.equal(got, expected)
    with pytest.raises(SharpdimError, match="v0 must be a real tensor of shape \\(10,\\)"):
        lanczos_eigenvalues(A, k=2, v0=object())


def test_hessian_argument_errors_are_one_line() -> None:
    model, loss_fn, batch = tiny_linear_problem()
    with pytest.raises(SharpdimError, match="weights must be a sequence of one number per batch"):
        HessianOperator(model, loss_fn, batches=[batch, batch], weights=0.5)  # type: ignore[arg-type]
    with pytest.raises(SharpdimError, match="max_params must be an integer >= 0, got '10'"):
        dense_hessian(model, loss_fn, batch, max_params="10")  # type: ignore[arg-type]
    # a numpy integer is a count like any other
    H = dense_hessian(model, loss_fn, batch, max_params=np.int64(4))
    X = torch.cat([batch[0], torch.ones(8, 1, dtype=torch.float64)], 1)
    assert torch.allclose(H, 2 / 8 * X.T @ X, atol=1e-14)


def test_inference_mode_is_named() -> None:
    model, loss_fn, batch = tiny_linear_problem()
    with torch.inference_mode(), pytest.raises(SharpdimError, match=r"inside torch.inference_mode"):
        HessianOperator(model, loss_fn, batch) @ torch.ones(4, dtype=torch.float64)


def test_inference_tensors_in_the_batch_are_named() -> None:
    model, loss_fn, batch = tiny_linear_problem()
    with torch.inference_mode():
        frozen = (batch[0].clone(), batch[1].clone())
    with pytest.raises(SharpdimError, match=r"made under torch.inference_mode\(\)"):
        HessianOperator(model, loss_fn, frozen) @ torch.ones(4, dtype=torch.float64)


def test_density_counts_accept_numpy_integers_and_check_bandwidth() -> None:
    nodes, weights = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.2, 0.3, 0.5])
    edges, density = histogram_density(nodes, weights, bins=np.int64(4))
    assert edges.numel() == 5 and abs(float((density * edges.diff()).sum()) - 1) < 1e-12
    grid, density = kde_density(nodes, weights, grid_size=np.int64(200), bandwidth=np.float64(0.5))
    assert grid.numel() == 200 and abs(float(torch.trapezoid(density, grid)) - 1) < 1e-12
    with pytest.raises(SharpdimError, match="bandwidth must be a finite number > 0, got 'a'"):
        kde_density(nodes, weights, bandwidth="a")  # type: ignore[arg-type]
    with pytest.raises(SharpdimError, match="bins must be an integer >= 1, got 0"):
        histogram_density(nodes, weights, bins=0)
