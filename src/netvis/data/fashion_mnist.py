"""Fashion-MNIST and other IDX folders: find the files, read them, build in-memory data sets.

Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms"; (c) Zalando SE, MIT licence) is 70,000 grayscale 28x28 images of ten kinds
of clothing, 60,000 for training and 10,000 for testing, stored as four IDX files.

Search order for the full data set: the ``root`` argument if given (only there); otherwise every folder
of the ``NETVIS_DATA`` environment variable (``os.pathsep``-separated), ``/usr/share/datasets/fashion-mnist``
(Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``), and netvis's cache folder. In each folder
the files may sit directly, in ``fashion-mnist/`` or in ``FashionMNIST/raw/`` (torchvision's layout).
If nothing is found, ``torchvision.datasets.FashionMNIST(download=True)`` downloads into ``root``, the
first ``NETVIS_DATA`` folder or the cache folder.

A 3,000-image sample (2,000 train, 1,000 test, class-balanced) ships inside the package: see
:data:`SAMPLE_DIR` and :mod:`netvis.data.make_sample`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from netvis.data.base import TensorImageDataset, channel_stats
from netvis.data.errors import DataError
from netvis.data.idx import read_idx_labels, read_idx_pair

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SAMPLE_DIR",
    "SYSTEM_DIRS",
    "cache_dir",
    "find_fashion_mnist",
    "find_idx_files",
    "is_idx_folder",
    "load_fashion_mnist",
    "load_fashion_mnist_sample",
    "load_idx_folder",
]

FASHION_MNIST_CLASSES = (
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
"""Fashion-MNIST's class names, in label order (label 0 is ``"T-shirt/top"``, 9 is ``"Ankle boot"``)."""

SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)
"""Where the Debian package ``dataset-fashion-mnist`` puts the IDX files."""

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "fashion-mnist-sample"
"""The Fashion-MNIST sample shipped inside the package (IDX ``.gz`` files, ``meta.json``, licence)."""

_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}
_SUBFOLDERS = (".", "fashion-mnist", "FashionMNIST/raw", "fashion_mnist")


def cache_dir() -> Path:
    """netvis's download folder: ``$XDG_CACHE_HOME/netvis/data`` (default ``~/.cache/netvis/data``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "netvis" / "data"


def _check_split(split: str) -> str:
    if split not in _PREFIXES:
        raise DataError(f"unknown split {split!r} for an IDX data set; use 'train' or 'test'")
    return split


def find_idx_files(folder: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """Find a split's image and label files in ``folder``.

    Accepts ``{prefix}-images-idx3-ubyte`` and ``{prefix}-labels-idx1-ubyte`` (also with ``.`` before
    ``idx``), raw or ``.gz``, where the prefix is ``train`` for ``"train"`` and ``t10k`` or ``test``
    for ``"test"``. Raw files win over ``.gz`` when both exist (torchvision keeps both).

    Args:
        folder: Folder to look in (not recursively).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images_path, labels_path)``, or ``None`` if either is missing.
    """
    folder = Path(folder)
    prefixes = _PREFIXES[_check_split(split)]
    found: list[Path] = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        candidates = (
            folder / f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            for prefix in prefixes
            for sep in ("-", ".")
            for ext in ("", ".gz")
        )
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found[0], found[1]


def is_idx_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the IDX files of at least one split (train or test)."""
    return any(find_idx_files(folder, split) is not None for split in _PREFIXES)


def _folder_classes(folder: Path, labels_max: int) -> list[str]:
    text = folder / "classes.txt"
    if text.is_file():
        return [line.strip() for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
    meta = folder / "meta.json"
    if meta.is_file():
        classes = json.loads(meta.read_text(encoding="utf-8")).get("classes")
        if classes:
            return list(classes)
    return [str(k) for k in range(labels_max + 1)]


def load_idx_folder(
    folder: str | os.PathLike,
    split: str = "train",
    *,
    classes: Sequence[str] | None = None,
    normalize: bool = True,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
    name: str | None = None,
) -> TensorImageDataset:
    """Load one split of an IDX folder (MNIST layout) into memory.

    Normalization statistics always come from the folder's *training* split, also when loading
    ``"test"``.

    Args:
        folder: Folder with ``train-*``/``t10k-*`` IDX files (see :func:`find_idx_files`).
        split: ``"train"`` or ``"test"``.
        classes: Class names; default: ``classes.txt`` (one per line) or ``meta.json``'s ``"classes"``
            in the folder, else ``"0"``, ``"1"``, ... up to the largest label of any split.
        normalize: Normalize items with the training split's mean/std (else raw ``[0, 1]`` floats).
        size: Resize items to this size (int: square).
        channels: Give items this many channels (1 or 3).
        name: Data set name (default: the folder's name).

    Returns:
        :class:`~netvis.data.base.TensorImageDataset` with ``images`` ``uint8 (N, 1, H, W)``.

    Raises:
        DataError: Files missing or malformed (the message names them).
    """
    folder = Path(folder)
    files = find_idx_files(folder, split)
    if files is None:
        raise DataError(
            f"{folder} has no {split} IDX files (expected e.g. "
            f"{_PREFIXES[split][0]}-images-idx3-ubyte.gz and {_PREFIXES[split][0]}-labels-idx1-ubyte.gz)"
        )
    num_classes = len(classes) if classes is not None else None
    images, labels = read_idx_pair(*files, num_classes=num_classes)
    if classes is None:
        # Every split's labels count, so that train and test get the same class list (this split's
        # labels are already read).
        label_files = [found[1] for s in _PREFIXES if (found := find_idx_files(folder, s)) is not None]
        largest = {
            path: int((labels if path == files[1] else read_idx_labels(path)).max(initial=0))
            for path in label_files
        }
        classes = _folder_classes(folder, max(largest.values()))
        for path, top in largest.items():
            if top >= len(classes):
                raise DataError(f"{path} has label {top}, but {folder} names only {len(classes)} classes")
    images_t = torch.from_numpy(images)
    mean = std = None
    if split != "train":
        train_files = find_idx_files(folder, "train")
        if train_files is None:
            if normalize:
                raise DataError(
                    f"{folder} has no training split to compute normalization statistics from; "
                    "pass normalize=False or add the train-*-ubyte files"
                )
        else:
            train_images, _ = read_idx_pair(*train_files)
            mean, std = channel_stats(torch.from_numpy(train_images), channels=channels)
    return TensorImageDataset(
        images_t,
        torch.from_numpy(labels.astype("int64")),
        classes,
        mean=mean,
        std=std,
        normalize=normalize,
        size=size,
        channels=channels,
        name=name or folder.name,
        split=split,
        source=folder,
    )


def _search_dirs(root: str | os.PathLike | None) -> list[Path]:
    if root is not None:
        return [Path(root)]
    dirs = [Path(p) for p in os.environ.get("NETVIS_DATA", "").split(os.pathsep) if p]
    return dirs + list(SYSTEM_DIRS) + [cache_dir()]


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding all four Fashion-MNIST IDX files, or ``None``.

    Args:
        root: Look only here (and in its ``fashion-mnist/`` and ``FashionMNIST/raw/`` subfolders);
            default: ``NETVIS_DATA``, ``/usr/share/datasets/fashion-mnist``, then :func:`cache_dir`.

    Returns:
        The folder, or ``None`` if no searched folder has both splits.
    """
    for base in _search_dirs(root):
        for sub in _SUBFOLDERS:
            folder = base / sub
            if folder.is_dir() and all(find_idx_files(folder, s) is not None for s in _PREFIXES):
                return folder.resolve()
    return None


def _download(dest: Path) -> Path:
    # Local on purpose: importing torchvision.datasets costs about a second, and only a download needs it.
    import torchvision.datasets

    torchvision.datasets.FashionMNIST(str(dest), train=True, download=True)
    found = find_fashion_mnist(dest)
    if found is None:
        raise DataError(f"torchvision's download finished but no IDX files were found under {dest}")
    return found


def load_fashion_mnist(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    download: bool = True,
    normalize: bool = True,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> TensorImageDataset:
    """Load the full Fashion-MNIST split (60,000 train or 10,000 test images) into memory.

    Args:
        split: ``"train"`` or ``"test"``.
        root: Folder to look in (and download to); default: see the module's search order.
        download: Try ``torchvision.datasets.FashionMNIST(download=True)`` when the files are not found.
        normalize: Normalize with the training split's mean (about 0.2860) and std (about 0.3530).
        size: Resize items to this size (int: square).
        channels: Give items this many channels (3 repeats the gray value).

    Returns:
        :class:`~netvis.data.base.TensorImageDataset` named ``"fashion-mnist"``, ``images`` ``uint8
        (N, 1, 28, 28)``, ``classes`` :data:`FASHION_MNIST_CLASSES`.

    Raises:
        DataError: Not found and not downloadable (the message says how to install it), or malformed.
    """
    _check_split(split)
    folder = find_fashion_mnist(root)
    if folder is None:
        searched = [str(p) for p in _search_dirs(root)]
        hint = (
            "Install it with `apt-get install dataset-fashion-mnist` (files land in "
            f"{SYSTEM_DIRS[0]}), or pass root= / set NETVIS_DATA to a folder holding "
            "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz"
        )
        if not download:
            raise DataError(f"Fashion-MNIST not found in {', '.join(searched)}. {hint}")
        if root is not None:
            dest = Path(root)
        elif os.environ.get("NETVIS_DATA"):
            dest = _search_dirs(None)[0]
        else:
            dest = cache_dir()
        try:
            folder = _download(dest)
        except Exception as exc:
            raise DataError(
                f"Fashion-MNIST not found in {', '.join(searched)}, and downloading it with torchvision into "
                f"{dest} failed ({type(exc).__name__}: {exc}). {hint}"
            ) from exc
    return load_idx_folder(
        folder,
        split,
        classes=FASHION_MNIST_CLASSES,
        normalize=normalize,
        size=size,
        channels=channels,
        name="fashion-mnist",
    )


def load_fashion_mnist_sample(
    split: str = "train",
    *,
    normalize: bool = True,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> TensorImageDataset:
    """Load the Fashion-MNIST sample shipped with netvis (2,000 train / 1,000 test images, balanced).

    The images are real Fashion-MNIST images; ``meta.json`` in :data:`SAMPLE_DIR` records which
    (``indices``). Normalization statistics come from the sample's 2,000 training images.

    Args:
        split: ``"train"`` (200 per class) or ``"test"`` (100 per class).
        normalize: Normalize with the sample's training mean/std.
        size: Resize items to this size (int: square).
        channels: Give items this many channels.

    Returns:
        :class:`~netvis.data.base.TensorImageDataset` named ``"fashion-mnist-sample"``.
    """
    if find_idx_files(SAMPLE_DIR, _check_split(split)) is None:
        raise DataError(
            f"the shipped Fashion-MNIST sample is missing from {SAMPLE_DIR}; rebuild it with "
            "`python -m netvis.data.make_sample` or reinstall netvis"
        )
    return load_idx_folder(
        SAMPLE_DIR,
        split,
        classes=FASHION_MNIST_CLASSES,
        normalize=normalize,
        size=size,
        channels=channels,
        name="fashion-mnist-sample",
    )
