"""Hutchinson and Hutch++ against the exact trace, with their Monte-Carlo rates (seeded)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.trace import TraceResult, hutchinson_trace, hutchpp_trace
from sharpdim.errors import SharpdimError
from tests.curvature.models import make_mlp, mse_loss, reference_hessian, regression_batch

F64 = torch.float64


def low_rank_plus_noise(n: int = 200, rank: int = 10, seed: int = 0) -> torch.Tensor:
    """A few large eigenvalues (10..1) on top of a small full-rank symmetric part."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    values = torch.cat([torch.linspace(10.0, 1.0, rank), 0.01 * torch.rand(n - rank, generator=g)])
    return q @ torch.diag(values.to(F64)) @ q.T


def mean_abs_error(estimator, a: torch.Tensor, m: int, seeds: int = 60) -> float:  # type: ignore[no-untyped-def]
    exact = float(torch.trace(a))
    errs = [
        abs(estimator(a, m, generator=torch.Generator().manual_seed(s)).estimate - exact)
        for s in range(seeds)
    ]
    return sum(errs) / seeds


def test_hutchinson_exact_on_diagonal() -> None:
    d = torch.diag(torch.arange(1.0, 11.0, dtype=F64))
    res = hutchinson_trace(d, 7)
    assert res.estimate == pytest.approx(55.0) and res.stderr == pytest.approx(0.0)
    assert res.num_matvecs == 7 and res.method == "hutchinson" and res.num_params == 10


def test_hutchinson_rate_is_one_over_sqrt_m() -> None:
    a = low_rank_plus_noise()
    e16 = mean_abs_error(hutchinson_trace, a, 16)
    e256 = mean_abs_error(hutchinson_trace, a, 256)
    ratio = e16 / e256  # expected sqrt(256 / 16) = 4
    assert 2.5 < ratio < 6.4, ratio


def test_hutchinson_stderr_matches_variance() -> None:
    """Rademacher variance of one term: 2 sum_{i != j} a_ij^2; stderr estimates its root / sqrt(m)."""
    a = low_rank_plus_noise(seed=1)
    off = a - torch.diag(torch.diagonal(a))
    sigma = math.sqrt(2 * float((off**2).sum()) / 400)
    res = hutchinson_trace(a, 400, generator=torch.Generator().manual_seed(0))
    assert res.stderr == pytest.approx(sigma, rel=0.25)
    assert abs(res.estimate - float(torch.trace(a))) < 4 * sigma


def test_hutchpp_beats_hutchinson_and_converges_faster() -> None:
    """On a low-rank-dominated matrix: error ~1/m for Hutch++ once the sketch holds the top."""
    a = low_rank_plus_noise()
    hpp_30 = mean_abs_error(hutchpp_trace, a, 30)
    hpp_240 = mean_abs_error(hutchpp_trace, a, 240)
    hut_240 = mean_abs_error(hutchinson_trace, a, 240)
    assert hpp_240 < hut_240 / 10
    assert hpp_30 / hpp_240 > 8  # faster than the 1/sqrt(m) rate (which would give ~2.8)


def test_hutchpp_exact_when_sketch_spans_space() -> None:
    a = low_rank_plus_noise(n=12, rank=3)
    res = hutchpp_trace(a, 40)
    assert res.estimate == pytest.approx(float(torch.trace(a)), rel=1e-12)
    assert res.stderr == 0.0 and res.num_matvecs == 24


def test_hutchpp_stderr_covers_error() -> None:
    a = low_rank_plus_noise(seed=3)
    exact = float(torch.trace(a))
    inside = 0
    for s in range(40):
        r = hutchpp_trace(a, 60, generator=torch.Generator().manual_seed(s))
        inside += abs(r.estimate - exact) <= 2 * r.stderr
    assert inside >= 30  # ~95% nominal coverage, loose for 40 seeds


def test_on_hessian_operator() -> None:
    model = make_mlp([4, 8, 3], "tanh")
    batch = regression_batch(16, 4, 3)
    exact = float(torch.trace(reference_hessian(model, mse_loss, batch)))
    op = HessianOperator(model, mse_loss, batch)
    n = op.num_params
    assert hutchpp_trace(op, 3 * n).estimate == pytest.approx(exact, rel=1e-10)
    res = hutchinson_trace(op, 300, generator=torch.Generator().manual_seed(0))
    assert abs(res.estimate - exact) < 4 * res.stderr
    assert isinstance(res, TraceResult) and res.to_dict()["num_matvecs"] == 300


def test_deterministic_and_float32() -> None:
    a = low_rank_plus_noise(n=50)
    r1 = hutchpp_trace(a, 30, generator=torch.Generator().manual_seed(5))
    r2 = hutchpp_trace(a, 30, generator=torch.Generator().manual_seed(5))
    assert r1 == r2
    r32 = hutchinson_trace(a.float(), 10)
    assert isinstance(r32.estimate, float)
    assert math.isnan(hutchinson_trace(a, 1).stderr)


@pytest.mark.parametrize("fn", [hutchinson_trace, hutchpp_trace])
def test_bad_input(fn) -> None:  # type: ignore[no-untyped-def]
    a = torch.eye(5, dtype=F64)
    with pytest.raises(SharpdimError, match="num_matvecs"):
        fn(a, 0)
    with pytest.raises(SharpdimError, match="num_matvecs"):
        fn(a, 2.5)
    with pytest.raises(SharpdimError):
        fn(torch.ones(3, 4), 10)
    if fn is hutchpp_trace:
        with pytest.raises(SharpdimError, match=">= 3"):
            fn(a, 2)


@pytest.mark.parametrize("fn", [hutchinson_trace, hutchpp_trace])
def test_numpy_integers_and_bools(fn) -> None:  # type: ignore[no-untyped-def]
    a = torch.diag(torch.arange(1.0, 6.0, dtype=F64))
    assert fn(a, np.int64(6)) == fn(a, 6)
    assert isinstance(fn(a, np.int32(6)).num_matvecs, int)
    with pytest.raises(SharpdimError, match="num_matvecs"):
        fn(a, True)
    with pytest.raises(SharpdimError, match="num_matvecs"):
        fn(a, "6")


def _nan_hessian() -> HessianOperator:
    """RMSE = sqrt(MSE) at an exact fit: finite loss 0, NaN second derivatives."""
    model = make_mlp([3, 1], bias=False)
    x = regression_batch(8, 3, 1)[0]
    y = model(x).detach()
    return HessianOperator(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean().sqrt(), (x, y))


@pytest.mark.parametrize("fn", [hutchinson_trace, hutchpp_trace])
def test_non_finite_products_are_errors(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SharpdimError, match="not finite") as err:
        fn(_nan_hessian(), 6)
    assert "\n" not in str(err.value)
    a = torch.eye(4, dtype=F64)
    a[0, 0] = float("inf")
    with pytest.raises(SharpdimError, match="NaN/inf"):
        fn(a, 6)


def test_a_non_symmetric_matrix_has_its_trace_estimated() -> None:
    # the trace estimators need only a square matrix: E[z^T A z] = tr A for any A
    a = torch.triu(torch.ones(30, 30, dtype=torch.float64))
    assert hutchpp_trace(a, 90).estimate == pytest.approx(30.0, abs=1e-9)  # sketch spans all
    assert abs(hutchinson_trace(a, 400).estimate - 30.0) < 5.0
    with pytest.raises(SharpdimError, match="NaN"):
        hutchinson_trace(torch.full((3, 3), math.nan, dtype=torch.float64), 4)


def test_an_empty_operator_has_trace_zero_in_both_estimators() -> None:
    """Hutch++ on a 0 x 0 matrix raised torch.cat's error; Hutchinson gave 0."""
    empty = torch.zeros(0, 0, dtype=torch.float64)
    for estimator in (hutchinson_trace, hutchpp_trace):
        result = estimator(empty, 9)
        assert (result.estimate, result.stderr, result.num_params) == (0.0, 0.0, 0)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_a_sparse_matrix_is_taken_as_its_dense_values(layout: str) -> None:
    """Slicing a sparse matrix for the symmetry check raised torch's backend errors."""
    from sharpdim.curvature.slq import slq_spectrum

    dense = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    sparse = dense.to_sparse() if layout == "coo" else dense.to_sparse_csr()
    got = hutchpp_trace(sparse, num_matvecs=15, generator=torch.Generator().manual_seed(0))
    assert got.estimate == pytest.approx(15.0, rel=1e-12)
    assert hutchinson_trace(sparse, 4).estimate == pytest.approx(15.0, rel=1e-12)
    slq = slq_spectrum(sparse, num_runs=2, num_steps=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(
        slq.nodes,
        slq_spectrum(
            dense, num_runs=2, num_steps=5, generator=torch.Generator().manual_seed(1)
        ).nodes,
    )
