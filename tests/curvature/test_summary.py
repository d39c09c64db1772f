"""``spectrum_summary``: its numbers against a matrix of known spectrum."""

from __future__ import annotations

import pytest
import torch

from sharpdim.curvature.summary import spectrum_summary
from tests.curvature.test_input_checks import CountingOperator
from tests.curvature.test_lanczos import with_spectrum


def test_summary_of_a_known_spectrum() -> None:
    """Eigenvalues linspace(-1, 5, 30): the top 3, the bottom one, the trace 60 (exact: the
    Hutch++ sketch of 90 products spans all of R^30) and a density of unit mass."""
    ev = torch.linspace(-1, 5, 30, dtype=torch.float64)
    s = spectrum_summary(
        with_spectrum(ev),
        k=3,
        trace_matvecs=90,
        num_runs=4,
        num_steps=30,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(s.top_eigenvalues, ev.flip(0)[:3], rtol=0, atol=1e-8)
    assert bool(s.converged.all())
    assert s.bottom_eigenvalue == pytest.approx(-1.0, abs=1e-6) and s.bottom_converged
    assert s.trace == pytest.approx(60.0, abs=1e-9)
    assert float(torch.trapezoid(s.density, s.grid)) == pytest.approx(1.0, abs=1e-6)
    assert s.num_params == 30


def test_an_unconverged_smallest_eigenvalue_is_flagged_and_its_cost_bounded() -> None:
    """An ill-conditioned spectrum (smallest 1.5e-7, next 1e-6): the smallest value came back
    several times too large with no flag, after 1,000 products, most of the summary's cost."""
    values = torch.cat([torch.tensor([1.5e-7]), torch.logspace(-6, 0, 1999)]).double()
    op = CountingOperator(2000)
    op.diag = values
    s = spectrum_summary(
        op, k=2, num_runs=2, num_steps=10, generator=torch.Generator().manual_seed(0)
    )
    assert not s.bottom_converged and s.to_dict()["bottom_converged"] is False
    assert s.bottom_eigenvalue > 1.5e-7  # (a Ritz value is never below the smallest)
    assert op.products <= 200 + 200 + 90 + 2 * 10  # top (converges early), bottom, trace, SLQ
    other = CountingOperator(2000)
    other.diag = values
    short = spectrum_summary(
        other, k=2, num_runs=2, num_steps=10, bottom_max_iter=5, bottom_tol=1e-3
    )
    assert not short.bottom_converged
