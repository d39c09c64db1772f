"""Offline datasets: digits, MNIST-1D, modular arithmetic, teacher–student, IDX files.

Every dataset is generated or read locally (no network access) and is a pure function of its
arguments: the same ``seed`` gives the same tensors. Randomness comes from a seeded
``torch.Generator``; MNIST-1D's generator seeds numpy's and Python's global RNGs, whose states
are saved and restored around it.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from sharpdim.checks import (
    check_count,
    check_flag,
    check_number,
    check_seed,
    check_size,
    native_array,
)
from sharpdim.errors import SharpdimError
from sharpdim.rng import python_random_kept
from sharpdim.training.models import build_mlp

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held in memory.

    Attributes:
        name: dataset name (``"digits"``, ``"mnist1d"``, ...).
        x_train, y_train, x_test, y_test: inputs and targets. Class labels are int64;
            regression targets are float of shape ``(n, out_dim)``.
        num_classes: number of classes; ``0`` for regression.
        info: extra facts (e.g. ``p``, ``vocab_size`` and ``seq_len`` for modular arithmetic).
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Numpy arrays become tensors; the splits' lengths and ``num_classes`` are checked
        here, not at the first batch that reaches past a shorter label tensor. (The test
        examples may differ in shape from the training ones: longer sequences, say.)"""
        for name in ("x_train", "y_train", "x_test", "y_test"):
            object.__setattr__(self, name, _split_tensor(getattr(self, name), name))
        for x_name, y_name in (("x_train", "y_train"), ("x_test", "y_test")):
            x, y = getattr(self, x_name), getattr(self, y_name)
            if len(x) != len(y):
                raise SharpdimError(
                    f"Dataset {x_name} holds {len(x)} examples but {y_name} {len(y)}: pass one "
                    "target per example"
                )
        object.__setattr__(
            self, "num_classes", check_count(self.num_classes, "num_classes", 0, "0 for regression")
        )

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    @property
    def input_dim(self) -> int:
        """Number of input features per example (product of the trailing shape)."""
        return math.prod(self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Model outputs needed: the classes, or the regression targets' width."""
        return self.num_classes if self.num_classes else math.prod(self.y_train.shape[1:])

    def train_batch(self) -> Batch:
        """The whole training set as one batch ``(x, y)``."""
        return self.x_train, self.y_train

    def test_batch(self) -> Batch:
        """The whole test set as one batch ``(x, y)``."""
        return self.x_test, self.y_test

    def check_batch_size(self, batch_size: Any) -> int:
        """``batch_size`` as an int in ``[1, num_train]``, else a one-line error."""
        batch_size = check_count(batch_size, "batch_size", 1, "e.g. batch_size=64")
        n = self.num_train
        if batch_size > n:
            raise SharpdimError(
                f"batch_size={batch_size} is not in [1, {n}] for {self.name} with {n} "
                "training examples: choose a smaller batch or use batch_size=None (full batch)"
            )
        return batch_size

    def batches(
        self,
        batch_size: int | None,
        generator: torch.Generator | None = None,
        *,
        drop_last: bool = True,
    ) -> Iterator[Batch]:
        """One epoch of training minibatches.

        Args:
            batch_size: examples per batch; ``None`` yields the full batch once, unshuffled.
            generator: order of the examples (a fresh permutation per call); ``None`` keeps
                the stored order.
            drop_last: skip a last, smaller batch so every step sees ``batch_size`` examples.
        """
        n = self.num_train
        drop_last = check_flag(drop_last, "drop_last")
        if batch_size is None:
            yield self.train_batch()
            return
        batch_size = self.check_batch_size(batch_size)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise SharpdimError(
                f"generator must be a torch.Generator or None, got {type(generator).__name__}: "
                "pass torch.Generator().manual_seed(seed) (None keeps the stored order)"
            )
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield self.x_train[idx], self.y_train[idx]

    def subset(self, n: int) -> Dataset:
        """The first ``n`` training examples (e.g. Cohen et al. 2021's fixed 5,000), same test set."""
        n = check_count(n, "subset size", 1, "e.g. subset(500)")
        if n > self.num_train:
            raise SharpdimError(
                f"subset size {n} is not in [1, {self.num_train}]: choose n <= the training size"
            )
        return replace(self, x_train=self.x_train[:n], y_train=self.y_train[:n])

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Dataset:
        """Move to ``device`` and cast floating tensors to ``dtype`` (labels stay int64)."""
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise SharpdimError(
                f"dtype must be a floating torch dtype, got {dtype!r}: pass e.g. torch.float64 "
                "(a cast of the inputs to integers would truncate them; labels stay int64)"
            )

        def move(t: torch.Tensor) -> torch.Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else None
            return t.to(device=device, dtype=cast)

        return replace(
            self,
            x_train=move(self.x_train),
            y_train=move(self.y_train),
            x_test=move(self.x_test),
            y_test=move(self.y_test),
        )


def _split_tensor(value: Any, name: str) -> torch.Tensor:
    """A split's inputs or targets as a tensor with an example axis (numpy arrays wrapped)."""
    if isinstance(value, np.ndarray):
        try:
            value = torch.as_tensor(native_array(value))
        except TypeError:
            raise SharpdimError(
                f"Dataset {name} is a numpy array of {value.dtype}, which torch cannot hold: "
                "pass numbers (class labels as integers 0..C-1)"
            ) from None
    if not isinstance(value, torch.Tensor):
        raise SharpdimError(
            f"Dataset {name} must be a torch.Tensor (or numpy array), got "
            f"{type(value).__name__}: pass e.g. torch.as_tensor({name})"
        )
    if value.ndim == 0:
        raise SharpdimError(
            f"Dataset {name} is a single number: pass one row per example (shape (n, ...))"
        )
    return value


def check_split_args(
    n_train: Any, n_test: Any, dtype: Any
) -> tuple[int | None, int | None, torch.dtype]:
    """``(n_train, n_test, dtype)`` checked as every loader takes them: whole numbers (``None``
    for the dataset's default; whole floats as ints, bools refused) and a floating dtype."""
    n_train = None if n_train is None else check_count(n_train, "n_train", 1, "e.g. n_train=500")
    n_test = None if n_test is None else check_count(n_test, "n_test", 0, "e.g. n_test=200")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise SharpdimError(
            f"dtype must be a floating torch dtype, got {dtype!r}: pass e.g. torch.float32 "
            "(labels are int64 whatever dtype is)"
        )
    return n_train, n_test, dtype


def _sizes(
    total: int, n_train: int | None, n_test: int | None, default_test: int
) -> tuple[int, int]:
    n_test = default_test if n_test is None else n_test
    n_train = total - n_test if n_train is None else n_train
    if n_train < 1 or n_test < 0 or n_train + n_test > total:
        here = f" (here {total - n_test})" if 0 <= n_test < total else ""
        raise SharpdimError(
            f"n_train={n_train}, n_test={n_test} do not fit in the {total} examples: choose "
            f"0 <= n_test < {total} and 1 <= n_train <= {total} - n_test{here}"
        )
    return n_train, n_test


def _split(total: int, n_train: int, n_test: int) -> tuple[slice, slice]:
    """The first ``n_train`` and the last ``n_test`` of ``total`` shuffled examples: the test
    set is the same for every ``n_train``."""
    return slice(0, n_train), slice(total - n_test, total)


_NO_SPREAD = 1e-12
"""A standard deviation at most this fraction of the largest ``|x|`` is rounding, not spread."""


def spread_or_one(std: torch.Tensor, largest: torch.Tensor, one: float = 1.0) -> torch.Tensor:
    """``std``, or ``one`` (1 in the data's units) where it is rounding noise (at most
    :data:`_NO_SPREAD` of the largest ``|x|``): a constant feature is then only centred. Its
    computed std is not 0 when the value is inexact in binary (twenty pixels of ``7/255``:
    ~1e-17), and dividing by it blew the data up (test inputs ~1e17)."""
    return torch.where(std > _NO_SPREAD * largest, std, torch.full_like(std, one))


def _standardize(x_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature standardisation with training statistics (constant features: centred only)."""
    mean = x_train.mean(0)
    std = x_train.std(0) if x_train.shape[0] > 1 else torch.ones_like(mean)
    std = spread_or_one(std, x_train.abs().amax(0))
    return (x_train - mean) / std, (x_test - mean) / std


def load_digits_dataset(
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 images shipped with scikit-learn).

    A seeded random permutation of the images: the training set is its first ``n_train``, the
    test set its last ``n_test`` (default 1,500 train / 297 test), so the test set does not
    move with ``n_train`` and never holds a training image of a larger ``n_train``. 64
    features standardised with the training statistics, labels 0-9.
    """
    with python_random_kept():  # (its first import draws from Python's random)
        from sklearn.datasets import load_digits

    seed = check_seed(seed)
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    features, labels = load_digits(return_X_y=True)
    total = features.shape[0]
    n_train, n_test = _sizes(total, n_train, n_test, default_test=297)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    x = torch.as_tensor(features, dtype=torch.float64)[order]
    y = torch.as_tensor(labels, dtype=torch.int64)[order]
    train, test = _split(total, n_train, n_test)
    x_train, x_test = _standardize(x[train], x[test])
    return Dataset("digits", x_train.to(dtype), y[train], x_test.to(dtype), y[test], 10)


def make_mnist1d_dataset(
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
    **mnist1d_args: Any,
) -> Dataset:
    """MNIST-1D (Greydanus 2020), generated procedurally with mnist1d's templates and
    ``transform``, as ``mnist1d.data.make_dataset`` does.

    Only as many examples as asked for are generated (default 4,000 train / 1,000 test, the
    library's defaults), so small subsets are fast. The training set is mnist1d's examples for
    ``seed`` (those of ``make_dataset`` with ``num_samples`` = ``n_train`` rounded up to a
    multiple of 10), the test set those for the seed ``seed ^ MNIST1D_TEST_SEED``: the
    training set does not depend on ``n_test``. Features (length ``final_seq_length``, 40 by default) are standardised with
    the training set's mean and standard deviation (one number each, mnist1d's convention),
    and ``shuffle_seq=True`` permutes the positions of both splits alike. Other keyword
    arguments override ``mnist1d.data.get_dataset_args()`` (e.g. ``final_seq_length``,
    ``iid_noise_scale``; not ``num_samples`` or ``train_split``, which ``n_train``/``n_test``
    set). Never downloads: ``get_dataset`` is not used.
    """
    from mnist1d.data import get_dataset_args

    seed = check_seed(seed)
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    n_train = 4000 if n_train is None else n_train
    n_test = 1000 if n_test is None else n_test
    if n_train < 1 or n_test < 0:
        raise SharpdimError(f"n_train={n_train}, n_test={n_test}: need n_train >= 1, n_test >= 0")
    args = get_dataset_args()
    unknown = set(mnist1d_args) - set(vars(args))
    if unknown:
        raise SharpdimError(
            f"unknown mnist1d option(s) {sorted(unknown)}: use keys of mnist1d.data.get_dataset_args()"
        )
    fixed = set(mnist1d_args) & {"num_samples", "train_split"}
    if fixed:
        raise SharpdimError(
            f"mnist1d option(s) {sorted(fixed)} are set by sharpdim: pass n_train= and n_test= "
            "instead"
        )
    defaults = vars(args)
    defaults.update({k: _mnist1d_option(k, v, defaults[k]) for k, v in mnist1d_args.items()})
    if args.template_len + args.padding[1] < 2:  # (each template is resampled to this length)
        raise SharpdimError(
            f"mnist1d options template_len={args.template_len} and padding={args.padding} "
            "leave templates shorter than 2 points: make template_len + padding[1] at least 2"
        )
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # mnist1d seeds numpy's and Python's global generators: restored afterwards
        x_train, y_train = _mnist1d_examples(args, n_train, seed % 2**32)
        x_test, y_test = _mnist1d_examples(args, n_test, (seed ^ MNIST1D_TEST_SEED) % 2**32)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    mean, std = x_train.mean(), x_train.std()
    if not (math.isfinite(std) and std > _NO_SPREAD * np.abs(x_train).max()):
        raise SharpdimError(
            f"the {n_train} MNIST-1D training example(s) have no spread to standardise by: "
            "pass a larger n_train (or final_seq_length)"
        )
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    if args.shuffle_seq:  # one permutation of the positions for both splits; after the
        # statistics, which a permutation changes only by rounding (the order of the sum)
        order = np.random.RandomState(seed % 2**32).permutation(x_train.shape[1])
        x_train, x_test = x_train[:, order], x_test[:, order]

    def tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(x, dtype=dtype), torch.as_tensor(y, dtype=torch.int64)

    return Dataset("mnist1d", *tensors(x_train, y_train), *tensors(x_test, y_test), 10)


def _mnist1d_option(name: str, value: Any, default: Any) -> Any:
    """An mnist1d option override of the type of its default (a whole number for an integer
    option, a finite number for a real one, a bool for a flag, a pair for ``padding``); others
    pass unchanged."""
    if name == "padding":
        return _mnist1d_padding(value)
    if isinstance(default, bool):
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, int) and value in (0, 1)):
            return bool(value)
        raise SharpdimError(f"mnist1d option {name} must be True or False, got {value!r}")
    if isinstance(default, int):
        # a shift is drawn from [0, max_translation) (1: none); at least one output point
        minimum = 1 if name in ("max_translation", "final_seq_length") else 0
        hint = "max_translation=1 for no shift" if name == "max_translation" else None
        return check_count(
            value, f"mnist1d option {name}", minimum, hint or f"e.g. {name}={default}"
        )
    if isinstance(default, float):
        return check_number(value, f"mnist1d option {name}", "any", f"{name}={default}")
    return value


def _mnist1d_padding(value: Any) -> list[int]:
    """MNIST-1D's ``padding``: ``[low, high]``, whole numbers ``0 <= low <= high`` (each
    template gets ``low`` to ``high`` zeros appended, drawn uniformly)."""
    shown = value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value
    bad = SharpdimError(
        f"mnist1d option padding must be a pair [low, high] of whole numbers with "
        f"0 <= low <= high, got {shown!r}: pass e.g. padding=[36, 60]"
    )
    pair = isinstance(value, (list, tuple)) or (
        isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1
    )
    if not pair or len(value) != 2:
        raise bad
    try:
        low, high = (check_count(v, "padding", 0) for v in value)
    except SharpdimError:
        raise bad from None
    if low > high:
        raise bad
    return [low, high]


MNIST1D_TEST_SEED = 0x5EED7E57
"""The test split of MNIST-1D is generated with the mnist1d seed ``seed ^ MNIST1D_TEST_SEED``."""


def _mnist1d_examples(args: Any, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` examples ``make_dataset`` generates for ``seed`` with ``num_samples`` =
    ``n`` rounded up to 10 a class, before its sequence shuffle and standardisation."""
    from mnist1d.data import get_templates, set_seed, transform

    if n == 0:
        return np.zeros((0, args.final_seq_length)), np.zeros(0, dtype=np.int64)
    templates = get_templates()
    set_seed(seed)
    xs, ys = [], []
    for label, template in zip(templates["y"], templates["x"], strict=True):
        for _ in range(math.ceil(n / len(templates["y"]))):
            x, _ = transform(template, templates["t"], args)
            xs.append(x)
            ys.append(label)
    order = np.random.permutation(len(ys))
    return np.stack(xs)[order][:n].astype(np.float64), np.asarray(ys)[order][:n]


_OPERATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
}


def make_modular_dataset(
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
    p: int = 97,
    train_fraction: float = 0.5,
    operation: str = "add",
    encoding: str = "tokens",
    equals_token: bool = True,
) -> Dataset:
    """Modular arithmetic ``c = (a op b) mod p`` over all ``p^2`` pairs (Power et al. 2022).

    A seeded permutation of the pairs; the first ``round(train_fraction * p^2)`` (or
    ``n_train``) are the training set, the rest (or the last ``n_test``) the test set.

    Args:
        p: modulus (a prime such as 97 or 113).
        train_fraction: share of pairs used for training (grokking needs 0.3-0.5).
        operation: ``"add"`` (default), ``"sub"`` or ``"mul"``.
        encoding: ``"tokens"``: int64 inputs ``[a, b, =]`` (token ``=`` is ``p``; omitted
            with ``equals_token=False``) for :func:`~sharpdim.training.models.build_transformer`;
            ``"onehot"``: float inputs ``[onehot(a), onehot(b)]`` of width ``2p`` for an MLP.
    """
    seed = check_seed(seed)
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    equals_token = check_flag(equals_token, "equals_token")
    p = check_size(p, "modulus p", 2, "e.g. p=97")
    if not isinstance(operation, str) or operation not in _OPERATIONS:  # (a list: unhashable)
        raise SharpdimError(f"unknown operation {operation!r}: use one of {', '.join(_OPERATIONS)}")
    if encoding not in ("tokens", "onehot"):
        raise SharpdimError(f"unknown encoding {encoding!r}: use 'tokens' or 'onehot'")
    train_fraction = check_number(train_fraction, "train_fraction", "> 0", "train_fraction=0.5")
    if train_fraction > 1.0:
        raise SharpdimError(f"train_fraction={train_fraction} must lie in (0, 1]: pass e.g. 0.5")
    total = p * p
    default_train = max(1, round(train_fraction * total))
    n_train = default_train if n_train is None else n_train
    n_train, n_test = _sizes(total, n_train, n_test, default_test=max(total - n_train, 0))
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    a, b = order // p, order % p
    c = _OPERATIONS[operation](a, b, p)
    if encoding == "tokens":
        columns = [a, b] + ([torch.full_like(a, p)] if equals_token else [])
        x = torch.stack(columns, dim=1)
    else:
        eye = torch.eye(p, dtype=torch.float64)
        x = torch.cat([eye[a], eye[b]], dim=1).to(dtype)
    info = {
        "p": p,
        "operation": operation,
        "encoding": encoding,
        "vocab_size": p + 1 if equals_token else p,
        "seq_len": x.shape[1] if encoding == "tokens" else 0,
    }
    train, test = _split(total, n_train, n_test)
    return Dataset("modular", x[train], c[train], x[test], c[test], p, info)


def make_teacher_student_dataset(
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
    in_dim: int = 10,
    out_dim: int = 1,
    teacher_width: int = 32,
    teacher_depth: int = 1,
    activation: str = "tanh",
    noise_std: float = 0.0,
) -> Dataset:
    """Synthetic regression: ``y = teacher(x) + noise_std * N(0, I)``, ``x ~ N(0, I_in_dim)``.

    The teacher is a random MLP (:func:`~sharpdim.training.models.build_mlp`, seeded); the
    same seeded generator then draws the training inputs (and their noise, when
    ``noise_std > 0``), then the test inputs (and noise), so the training set does not depend
    on ``n_test``. Defaults 500 train / 500 test. Targets have shape ``(n, out_dim)``.
    """
    seed = check_seed(seed)
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    n_train = 500 if n_train is None else n_train
    n_test = 500 if n_test is None else n_test
    if n_train < 1 or n_test < 0:
        raise SharpdimError(f"n_train={n_train}, n_test={n_test}: need n_train >= 1, n_test >= 0")
    noise_std = check_number(noise_std, "noise_std", ">= 0", "noise_std=0.1")
    in_dim, out_dim = check_count(in_dim, "in_dim"), check_count(out_dim, "out_dim")
    teacher_width = check_count(teacher_width, "teacher_width", 1, "e.g. teacher_width=32")
    teacher_depth = check_count(teacher_depth, "teacher_depth", 0, "e.g. teacher_depth=1")
    g = torch.Generator().manual_seed(seed)
    teacher = build_mlp(
        in_dim,
        out_dim,
        width=teacher_width,
        depth=teacher_depth,
        activation=activation,
        generator=g,
        dtype=torch.float64,
    )

    def examples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, in_dim, generator=g, dtype=torch.float64)
        with torch.no_grad():
            y = teacher(x)
        if noise_std > 0:
            y = y + noise_std * torch.randn(n, out_dim, generator=g, dtype=torch.float64)
        return x.to(dtype), y.to(dtype)

    x_train, y_train = examples(n_train)
    x_test, y_test = examples(n_test)
    info = {"teacher_width": teacher_width, "teacher_depth": teacher_depth, "noise_std": noise_std}
    return Dataset("teacher_student", x_train, y_train, x_test, y_test, 0, info)


DATASETS = ("digits", "mnist1d", "modular", "teacher_student", "idx")


def _loader(name: str) -> Callable[..., Dataset]:
    if name == "idx":  # lives with the IDX reader, which imports this module
        from sharpdim.training.data_idx import load_idx_dataset

        return load_idx_dataset
    loaders: dict[str, Callable[..., Dataset]] = {
        "digits": load_digits_dataset,
        "mnist1d": make_mnist1d_dataset,
        "modular": make_modular_dataset,
        "teacher_student": make_teacher_student_dataset,
    }
    return loaders[name]


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
    **options: Any,
) -> Dataset:
    """Load or generate a dataset by name; see the ``load_*``/``make_*`` functions for options.

    Args:
        name: ``"digits"``, ``"mnist1d"``, ``"modular"``, ``"teacher_student"`` or ``"idx"``.
        seed: seed of the split / generation (same seed, same tensors).
        n_train, n_test: sizes (each dataset has a default).
        dtype: dtype of floating inputs and regression targets (labels are int64).
        **options: dataset-specific keyword arguments.

    Example:
        >>> ds = load_dataset("modular", p=7, train_fraction=0.5)
        >>> ds.num_train, ds.num_test, ds.num_classes
        (24, 25, 7)
    """
    if name not in DATASETS:
        raise SharpdimError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    loader = _loader(name)  # (each loader checks the seed)
    accepted = set(inspect.signature(loader).parameters)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(loader).parameters.values())
    unknown = set(options) - accepted
    if unknown and not var_kw:
        raise SharpdimError(
            f"unknown option(s) {sorted(unknown)} for dataset {name!r}: "
            f"accepted are {sorted(accepted - {'seed', 'n_train', 'n_test', 'dtype'})}"
        )
    return loader(seed=seed, n_train=n_train, n_test=n_test, dtype=dtype, **options)
