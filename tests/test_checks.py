"""The shared argument checks: ordered number lists, counts beyond float range, bools."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

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


def _flag_calls() -> dict[str, Any]:
    """Public calls with a bool option, each given the string "no" (truthy: it meant True)."""
    from torch import nn

    from sharpdim.curvature.dense import dense_hessian
    from sharpdim.curvature.hessian import HessianOperator
    from sharpdim.curvature.lanczos import lanczos_eigenvalues, lanczos_tridiagonal
    from sharpdim.dynamics.lyapunov import lyapunov_spectrum
    from sharpdim.training.datasets import load_dataset, make_modular_dataset
    from sharpdim.training.loop import TrainConfig, train
    from sharpdim.training.monitor import upcoming_adam_preconditioner
    from sharpdim.training.optimizers import adam_preconditioner
    from sharpdim.training.trajectory import capture_backward

    model = nn.Linear(2, 1).double()
    x, y = torch.ones(3, 2, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)

    def loss(m: Any, b: Any) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    a = torch.eye(3, dtype=torch.float64)
    adam = torch.optim.Adam(model.parameters())
    data = load_dataset("digits", n_train=20, n_test=10)
    return {
        "reuse_graph": lambda: HessianOperator(model, loss, (x, y), reuse_graph="no"),
        "symmetrize": lambda: dense_hessian(model, loss, (x, y), symmetrize="no"),
        "return_eigenvectors": lambda: lanczos_eigenvalues(a, k=1, return_eigenvectors="no"),
        "return_basis": lambda: lanczos_tridiagonal(a, 2, torch.ones(3), return_basis="no"),
        "vectorize": lambda: lyapunov_spectrum(torch.tanh, torch.ones(2), 1, 2, vectorize="no"),
        "drop_last": lambda: next(data.batches(8, drop_last="no")),
        "equals_token": lambda: make_modular_dataset(p=5, equals_token="no"),
        "bias_correction": lambda: adam_preconditioner(adam, bias_correction="no"),
        "bias_correction ": lambda: upcoming_adam_preconditioner(
            adam, list(model.parameters()), bias_correction="no"
        ),
        "include_final": lambda: capture_backward(
            model, data, TrainConfig(steps=1), 1, include_final="no"
        ),
        "progress": lambda: train(model, data, TrainConfig(steps=1), progress="no"),
    }


@pytest.mark.parametrize("name", sorted(_flag_calls()))
def test_bool_options_refuse_strings(name: str) -> None:
    """A string such as "no" is truthy: these options silently read it as True."""
    with pytest.raises(SharpdimError, match=rf"^{name.strip()} must be True or False, got 'no'"):
        _flag_calls()[name]()


def test_the_returned_float_obeys_the_rule():
    """The range was tested on the value, but its float returned: Fraction(1, 10**400) > 0
    came back as lr 0.0, and a beta just below 1 as 1.0 (torch's Adam then raised)."""
    from sharpdim.checks import check_number

    with pytest.raises(SharpdimError, match=r"^lr must be a finite number > 0"):
        check_number(Fraction(1, 10**400), "lr", "> 0", "0.1")
    with pytest.raises(SharpdimError, match=r"^betas must be a finite number in \[0, 1\)"):
        check_betas((0.9, Fraction(1) - Fraction(1, 10**20)))
    assert check_betas((0.9, Fraction(999, 1000))) == (0.9, 0.999)


def test_counts_are_whole_exactly():
    """Fraction(10**17 + 1, 10**17) rounds to the whole float 1.0 and was taken as 1."""
    with pytest.raises(SharpdimError, match=r"^n must be an integer >= 1"):
        check_count(Fraction(10**17 + 1, 10**17), "n")
    assert check_count(np.float64(7.0), "n") == 7 and check_count(Fraction(14, 2), "n") == 7


def test_conj_and_negative_views_are_digested_by_their_values():
    """A conj or negative view failed .view(uint8) and was hashed by dtype and shape alone:
    different contents, one digest (a checkpoint could not see their bytes change)."""
    from sharpdim.training.content_digest import content_digest

    a, b = torch.tensor([1 + 2j, 3 + 4j]), torch.tensor([1 + 5j, 3 + 9j])
    assert content_digest(a.conj()) != content_digest(b.conj())
    assert content_digest(a.conj()) == content_digest(a.conj().resolve_conj())
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 7.0])
    assert content_digest(x._neg_view()) != content_digest(y._neg_view())
    assert content_digest(x._neg_view()) == content_digest(-x)


def test_sizes_beyond_int64_are_refused_in_one_line_and_upper_bounds_are_not() -> None:
    """build_mlp(width=2**63) failed in torch.empty with a 12-line TypeError; an upper bound
    such as max_iter may be huge (no limit)."""
    from sharpdim.training.models import build_mlp

    assert check_count(10**19, "max_iter") == 10**19
    with pytest.raises(
        SharpdimError, match=r"^width must be at most 2\*\*63 - 1 \(sizes are int64\)"
    ):
        build_mlp(3, 1, width=2**63)


def test_sparse_tensors_are_read_by_their_values() -> None:
    """A sparse tensor reached reshape / ne inside the callers: raw torch errors."""
    import sharpdim

    exponents = torch.tensor([0.5, 0.1, -0.2, -1.0], dtype=torch.float64)
    assert torch.equal(real_tensor(exponents.to_sparse(), "x"), exponents)
    sparse = sharpdim.kaplan_yorke_dimension(exponents.to_sparse())
    assert sparse.dimension == sharpdim.kaplan_yorke_dimension(exponents).dimension == 3.4


def test_bytearray_and_memoryview_are_not_read_as_byte_codes() -> None:
    for text in (bytearray(b"\x02\x03"), memoryview(b"\x02\x03")):
        with pytest.raises(SharpdimError, match="must be a list of numbers"):
            check_numbers(text, "init", "> 0", "(2, 0.3)")


def test_messages_describe_arrays_in_one_line() -> None:
    """The value's repr went into the message: labels passed as lr printed 300 of them over
    13 lines, and 10**400 all its digits."""
    from sharpdim.checks import check_flag, check_number

    labels = torch.arange(300)
    for call, start in [
        (
            lambda: check_number(labels, "lr", "> 0", "0.1"),
            "lr must be a finite number > 0, got a Tensor of shape (300,)",
        ),
        (
            lambda: check_count(np.ones((7, 3)), "num_matvecs"),
            "num_matvecs must be an integer >= 1, got a ndarray of shape (7, 3)",
        ),
        (
            lambda: check_flag(np.zeros(20), "exact"),
            "exact must be True or False, got a ndarray of shape (20,)",
        ),
        (
            lambda: check_betas(torch.zeros(3, 3)),
            "betas must be a pair (b1, b2), got a Tensor of shape (3, 3)",
        ),
        (
            lambda: check_number(10**400, "lr", "> 0", "0.1"),
            "lr must be a finite number > 0, got 1000",
        ),
    ]:
        with pytest.raises(SharpdimError) as err:
            call()
        assert str(err.value).startswith(start) and "\n" not in str(err.value)
        assert len(str(err.value)) < 160


def test_overflowing_masked_decimal_longdouble_and_meta_values() -> None:
    """real_tensor let OverflowError through for 10**400, read masked entries' hidden data,
    refused Decimal and float128 arrays as 'not real numbers', and meta tensors raised torch's
    errors."""
    from decimal import Decimal

    from sharpdim.checks import check_number

    for big in ([0.5, -(10**400)], [Fraction(10**400), 1], 10**400):
        with pytest.raises(SharpdimError, match=r"^x holds a number beyond float64's range"):
            real_tensor(big, "x")
    masked = np.ma.masked_array([0.5, 100.0, -1.0], mask=[0, 1, 0])
    with pytest.raises(SharpdimError, match=r"^x is a masked array with masked entries"):
        real_tensor(masked, "x")
    assert real_tensor(np.ma.masked_array([0.5, 1.0]), "x").tolist() == [0.5, 1.0]  # none masked
    with pytest.raises(SharpdimError, match=r"^a masked value has no number"):
        check_count(np.ma.masked_array(3, mask=True), "n")
    assert real_tensor([Decimal("0.5"), Decimal("-1")], "x").tolist() == [0.5, -1.0]
    assert real_tensor(np.array([0.5, -1], dtype=np.longdouble), "x").tolist() == [0.5, -1.0]
    assert check_number(Decimal("0.1"), "lr", "> 0", "0.1") == 0.1
    assert check_count(Decimal("5"), "n") == 5
    with pytest.raises(SharpdimError, match=r"^got a meta tensor, which holds no data"):
        check_count(torch.tensor(3.0, device="meta"), "n")
    with pytest.raises(SharpdimError, match=r"^x is a meta tensor, which holds no data"):
        real_tensor(torch.zeros(3, device="meta"), "x")


def test_decimals_are_checked_exactly_and_messages_show_what_was_passed() -> None:
    """Decimals were rounded to float before the exact checks (1.00000000000000001 counted as
    1, 2**53 + 1 as 2**53), sNaN raised a bare ValueError, 1e400 in a list became inf; the
    shortened reprs cut a Fraction to 30 characters and merged a string's spaces."""
    from decimal import Decimal

    from sharpdim.checks import check_flag, check_number

    with pytest.raises(SharpdimError, match=r"got Decimal\('1.00000000000000001'\)"):
        check_count(Decimal("1.00000000000000001"), "steps")
    assert check_count(Decimal(2**53 + 1), "steps") == 2**53 + 1
    with pytest.raises(
        SharpdimError, match=r"^lr must be a finite number > 0, got Decimal\('sNaN'\)"
    ):
        check_number(Decimal("sNaN"), "lr", "> 0", "0.1")
    with pytest.raises(
        SharpdimError, match=r"^eps must be a finite number > 0, got Decimal\('1E-400'\)"
    ):
        check_number(Decimal("1e-400"), "eps", "> 0", "1e-8")
    for big in ([Decimal("1e400")], np.array(["1e400"], dtype=np.longdouble)):
        if big.__class__ is np.ndarray and np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
            continue  # (a platform whose long double is float64: 1e400 is inf already)
        with pytest.raises(SharpdimError, match=r"^x holds a number beyond float64's range"):
            real_tensor(big, "x")
    with pytest.raises(SharpdimError) as err:
        check_count(Fraction(10**17 + 1, 10**17), "steps")
    assert "Fraction(100000000000000001, 100000000000000000)" in str(err.value)
    with pytest.raises(SharpdimError, match=r"got 'yes  please'$"):
        check_flag("yes  please", "exact")
