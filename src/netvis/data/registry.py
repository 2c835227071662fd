"""One entry point, :func:`load`, for named data sets and folders of IDX files, CIFAR batches or images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from torch.utils.data import Dataset

from netvis.data.cifar import find_cifar10, load_cifar10
from netvis.data.errors import DataError
from netvis.data.fashion_mnist import (
    is_idx_folder,
    load_fashion_mnist,
    load_fashion_mnist_sample,
    load_idx_folder,
)
from netvis.data.folders import ImageFolderDataset, _class_dirs, is_image_folder, split_folder
from netvis.data.wafer import load_wafer_maps, load_wafer_sample

__all__ = ["load", "names"]

_NAMES = {
    "fashion-mnist": "Fashion-MNIST, 60,000 train / 10,000 test 28x28 grayscale images (found or downloaded)",
    "fashion-mnist-sample": "2,000 train / 1,000 test Fashion-MNIST images shipped inside netvis",
    "cifar10": "CIFAR-10 python-format batches, 50,000 train / 10,000 test 32x32 RGB (root= or NETVIS_DATA)",
    "wafer-maps": "synthetic wafer maps, WM-811K's 8 defect classes + none, 3,600 train / 900 test 64x64 "
    "(generated from seed 0), each with a defect mask (.masks)",
    "wafer-maps-sample": "180 train / 90 test 64x64 wafer maps with defect masks, shipped inside netvis",
}


def names() -> dict[str, str]:
    """The data set names :func:`load` accepts, each with a one-line description."""
    return dict(_NAMES)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def load(
    name_or_path: str | os.PathLike,
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    normalize: bool = True,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    download: bool = True,
    validate: bool = False,
) -> Dataset:
    """Load a data set by name or from a folder.

    Every data set returned yields ``(image, label)`` with ``image`` a float tensor ``(C, H, W)``,
    normalized per channel with the mean and standard deviation of the *training* split (or raw
    ``[0, 1]`` values with ``normalize=False``), and ``label`` an int. It carries ``classes``,
    ``mean``, ``std`` (tuples in ``[0, 1]`` units, one value per channel), ``preprocess`` (the
    :class:`~netvis.data.transforms.Preprocess` from stored ``uint8`` images to items), ``images``
    (``uint8 (N, C, H, W)``) and ``targets`` (``int64 (N,)``).

    Args:
        name_or_path: ``"fashion-mnist"``, ``"fashion-mnist-sample"``, ``"cifar10"``, ``"wafer-maps"``,
            ``"wafer-maps-sample"`` (see :func:`names`; wafer maps also carry ``masks``;
            case and ``_``/``-`` do not matter), or a folder: IDX files (``train-images-idx3-ubyte.gz``...),
            CIFAR-10 batches (``data_batch_1``...), or images as ``root/<class>/<files>`` (optionally
            split into ``train/``, ``test/``, ``val/``). A ``pathlib.Path`` is always taken as a folder.
        split: ``"train"`` or ``"test"`` (image folders also ``"val"``).
        root: Where to look for ``"fashion-mnist"`` / ``"cifar10"`` (see
            :func:`~netvis.data.fashion_mnist.load_fashion_mnist`).
        normalize: Normalize with the training split's statistics.
        size: Resize items to ``(height, width)`` (int: square); for ``"wafer-maps"`` the size the maps
            are generated at (masks included). For in-memory data sets the stored
            ``images`` keep their size and statistics are computed at that size; image folders resize
            when reading.
        channels: 1 or 3 channels per item (default: as stored; image folders infer it).
        download: ``"fashion-mnist"`` may be downloaded with torchvision when it is not found.
        validate: Image folders decode every file now, so a broken file fails here.

    Returns:
        A :class:`~netvis.data.base.TensorImageDataset` (named sets, IDX and CIFAR folders) or an
        :class:`~netvis.data.folders.ImageFolderDataset`.

    Raises:
        DataError: Unknown name (the message lists the known ones), a folder netvis does not recognise,
            missing or corrupt files (the message names them).

    Example:
        >>> from netvis.data import load
        >>> ds = load("fashion-mnist-sample", "test")
        >>> len(ds), ds.classes[9], ds[0][0].shape
        (1000, 'Ankle boot', torch.Size([1, 28, 28]))
    """
    options = {"normalize": normalize, "size": size, "channels": channels}
    if not isinstance(name_or_path, Path):
        key = _canonical(os.fspath(name_or_path))
        if key == "fashion-mnist":
            return load_fashion_mnist(split, root=root, download=download, **options)
        if key == "fashion-mnist-sample":
            return load_fashion_mnist_sample(split, **options)
        if key in ("cifar10", "cifar-10"):
            return load_cifar10(root, split, **options)
        if key == "wafer-maps":  # size= is the generated maps' size, so the masks match the pixels
            return load_wafer_maps(split, size=size, normalize=normalize, channels=channels)
        if key == "wafer-maps-sample":
            if size is not None:
                raise DataError("wafer-maps-sample is stored at 64x64; generate other sizes with "
                                "load('wafer-maps', split, size=...)")
            return load_wafer_sample(split, normalize=normalize, channels=channels)
    path = Path(os.fspath(name_or_path)).expanduser()
    if not path.exists():
        known = ", ".join(repr(n) for n in _NAMES)
        raise DataError(
            f"unknown data set {os.fspath(name_or_path)!r}: not one of {known}, nor an existing folder"
        )
    if not path.is_dir():
        raise DataError(
            f"{path} is a file; load() takes a folder (of IDX files, CIFAR-10 batches or class folders)"
        )
    if is_idx_folder(path):
        return load_idx_folder(path, split, **options)
    if find_cifar10(path) is not None:
        return load_cifar10(path, split, **options)
    if is_image_folder(path):
        return _load_image_folder(path, split, validate=validate, **options)
    raise DataError(
        f"{path} holds no data netvis recognises: expected IDX files (train-images-idx3-ubyte[.gz]...), "
        "CIFAR-10 batches (data_batch_1..5, test_batch) or class folders of images (root/<class>/<images>)"
    )


def _load_image_folder(
    path: Path,
    split: str,
    *,
    normalize: bool,
    size: int | Sequence[int] | None,
    channels: int | None,
    validate: bool,
) -> ImageFolderDataset:
    folder = split_folder(path, split)
    if folder is None and split != "train":
        raise DataError(
            f"{path} is one image folder without train/ and {split}/ sub-folders; "
            "load it as split='train' and carve a part out with "
            "netvis.data.split(dataset, [0.8, 0.2], seed=0)"
        )
    if split == "train":  # the split folder root/train, or the whole (unsplit) folder
        return ImageFolderDataset(
            folder or path,
            size=size,
            channels=channels,
            normalize=normalize,
            validate=validate,
            name=path.name,
            split=split,
        )
    train_folder = split_folder(path, "train")
    # Statistics, classes and channels come from the training split, so labels and inputs agree.
    train = ImageFolderDataset(train_folder, size=size, channels=channels, normalize=False, name=path.name)  # type: ignore[arg-type]
    extra = sorted({d.name for d in _class_dirs(folder)} - set(train.classes))
    if extra:
        raise DataError(f"{folder} has class folders {extra} that {train_folder} lacks")
    return ImageFolderDataset(
        folder,
        size=size,
        channels=train.channels,
        normalize=normalize,
        mean=train.mean,
        std=train.std,
        classes=train.classes,
        validate=validate,
        name=path.name,
        split=split,
    )
