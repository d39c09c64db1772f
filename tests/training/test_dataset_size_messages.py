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
