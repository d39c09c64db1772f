"""The network and data of the edge-of-stability reproductions 1 and 3
(:mod:`sharpdim.training.eos_experiments`): a tanh MLP on a small offline dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sharpdim.checks import check_count, check_seed
from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset, load_dataset
from sharpdim.training.models import ACTIVATIONS, build_mlp

# datasets of reproductions 1 and 3 (modular arithmetic one-hot encoded for the MLP)
EOS_DATASETS = ("digits", "mnist1d", "modular", "teacher_student")
_DATA_OPTIONS: dict[str, dict[str, Any]] = {
    "mnist1d": {"n_test": 200},
    "modular": {"encoding": "onehot"},
}


@dataclass(frozen=True)
class MLPSetup:
    """The network and data of reproductions 1 and 3.

    Attributes:
        dataset: one of :data:`EOS_DATASETS`: ``"digits"`` (the first ``n_train`` of the
            seeded 1,500-example split), ``"mnist1d"``, ``"modular"`` (one-hot encoded,
            ``p = 97``) or ``"teacher_student"`` (regression); the generated ones are made
            with ``n_train`` training examples.
        n_train: training examples; more than a dataset holds is an error.
        width, depth: hidden width (>= 1) and number of hidden layers (>= 0) of the MLP.
        activation: hidden activation (``"tanh"`` as in Cohen et al. 2021, ``"relu"``,
            ``"gelu"``).
        loss: ``"mse"`` (Cohen et al.'s square loss) or ``"ce"`` (not for the regression
            ``"teacher_student"``).
        seed: seed of the data split and of the initialisation, in ``[0, 2**32 - 1]``.
        dtype: ``"float64"`` or ``"float32"``.

    Every field is checked when the setup is built (one-line errors).
    """

    dataset: str = "digits"
    n_train: int = 1000
    width: int = 100
    depth: int = 2
    activation: str = "tanh"
    loss: str = "mse"
    seed: int = 0
    dtype: str = "float64"

    def __post_init__(self) -> None:
        if self.dataset not in EOS_DATASETS:
            raise SharpdimError(
                f"dataset {self.dataset!r} is not one of the EoS datasets: use one of "
                f"{', '.join(EOS_DATASETS)}"
            )
        object.__setattr__(self, "n_train", check_count(self.n_train, "n_train", 1, "e.g. 1000"))
        object.__setattr__(self, "width", check_count(self.width, "width", 1, "e.g. 100"))
        object.__setattr__(self, "depth", check_count(self.depth, "depth", 0, "e.g. 2"))
        object.__setattr__(self, "seed", check_seed(self.seed))
        if self.activation not in ACTIVATIONS:
            raise SharpdimError(
                f"unknown activation {self.activation!r}: use one of {', '.join(ACTIVATIONS)}"
            )
        if self.loss not in ("mse", "ce"):
            raise SharpdimError(f"unknown loss {self.loss!r}: use 'mse' or 'ce'")
        if self.loss == "ce" and self.dataset == "teacher_student":
            raise SharpdimError(
                "teacher_student is a regression dataset without class labels: use loss='mse' "
                "with it, or a classification dataset for loss='ce'"
            )
        self.torch_dtype()

    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in ("float64", "float32"):
            raise SharpdimError(f"dtype {self.dtype!r}: use 'float64' or 'float32'")
        return torch.float64 if self.dtype == "float64" else torch.float32

    def data(self) -> Dataset:
        """The training data, loaded in ``dtype``; too large an ``n_train`` is an error."""
        if self.dataset != "digits":
            options = _DATA_OPTIONS.get(self.dataset, {})
            dtype = self.torch_dtype()  # (not float32 then cast: float64 data keep their digits)
            return load_dataset(
                self.dataset, seed=self.seed, n_train=self.n_train, dtype=dtype, **options
            )
        full = load_dataset("digits", seed=self.seed, dtype=self.torch_dtype())
        if not 1 <= self.n_train <= full.num_train:
            raise SharpdimError(
                f"n_train={self.n_train} does not fit in the {full.num_train} training examples "
                f"of {self.dataset!r}: choose 1 <= n_train <= {full.num_train}"
            )
        return full.subset(self.n_train)

    def model(self, data: Dataset) -> torch.nn.Module:
        return build_mlp(
            data.input_dim,
            data.num_outputs,
            width=self.width,
            depth=self.depth,
            activation=self.activation,
            seed=self.seed,
            dtype=self.torch_dtype(),
        )
