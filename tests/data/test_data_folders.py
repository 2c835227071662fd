"""Image folders: mixed sizes and modes, channel inference, resizing, statistics, broken files, splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netvis.data import DataError, ImageFolderDataset, load, read_image


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)


def _mixed_folder(root: Path) -> Path:
    """cat: a red RGB 10x12 PNG and a gray RGBA 20x20 PNG; dog: an L 8x8 PNG and a palette GIF; plus junk."""
    red = np.zeros((10, 12, 3), dtype=np.uint8)
    red[..., 0] = 255
    _save(root / "cat" / "a.png", red)
    rgba = np.full((20, 20, 4), 100, dtype=np.uint8)
    rgba[..., 3] = 255
    _save(root / "cat" / "b.PNG", rgba)
    _save(root / "dog" / "c.png", np.full((8, 8), 200, dtype=np.uint8))
    _save(root / "dog" / "d.gif", np.full((9, 7, 3), 50, dtype=np.uint8), mode="P")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "dog" / ".hidden.png").write_bytes(b"")
    (root / ".cache").mkdir()
    return root


def test_mixed_sizes_and_modes_with_resize(tmp_path):
    root = _mixed_folder(tmp_path / "pets")
    ds = ImageFolderDataset(root, size=16, normalize=False)
    assert ds.classes == ["cat", "dog"]
    assert [f.name for f in ds.files] == ["a.png", "b.PNG", "c.png", "d.gif"]
    assert ds.targets.tolist() == [0, 0, 1, 1] and ds.targets.dtype == torch.int64
    assert ds.channels == 3  # some images are colour
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0
    torch.testing.assert_close(x[:, 8, 8], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(ds[2][0], torch.full((3, 16, 16), 200 / 255))  # gray repeated
    torch.testing.assert_close(ds[1][0], torch.full((3, 16, 16), 100 / 255))  # alpha dropped
    assert torch.allclose(ds[3][0], torch.full((3, 16, 16), 50 / 255), atol=1.5 / 255)  # palette
    assert ds.images.shape == (4, 3, 16, 16) and ds.images.dtype == torch.uint8  # small: held in memory
    lazy = ImageFolderDataset(root, size=16, normalize=False, in_memory=False)
    assert lazy.images is None
    assert all(torch.equal(lazy[i][0], ds[i][0]) for i in range(4))


def test_native_sizes_without_resize(tmp_path):
    root = _mixed_folder(tmp_path / "pets")
    ds = ImageFolderDataset(root, normalize=False, channels=1)
    assert ds.images is None  # sizes differ: read lazily
    assert [tuple(ds[i][0].shape) for i in range(4)] == [(1, 10, 12), (1, 20, 20), (1, 8, 8), (1, 9, 7)]
    assert ds[0][0][0, 0, 0].item() == pytest.approx(76 / 255)  # Pillow's luma of pure red
    with pytest.raises(DataError, match="size="):
        ImageFolderDataset(root, channels=1, in_memory=True)


def test_grayscale_folder_infers_one_channel_and_statistics(tmp_path):
    root = tmp_path / "gray"
    values = {"a": [0, 60], "b": [120, 255]}
    for cls, vals in values.items():
        for v in vals:
            _save(root / cls / f"{v}.png", np.full((4, 6), v, dtype=np.uint8))
    ds = ImageFolderDataset(root)
    assert ds.channels == 1 and ds.images is not None
    pixels = np.array([0, 60, 120, 255], dtype=np.float64) / 255
    assert ds.mean == pytest.approx((pixels.mean(),)) and ds.std == pytest.approx((pixels.std(),))
    x, _ = ds[3]
    torch.testing.assert_close(x, torch.full((1, 4, 6), (1.0 - ds.mean[0]) / ds.std[0]))
    assert ds.preprocess.to_dict()["channels"] == 1
    lazy = ImageFolderDataset(root, in_memory=False)  # the same statistics, streamed from the files
    assert lazy.mean == pytest.approx(ds.mean) and lazy.std == pytest.approx(ds.std)
    # Statistics and preprocessing can be replaced, e.g. by a checkpoint's.
    lazy.mean, lazy.std = (0.5,), (0.25,)
    assert lazy.mean == (0.5,) and lazy.std == (0.25,)


def test_unreadable_image_fails_when_read_or_upfront(tmp_path):
    root = tmp_path / "broken"
    _save(root / "ok" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    bad = root / "ok" / "b.png"
    bad.write_bytes(b"\x89PNG this is not really a png")
    ds = ImageFolderDataset(root, channels=1, normalize=False, in_memory=False)  # lazy: builds fine
    assert ds[0][0].shape == (1, 4, 4)
    with pytest.raises(DataError, match="cannot read image") as info:
        ds[1]
    assert str(bad) in str(info.value)
    with pytest.raises(DataError) as info:
        ImageFolderDataset(root, channels=1, normalize=False, in_memory=False, validate=True)
    assert str(bad) in str(info.value)
    with pytest.raises(DataError) as info:
        load(root, validate=True)
    assert str(bad) in str(info.value)


def test_truncated_image_names_the_file(tmp_path):
    path = tmp_path / "t.png"
    _save(path, np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_sixteen_bit_grayscale_is_scaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(path)
    assert read_image(path, channels=1).unique().tolist() == [255]


def test_split_folder_uses_training_statistics_and_classes(tmp_path):
    root = tmp_path / "wafers"
    for cls in ("good", "bad"):
        for k in range(2):
            _save(root / "train" / cls / f"{k}.png", np.full((5, 5), 40 + k, dtype=np.uint8))
    for k in range(4):  # the test split lacks 'good': labels still follow the training classes
        _save(root / "test" / "bad" / f"{k}.png", np.full((5, 5), 200, dtype=np.uint8))
    train = load(root, "train")
    test = load(root, "test")
    assert train.classes == test.classes == ["bad", "good"]
    assert test.targets.tolist() == [0, 0, 0, 0]
    assert test.mean == train.mean and test.std == train.std
    assert train.mean[0] == pytest.approx(np.mean([40, 41]) / 255)
    with pytest.raises(DataError, match="without a val split"):
        load(root, "val")
    (root / "test" / "extra").mkdir()
    _save(root / "test" / "extra" / "e.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(DataError, match="extra"):
        load(root, "test")


def test_flat_folder_test_split_points_to_split(tmp_path):
    root = tmp_path / "flat"
    _save(
        root / "train" / "a.png", np.zeros((3, 3), dtype=np.uint8)
    )  # a class that happens to be called train
    _save(root / "other" / "b.png", np.zeros((3, 3), dtype=np.uint8))
    ds = load(root)
    assert ds.classes == ["other", "train"]
    with pytest.raises(DataError, match=r"netvis\.data\.split"):
        load(root, "test")


def test_empty_or_unrecognised_folders(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="recognises") as info:
        load(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "empty" / "cls")
    with pytest.raises(DataError, match="no image files"):
        ImageFolderDataset(tmp_path / "empty")
