"""CIFAR-10 python-format batches, checked with tiny fake pickles written here."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from netvis.data import CIFAR10_CLASSES, DataError, load, load_cifar10, read_cifar_batch


def _batch(n: int, first_label: int, seed: int) -> dict:
    data = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return {
        b"batch_label": b"fake",
        b"labels": [(first_label + k) % 10 for k in range(n)],
        b"data": data,
        b"filenames": [f"img{k}.png".encode() for k in range(n)],
    }


def _write_cifar(folder: Path, protocol: int = 2, meta: bool = True) -> dict[str, dict]:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{k}": _batch(3, k, k) for k in range(1, 6)}
    batches["test_batch"] = _batch(4, 0, 99)
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
    if meta:
        names = [f"class{k}".encode() for k in range(10)]
        (folder / "batches.meta").write_bytes(
            pickle.dumps({b"label_names": names, b"num_cases_per_batch": 3}, protocol)
        )
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_fake_cifar_loads_in_batch_order(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_cifar10(tmp_path, "train", normalize=False)
    assert len(train) == 15 and train.images.shape == (15, 3, 32, 32)
    assert train.classes == [f"class{k}" for k in range(10)]
    expected_labels = sum((batches[f"data_batch_{k}"][b"labels"] for k in range(1, 6)), [])
    assert train.targets.tolist() == expected_labels
    # Row k of batch 2: 1024 red, then 1024 green, then 1024 blue values, row-major.
    row = batches["data_batch_2"][b"data"][1]
    image = train.images[3 + 1]
    assert torch.equal(image[0].flatten(), torch.from_numpy(row[:1024].copy()))
    assert torch.equal(image[2, 5], torch.from_numpy(row[2048 + 5 * 32 : 2048 + 6 * 32].copy()))
    x, y = train[4]
    torch.testing.assert_close(x, image.float() / 255)
    assert y == expected_labels[4]


def test_test_split_is_normalized_with_training_statistics(tmp_path):
    batches = _write_cifar(tmp_path)
    train = load(str(tmp_path), "train")
    test = load(tmp_path, "test")
    assert len(test) == 4 and test.name == "cifar10"
    data = (
        np.concatenate([batches[f"data_batch_{k}"][b"data"] for k in range(1, 6)]).reshape(-1, 3, 1024) / 255
    )
    assert train.mean == pytest.approx(tuple(data.mean(axis=(0, 2))), abs=1e-12)
    assert train.std == pytest.approx(tuple(data.std(axis=(0, 2))), abs=1e-12)
    assert test.mean == train.mean and test.std == train.std
    x, _ = test[0]
    mean = torch.tensor(train.mean).view(3, 1, 1)
    std = torch.tensor(train.std).view(3, 1, 1)
    torch.testing.assert_close(x, (test.images[0].float() / 255 - mean) / std)


def test_named_cifar10_via_root_and_env(tmp_path, monkeypatch):
    _write_cifar(tmp_path / "data" / "cifar-10-batches-py", meta=False)
    ds = load("cifar10", "test", root=tmp_path / "data")
    assert ds.classes == list(CIFAR10_CLASSES)  # default names without batches.meta
    monkeypatch.setenv("NETVIS_DATA", str(tmp_path / "data"))
    assert len(load("CIFAR10", "train")) == 15
    monkeypatch.delenv("NETVIS_DATA")
    with pytest.raises(DataError, match="CIFAR-10 not found"):
        load("cifar10")


def test_missing_batch_is_named(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3") as info:
        load(tmp_path, "train")
    assert str(tmp_path) in str(info.value)


def test_corrupt_and_inconsistent_batches_name_the_file(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="not a valid CIFAR pickle") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    bad = _batch(3, 0, 0)
    bad[b"labels"] = bad[b"labels"][:2]
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="3 images but 2 labels") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    bad = _batch(3, 0, 0)
    bad[b"data"] = bad[b"data"][:, :100]
    path.write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="N x 3072"):
        read_cifar_batch(path)
    path.write_bytes(pickle.dumps({"labels": [1]}))
    with pytest.raises(DataError, match="'data'"):
        read_cifar_batch(path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_pickles_cannot_run_code(tmp_path):
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
