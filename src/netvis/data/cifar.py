"""CIFAR-10 in its "python version" layout: ``data_batch_1``..``_5``, ``test_batch``, ``batches.meta``.

Each batch is a pickled dict with ``data`` (``uint8`` array ``N x 3072``: 1024 red, 1024 green, 1024
blue values of a 32x32 image in row-major order) and ``labels`` (N ints in 0..9); ``batches.meta``
has ``label_names`` (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images").

The pickles are read with a restricted unpickler that only builds numpy arrays and plain Python
containers, so a malicious file cannot run code. Missing, corrupt or inconsistent files raise
:class:`~netvis.data.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netvis.data.base import TensorImageDataset, channel_stats
from netvis.data.errors import DataError

__all__ = ["CIFAR10_CLASSES", "find_cifar10", "is_cifar10_folder", "load_cifar10", "read_cifar_batch"]

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
"""CIFAR-10's class names, used when ``batches.meta`` is absent."""

TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_BATCHES = ("test_batch",)
_SUBFOLDERS = (".", "cifar-10-batches-py")

_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core"):  # pickles written by numpy 1.x
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {path}: {exc}") from exc
    try:
        return _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means the file is corrupt
        raise DataError(f"{path} is not a valid CIFAR pickle: {type(exc).__name__}: {exc}") from exc


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataError(f"{path} has no {key!r} entry (keys: {sorted(map(str, d))})")


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch pickle.

    Args:
        path: A ``data_batch_k`` or ``test_batch`` file.

    Returns:
        ``(images, labels)``: ``uint8`` array ``(N, 3, 32, 32)`` and ``int64`` array ``(N,)``.

    Raises:
        DataError: Missing, corrupt, or ``data``/``labels`` missing or inconsistent.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, not a CIFAR batch dict")
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, "labels", path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path} has {data.shape[0]} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} has labels outside 0..9 (from {labels.min()} to {labels.max()})")
    return data.reshape(-1, 3, 32, 32).copy(), labels


def is_cifar10_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds CIFAR-10 batch files (``data_batch_1`` or ``test_batch``)."""
    folder = Path(folder)
    return (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file()


def find_cifar10(root: str | os.PathLike | None = None) -> Path | None:
    """The first of ``root``, ``root/cifar-10-batches-py`` (and the same under each ``NETVIS_DATA`` folder)
    that holds CIFAR-10 batch files, or ``None``."""
    bases = (
        [Path(root)]
        if root is not None
        else [Path(p) for p in os.environ.get("NETVIS_DATA", "").split(os.pathsep) if p]
    )
    for base in bases:
        for sub in _SUBFOLDERS:
            if is_cifar10_folder(base / sub):
                return (base / sub).resolve()
    return None


def _read_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)} (needed for the {split} split)")
    parts = [read_cifar_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_cifar10(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    normalize: bool = True,
    size: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> TensorImageDataset:
    """Load CIFAR-10 (50,000 train / 10,000 test 32x32 RGB images) from its python-format files.

    Normalization statistics come from the five training batches, also for ``"test"``.

    Args:
        root: The ``cifar-10-batches-py`` folder or its parent; default: the ``NETVIS_DATA`` folders.
        split: ``"train"`` or ``"test"``.
        normalize: Normalize with the training mean/std.
        size: Resize items to this size (int: square).
        channels: 1 converts to grayscale.

    Returns:
        :class:`~netvis.data.base.TensorImageDataset` named ``"cifar10"``, ``images`` ``uint8
        (N, 3, 32, 32)``.

    Raises:
        DataError: Files not found, missing or corrupt.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} for CIFAR-10; use 'train' or 'test'")
    folder = find_cifar10(root)
    if folder is None:
        where = (
            root
            if root is not None
            else "NETVIS_DATA (unset)"
            if not os.environ.get("NETVIS_DATA")
            else os.environ["NETVIS_DATA"]
        )
        raise DataError(
            f"CIFAR-10 not found in {where}: pass root= the folder holding data_batch_1..5, test_batch and "
            "batches.meta (the 'python version' from https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    classes: Sequence[str] = CIFAR10_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        meta = _unpickle(meta_path)
        names = _get(meta, "label_names", meta_path) if isinstance(meta, dict) else None
        if not names or len(names) != 10:
            raise DataError(f"{meta_path} must hold 10 label_names, got {names!r}")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    images, labels = _read_split(folder, split)
    mean = std = None
    if split != "train" and (normalize or all((folder / n).is_file() for n in TRAIN_BATCHES)):
        # The training split's statistics, also when only reporting them (normalize=False).
        train_images, _ = _read_split(folder, "train")
        mean, std = channel_stats(torch.from_numpy(train_images), channels=channels)
    return TensorImageDataset(
        torch.from_numpy(images),
        torch.from_numpy(labels),
        classes,
        mean=mean,
        std=std,
        normalize=normalize,
        size=size,
        channels=channels,
        name="cifar10",
        split=split,
        source=folder,
    )
