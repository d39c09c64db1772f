"""IDX reader/writer: round trips, gzip, corrupt files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from sharpdim.errors import SharpdimError
from sharpdim.training.data_idx import find_idx_file, read_idx, write_idx


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 3, 2)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(back, array)


def test_header_is_mnist_layout(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    raw = write_idx(tmp_path / "labels", labels).read_bytes()
    # magic 0x00000801 (uint8, 1 dimension), then the size 3 big-endian, then the bytes
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    gz = write_idx(tmp_path / "labels.gz", labels).read_bytes()
    assert gzip.decompress(gz) == raw


def test_bad_files_raise(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(SharpdimError, match="magic"):
        read_idx(tmp_path / "bad")
    raw = write_idx(tmp_path / "ok", np.zeros((4, 4), dtype=np.uint8)).read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(SharpdimError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "plain.gz").write_bytes(raw)  # gzip is told by the first bytes, not the name
    np.testing.assert_array_equal(read_idx(tmp_path / "plain.gz"), np.zeros((4, 4)))
    with pytest.raises(SharpdimError, match="does not exist"):
        read_idx(tmp_path / "missing")
    with pytest.raises(SharpdimError, match="cannot write"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.complex64))


def test_find_prefers_plain_then_gz(tmp_path):
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    assert find_idx_file(tmp_path, "t10k-labels-idx1-ubyte").name.endswith(".gz")
    with pytest.raises(SharpdimError, match="no train-labels"):
        find_idx_file(tmp_path, "train-labels-idx1-ubyte")


def test_truncated_gzip_names_the_file(tmp_path):
    raw = write_idx(tmp_path / "ok", np.arange(40, dtype=np.uint8).reshape(10, 4)).read_bytes()
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw, mtime=0)[:-20])
    with pytest.raises(SharpdimError, match=r"cut\.gz starts like gzip data but is not complete"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "bad_crc.gz").write_bytes(gzip.compress(raw, mtime=0)[:-8] + bytes(8))
    with pytest.raises(SharpdimError, match=r"bad_crc\.gz"):
        read_idx(tmp_path / "bad_crc.gz")


def test_upper_case_gz_suffix_is_written_gzipped_and_read_back(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    path = write_idx(tmp_path / "labels.GZ", labels)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(path), labels)


def test_gzipped_files_are_read_whatever_their_suffix(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    gz = write_idx(tmp_path / "labels.gz", labels).read_bytes()
    for name in ("labels", "labels.GZ", "labels.idx"):
        (tmp_path / name).write_bytes(gz)
        np.testing.assert_array_equal(read_idx(tmp_path / name), labels)
    (tmp_path / "cut").write_bytes(gz[:-5])
    with pytest.raises(SharpdimError, match=r"cut starts like gzip data but is not complete gzip"):
        read_idx(tmp_path / "cut")


def test_a_header_too_large_for_int64_is_reported_exactly(tmp_path):
    sizes = (2**32 - 1,) * 4  # (2**32 - 1)**4 uint8 elements: past int64
    (tmp_path / "huge").write_bytes(bytes([0, 0, 0x08, 4]) + struct.pack(">4I", *sizes))
    with pytest.raises(
        SharpdimError, match=rf"holds 0 data bytes but .* needs {(2**32 - 1) ** 4}:"
    ):
        read_idx(tmp_path / "huge")


def test_training_files_without_examples_are_named(tmp_path):
    """The message was 'choose n_train between 1 and 0'."""
    from sharpdim.training.datasets import load_dataset

    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": np.zeros((0, 4, 4), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.zeros(0, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 4, 4), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(tmp_path / stem, array)
    message = r"train-images-idx3-ubyte holds no examples: pass training files with at least one$"
    for n_train in (None, 1):
        with pytest.raises(SharpdimError, match=message):
            load_dataset("idx", directory=tmp_path, n_train=n_train)


def test_a_dimension_beyond_32_bits_is_refused_in_one_line(tmp_path):
    """A zero-size array 2**32 long raised struct.error from the header."""
    with pytest.raises(SharpdimError, match=r"every size must be below 2\*\*32"):
        write_idx(tmp_path / "x", np.zeros((2**32, 0), np.uint8))
    assert not (tmp_path / "x").exists()
