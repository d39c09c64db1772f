"""Weighted point measures: quantiles and Silverman's bandwidth."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpdim.curvature.measure import (
    equal_mass_cell_means,
    silverman_bandwidth,
    weighted_quantiles,
)
from sharpdim.errors import SharpdimError

F64 = torch.float64


@pytest.mark.parametrize(
    "levels", [[0.25, 0.5, 0.75], (0.25, 0.5, 0.75), np.array([0.25, 0.5, 0.75])]
)
def test_weighted_quantiles_accept_a_sequence_of_levels(levels: object) -> None:
    got = weighted_quantiles([1.0, 2, 3, 4], [1, 1, 1, 1], levels)
    assert got.dtype == F64 and got.tolist() == [1.0, 2.0, 3.0]


# atoms 0, 1, 2, 5 with masses .1, .2, .3, .4: mean 2.8, variance 3.56, IQR 4 (from 1 to 5),
# n_eff = 1 / 0.3; the rule takes the std
_V = torch.tensor([0.0, 1, 2, 5], dtype=F64)
_P = torch.tensor([1.0, 2, 3, 4], dtype=F64)
_H = 0.9 * math.sqrt(3.56) * (1 / 0.3) ** -0.2


@pytest.mark.parametrize("c", [1e-300, 1e-160, 1.0, 1e160, 1e300])
def test_silverman_bandwidth_scales_with_the_atoms(c: float) -> None:
    # squares of the deviations used to overflow at 1e160 (2.11 instead of 1.33)
    assert silverman_bandwidth(_V * c, _P) / c == pytest.approx(_H, rel=1e-14)


def test_silverman_bandwidth_of_tiny_atoms() -> None:
    # std 0.5e-300 (it underflowed to 0), below IQR / 1.34 = 1e-300 / 1.34; n_eff = 2
    h = silverman_bandwidth(torch.tensor([1e-300, 2e-300], dtype=F64), torch.ones(2))
    assert h == pytest.approx(0.9 * 0.5e-300 * 2**-0.2, rel=1e-14)
    assert silverman_bandwidth(torch.zeros(3, dtype=F64), torch.ones(3)) == 0.0


def test_quantile_levels_outside_zero_one_are_refused() -> None:
    """A NaN level returned the largest atom; 1.5 was clamped to 1 without a word."""
    values, masses = torch.tensor([1.0, 2.0, 3.0]), torch.ones(3)
    for bad in ([math.nan], [1.5], [-0.1]):
        with pytest.raises(SharpdimError, match=r"^levels must lie in \[0, 1\]"):
            weighted_quantiles(values, masses, bad)
    assert weighted_quantiles(values, masses, [0.0, 0.5, 1.0]).tolist() == [1.0, 2.0, 3.0]


def test_masses_whose_total_overflows_are_refused() -> None:
    """float(m.sum()) > 0 let inf through: the CDF was NaN, the median of three equal atoms
    came out 2 instead of 1, and silverman_bandwidth divided by zero."""
    atoms, heavy = [0.0, 1.0, 2.0], [1e308] * 3
    assert weighted_quantiles(atoms, [1.0] * 3, [0.5]).tolist() == [1.0]
    for call in (
        lambda: weighted_quantiles(atoms, heavy, [0.5]),
        lambda: silverman_bandwidth(atoms, heavy),
    ):
        with pytest.raises(SharpdimError, match=r"^the masses sum to inf"):
            call()


def _running_sum(values: torch.Tensor, masses: torch.Tensor, x: float) -> float:
    """Integral over [0, x] of the descending quantile function (atoms laid end to end)."""
    total, s = 0.0, 0.0
    for v, m in sorted(zip(values.tolist(), masses.tolist(), strict=True), reverse=True):
        take = min(m, max(x - total, 0.0))
        s, total = s + take * v, total + m
    return s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cell_means_give_the_measures_running_sum_at_every_cell_edge(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(40, generator=gen, dtype=torch.float64)
    masses = torch.rand(40, generator=gen, dtype=torch.float64)
    masses[::7] = 0.0  # atoms of no mass take no room
    cells = 17
    means = equal_mass_cell_means(values, masses, cells)
    width = float(masses.sum()) / cells
    assert bool((means[:-1] >= means[1:]).all())  # descending
    sums = torch.cumsum(means * width, 0).tolist()
    for i, got in enumerate(sums, start=1):
        assert got == pytest.approx(_running_sum(values, masses, i * width), abs=1e-12)


def test_cell_means_of_unit_atoms_are_the_atoms_sorted() -> None:
    atoms = [0.3, -2.0, 5.0, 0.3, -1e-3]
    got = equal_mass_cell_means(atoms, [1.0] * 5, 5)
    assert got.tolist() == sorted(atoms, reverse=True)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_cell_means_refuse_a_bad_number_of_cells(bad: object) -> None:
    with pytest.raises(SharpdimError, match="num_cells must be an integer >= 1"):
        equal_mass_cell_means([1.0], [1.0], bad)  # type: ignore[arg-type]


def test_cell_means_stay_among_their_atoms_and_descend() -> None:
    """Pieces divided by the nominal cell width put means of two atoms 1.0 at 1.0000000000066
    (M = 10^5), values near the float maximum overflowed to inf, and the means could rise by
    an ulp (review of this session's diff)."""
    assert bool((equal_mass_cell_means([1.0, 1.0], [1.0, 1.0], 10**5) == 1.0).all())
    big = equal_mass_cell_means([1.7e308, -1.7e308], [1.0, 1.0], 3)
    assert big.tolist() == pytest.approx([1.7e308, 0.0, -1.7e308], abs=1e293)
    gen = torch.Generator().manual_seed(3)
    means = equal_mass_cell_means(
        torch.randn(500, generator=gen), torch.rand(500, generator=gen), 7919
    )
    assert bool((means[:-1] >= means[1:]).all())


def test_cell_means_of_masses_near_the_smallest_float() -> None:
    """Masses of 1e-310 (subnormal) are scaled by a power of two first, so the edges are not
    lost to underflow: the cells of (1, -3) with equal masses are 1 and -3."""
    got = equal_mass_cell_means([1.0, -3.0], [1e-310, 1e-310], 4)
    assert got.tolist() == [1.0, 1.0, -3.0, -3.0]
