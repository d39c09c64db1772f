"""Sizes that do not fit a dataset: the one-line error says which sizes would."""

import pytest

from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import load_dataset


@pytest.mark.parametrize(
    ("name", "sizes", "message"),
    [
        (
            "digits",
            {"n_train": 1501},
            "n_train=1501, n_test=297 do not fit in the 1797 examples: choose "
            "0 <= n_test < 1797 and 1 <= n_train <= 1797 - n_test (here 1500)",
        ),
        (
            "modular",
            {"n_train": 9410},  # the default test set (the rest of the pairs) is empty
            "n_train=9410, n_test=0 do not fit in the 9409 examples: choose "
            "0 <= n_test < 9409 and 1 <= n_train <= 9409 - n_test (here 9409)",
        ),
        (
            "digits",
            {"n_train": 10, "n_test": -1},
            "n_test must be an integer >= 0, got -1: pass e.g. n_test=200",
        ),
        (
            "digits",
            {"n_train": 1000, "n_test": 1000},
            "n_train=1000, n_test=1000 do not fit in the 1797 examples: choose "
            "0 <= n_test < 1797 and 1 <= n_train <= 1797 - n_test (here 797)",
        ),
    ],
)
def test_sizes_that_do_not_fit_name_the_largest_n_train(name, sizes, message):
    with pytest.raises(SharpdimError) as err:
        load_dataset(name, **sizes)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "loader",
    [
        "load_digits_dataset",
        "make_mnist1d_dataset",
        "make_modular_dataset",
        "make_teacher_student_dataset",
    ],
)
def test_each_loader_checks_sizes_and_dtype_as_load_dataset_does(loader: str) -> None:
    """Only load_dataset checked them: called directly, a whole float was a TypeError in
    slicing or randn, True was one example, and an int dtype truncated regression targets."""
    import torch

    from sharpdim.training import datasets

    make = getattr(datasets, loader)
    small = {"n_train": 6.0, "n_test": 2.0}
    if loader == "make_modular_dataset":
        small["p"] = 5
    got = make(**small)
    assert (got.num_train, got.num_test) == (6, 2)
    with pytest.raises(SharpdimError, match=r"^n_train must be an integer >= 1, got True"):
        make(n_train=True, n_test=2)
    with pytest.raises(SharpdimError, match=r"^dtype must be a floating torch dtype"):
        make(n_train=6, n_test=2, dtype=torch.int64)
