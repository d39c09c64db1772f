"""The shared argument checks: ordered number lists, counts beyond float range, bools."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from sharpdim.checks import check_betas, check_count, check_numbers, check_seed, real_tensor
from sharpdim.errors import SharpdimError


def test_sets_and_scalars_are_not_ordered_number_lists():
    # a set's order is not the user's: {0.999, 0.9} came back as b1 = 0.999
    for betas in ({0.999, 0.9}, frozenset({0.9, 0.999}), {0.9: 0, 0.999: 1}):
        with pytest.raises(SharpdimError, match="pair"):
            check_betas(betas)
    assert check_betas(np.array([0.9, 0.999])) == (0.9, 0.999)
    for values in ({1.0, 2.0}, torch.tensor(1.0), np.array(1.0)):
        with pytest.raises(SharpdimError, match="list of numbers"):
            check_numbers(values, "xs", "any", "[1]")
    assert check_numbers(torch.tensor([1.0, 2.0]), "xs", "any", "[1]") == [1.0, 2.0]


def test_counts_beyond_float_range_are_refused_in_one_line():
    huge = Fraction(10**400, 1)
    for check in (lambda: check_count(huge, "n"), lambda: check_seed(huge)):
        with pytest.raises(SharpdimError, match="must be"):
            check()
    assert check_count(Fraction(10, 2), "n") == 5


@pytest.mark.parametrize(
    "values",
    [
        [True, 2.0],
        [1, True],
        [np.True_, 3],
        [torch.tensor(True), torch.tensor(2.0)],
        [torch.tensor(1.0), True],
        [[1.0, 2.0], [False, 3.0]],
        (np.array([True, False]), np.array([1.0, 2.0])),
    ],
)
def test_a_bool_among_numbers_is_refused(values):
    with pytest.raises(SharpdimError, match="bool"):
        real_tensor(values, "x")


def test_real_tensor_keeps_plain_numbers():
    assert real_tensor([1, 2.5], "x").tolist() == [1.0, 2.5]
    assert real_tensor([torch.tensor(1.0), 2], "x").tolist() == [1.0, 2.0]
