"""Paper Def. 4.2: the worked example and every edge case, plus the measure form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sharpdim.dimension.kaplan_yorke import kaplan_yorke_dimension, kaplan_yorke_measure
from sharpdim.errors import SharpdimError


def test_worked_example_gd_quadratic() -> None:
    # GD on 0.5 x^T diag(3, 1, 0.1) x with eta = 0.9: exponents ln|1 - 0.9 alpha|
    lam = [math.log(abs(1 - 0.9 * a)) for a in (3.0, 1.0, 0.1)]
    r = kaplan_yorke_dimension(lam)
    assert r.exponents.tolist() == pytest.approx([0.53063, -0.09431, -2.30259], abs=5e-6)
    assert r.j_star == 2
    assert r.dimension == pytest.approx(2.18949, abs=5e-6)
    s = sorted(lam, reverse=True)
    assert r.dimension == pytest.approx(2 + (s[0] + s[1]) / abs(s[2]), rel=1e-15)


def test_order_does_not_matter() -> None:
    a = kaplan_yorke_dimension([-2.30259, 0.53063, -0.09431])
    b = kaplan_yorke_dimension([0.53063, -0.09431, -2.30259])
    assert a.dimension == b.dimension and a.j_star == b.j_star


def test_lambda1_negative_gives_zero() -> None:
    r = kaplan_yorke_dimension([-0.1, -0.5, -3.0])
    assert r.dimension == 0.0 and r.j_star == 0


def test_all_partial_sums_nonnegative_gives_d() -> None:
    r = kaplan_yorke_dimension([1.0, 0.5, -1.2])  # sums 1, 1.5, 0.3
    assert r.dimension == 3.0 and r.j_star == 3
    assert kaplan_yorke_dimension([0.0, 0.0]).dimension == 2.0  # sums exactly 0 count
    assert kaplan_yorke_dimension([0.7]).dimension == 1.0
    assert kaplan_yorke_dimension([-0.7]).dimension == 0.0


def test_lambda1_zero_is_not_the_zero_case() -> None:
    r = kaplan_yorke_dimension([0.0, -1.0])
    assert r.j_star == 1 and r.dimension == 1.0


def test_partial_sum_exactly_zero_gives_integer() -> None:
    r = kaplan_yorke_dimension([1.0, -1.0, -5.0])  # S_2 = 0 >= 0: j* = 2, SD = 2 + 0/5
    assert r.j_star == 2 and r.dimension == 2.0


def test_fractional_part_between_j_and_j_plus_1() -> None:
    r = kaplan_yorke_dimension([2.0, -0.5, -1.0, -4.0])  # S = 2, 1.5, 0.5, -3.5
    assert r.j_star == 3
    assert r.dimension == pytest.approx(3 + 0.5 / 4.0)


def test_bad_input() -> None:
    with pytest.raises(SharpdimError):
        kaplan_yorke_dimension([])
    with pytest.raises(SharpdimError):
        kaplan_yorke_dimension([0.1, float("nan")])
    with pytest.raises(SharpdimError):
        kaplan_yorke_measure([0.1, 0.2], [1.0])
    with pytest.raises(SharpdimError):
        kaplan_yorke_measure([0.1], [-1.0])
    with pytest.raises(SharpdimError):
        kaplan_yorke_measure([0.1], [0.0])


def test_measure_with_unit_masses_equals_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        lam = torch.randn(int(torch.randint(1, 30, (1,), generator=gen)), generator=gen)
        lam = lam + 0.5 * torch.rand(1, generator=gen)
        a = kaplan_yorke_dimension(lam)
        b = kaplan_yorke_measure(lam, torch.ones_like(lam))
        assert b.dimension == pytest.approx(a.dimension, abs=1e-12)
        assert b.j_star == a.j_star


def test_measure_splitting_atoms_leaves_dimension_unchanged() -> None:
    lam = torch.tensor([0.9, 0.2, -0.3, -0.8, -2.0], dtype=torch.float64)
    a = kaplan_yorke_dimension(lam).dimension
    # each exponent split into 4 atoms of mass 1/4
    b = kaplan_yorke_measure(lam.repeat_interleave(4), torch.full((20,), 0.25)).dimension
    assert b == pytest.approx(a, abs=1e-12)
    # merging equal neighbours into one atom of mass 2
    c = kaplan_yorke_measure([1.0, -1.5], [2.0, 3.0])
    assert c.dimension == pytest.approx(kaplan_yorke_dimension([1, 1, -1.5, -1.5, -1.5]).dimension)


def test_measure_zero_and_full_cases() -> None:
    assert kaplan_yorke_measure([-0.1, -1.0], [3.0, 1.0]).dimension == 0.0
    r = kaplan_yorke_measure([0.5, -0.1], [1.5, 2.5])
    assert r.dimension == 4.0 and r.total_mass == 4.0
    # a zero-mass positive atom does not count as lambda_1
    assert kaplan_yorke_measure([5.0, -1.0], [0.0, 2.0]).dimension == 0.0


@pytest.mark.parametrize(
    ("exponents", "match"),
    [
        ([[0.5, -1.0], [0.3, -0.9]], r"shape \(2, 2\): pass one vector"),
        (torch.zeros(2, 1, 3), r"shape \(2, 1, 3\)"),
        ([[1.0, 2.0], [3.0]], "not a numeric vector"),
        ("abc", "not a numeric vector"),
    ],
)
def test_dimension_needs_one_vector(exponents: object, match: str) -> None:
    with pytest.raises(SharpdimError, match=match) as err:
        kaplan_yorke_dimension(exponents)
    assert "\n" not in str(err.value)
    assert kaplan_yorke_dimension(0.5).dimension == 1.0  # a scalar is one exponent


def test_complex_bool_and_nan_mass_inputs_are_refused_with_their_own_hint():
    """A complex spectrum lost its imaginary part with only a torch warning (1.5 returned for
    [0.5+3j, -1]); NaN masses were told to guard logarithms they do not have."""
    with pytest.raises(
        SharpdimError,
        match=r"^`exponents` must be real numbers \(a tensor or array\), got torch.complex64",
    ):
        kaplan_yorke_dimension(torch.tensor([0.5 + 3j, -1 + 0j]))
    with pytest.raises(SharpdimError, match=r"^`exponents` must be real numbers .* got torch.bool"):
        kaplan_yorke_dimension(True)
    with pytest.raises(SharpdimError, match=r"^`masses` holds NaN or inf: pass finite weights$"):
        kaplan_yorke_measure([0.1, -1.0], [1.0, math.nan])
    with pytest.raises(SharpdimError, match=r"^`values` holds NaN or inf: guard the logarithms"):
        kaplan_yorke_measure([0.1, math.nan], [1.0, 1.0])
    # +inf is an overflow, which guarding ln(sigma) does not cure (the hint said it would)
    with pytest.raises(SharpdimError, match=r"^`exponents` holds NaN or inf: an exponent overf"):
        kaplan_yorke_dimension([math.inf, -1.0])
    with pytest.raises(SharpdimError, match=r"holds NaN or inf: guard the logarithms"):
        kaplan_yorke_dimension([0.5, -math.inf])


def test_a_list_of_tensors_that_require_grad_is_read() -> None:
    a = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert kaplan_yorke_dimension([a, b]).dimension == pytest.approx(1.5, rel=1e-15)
    assert kaplan_yorke_dimension([0.53063, -0.09431, -2.30259]).exponents.dtype == torch.float64


def test_descending_numpy_views_are_read() -> None:
    """np.sort(x)[::-1], numpy's way to sort descending, is a view with a negative stride that
    torch cannot wrap; it (and a big-endian array) was refused as 'not a numeric vector'."""
    lam = np.array([-2.30259, 0.53063, -0.09431])
    expected = kaplan_yorke_dimension(lam).dimension
    assert kaplan_yorke_dimension(np.sort(lam)[::-1]).dimension == expected
    assert kaplan_yorke_dimension(lam.astype(">f8")).dimension == expected
    assert expected == pytest.approx(2.18949, abs=1e-5)
