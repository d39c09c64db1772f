"""Reader and writer for the IDX file format of MNIST (and Fashion-MNIST, KMNIST, EMNIST).

An IDX file is: two zero bytes; one byte naming the element type (``0x08`` uint8,
``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64); one
byte with the number of dimensions ``k``; ``k`` big-endian ``uint32`` sizes; then the
elements in C order, big-endian. Files ending in ``.gz`` are written through gzip; gzipped
files (by suffix or by their first bytes) are read through it.
Reference: Y. LeCun, C. Cortes & C. Burges, "The MNIST database of handwritten digits".

:func:`load_idx_dataset` turns the four MNIST files into a
:class:`~sharpdim.training.datasets.Dataset` (``load_dataset("idx", ...)``). Nothing here opens
a network connection: the user supplies the files.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from sharpdim.atomic import atomic_path
from sharpdim.checks import check_flag, check_seed
from sharpdim.errors import SharpdimError
from sharpdim.training.datasets import Dataset, check_split_args, spread_or_one

_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[str, int] = {
    "u1": 0x08,
    "i1": 0x09,
    "i2": 0x0B,
    "i4": 0x0C,
    "f4": 0x0D,
    "f8": 0x0E,
}


_GZIP_MAGIC = b"\x1f\x8b"
_MAX_CLASSES = 2**20  # labels must lie below this (it bounds num_classes)


def _open_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise SharpdimError(f"IDX file {path} is a directory: pass the path of a file in it")
    if not path.exists():
        raise SharpdimError(f"IDX file {path} does not exist: check the path or the directory")
    if not path.is_file():
        raise SharpdimError(
            f"IDX file {path} is not a regular file (a pipe or a device): pass an IDX file on "
            "disk, e.g. decompress it first (gzip files are read directly)"
        )
    raw = path.read_bytes()
    if raw.startswith(_GZIP_MAGIC):  # (an IDX file starts with two zero bytes), any name
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise SharpdimError(
                f"{path} starts like gzip data but is not complete gzip data ({exc}): "
                "the file is truncated or corrupt; re-download it"
            ) from exc
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array in native byte order.

    Args:
        path: a file such as ``train-images-idx3-ubyte`` or ``t10k-labels-idx1-ubyte.gz``.

    Returns:
        An array of the stored shape and element type (uint8 for MNIST images and labels).

    Raises:
        SharpdimError: the file is missing, has a bad magic number or a wrong length.
    """
    path = Path(path)
    raw = _open_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise SharpdimError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex()}): "
            "pass MNIST-style idx files (e.g. train-images-idx3-ubyte[.gz])"
        )
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SharpdimError(f"{path} is truncated inside its header: re-download the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise SharpdimError(
            f"{path} holds {len(raw) - header} data bytes but its header {shape} needs "
            f"{expected}: the file is truncated or corrupt; re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an array as an IDX file (gzipped when the name ends in ``.gz``, any case).

    Args:
        path: destination file.
        array: uint8, int8, int16, int32, float32 or float64 array with 1 to 255 dimensions.

    Returns:
        The path written.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.kind + str(array.dtype.itemsize))
    if code is None or not 1 <= array.ndim <= 255:
        raise SharpdimError(
            f"cannot write an array of dtype {array.dtype} and {array.ndim} dimensions as IDX: "
            "use uint8/int8/int16/int32/float32/float64 with 1 to 255 dimensions"
        )
    if max(array.shape) >= 2**32:  # (a zero-size array can be that long along one axis)
        raise SharpdimError(
            f"cannot write an array of shape {array.shape} as IDX: each dimension is stored as "
            "a 32-bit count, so every size must be below 2**32"
        )
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()
    raw = header + body
    with atomic_path(path) as partial:
        gzipped = path.suffix.lower() == ".gz"
        partial.write_bytes(gzip.compress(raw, mtime=0) if gzipped else raw)
    return path


def find_idx_file(directory: str | Path, stem: str) -> Path:
    """The file ``stem`` or ``stem.gz`` in ``directory`` (MNIST's standard file names)."""
    directory = Path(directory)
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SharpdimError(
        f"no {stem} or {stem}.gz in {directory}: put the four MNIST idx files there "
        "or pass train_images=, train_labels=, test_images=, test_labels= explicitly"
    )


def _check_split(
    split: str, images: np.ndarray, labels: np.ndarray, paths: dict[str, Path]
) -> None:
    """Raise unless ``images`` ``(N, ...)`` and ``labels`` ``(N,)`` form a usable split."""
    if (
        images.ndim < 2
        or math.prod(images.shape[1:]) == 0
        or labels.ndim != 1
        or images.shape[0] != labels.shape[0]
    ):
        raise SharpdimError(
            f"{split} images {images.shape} and labels {labels.shape} do not match: pass an "
            "images file (N, ...) and the labels file (N,) of the same split"
        )
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise SharpdimError(
            f"{paths[f'{split}_images']} holds NaN or infinite pixels: clean or re-export it"
        )
    whole = labels.dtype.kind != "f" or bool(
        (np.isfinite(labels) & (np.floor(labels) == labels)).all()
    )
    if not whole or (labels.size and labels.min() < 0):
        raise SharpdimError(
            f"{paths[f'{split}_labels']} holds labels that are not whole numbers >= 0: "
            "class labels must be 0, 1, 2, ..."
        )
    if labels.size and labels.max() >= _MAX_CLASSES:
        raise SharpdimError(
            f"{paths[f'{split}_labels']} holds the label {labels.max()}, but labels must be below "
            f"{_MAX_CLASSES} (at most {_MAX_CLASSES} classes): pass class labels 0, 1, 2, ..."
        )


def _count(name: str, n: int | None, available: int, *, minimum: int) -> int:
    """``n`` examples (default all) after checking ``minimum <= n <= available``."""
    n = available if n is None else n
    if not minimum <= n <= available:
        raise SharpdimError(
            f"{name}={n} but the files hold {available} examples: choose {name} between "
            f"{minimum} and {available}"
        )
    return n


def load_idx_dataset(
    *,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    dtype: torch.dtype = torch.float32,
    directory: str | Path | None = None,
    train_images: str | Path | None = None,
    train_labels: str | Path | None = None,
    test_images: str | Path | None = None,
    test_labels: str | Path | None = None,
    flatten: bool = True,
) -> Dataset:
    """The user's own MNIST-format IDX files (MNIST, Fashion-MNIST, KMNIST, ...).

    Either ``directory`` holding the standard names ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each
    optionally ``.gz``), or the four paths. Images are ``(N, ...)`` with at least one
    feature dimension (MNIST: ``(N, 28, 28)``), the same per-example shape and element type in
    both splits, and finite values; labels are ``(N,)`` whole numbers ``>= 0`` (``num_classes``
    is the largest label in the two label files plus one, whatever subset is kept). uint8
    pixels are divided by 255 (other types are taken as they are), then standardised with the
    training set's mean and standard deviation (one scalar each); the first ``n_train``
    (default all, at least 1) / ``n_test`` (default all, may be 0) examples are kept.
    ``seed`` is unused (the files fix the order).
    """
    check_seed(seed)  # unused
    n_train, n_test, dtype = check_split_args(n_train, n_test, dtype)
    flatten = check_flag(flatten, "flatten")
    names = {
        "train_images": ("train-images-idx3-ubyte", train_images),
        "train_labels": ("train-labels-idx1-ubyte", train_labels),
        "test_images": ("t10k-images-idx3-ubyte", test_images),
        "test_labels": ("t10k-labels-idx1-ubyte", test_labels),
    }
    paths: dict[str, Path] = {}
    for key, (stem, given) in names.items():
        if given is not None:
            paths[key] = Path(given)
        elif directory is not None:
            paths[key] = find_idx_file(directory, stem)
        else:
            raise SharpdimError(
                f"no {key} file: pass directory= (with the standard MNIST names) or {key}="
            )
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        _check_split(split, arrays[f"{split}_images"], arrays[f"{split}_labels"], paths)
    train_imgs, test_imgs = arrays["train_images"], arrays["test_images"]
    if train_imgs.shape[1:] != test_imgs.shape[1:] or train_imgs.dtype != test_imgs.dtype:
        raise SharpdimError(
            f"train images are {train_imgs.dtype} of shape {train_imgs.shape[1:]} per example but "
            f"test images {test_imgs.dtype} of shape {test_imgs.shape[1:]}: pass files of the "
            "same dataset (same image size and element type)"
        )
    if train_imgs.shape[0] == 0:  # (n_train was asked "between 1 and 0")
        raise SharpdimError(
            f"{paths['train_images']} holds no examples: pass training files with at least one"
        )
    n_train = _count("n_train", n_train, train_imgs.shape[0], minimum=1)
    n_test = _count("n_test", n_test, test_imgs.shape[0], minimum=0)
    scale = 255.0 if train_imgs.dtype == np.uint8 else 1.0
    features = math.prod(train_imgs.shape[1:])

    def images(key: str, n: int) -> torch.Tensor:
        t = torch.as_tensor(arrays[key][:n].astype(np.float64)) / scale
        return t.reshape(n, features) if flatten else t

    x_train, x_test = images("train_images", n_train), images("test_images", n_test)
    # statistics of values scaled by a power of two (exact): squares of |x| > 1e154 overflow
    # float64, and an infinite std turned every input into 0 (a mean near 1e308: NaN)
    top = float(x_train.abs().max()) if x_train.numel() else 0.0
    power = 2.0 ** math.frexp(top)[1] if top > 0 else 1.0
    x_train, x_test = x_train / power, x_test / power
    mean = x_train.mean()
    one = torch.tensor(1 / power, dtype=torch.float64)  # (1 in the pixels' own units)
    std = x_train.std() if x_train.numel() > 1 else one
    std = spread_or_one(std, x_train.abs().max(), one=1 / power)
    y_train = torch.as_tensor(arrays["train_labels"][:n_train].astype(np.int64))
    y_test = torch.as_tensor(arrays["test_labels"][:n_test].astype(np.int64))
    labels = (arrays[key] for key in ("train_labels", "test_labels"))
    num_classes = max(int(a.max()) for a in labels if a.size) + 1  # of the files, not the subset
    return Dataset(
        "idx",
        ((x_train - mean) / std).to(dtype),
        y_train,
        ((x_test - mean) / std).to(dtype),
        y_test,
        num_classes,
        {"files": {k: str(v) for k, v in paths.items()}},
    )
