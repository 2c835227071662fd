"""IDX reading and writing: round trips, every kind of corrupt file, speed on the real set."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from netvis.data import DataError, read_idx, read_idx_images, read_idx_labels, read_idx_pair, write_idx
from netvis.data.idx import IMAGES_MAGIC, LABELS_MAGIC

REAL = Path("/usr/share/datasets/fashion-mnist")


def _images(n=5, h=4, w=3):
    return (np.arange(n * h * w, dtype=np.int64) * 7 % 256).astype(np.uint8).reshape(n, h, w)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip_images_and_labels(tmp_path, suffix):
    images, labels = _images(), np.array([0, 3, 9, 1, 2], dtype=np.uint8)
    ip = write_idx(tmp_path / f"x-images-idx3-ubyte{suffix}", images)
    lp = write_idx(tmp_path / f"x-labels-idx1-ubyte{suffix}", labels)
    assert (ip.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    got_images, got_labels = read_idx_pair(ip, lp, num_classes=10)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.dtype == np.uint8 and got_images.flags.writeable


def test_raw_layout_matches_the_format(tmp_path):
    """Header: magic 0x00000803, then big-endian dims, then C-order bytes."""
    images = _images(2, 3, 4)
    path = write_idx(tmp_path / "a-images-idx3-ubyte", images)
    raw = path.read_bytes()
    assert struct.unpack(">IIII", raw[:16]) == (IMAGES_MAGIC, 2, 3, 4)
    assert raw[16:] == images.tobytes()
    labels = write_idx(tmp_path / "a-labels-idx1-ubyte", np.arange(300 % 256, dtype=np.uint8)[:7])
    assert struct.unpack(">II", labels.read_bytes()[:8]) == (LABELS_MAGIC, 7)


def test_gzip_detected_by_content_not_name(tmp_path):
    images = _images()
    path = write_idx(tmp_path / "noext", images, compress=True)
    np.testing.assert_array_equal(read_idx_images(path), images)


def test_writing_is_reproducible(tmp_path):
    a = write_idx(tmp_path / "a.gz", _images()).read_bytes()
    b = write_idx(tmp_path / "b.gz", _images()).read_bytes()
    assert a == b


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "float32", "float64"])
def test_other_idx_types_round_trip(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    got = read_idx(write_idx(tmp_path / "t.idx", array))
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, array)


def _write_raw(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def _header(magic, *dims):
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)


CORRUPT = {
    "bad-magic": (_header(0x12340803, 2, 2, 2) + bytes(8), "bad magic"),
    "unknown-type": (_header(0x00000703, 2, 2, 2) + bytes(8), "bad magic"),
    "truncated-data": (_header(IMAGES_MAGIC, 2, 2, 2) + bytes(7), "truncated"),
    "too-long": (_header(IMAGES_MAGIC, 2, 2, 2) + bytes(9), "too long"),
    "truncated-header": (_header(IMAGES_MAGIC, 2)[:6], "truncated"),
    "tiny": (b"\x00\x00", "too short"),
    "labels-as-images": (_header(LABELS_MAGIC, 8) + bytes(8), "0x00000803"),
    "int-images": (_header(0x00000C03, 1, 1, 1) + bytes(4), "0x00000803"),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_image_files_name_the_file(tmp_path, case, gz):
    payload, words = CORRUPT[case]
    path = _write_raw(tmp_path / (f"{case}-images-idx3-ubyte" + (".gz" if gz else "")), payload, gz)
    with pytest.raises(DataError, match=words) as info:
        read_idx_images(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_images_file_read_as_labels_is_rejected(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", _images())
    with pytest.raises(DataError, match="0x00000801") as info:
        read_idx_labels(path)
    assert str(path) in str(info.value)


def test_bad_gzip_cases(tmp_path):
    good = gzip.compress(_header(IMAGES_MAGIC, 1, 2, 2) + bytes(4), mtime=0)
    not_gzip = tmp_path / "plain-images-idx3-ubyte.gz"
    not_gzip.write_bytes(_header(IMAGES_MAGIC, 1, 2, 2) + bytes(4))
    truncated = tmp_path / "cut-images-idx3-ubyte.gz"
    truncated.write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # CRC or length of the gzip trailer no longer matches
    bad_crc = tmp_path / "crc-images-idx3-ubyte.gz"
    bad_crc.write_bytes(bytes(flipped))
    garbage = tmp_path / "garbage-images-idx3-ubyte.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"\xff" * 40)
    for path, words in [
        (not_gzip, "not a gzip file"),
        (truncated, "not a valid gzip"),
        (bad_crc, "not a valid gzip"),
        (garbage, "not a valid gzip"),
    ]:
        with pytest.raises(DataError, match=words) as info:
            read_idx_images(path)
        assert str(path) in str(info.value), path


def test_missing_file(tmp_path):
    path = tmp_path / "nope-images-idx3-ubyte.gz"
    with pytest.raises(DataError, match="not found") as info:
        read_idx_images(path)
    assert str(path) in str(info.value)


def test_label_count_mismatch_names_both_files(tmp_path):
    ip = write_idx(tmp_path / "train-images-idx3-ubyte.gz", _images(5))
    lp = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="4 labels") as info:
        read_idx_pair(ip, lp)
    assert str(ip) in str(info.value) and str(lp) in str(info.value)


def test_label_out_of_range(tmp_path):
    ip = write_idx(tmp_path / "train-images-idx3-ubyte.gz", _images(2))
    lp = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([1, 10], dtype=np.uint8))
    with pytest.raises(DataError, match="label 10") as info:
        read_idx_pair(ip, lp, num_classes=10)
    assert str(lp) in str(info.value)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="IDX cannot store"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.uint16))


@pytest.mark.skipif(
    not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)
def test_full_training_set_reads_fast():
    start = time.perf_counter()
    images = read_idx_images(REAL / "train-images-idx3-ubyte.gz")
    elapsed = time.perf_counter() - start
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert elapsed < 3.0, f"reading 60,000 images took {elapsed:.2f} s"
