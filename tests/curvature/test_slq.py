"""Stochastic Lanczos quadrature: exact moments where quadrature is exact, MC rate otherwise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpdim.curvature.hessian import HessianOperator
from sharpdim.curvature.slq import SLQResult, gauss_quadrature, slq_spectrum
from sharpdim.errors import SharpdimError
from tests.curvature.models import make_mlp, mse_loss, reference_hessian, regression_batch

F64 = torch.float64


def random_symmetric(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    return (a + a.T) / 2


def exact_moment(a: torch.Tensor, p: int) -> float:
    ev = torch.linalg.eigvalsh(a)
    return float((ev**p).mean())


def test_shapes_and_weights() -> None:
    res = slq_spectrum(random_symmetric(40), num_runs=3, num_steps=10)
    assert res.nodes.shape == (3, 10) and res.weights.shape == (3, 10)
    assert res.nodes.dtype == F64 and res.num_params == 40
    torch.testing.assert_close(res.weights.sum(1), torch.ones(3, dtype=F64))
    assert bool((res.weights >= 0).all())
    assert res.num_runs == 3 and res.num_steps == 10 and res.steps.tolist() == [10, 10, 10]
    d = res.to_dict()
    assert d["num_runs"] == 3 and len(d["nodes"]) == 3


def test_diagonal_moments_are_exact_up_to_degree_2m_minus_1() -> None:
    """For diagonal H, z^T H^p z = tr H^p for any Rademacher z: the rule of m nodes is exact
    for p <= 2m - 1, whatever the number of runs, and not beyond."""
    d = torch.linspace(-1.0, 3.0, 60, dtype=F64)
    res = slq_spectrum(torch.diag(d), num_runs=2, num_steps=4)
    for p in range(8):
        assert res.moment(p) == pytest.approx(float((d**p).mean()), rel=1e-12)
    assert abs(res.moment(8) - float((d**8).mean())) > 1e-6 * float((d**8).mean())


def test_moments_equal_hutchinson_with_the_same_probes() -> None:
    """The quadrature estimate of (1/n) tr H^p is z^T H^p z / n (p <= 2m - 1) exactly."""
    a = random_symmetric(50, seed=1)
    m, runs = 6, 4
    res = slq_spectrum(a, num_runs=runs, num_steps=m, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)  # replay the probes: one draw per run
    probes = [torch.randint(0, 2, (50,), generator=gen).to(F64) * 2 - 1 for _ in range(runs)]
    for p in range(2 * m):
        hp = torch.linalg.matrix_power(a, p)
        hutch = torch.stack([z @ hp @ z for z in probes]) / 50
        torch.testing.assert_close(res.run_moments(p), hutch, rtol=1e-10, atol=1e-12)


def test_moments_converge_to_exact_spectrum() -> None:
    """p = 0..4: within 4 standard errors of the exact (1/n) tr H^p; p = 0 exact."""
    a = random_symmetric(120, seed=2)
    res = slq_spectrum(a, num_runs=60, num_steps=12, generator=torch.Generator().manual_seed(0))
    assert res.moment(0) == pytest.approx(1.0, abs=1e-13)
    for p in range(1, 5):
        err = abs(res.moment(p) - exact_moment(a, p))
        assert err <= 4 * res.moment_stderr(p) + 1e-12, (p, err, res.moment_stderr(p))
    # and the error shrinks like 1/sqrt(runs): 16x the runs, ~4x smaller standard error
    few = slq_spectrum(a, num_runs=15, num_steps=12, generator=torch.Generator().manual_seed(1))
    ratio = few.moment_stderr(2) / res.moment_stderr(2)
    assert 1.3 < ratio < 3.2


def test_full_dimension_gives_exact_spectrum_per_run() -> None:
    """num_steps >= n: the nodes are the eigenvalues of H (every probe touches each one)."""
    a = random_symmetric(15, seed=4)
    res = slq_spectrum(a, num_runs=2, num_steps=50)
    assert res.num_steps == 15
    ev = torch.linalg.eigvalsh(a)
    for r in range(2):
        torch.testing.assert_close(res.nodes[r], ev, rtol=0, atol=1e-10)


def test_invariant_probe_pads_with_zero_weights() -> None:
    d = torch.diag(torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], dtype=F64))
    res = slq_spectrum(d, num_runs=2, num_steps=5)  # two distinct eigenvalues: 2 steps suffice
    assert res.steps.tolist() == [2, 2]
    assert res.nodes.shape == (2, 5)
    torch.testing.assert_close(res.weights[:, :2], torch.full((2, 2), 0.5, dtype=F64))
    assert bool((res.weights[:, 2:] == 0).all())
    assert res.moment(3) == pytest.approx(4.5)


def test_factory_is_called_once_per_run_with_the_generator() -> None:
    mats = [random_symmetric(30, seed=s) for s in range(3)]
    calls: list[int] = []

    def factory(run: int, gen: torch.Generator) -> torch.Tensor:
        assert isinstance(gen, torch.Generator)
        calls.append(run)
        return mats[run]

    res = slq_spectrum(factory, num_runs=3, num_steps=30)
    assert calls == [0, 1, 2]
    for r in range(3):  # full dimension: nodes are each run's own eigenvalues
        torch.testing.assert_close(res.nodes[r], torch.linalg.eigvalsh(mats[r]), atol=1e-10, rtol=0)


def test_hessian_operator_and_float32() -> None:
    model = make_mlp([3, 5, 2], "tanh")
    batch = regression_batch(10, 3, 2)
    ref = reference_hessian(model, mse_loss, batch)
    op = HessianOperator(model, mse_loss, batch)
    n = op.num_params
    res = slq_spectrum(op, num_runs=2, num_steps=n)
    torch.testing.assert_close(res.nodes[0], torch.linalg.eigvalsh(ref), atol=1e-9, rtol=0)
    res32 = slq_spectrum(ref.float(), num_runs=1, num_steps=5)
    assert res32.nodes.dtype == F64


def test_expectation_and_pooled() -> None:
    d = torch.linspace(0.5, 2.0, 20, dtype=F64)
    res = slq_spectrum(torch.diag(d), num_runs=3, num_steps=20)
    assert res.expectation(torch.log) == pytest.approx(float(torch.log(d).mean()), rel=1e-10)
    nodes, weights = res.pooled()
    assert nodes.shape == (60,) and float(weights.sum()) == pytest.approx(1.0)


def test_gauss_quadrature_of_single_node() -> None:
    theta, w = gauss_quadrature(torch.tensor([2.0], dtype=F64), torch.zeros(0, dtype=F64))
    assert theta.tolist() == [2.0] and w.tolist() == [1.0]


def test_bad_input() -> None:
    a = random_symmetric(5)
    with pytest.raises(SharpdimError, match="num_runs"):
        slq_spectrum(a, num_runs=0)
    with pytest.raises(SharpdimError, match="num_steps"):
        slq_spectrum(a, num_runs=1, num_steps=0)
    with pytest.raises(SharpdimError, match="factory"):
        slq_spectrum(3.0, num_runs=1)  # type: ignore[arg-type]
    sizes = [random_symmetric(5), random_symmetric(6)]
    with pytest.raises(SharpdimError, match="one dimension"):
        slq_spectrum(lambda r, g: sizes[r], num_runs=2)
    assert isinstance(slq_spectrum(a, num_runs=1, num_steps=2), SLQResult)


def test_numpy_integers_are_accepted_and_bools_rejected() -> None:
    a = random_symmetric(6)
    res = slq_spectrum(a, num_runs=np.int64(2), num_steps=np.int32(3))
    assert res.nodes.shape == (2, 3)
    torch.testing.assert_close(res.nodes, slq_spectrum(a, 2, 3).nodes, rtol=0, atol=0)
    for kwargs in ({"num_runs": True}, {"num_steps": False}, {"num_steps": 2.5}):
        with pytest.raises(SharpdimError, match="num_"):
            slq_spectrum(a, **kwargs)  # type: ignore[arg-type]


def test_factory_with_wrong_signature_is_rejected() -> None:
    a = random_symmetric(5)
    with pytest.raises(SharpdimError, match=r"factory\(run_index, generator\)") as err:
        slq_spectrum(lambda run: a, num_runs=2, num_steps=3)  # type: ignore[arg-type,misc]
    assert "\n" not in str(err.value)


def test_non_finite_products_are_errors() -> None:
    model = make_mlp([3, 1], bias=False)
    x = regression_batch(8, 3, 1)[0]
    y = model(x).detach()
    rmse = HessianOperator(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean().sqrt(), (x, y))
    with pytest.raises(SharpdimError, match="not finite"):
        slq_spectrum(rmse, num_runs=2, num_steps=3)
    a = random_symmetric(5)
    a[2, 2] = float("nan")
    with pytest.raises(SharpdimError, match="NaN/inf"):
        slq_spectrum(a, num_runs=1, num_steps=3)


def test_a_dense_matrix_is_checked_once_not_once_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import sharpdim.curvature.operator as operator_module

    calls = []
    check = operator_module._check_finite_symmetric
    monkeypatch.setattr(
        operator_module,
        "_check_finite_symmetric",
        lambda *a, **k: calls.append(1) or check(*a, **k),
    )
    slq_spectrum(random_symmetric(8), num_runs=5, num_steps=3)
    assert len(calls) == 1


def test_an_empty_operator_is_refused_for_what_it_is() -> None:
    """It was blamed on num_steps (min(num_steps, 0) = 0), which the caller set to 30."""
    with pytest.raises(SharpdimError, match=r"^the operator has dimension 0"):
        slq_spectrum(torch.zeros(0, 0, dtype=torch.float64), num_runs=1, num_steps=30)


@pytest.mark.parametrize("reorthogonalization", ["full", "partial", "none"])
@pytest.mark.parametrize("wrap", [False, True])
def test_a_matrix_requiring_grad_gives_plain_results(reorthogonalization: str, wrap: bool) -> None:
    from sharpdim.curvature.operator import DenseOperator

    plain = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    param = torch.nn.Parameter(plain.clone())
    source = DenseOperator(param) if wrap else param
    got = slq_spectrum(source, 2, 3, reorthogonalization=reorthogonalization)
    want = slq_spectrum(plain, 2, 3, reorthogonalization=reorthogonalization)
    assert not got.nodes.requires_grad and not got.weights.requires_grad
    assert torch.equal(got.nodes, want.nodes) and torch.equal(got.weights, want.weights)


def test_a_list_for_a_reorthogonalization_is_a_one_line_error() -> None:
    """slq_spectrum(..., reorthogonalization=["full"]) raised 'unhashable type: list'."""
    a = torch.eye(4, dtype=torch.float64)
    with pytest.raises(SharpdimError, match=r"^unknown reorthogonalization \['full'\]"):
        slq_spectrum(a, 2, 3, reorthogonalization=["full"])  # type: ignore[arg-type]
