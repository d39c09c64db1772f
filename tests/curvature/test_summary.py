"""``spectrum_summary``: its numbers against a matrix of known spectrum."""

from __future__ import annotations

import pytest
import torch

from sharpdim.curvature.summary import spectrum_summary
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
    assert s.bottom_eigenvalue == pytest.approx(-1.0, abs=1e-6)
    assert s.trace == pytest.approx(60.0, abs=1e-9)
    assert float(torch.trapezoid(s.density, s.grid)) == pytest.approx(1.0, abs=1e-6)
    assert s.num_params == 30
