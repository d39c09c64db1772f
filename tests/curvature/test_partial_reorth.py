"""Partial reorthogonalization (Simon 1984): semi-orthogonal basis, same quadrature as full."""

from __future__ import annotations

import math

import pytest
import torch

import sharpdim.curvature.partial_reorth as partial
from sharpdim.curvature.lanczos import lanczos_tridiagonal
from sharpdim.curvature.partial_reorth import (
    lanczos_tridiagonal_partial,
    lanczos_tridiagonal_plain,
)
from sharpdim.curvature.slq import gauss_quadrature, slq_spectrum
from sharpdim.errors import SharpdimError

F64 = torch.float64


def outlier_matrix(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A bulk in [0, 0.1] and 10 outliers up to 20 (a Hessian-like spectrum, whose top Ritz
    values converge fast and so make plain Lanczos lose orthogonality), random eigenbasis."""
    g = torch.Generator().manual_seed(seed)
    ev = torch.cat([torch.rand(n - 10, generator=g, dtype=F64) * 0.1, torch.linspace(1, 20, 10)])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return ((q * ev) @ q.T).to(dtype)


def probe(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n,), generator=g) * 2 - 1).to(F64)


def count_reorthogonalizations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = partial._gram_schmidt

    def counted(w: torch.Tensor, basis: torch.Tensor) -> None:
        calls[0] += 1
        original(w, basis)

    monkeypatch.setattr(partial, "_gram_schmidt", counted)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_basis_stays_semi_orthogonal_with_few_reorthogonalizations(
    dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, steps = 1500, 100
    a = outlier_matrix(n, dtype)
    calls = count_reorthogonalizations(monkeypatch)
    _, _, q = lanczos_tridiagonal_partial(a, steps, probe(n), return_basis=True)
    assert q is not None and q.shape == (steps, n)
    loss = float((q @ q.T - torch.eye(steps, dtype=F64)).abs().max())
    assert loss <= math.sqrt(torch.finfo(dtype).eps)  # Simon's semi-orthogonality
    # reorthogonalized, but not at every step (44/100 in float64, 89/100 in float32 here: the
    # outliers 20x the bulk make orthogonality decay fast, and float32 rounding is counted
    # generously, see _NOISE)
    assert 0 < calls[0] <= 0.9 * steps


@pytest.mark.parametrize(("n", "low", "high", "steps"), [(300, -6, 3, 150), (500, -8, 4, 250)])
def test_float32_wide_spectrum_stays_semi_orthogonal(
    n: int, low: int, high: int, steps: int
) -> None:
    """Eigenvalues 10^low .. 10^high in float32: the local rounding eps ||H|| / beta_j nearly
    reaches sqrt(eps), and estimates that restart from eps after a Gram-Schmidt pass (or add
    too little rounding per step) fall behind: the basis collapses and Ritz values leave the
    spectrum (nodes up to 5495 for a top eigenvalue of 1000, before the fix)."""
    g = torch.Generator().manual_seed(n)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    a = ((q * torch.logspace(low, high, n, dtype=F64)) @ q.T).float()
    for seed in range(3):
        alpha, beta, basis = lanczos_tridiagonal_partial(
            a, steps, probe(n, seed), return_basis=True
        )
        assert basis is not None
        loss = float((basis @ basis.T - torch.eye(basis.shape[0], dtype=F64)).abs().max())
        assert loss <= math.sqrt(torch.finfo(torch.float32).eps)
        nodes, _ = gauss_quadrature(alpha, beta)
        assert float(nodes.max()) <= 10.0**high * (1 + 1e-5)
        assert float(nodes.min()) >= -1e-3


@pytest.mark.parametrize(
    ("dtype", "low", "high", "steps"), [(torch.float32, -3, 3, 200), (F64, -8, 4, 250)]
)
@pytest.mark.parametrize("sign", ["negative", "mixed"])
def test_negative_and_mixed_spectra_stay_semi_orthogonal(
    dtype: torch.dtype, low: int, high: int, steps: int, sign: str
) -> None:
    """Eigenvalues -10^high .. -10^low (or of both signs): one classical Gram-Schmidt pass
    against a semi-orthogonal basis leaves far more than the eps the estimates restart from,
    so the basis collapsed (float32: max |V V^T - I| = 0.9994, Ritz values in [-2589, 1454]
    for a spectrum in [-1000, -0.001]; float64: 4.6e-4 against sqrt(eps) = 1.5e-8), before
    two passes were made the rule."""
    n = 400
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    ev = -torch.logspace(low, high, n, dtype=F64)
    if sign == "mixed":
        ev[::2] *= -1
    a = (q * ev) @ q.T
    a = ((a + a.T) / 2).to(dtype)
    for seed in range(1, 4):
        alpha, beta, basis = lanczos_tridiagonal_partial(
            a, steps, probe(n, seed), return_basis=True
        )
        assert basis is not None
        loss = float((basis @ basis.T - torch.eye(basis.shape[0], dtype=F64)).abs().max())
        assert loss <= math.sqrt(torch.finfo(dtype).eps)
        nodes, _ = gauss_quadrature(alpha, beta)
        assert float(nodes.min()) >= float(ev.min()) * (1 + 1e-5)
        assert float(nodes.max()) <= float(ev.max()) + 1e-5 * float(ev.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_an_invariant_subspace_gives_the_same_measure_in_all_variants(dtype: torch.dtype) -> None:
    """A rank-2 matrix: the Krylov space of a vector has dimension 3. In float64 every variant
    stops there. In float32 a run ends only at a direction shorter than one rounding unit of
    ``||H||`` (ending at 64 of them cut runs on a Hessian's narrow bulk after 5 of 40 steps):
    the variants may go on in rounding noise (the plain one, without reorthogonalization,
    makes ghost copies), but the quadrature measure stays that of the probe."""
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 2, generator=g, dtype=F64)
    values = torch.tensor([3.0, 1.0], dtype=F64)
    a = (u * values) @ u.T
    z = torch.randn(50, generator=g, dtype=F64)
    ev, vecs = torch.linalg.eigh(a)
    exact = (vecs.T @ z) ** 2 / float(z @ z)  # the probe's weights on the eigenvalues
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for tridiagonal in (
        lanczos_tridiagonal,
        lanczos_tridiagonal_partial,
        lanczos_tridiagonal_plain,
    ):
        alpha, beta, _ = tridiagonal(a.to(dtype), 40, z)
        if dtype == F64:
            assert alpha.numel() == 3
        nodes, weights = gauss_quadrature(alpha, beta)
        for value in ev[-2:]:  # each nonzero eigenvalue's weight, ghosts included
            near = (nodes - value).abs() <= 1e-5 * float(value)
            assert float(weights[near].sum()) == pytest.approx(
                float(exact[(ev - value).abs() <= 1e-9 * float(value)].sum()), abs=tol
            )
        zero = nodes.abs() <= 1e-5 * float(ev[-1])
        assert float(weights[zero].sum()) == pytest.approx(float(exact[:-2].sum()), abs=tol)
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)


def test_without_reorthogonalization_orthogonality_would_be_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The estimates do trigger: with the Gram–Schmidt step disabled the basis degrades."""
    n, steps = 1500, 100
    monkeypatch.setattr(partial, "_gram_schmidt", lambda w, basis: None)
    _, _, q = lanczos_tridiagonal_partial(
        outlier_matrix(n, F64), steps, probe(n), return_basis=True
    )
    assert q is not None
    assert float((q @ q.T - torch.eye(steps, dtype=F64)).abs().max()) > 1e-2


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_quadrature_moments_equal_full_reorthogonalization(dtype: torch.dtype, tol: float) -> None:
    n, steps = 1500, 60
    a = outlier_matrix(n, dtype)
    a64 = a.to(F64)
    z = probe(n)
    full = gauss_quadrature(*lanczos_tridiagonal(a, steps, z)[:2])
    part = gauss_quadrature(*lanczos_tridiagonal_partial(a, steps, z)[:2])
    x = z / z.norm()
    u = x.clone()
    for p in range(12):  # exact moments z^T A^p z / ||z||^2 of the probe's spectral measure
        exact = float(x @ u)
        for nodes, weights in (full, part):
            assert abs(float((weights * nodes**p).sum()) - exact) <= tol * abs(exact)
        u = a64 @ u
    torch.testing.assert_close(part[0][-5:], full[0][-5:], rtol=tol, atol=0)


def test_invariant_start_vector_stops_early() -> None:
    d = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=F64))
    v = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    alpha, beta, _ = lanczos_tridiagonal_partial(d, 6, v)
    assert alpha.shape == (2,) and beta.shape == (1,)
    nodes, weights = gauss_quadrature(alpha, beta)
    torch.testing.assert_close(nodes, torch.tensor([1.0, 2.0], dtype=F64))
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=F64))


def test_full_dimension_recovers_the_spectrum() -> None:
    n = 30
    a = outlier_matrix(n + 10, F64)[:n, :n]  # any symmetric matrix
    alpha, beta, _ = lanczos_tridiagonal_partial(a, n, probe(n))
    nodes, _ = gauss_quadrature(alpha, beta)
    torch.testing.assert_close(nodes, torch.linalg.eigvalsh(a), rtol=0, atol=1e-10)


def test_slq_partial_matches_full() -> None:
    a = outlier_matrix(800, F64)
    full = slq_spectrum(a, num_runs=3, num_steps=40, generator=torch.Generator().manual_seed(3))
    part = slq_spectrum(
        a,
        num_runs=3,
        num_steps=40,
        generator=torch.Generator().manual_seed(3),
        reorthogonalization="partial",
    )
    for p in range(8):
        torch.testing.assert_close(
            (part.weights * part.nodes**p).sum(1), (full.weights * full.nodes**p).sum(1)
        )


def test_bad_input() -> None:
    a = outlier_matrix(40, F64)
    with pytest.raises(SharpdimError, match="num_steps"):
        lanczos_tridiagonal_partial(a, 0, probe(40))
    with pytest.raises(SharpdimError, match="shape"):
        lanczos_tridiagonal_partial(a, 5, probe(41))
    with pytest.raises(SharpdimError, match="zero or not finite"):
        lanczos_tridiagonal_partial(a, 5, torch.zeros(40, dtype=F64))
    with pytest.raises(SharpdimError, match="reorthogonalization"):
        slq_spectrum(a, num_runs=1, num_steps=5, reorthogonalization="bogus")
    # were a TypeError (comparing "3" with 1, range(2.5)) and a RuntimeError (norm of ints)
    for method in (lanczos_tridiagonal, lanczos_tridiagonal_partial):
        for bad in (2.5, "3"):
            with pytest.raises(SharpdimError, match=r"^num_steps must be an integer >= 1"):
                method(a, bad, probe(40))
        ones = torch.ones(40, dtype=torch.int64)
        by_ints, by_floats = method(a, 5, ones), method(a, 5.0, ones.to(F64))
        torch.testing.assert_close(by_ints[0], by_floats[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    "method", [lanczos_tridiagonal, lanczos_tridiagonal_partial, lanczos_tridiagonal_plain]
)
def test_workspace_contents_are_never_read(method: object) -> None:
    """A NaN-filled workspace (reused across SLQ runs) gives the same coefficients."""
    n, steps = 300, 40
    a = outlier_matrix(n, F64)
    fresh = method(a, steps, probe(n))  # type: ignore[operator]
    work = torch.full((steps + 5, n), float("nan"), dtype=F64)
    reused = method(a, steps, probe(n), workspace=work)  # type: ignore[operator]
    torch.testing.assert_close(reused[0], fresh[0], rtol=0, atol=0)
    torch.testing.assert_close(reused[1], fresh[1], rtol=0, atol=0)
    rows = 3 if method is lanczos_tridiagonal_plain else steps
    assert not bool(torch.isnan(work[:rows]).any())  # the basis was built in the workspace


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_plain_lanczos_loses_orthogonality_but_keeps_the_measure(
    dtype: torch.dtype, tol: float
) -> None:
    """Greenbaum (1989): without reorthogonalization the top eigenvalue gets ghost copies,
    yet the Gauss rule still has the probe measure's moments and the extreme eigenvalue."""
    n, steps = 1500, 100
    a = outlier_matrix(n, dtype)
    z = probe(n)
    alpha, beta, q = lanczos_tridiagonal_plain(a, steps, z, return_basis=True)
    assert q is not None
    assert float((q @ q.T - torch.eye(steps, dtype=F64)).abs().max()) > 0.5
    nodes, weights = gauss_quadrature(alpha, beta)
    assert int((nodes - 20.0).abs().lt(1e-4).sum()) >= 2  # a ghost of the top eigenvalue
    x = (z / z.norm()).to(F64)
    u = x.clone()
    for p in range(12):
        exact = float(x @ u)
        assert abs(float((weights * nodes**p).sum()) - exact) <= tol * abs(exact)
        u = a.to(F64) @ u
    assert float(nodes[-1]) == pytest.approx(20.0, rel=tol)


def test_plain_lanczos_keeps_three_vectors() -> None:
    """Without ``return_basis`` the recurrence fits in a 3-row workspace: O(n) memory."""
    n, steps = 300, 40
    a = outlier_matrix(n, F64)
    work = torch.full((3, n), float("nan"), dtype=F64)
    alpha, beta, _ = lanczos_tridiagonal_plain(a, steps, probe(n), workspace=work)
    full_alpha, full_beta, _ = lanczos_tridiagonal_plain(a, steps, probe(n), return_basis=True)
    assert alpha.shape == (steps,) and not bool(torch.isnan(work).any())
    torch.testing.assert_close(alpha, full_alpha, rtol=0, atol=0)
    torch.testing.assert_close(beta, full_beta, rtol=0, atol=0)


def test_slq_plain_matches_full_moments() -> None:
    a = outlier_matrix(800, F64)
    runs = {
        reorth: slq_spectrum(
            a,
            num_runs=3,
            num_steps=60,
            generator=torch.Generator().manual_seed(3),
            reorthogonalization=reorth,
        )
        for reorth in ("full", "none")
    }
    full, plain = runs["full"], runs["none"]
    for p in range(8):
        torch.testing.assert_close(
            (plain.weights * plain.nodes**p).sum(1), (full.weights * full.nodes**p).sum(1)
        )
