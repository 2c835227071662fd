"""Fashion-MNIST: the real set, the shipped sample (a recorded subset of it), search order and fallbacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import netvis.data.fashion_mnist as fm
from netvis.data import (
    FASHION_MNIST_CLASSES,
    SAMPLE_DIR,
    DataError,
    find_fashion_mnist,
    load,
    read_idx_pair,
    write_idx,
)
from netvis.data.make_sample import build_sample, choose

REAL = Path("/usr/share/datasets/fashion-mnist")
needs_real = pytest.mark.skipif(
    not (REAL / "t10k-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist not installed"
)


@pytest.fixture(scope="module")
def real_train():
    return read_idx_pair(REAL / "train-images-idx3-ubyte.gz", REAL / "train-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def real_test():
    return read_idx_pair(REAL / "t10k-images-idx3-ubyte.gz", REAL / "t10k-labels-idx1-ubyte.gz")


def test_class_names():
    assert FASHION_MNIST_CLASSES == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


@needs_real
def test_real_fashion_mnist_loads_with_training_statistics(real_train, monkeypatch):
    monkeypatch.delenv("NETVIS_DATA", raising=False)
    train = load("fashion-mnist", "train")
    test = load("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.targets.dtype == torch.int64
    assert int(train.targets[0]) == 9 and train.classes[9] == "Ankle boot"
    assert train.classes == list(FASHION_MNIST_CLASSES)
    # Statistics of the training split, computed directly and against the published values.
    pixels = real_train[0]
    assert train.mean[0] == pytest.approx(pixels.mean(dtype=np.float64) / 255, abs=1e-9)
    assert train.std[0] == pytest.approx(pixels.std(dtype=np.float64) / 255, abs=1e-9)
    assert train.mean[0] == pytest.approx(0.2860, abs=1e-4) and train.std[0] == pytest.approx(
        0.3530, abs=1e-4
    )
    # The test split is normalized with the *training* statistics, not its own.
    assert test.mean == train.mean and test.std == train.std
    assert abs(test.images.float().mean().item() / 255 - train.mean[0]) > 1e-4
    x, y = train[0]
    expected = (torch.from_numpy(real_train[0][0]).float() / 255 - train.mean[0]) / train.std[0]
    torch.testing.assert_close(x, expected[None])
    assert y == 9
    assert test.source == find_fashion_mnist()


@needs_real
def test_sample_is_a_recorded_balanced_subset_of_the_real_data(real_train, real_test):
    meta = json.loads((SAMPLE_DIR / "meta.json").read_text())
    for split, real, n, per_class in (("train", real_train, 2000, 200), ("test", real_test, 1000, 100)):
        sample = load("fashion-mnist-sample", split, normalize=False)
        indices = np.array(meta["splits"][split]["indices"])
        assert len(sample) == n == len(indices) and len(set(indices.tolist())) == n
        assert torch.bincount(sample.targets, minlength=10).tolist() == [per_class] * 10
        # Every sample image is the real image at its recorded index (compared by hash), with its label.
        real_hashes = [hashlib.sha256(img.tobytes()).hexdigest() for img in real[0][indices]]
        sample_hashes = [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in sample.images[:, 0]]
        assert sample_hashes == real_hashes
        np.testing.assert_array_equal(sample.targets.numpy(), real[1][indices])
        # And the recorded indices are the documented deterministic choice.
        np.testing.assert_array_equal(indices, choose(real[1], per_class, split=split, seed=meta["seed"]))
        # The source files are the ones the sample was built from.
        for name, digest in meta["splits"][split]["source_files"].items():
            assert hashlib.sha256((REAL / name).read_bytes()).hexdigest() == digest


@needs_real
def test_make_sample_rebuilds_byte_identical_files(tmp_path):
    meta = build_sample(REAL, tmp_path)
    for name in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "meta.json",
        "LICENSE",
        "README.md",
    ]:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name
    assert meta["splits"]["train"]["count"] == 2000


def test_sample_files_match_their_recorded_checksums_and_licence():
    meta = json.loads((SAMPLE_DIR / "meta.json").read_text())
    for split in ("train", "test"):
        for name, digest in meta["splits"][split]["files"].items():
            assert hashlib.sha256((SAMPLE_DIR / name).read_bytes()).hexdigest() == digest
    licence = (SAMPLE_DIR / "LICENSE").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence and "MIT" in licence
    assert "Permission is hereby granted, free of charge" in licence


def test_sample_loads_with_its_own_training_statistics():
    train = load("fashion-mnist-sample")
    test = load("fashion-mnist-sample", "test")
    pixels = train.images.double() / 255
    assert train.mean[0] == pytest.approx(pixels.mean().item(), abs=1e-9)
    assert train.std[0] == pytest.approx(pixels.std(unbiased=False).item(), abs=1e-9)
    assert test.mean == train.mean and test.std == train.std
    raw = load("fashion-mnist-sample", "test", normalize=False)
    assert raw.mean == train.mean  # reported, not applied
    x, _ = raw[3]
    torch.testing.assert_close(x, test.images[3].float() / 255)
    assert x.min() >= 0 and x.max() <= 1
    assert test.preprocess.to_dict() == {
        "mean": list(train.mean),
        "std": list(train.std),
        "size": None,
        "channels": 1,
    }


def test_sample_with_three_channels_and_resize():
    ds = load("fashion-mnist-sample", "test", channels=3, size=32)
    x, _ = ds[0]
    assert x.shape == (3, 32, 32)
    assert ds.mean == (load("fashion-mnist-sample").mean[0],) * 3
    torch.testing.assert_close(x[0], x[2])


def _write_fake_fmnist(folder: Path, n_train=6, n_test=4) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        )
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def test_env_var_and_root_are_searched_first(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    _write_fake_fmnist(env_dir / "fashion-mnist", n_train=6)
    monkeypatch.setenv("NETVIS_DATA", str(tmp_path / "missing") + ":" + str(env_dir))
    ds = load("fashion-mnist")
    assert len(ds) == 6 and ds.source == (env_dir / "fashion-mnist").resolve()
    root = tmp_path / "root" / "FashionMNIST" / "raw"  # torchvision's layout
    _write_fake_fmnist(root, n_train=8)
    assert len(load("fashion-mnist", root=tmp_path / "root")) == 8
    assert load("fashion-mnist", root=tmp_path / "root").classes[0] == "T-shirt/top"


def test_not_found_without_download_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (tmp_path / "system",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("NETVIS_DATA", raising=False)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load("fashion-mnist", download=False)
    assert str(tmp_path / "system") in str(info.value)


def test_torchvision_download_is_tried_then_read_with_netvis(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeFashionMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            _write_fake_fmnist(Path(root) / "FashionMNIST" / "raw", n_train=12)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    ds = load("fashion-mnist", "train", root=tmp_path / "dl")
    assert calls == [(str(tmp_path / "dl"), True)] and len(ds) == 12


def test_failed_download_gives_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load("fashion-mnist", root=tmp_path / "empty")
    message = str(info.value)
    assert "network unreachable" in message and str(tmp_path / "empty") in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_idx_folder_path_is_detected_with_generic_classes(tmp_path):
    _write_fake_fmnist(tmp_path)
    ds = load(tmp_path, "test")
    # Test labels run 0..3, train labels 0..5: both splits get the same six classes.
    assert len(ds) == 4 and ds.classes == [str(k) for k in range(6)] == load(tmp_path).classes
    (tmp_path / "classes.txt").write_text("a\nb\nc\nd\ne\nf\n")
    assert load(str(tmp_path)).classes == ["a", "b", "c", "d", "e", "f"]
    (tmp_path / "classes.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="names only 2 classes") as info:
        load(tmp_path)
    assert "labels-idx1-ubyte.gz" in str(info.value)


def test_idx_test_split_without_train_split(tmp_path):
    _write_fake_fmnist(tmp_path)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match="no training split") as info:
        load(tmp_path, "test")
    assert str(tmp_path) in str(info.value)
    assert len(load(tmp_path, "test", normalize=False)) == 4


def test_mismatched_files_in_a_folder_name_the_file(tmp_path):
    _write_fake_fmnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, dtype=np.uint8))
    with pytest.raises(DataError, match="5 labels") as info:
        load(tmp_path)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(info.value)


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split"):
        load("fashion-mnist-sample", "validation")
