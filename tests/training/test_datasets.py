"""Offline, deterministic datasets."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest
import torch

from sharpdim.errors import SharpdimError
from sharpdim.training.data_idx import read_idx, write_idx
from sharpdim.training.datasets import MNIST1D_TEST_SEED, Dataset, load_dataset

SMALL = {
    "digits": {},
    "mnist1d": {"n_train": 60, "n_test": 20},
    "modular": {"p": 11},
    "teacher_student": {"n_train": 40, "n_test": 10},
}


def _same(a, b) -> bool:
    return all(
        torch.equal(getattr(a, k), getattr(b, k))
        for k in ("x_train", "y_train", "x_test", "y_test")
    )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_data_other_seed_other_data(name):
    a = load_dataset(name, seed=3, **SMALL[name])
    b = load_dataset(name, seed=3, **SMALL[name])
    c = load_dataset(name, seed=4, **SMALL[name])
    assert _same(a, b)
    assert not _same(a, c)


def test_no_socket_is_opened(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name, options in SMALL.items():
        load_dataset(name, **options)
    _write_mnist_files(tmp_path)
    load_dataset("idx", directory=tmp_path)


def test_digits_split_and_standardisation():
    ds = load_dataset("digits", dtype=torch.float64)
    assert (ds.num_train, ds.num_test, ds.num_classes, ds.input_dim) == (1500, 297, 10, 64)
    assert set(ds.y_train.tolist()) == set(range(10))
    std = ds.x_train.std(0)
    varying = std > 0
    torch.testing.assert_close(ds.x_train.mean(0), torch.zeros(64, dtype=torch.float64))
    torch.testing.assert_close(std[varying], torch.ones(int(varying.sum()), dtype=torch.float64))
    small = load_dataset("digits", n_train=100, n_test=50)
    assert (small.num_train, small.num_test) == (100, 50)
    with pytest.raises(SharpdimError, match="do not fit"):
        load_dataset("digits", n_train=1700, n_test=200)


def test_mnist1d_matches_make_dataset_and_keeps_global_rng():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(5)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    ds = load_dataset("mnist1d", seed=7, n_train=40, n_test=15, dtype=torch.float64)
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py
    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = 40, 1.0, 7
    ref = make_dataset(args)  # standardised over these 40, the training statistics
    np.testing.assert_array_equal(ds.x_train.numpy(), ref["x"])
    np.testing.assert_array_equal(ds.y_train.numpy(), ref["y"])
    args.num_samples, args.seed = 20, 7 ^ MNIST1D_TEST_SEED  # the test split: its own seed
    ref_test = make_dataset(args)  # standardised over its own 20: an affine image of ours
    np.testing.assert_array_equal(ds.y_test.numpy(), ref_test["y"][:15])
    slope, shift = np.polyfit(ref_test["x"][:15].ravel(), ds.x_test.numpy().ravel(), 1)
    np.testing.assert_allclose(ds.x_test.numpy(), slope * ref_test["x"][:15] + shift, atol=1e-12)
    assert ds.x_train.shape == (40, 40) and ds.x_test.shape == (15, 40)
    # the training set depends on seed and n_train only
    more_test = load_dataset("mnist1d", seed=7, n_train=40, n_test=150, dtype=torch.float64)
    assert torch.equal(more_test.x_train, ds.x_train)
    assert load_dataset("mnist1d", seed=7, n_train=40, n_test=0).num_test == 0
    # shuffle_seq permutes the positions of both splits alike (it drew one order per split)
    shuffled = load_dataset(
        "mnist1d", seed=7, n_train=40, n_test=15, dtype=torch.float64, shuffle_seq=True
    )
    order = torch.as_tensor(np.random.RandomState(7).permutation(40))
    assert torch.equal(shuffled.x_train, ds.x_train[:, order])
    assert torch.equal(shuffled.x_test, ds.x_test[:, order])
    with pytest.raises(SharpdimError, match="no spread to standardise by"):  # was NaN
        load_dataset("mnist1d", n_train=1, n_test=2, final_seq_length=1)
    with pytest.raises(SharpdimError, match="unknown mnist1d option"):
        load_dataset("mnist1d", n_train=10, n_test=0, bogus=1)
    for key, value in (("num_samples", 50), ("train_split", 0.5)):
        with pytest.raises(SharpdimError, match=rf"\['{key}'\] are set by sharpdim: pass n_train"):
            load_dataset("mnist1d", n_train=10, n_test=0, **{key: value})


@pytest.mark.parametrize("operation", ["add", "sub", "mul"])
def test_modular_labels_and_partition(operation):
    p = 7
    ds = load_dataset("modular", p=p, train_fraction=0.3, operation=operation)
    assert ds.num_train == round(0.3 * p * p) and ds.num_train + ds.num_test == p * p
    x = torch.cat([ds.x_train, ds.x_test])
    y = torch.cat([ds.y_train, ds.y_test])
    assert torch.all(x[:, 2] == p) and ds.info["vocab_size"] == p + 1
    a, b = x[:, 0], x[:, 1]
    expected = {"add": (a + b) % p, "sub": (a - b) % p, "mul": (a * b) % p}[operation]
    assert torch.equal(y, expected)
    assert (
        len({(int(i), int(j)) for i, j in zip(a, b, strict=True)}) == p * p
    )  # every pair exactly once


def test_modular_onehot_and_no_equals():
    ds = load_dataset("modular", p=5, encoding="onehot", dtype=torch.float64)
    assert ds.x_train.shape[1] == 10 and ds.x_train.dtype == torch.float64
    assert torch.all(ds.x_train.sum(1) == 2)
    a, b = ds.x_train[:, :5].argmax(1), ds.x_train[:, 5:].argmax(1)
    assert torch.equal(ds.y_train, (a + b) % 5)
    tokens = load_dataset("modular", p=5, equals_token=False)
    assert tokens.x_train.shape[1] == 2 and tokens.info["vocab_size"] == 5


def test_teacher_student_is_a_noiseless_mlp():
    from sharpdim.training.models import build_mlp

    ds = load_dataset(
        "teacher_student", seed=2, n_train=30, n_test=5, in_dim=4, out_dim=2, dtype=torch.float64
    )
    g = torch.Generator().manual_seed(2)
    teacher = build_mlp(4, 2, width=32, depth=1, generator=g, dtype=torch.float64)
    x_train = torch.randn(30, 4, generator=g, dtype=torch.float64)  # train, then test
    x_test = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.equal(ds.x_train, x_train) and torch.equal(ds.x_test, x_test)
    with torch.no_grad():
        torch.testing.assert_close(ds.y_train, teacher(x_train), rtol=0, atol=0)
        torch.testing.assert_close(ds.y_test, teacher(x_test), rtol=0, atol=0)
    assert ds.num_classes == 0 and ds.num_outputs == 2
    noisy = load_dataset(
        "teacher_student",
        seed=2,
        n_train=30,
        n_test=5,
        in_dim=4,
        out_dim=2,
        noise_std=0.1,
        dtype=torch.float64,
    )
    assert torch.equal(noisy.x_train, ds.x_train) and not torch.equal(noisy.y_train, ds.y_train)


def test_each_split_does_not_move_with_the_other_size():
    """The digits test set was the n_test images after the first n_train (297 of the
    n_train=500 test images were training images of the default split); teacher-student's
    training inputs and noise were drawn together with the test set's."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data, dtype=torch.float64)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(0))
    for n_train in (100, 500, 1500):
        ds = load_dataset("digits", n_train=n_train, dtype=torch.float64)
        train, test = images[order[:n_train]], images[order[-297:]]  # test: the last 297
        std = train.std(0)
        std = torch.where(std > 0, std, torch.ones_like(std))
        torch.testing.assert_close(ds.x_test, (test - train.mean(0)) / std, rtol=0, atol=1e-15)
        torch.testing.assert_close(ds.x_train, (train - train.mean(0)) / std, rtol=0, atol=1e-15)
    pairs = {"n_train": 30, "in_dim": 3, "noise_std": 0.5, "dtype": torch.float64}
    a = load_dataset("teacher_student", n_test=0, **pairs)
    b = load_dataset("teacher_student", n_test=17, **pairs)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    m = load_dataset("modular", p=11, n_train=30, n_test=20)
    n = load_dataset("modular", p=11, n_train=60, n_test=20)
    assert torch.equal(m.x_test, n.x_test) and torch.equal(m.x_train, n.x_train[:30])
    assert torch.equal(load_dataset("modular", p=11, n_train=30).x_test[-20:], m.x_test)


def test_seeds_are_whole_numbers_in_range():
    for name, options in SMALL.items():
        a = load_dataset(name, seed=np.int64(3), **options)
        assert _same(a, load_dataset(name, seed=3.0, **options))
    for bad in (1.5, -1, 2**64, "3", True):
        with pytest.raises(SharpdimError, match=r"^seed must be"):
            load_dataset("digits", seed=bad)
    with pytest.raises(SharpdimError, match=r"^seed must be"):
        load_dataset("teacher_student", seed=2**32)  # torch would draw what seed 0 draws
    assert not _same(load_dataset("digits", seed=2**32 - 1), load_dataset("digits", seed=0))
    with pytest.raises(SharpdimError, match="noise_std must be a finite number >= 0, got nan"):
        load_dataset("teacher_student", noise_std=float("nan"))


def test_whole_float_options_are_accepted_and_bad_ones_refused_in_one_line():
    """Options beyond the sizes were used raw: ``p=97.0`` or ``in_dim=4.0`` reached torch and
    failed with a TypeError traceback, as did ``batches(5.0)`` and ``subset(2.0)``."""
    same_pairs = [
        ({"p": 7}, {"p": 7.0}),
        ({"p": 7, "train_fraction": 0.5}, {"p": np.int64(7), "train_fraction": np.float32(0.5)}),
    ]
    for good, whole in same_pairs:
        assert _same(load_dataset("modular", **good), load_dataset("modular", **whole))
    ts = {"n_train": 6, "n_test": 2}
    assert _same(
        load_dataset("teacher_student", in_dim=4, out_dim=2, **ts),
        load_dataset("teacher_student", in_dim=4.0, out_dim=torch.tensor(2), **ts),
    )
    ds = load_dataset("modular", p=5)
    assert [len(y) for _, y in ds.batches(5.0, drop_last=False)] == [5, 5, 2]
    assert ds.subset(2.0).num_train == 2
    refused = [
        (lambda: load_dataset("modular", p=97.5), r"^modulus p must be an integer >= 2, got 97.5"),
        (lambda: load_dataset("modular", p="97"), r"^modulus p must be an integer >= 2"),
        (lambda: load_dataset("modular", p=1), r"^modulus p must be an integer >= 2, got 1"),
        (lambda: load_dataset("modular", train_fraction="0.5"), r"^train_fraction must be"),
        (lambda: load_dataset("modular", train_fraction=1.5), r"must lie in \(0, 1\]"),
        (lambda: load_dataset("teacher_student", in_dim=4.5), r"^in_dim must be an integer"),
        (lambda: load_dataset("teacher_student", noise_std=None), r"^noise_std must be a"),
        (lambda: ds.batches(2.5).__next__(), r"^batch_size must be an integer >= 1, got 2.5"),
        (lambda: ds.batches(13).__next__(), r"batch_size=13 is not in \[1, 12\]"),
        (lambda: ds.subset(0), r"^subset size must be an integer >= 1, got 0"),
        (lambda: ds.subset(13), r"subset size 13 is not in \[1, 12\]"),
    ]
    for call, message in refused:
        with pytest.raises(SharpdimError, match=message):
            call()


def test_mnist1d_options_take_the_type_of_their_default():
    pytest.importorskip("mnist1d")
    small = {"n_train": 10, "n_test": 0}
    a = load_dataset("mnist1d", final_seq_length=30, iid_noise_scale=0, **small)
    b = load_dataset("mnist1d", final_seq_length=30.0, iid_noise_scale=np.int64(0), **small)
    assert _same(a, b) and a.x_train.shape == (10, 30)
    flags = [load_dataset("mnist1d", shuffle_seq=f, **small) for f in (True, np.True_, 1)]
    assert _same(flags[0], flags[1]) and _same(flags[0], flags[2])
    for options, message in [
        ({"final_seq_length": 40.5}, r"^mnist1d option final_seq_length must be an integer"),
        ({"iid_noise_scale": "0.1"}, r"^mnist1d option iid_noise_scale must be a finite number"),
        ({"shuffle_seq": 2}, r"^mnist1d option shuffle_seq must be True or False, got 2"),
        ({"shuffle_seq": "yes"}, r"^mnist1d option shuffle_seq must be True or False"),
    ]:
        with pytest.raises(SharpdimError, match=message):
            load_dataset("mnist1d", **options, **small)


def test_mnist1d_padding_is_a_pair_of_whole_numbers_in_order():
    """padding=[1] was a raw unpacking ValueError, padding=5 a TypeError, and [60, 36] drew
    paddings of 38..60 instead of being refused."""
    pytest.importorskip("mnist1d")
    small = {"n_train": 10, "n_test": 0}
    default = load_dataset("mnist1d", **small)
    for same in ([36, 60], (36.0, 60), np.array([36, 60]), torch.tensor([36, 60])):
        assert _same(load_dataset("mnist1d", padding=same, **small), default)
    assert not _same(load_dataset("mnist1d", padding=[0, 5], **small), default)
    message = r"^mnist1d option padding must be a pair \[low, high\] of whole numbers with 0 <= low"
    for bad in ([1], 5, [60, 36], [-1, 3], [1.5, 2], "ab", [1, 2, 3], np.array([[1, 2]])):
        with pytest.raises(SharpdimError, match=message):
            load_dataset("mnist1d", padding=bad, **small)


def test_mnist1d_options_that_break_its_generator_are_refused():
    """max_translation=0 (no shift, a plausible ablation) and templates shorter than two
    points passed the checks and failed inside mnist1d with raw ValueErrors."""
    pytest.importorskip("mnist1d")
    small = {"n_train": 10, "n_test": 0}
    for options, message in [
        ({"max_translation": 0}, r"^mnist1d option max_translation must be an integer >= 1, "
         "got 0: pass max_translation=1 for no shift$"),
        ({"final_seq_length": 0}, r"^mnist1d option final_seq_length must be an integer >= 1"),
        ({"template_len": 1, "padding": [0, 0]}, r"^mnist1d options template_len=1 and "
         r"padding=\[0, 0\] leave templates shorter than 2 points"),
        ({"template_len": 0, "padding": [0, 1]}, "leave templates shorter than 2 points"),
    ]:  # fmt: skip
        with pytest.raises(SharpdimError, match=message):
            load_dataset("mnist1d", **options, **small)
    assert load_dataset("mnist1d", max_translation=1, **small).x_train.shape == (10, 40)
    assert load_dataset("mnist1d", template_len=1, padding=[0, 1], **small).num_train == 10


def test_a_dataset_of_ones_own_arrays_is_checked_when_built():
    """Dataset(...) checked nothing: labels one short failed mid-run with a raw IndexError,
    numpy arrays with an AttributeError, and one label too many only at the final
    evaluation, after the whole run."""
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    from_numpy = Dataset("own", x.numpy(), y.numpy(), x[:4].numpy()[::-1], y[:4].numpy(), 3)
    assert torch.equal(from_numpy.x_train, x) and torch.equal(from_numpy.x_test, x[:4].flip(0))
    assert from_numpy.y_train.dtype == torch.int64
    longer = Dataset("lengths", torch.randn(6, 8, 3), y[:6], torch.randn(2, 16, 3), y[:2], 3)
    assert longer.x_test.shape == (2, 16, 3)  # (test sequences longer than training ones)
    for fields, message in [
        ((x, y[:19], x[:4], y[:4], 3), r"^Dataset x_train holds 20 examples but y_train 19: "),
        ((x, y, x[:4], y[:5], 3), r"^Dataset x_test holds 4 examples but y_test 5: "),
        ((x, y, x[:4], y[:4], -1), r"^num_classes must be an integer >= 0, got -1"),
        ((x, np.array(["a"] * 20), x[:4], y[:4], 3), r"^Dataset y_train is a numpy array of <U1"),
        (([1.0] * 20, y, x[:4], y[:4], 3), r"^Dataset x_train must be a torch.Tensor \(or numpy"),
        ((torch.tensor(1.0), y, x[:4], y[:4], 3), r"^Dataset x_train is a single number"),
    ]:  # fmt: skip
        with pytest.raises(SharpdimError, match=message):
            Dataset("own", *fields)


def test_to_refuses_a_dtype_that_is_not_floating():
    """Dataset.to(torch.int64) truncated the float inputs and targets silently."""
    ds = load_dataset("teacher_student", n_train=5, n_test=2)
    for bad in (torch.int64, torch.bool, "float64"):
        with pytest.raises(SharpdimError, match=r"^dtype must be a floating torch dtype, got"):
            ds.to(bad)
    wide = ds.to(torch.float64)
    assert wide.x_train.dtype == wide.y_train.dtype == torch.float64
    assert torch.equal(wide.x_train, ds.x_train.double())
    labels = load_dataset("modular", p=5).to(torch.float64, device="cpu")
    assert labels.y_train.dtype == torch.int64  # labels stay int64


@pytest.mark.parametrize("name", sorted(SMALL))
def test_sizes_are_whole_numbers_and_dtype_floating(name):
    options = {k: v for k, v in SMALL[name].items() if k != "n_train"}
    assert load_dataset(name, n_train=5.0, **options).num_train == 5
    for bad in (2.5, "5", 0, True):  # were TypeErrors (slice indices, comparisons)
        with pytest.raises(SharpdimError, match=r"^n_train must be an integer >= 1"):
            load_dataset(name, n_train=bad, **options)
    with pytest.raises(SharpdimError, match=r"^n_test must be an integer >= 0, got -1"):
        load_dataset(name, **{**SMALL[name], "n_test": -1})
    for bad in (torch.int64, "float32"):  # int64 silently truncated the features
        with pytest.raises(SharpdimError, match=r"^dtype must be a floating torch dtype"):
            load_dataset(name, **{**SMALL[name], "dtype": bad})


def test_batches_and_subset():
    ds = load_dataset("modular", p=5)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([x[:, 0] * 5 + x[:, 1] for x, _ in ds.batches(4, g, drop_last=False)])
    train_ids = ds.x_train[:, 0] * 5 + ds.x_train[:, 1]
    assert sorted(seen.tolist()) == sorted(train_ids.tolist())
    sizes = [len(y) for _, y in ds.batches(5, g)]
    assert sizes == [5] * (ds.num_train // 5)
    (full,) = list(ds.batches(None))
    assert full[0] is ds.x_train
    with pytest.raises(SharpdimError, match="batch_size"):
        next(ds.batches(ds.num_train + 1, g))
    sub = ds.subset(3)
    assert torch.equal(sub.x_train, ds.x_train[:3]) and sub.x_test is ds.x_test
    with pytest.raises(SharpdimError, match="subset"):
        ds.subset(0)


def test_unknown_names_and_options():
    with pytest.raises(SharpdimError, match="unknown dataset"):
        load_dataset("cifar")
    with pytest.raises(SharpdimError, match="unknown option"):
        load_dataset("digits", p=3)
    with pytest.raises(SharpdimError, match="encoding"):
        load_dataset("modular", encoding="bits")


def _write_mnist_files(directory, gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(6, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(directory / f"{stem}{suffix}", array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_dataset_round_trip(tmp_path, gz):
    arrays = _write_mnist_files(tmp_path, gz=gz)
    ds = load_dataset("idx", directory=tmp_path, dtype=torch.float64)
    pixels = arrays["train-images-idx3-ubyte"].reshape(12, 16) / 255.0
    mean, std = pixels.mean(), pixels.std(ddof=1)
    np.testing.assert_allclose(ds.x_train.numpy(), (pixels - mean) / std)
    test_pixels = arrays["t10k-images-idx3-ubyte"].reshape(6, 16) / 255.0
    np.testing.assert_allclose(ds.x_test.numpy(), (test_pixels - mean) / std)
    np.testing.assert_array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    assert ds.num_classes == max(int(arrays["train-labels-idx1-ubyte"].max()), 5) + 1
    few = load_dataset("idx", directory=tmp_path, n_train=5, n_test=2, flatten=False)
    assert few.x_train.shape == (5, 4, 4) and few.num_test == 2


def test_idx_dataset_explicit_paths_and_mismatch(tmp_path):
    _write_mnist_files(tmp_path, gz=False)
    files = {
        "train_images": tmp_path / "train-images-idx3-ubyte",
        "train_labels": tmp_path / "train-labels-idx1-ubyte",
        "test_images": tmp_path / "t10k-images-idx3-ubyte",
        "test_labels": tmp_path / "t10k-labels-idx1-ubyte",
    }
    assert load_dataset("idx", **files).num_train == 12
    with pytest.raises(SharpdimError, match="do not match"):
        load_dataset("idx", **{**files, "test_labels": files["train_labels"]})
    with pytest.raises(SharpdimError, match="directory="):
        load_dataset("idx")


def _idx_files(directory, **replace):
    """The four MNIST files in ``directory``, with some arrays replaced."""
    arrays = _write_mnist_files(directory, gz=False)
    for stem, array in replace.items():
        write_idx(directory / stem, array)
        arrays[stem] = array
    return arrays


@pytest.mark.parametrize(
    ("stem", "array", "message"),
    [
        ("train-labels-idx1-ubyte", np.full(12, 3.7, dtype=np.float32), "not whole numbers >= 0"),
        ("train-labels-idx1-ubyte", np.full(12, -3, dtype=np.int8), "not whole numbers >= 0"),
        ("t10k-labels-idx1-ubyte", np.full(6, np.nan), "not whole numbers >= 0"),
        ("train-labels-idx1-ubyte", np.full(12, 1e30, np.float32), r"labels must be below 1048576"),
        ("t10k-labels-idx1-ubyte", np.full(6, 2**31 - 1, np.int32), "the label 2147483647, but"),
        ("train-labels-idx1-ubyte", np.full(12, 2**20, np.int32), r"most 1048576 classes\)"),
        ("train-images-idx3-ubyte", np.zeros(12, dtype=np.uint8), r"images \(12,\) and labels"),
        ("t10k-images-idx3-ubyte", np.zeros((6, 5, 5), dtype=np.uint8), r"shape \(5, 5\)"),
        ("train-images-idx3-ubyte", np.zeros((12, 4, 4), dtype=np.float32), "float32 of shape"),
        ("train-images-idx3-ubyte", np.full((12, 4, 4), np.nan, np.float32), "NaN or infinite"),
    ],
)
def test_idx_dataset_rejects_inconsistent_files(tmp_path, stem, array, message):
    _idx_files(tmp_path, **{stem: array})
    with pytest.raises(SharpdimError, match=message):
        load_dataset("idx", directory=tmp_path)


def test_idx_images_near_the_float64_limit_are_standardised(tmp_path):
    """Squares of pixels above 1e154 overflow float64: the std was inf and every input came
    out 0 (near 1e308 the mean overflowed too: NaN); the statistics are now taken on values
    scaled by a power of two, so the result is that of the same pixels at a small scale."""
    pixels = np.random.default_rng(1).standard_normal((12, 4, 4))
    small = load_dataset("idx", directory=_written(tmp_path / "a", pixels), dtype=torch.float64)
    for scale in (2.0**550, 2.0**1000):
        files = _written(tmp_path / f"b{scale:.0e}", pixels * scale)
        big = load_dataset("idx", directory=files, dtype=torch.float64)
        assert torch.equal(big.x_train, small.x_train) and torch.equal(big.x_test, small.x_test)


def _written(directory, train_pixels):
    directory.mkdir()
    _idx_files(
        directory,
        **{
            "train-images-idx3-ubyte": train_pixels,
            "t10k-images-idx3-ubyte": train_pixels[:6],
        },
    )
    return directory


def test_a_single_training_value_centres_the_test_pixels_in_their_units(tmp_path):
    """With one training pixel the fallback std 1 was in unscaled units: test inputs came
    out 32 times too large after the power-of-two scaling."""
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((1, 1), 7, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(1, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.full((3, 1), 9, np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    ds = load_dataset("idx", directory=tmp_path, dtype=torch.float64)
    torch.testing.assert_close(ds.x_test, torch.full((3, 1), 2 / 255, dtype=torch.float64))


def test_an_idx_path_that_is_not_a_regular_file_is_named(tmp_path):
    """A pipe (or /dev/null) was reported as a file that does not exist."""
    with pytest.raises(SharpdimError, match=r"is not a regular file \(a pipe or a device\)"):
        read_idx("/dev/null")


def test_idx_dataset_zero_dim_labels_and_sizes(tmp_path):
    arrays = _idx_files(tmp_path)
    with pytest.raises(SharpdimError, match="n_train=13 but the files hold 12"):
        load_dataset("idx", directory=tmp_path, n_train=13)
    for n_train in (0, -5):
        with pytest.raises(SharpdimError, match=f"^n_train must be an integer >= 1, got {n_train}"):
            load_dataset("idx", directory=tmp_path, n_train=n_train)
    with pytest.raises(SharpdimError, match="n_test=7 but the files hold 6"):
        load_dataset("idx", directory=tmp_path, n_test=7)
    no_test = load_dataset("idx", directory=tmp_path, n_train=1, n_test=0)
    assert tuple(no_test.x_train.shape) == (1, 16) and tuple(no_test.x_test.shape) == (0, 16)
    # the classes of the files, not of the one example kept (a model's output count)
    most = max(int(arrays["train-labels-idx1-ubyte"].max()), 5)
    assert no_test.y_train.tolist() == [1] and no_test.num_classes == most + 1 == 10
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 0, 5]))  # 0-dim file
    with pytest.raises(SharpdimError, match=r"labels \(\) do not match"):
        load_dataset("idx", directory=tmp_path)


def test_idx_dataset_whole_float_labels_and_float_images(tmp_path):
    images = np.linspace(0.0, 1.0, 12 * 16, dtype=np.float32).reshape(12, 4, 4)
    arrays = _idx_files(
        tmp_path,
        **{
            "train-labels-idx1-ubyte": np.arange(12, dtype=np.float64) % 3,
            "train-images-idx3-ubyte": images,
            "t10k-images-idx3-ubyte": images[:6],
        },
    )
    ds = load_dataset("idx", directory=tmp_path, dtype=torch.float64)
    assert ds.y_train.tolist() == [0, 1, 2] * 4 and ds.y_train.dtype == torch.int64
    assert ds.num_classes == 6  # test labels are 0..5
    pixels = images.reshape(12, 16).astype(np.float64)  # float pixels are not divided by 255
    expected = (pixels - pixels.mean()) / pixels.std(ddof=1)
    np.testing.assert_allclose(ds.x_train.numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.x_test.numpy(), expected[:6], rtol=1e-12, atol=1e-12)
    assert arrays["t10k-labels-idx1-ubyte"].tolist() == ds.y_test.tolist()


def test_constant_idx_pixels_are_centred_not_blown_up(tmp_path):
    """The std of twenty images of 7/255 is ~1e-17, not 0 (7/255 is inexact in binary): the
    data were divided by it (test inputs ~1e17) instead of only centred."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.full((20, 4, 4), 7, np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", rng.integers(0, 10, 20, dtype=np.uint8))
    test = rng.integers(0, 256, (8, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, 8, dtype=np.uint8))
    ds = load_dataset("idx", directory=tmp_path, dtype=torch.float64)
    assert ds.x_train.abs().max() < 1e-15
    expected = torch.as_tensor(test.reshape(8, 16) / 255.0 - 7 / 255.0)
    torch.testing.assert_close(ds.x_test, expected, rtol=0, atol=1e-15)


def test_loading_digits_leaves_python_random_alone():
    """sklearn's first import pulls in rich, whose rich.style calls random.getrandbits: the
    first digits load shifted a user's seeded Python random stream (fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import random\n"
        "from sharpdim.training.datasets import load_dataset\n"
        "random.seed(0); a = random.random()\n"
        "random.seed(0); load_dataset('digits', n_train=20, n_test=5); print(random.random() == a)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: load_dataset("modular", p=5, operation=["add"]), r"unknown operation \['add'\]"),
        (lambda: next(load_dataset("modular", p=5).batches(4, generator=0)), "generator must be"),
        (lambda: load_dataset("teacher_student", teacher_width=0), "teacher_width must be"),
        (lambda: load_dataset("teacher_student", teacher_depth=-1), "teacher_depth must be"),
        (lambda: load_dataset("idx", directory="/tmp", flatten="no"), "flatten must be True"),
    ],
)
def test_dataset_arguments_are_one_line_errors(call, message):
    """A list operation raised 'unhashable type', an int generator torch's randperm TypeError,
    and the teacher's sizes were named width/depth (build_mlp's names)."""
    with pytest.raises(SharpdimError, match=f"^{message}") as err:
        call()
    assert "\n" not in str(err.value)


def test_an_idx_directory_given_as_a_file_is_named(tmp_path):
    with pytest.raises(SharpdimError, match="is a directory: pass the path of a file in it"):
        read_idx(tmp_path)
