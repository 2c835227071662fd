"""Deterministic splits, loaders and batches; the global random state is never touched; load()'s names."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from netvis.data import (
    DataError,
    DatasetSubset,
    TensorImageDataset,
    batches,
    load,
    loader,
    names,
    split,
    split_indices,
)


def _tiny(n: int = 20) -> TensorImageDataset:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorImageDataset(images, torch.arange(n) % 3, ["a", "b", "c"], name="tiny")


def test_split_sizes_fractions_and_determinism():
    ds = _tiny(20)
    state = torch.get_rng_state()
    a_train, a_val = split(ds, [0.75, 0.25], seed=7)
    b_train, b_val = split(ds, [15, 5], seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert (len(a_train), len(a_val)) == (15, 5)
    assert torch.equal(a_train.images, b_train.images) and torch.equal(a_val.targets, b_val.targets)
    seen = torch.cat([a_train.images[:, 0, 0, 0], a_val.images[:, 0, 0, 0]]).sort().values
    assert seen.tolist() == list(range(20))  # disjoint and complete
    other_train, _ = split(ds, [15, 5], seed=8)
    assert not torch.equal(other_train.images, a_train.images)
    # The parts keep the parent's statistics, classes and preprocessing.
    assert a_val.mean == ds.mean and a_val.classes == ds.classes and a_val.preprocess == ds.preprocess
    value = int(a_val.images[0, 0, 0, 0])
    torch.testing.assert_close(a_val[0][0], ds[value][0])


def test_split_indices_rounding_and_errors():
    parts = split_indices(10, [1 / 3, 1 / 3, 1 / 3], seed=0)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert all(torch.equal(p, p.sort().values) for p in parts)
    with pytest.raises(ValueError, match="sum to"):
        split_indices(10, [5, 4])
    with pytest.raises(ValueError, match="sum to 1"):
        split_indices(10, [0.5, 0.2])


class _Plain(Dataset):
    targets = list(range(6))
    classes = ["x"] * 6

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


def test_split_of_a_plain_dataset_keeps_attributes():
    first, second = split(_Plain(), [4, 2], seed=1)
    assert isinstance(first, DatasetSubset)
    assert first.classes == ["x"] * 6 and first.mean is None
    assert first.targets.tolist() == first.indices
    assert [second[i][1] for i in range(2)] == second.indices
    assert sorted(first.indices + second.indices) == list(range(6))


def test_loader_is_reproducible_and_leaves_global_rng_alone():
    ds = _tiny(12)
    state = torch.get_rng_state()
    la, lb = loader(ds, 4, seed=3), loader(ds, 4, seed=3)
    epochs_a = [torch.cat([x[:, 0, 0, 0] for x, _ in la]) for _ in range(2)]
    epochs_b = [torch.cat([x[:, 0, 0, 0] for x, _ in lb]) for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(epochs_a, epochs_b, strict=True))
    assert not torch.equal(epochs_a[0], epochs_a[1])  # a new order each epoch
    assert sorted(epochs_a[0].tolist()) == sorted(ds[i][0][0, 0, 0].item() for i in range(12))
    assert [len(y) for _, y in loader(ds, 5, seed=3)] == [5, 5, 2]
    ordered = torch.cat([y for _, y in loader(ds, 5, shuffle=False)])
    assert torch.equal(ordered, ds.targets)
    with pytest.raises(TypeError, match="generator"):
        loader(ds, 4, generator=torch.Generator())


def test_batches_fast_path():
    ds = _tiny(10)
    state = torch.get_rng_state()
    seen = [y for _, y in batches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    again = [y for _, y in batches(ds, 4, shuffle=True, generator=torch.Generator().manual_seed(0))]
    assert torch.equal(torch.get_rng_state(), state)
    assert [len(y) for y in seen] == [4, 4, 2]
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))
    x, y = next(batches(ds, 3, device="cpu"))
    torch.testing.assert_close(x, ds.preprocess(ds.images[:3]))
    assert torch.equal(y, ds.targets[:3])
    assert [len(y) for _, y in batches(ds, 4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="generator"):
        next(batches(ds, 4, shuffle=True))
    moved = ds.to("cpu")
    assert moved.mean == ds.mean and len(moved) == len(ds)


def test_dataset_checks():
    with pytest.raises(DataError, match="3 classes"):
        TensorImageDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), [0, 3], ["a", "b", "c"])
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(torch.zeros(2, 1, 2, 2), [0, 1], ["a", "b"])
    # A constant channel (std 0) is only centred: std 1 instead of a division by zero.
    flat = TensorImageDataset(torch.full((3, 1, 2, 2), 51, dtype=torch.uint8), [0, 1, 0], ["a", "b"])
    assert flat.mean == pytest.approx((0.2,)) and flat.std == (1.0,)
    assert torch.allclose(flat[0][0], torch.zeros(1, 2, 2), atol=1e-6)
    rgb = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    rgb[:, 0] = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).view(4, 1, 1)
    mixed = TensorImageDataset(rgb, [0, 0, 0, 0], ["a"])
    assert mixed.mean == pytest.approx((0.5, 0.0, 0.0)) and mixed.std == pytest.approx((0.5, 1.0, 1.0))
    ds = _tiny(4)
    with pytest.raises(IndexError):
        ds[4]
    assert ds[-1][1] == 0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        load("imagenet")
    message = str(info.value)
    for name in names():
        assert repr(name) in message
    assert set(names()) == {"fashion-mnist", "fashion-mnist-sample", "cifar10", "wafer-maps", "wafer-maps-sample"}


def test_file_instead_of_folder(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is a file"):
        load(path)
