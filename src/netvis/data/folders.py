"""Image folders: ``root/<class>/<image files>``, any size, grayscale or colour.

Classes are the sub-folder names in sorted order; images are the files with an image extension
(:data:`IMAGE_EXTENSIONS`, any case) in sorted order; hidden files and other files are skipped. A folder
may also be split: ``root/train/<class>/...`` with ``root/test/`` (or ``val/``, ``valid/``,
``validation/``) beside it.

Images are read with Pillow: all at once into one ``uint8`` tensor when they share a size and fit
(:data:`MAX_IN_MEMORY_BYTES`), else lazily in ``__getitem__``. A file that cannot be decoded raises
:class:`~netvis.data.errors.DataError` naming the file when it is read, or up front with
``validate=True``. Computing the normalization statistics (``normalize=True`` without ``mean``/``std``)
and inferring ``channels`` read every image (header only for ``channels``) when the data set is built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from netvis.data.base import channel_stats, usable_std
from netvis.data.errors import DataError
from netvis.data.transforms import Preprocess, _pair

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IN_MEMORY_BYTES",
    "ImageFolderDataset",
    "SPLIT_FOLDERS",
    "is_image_folder",
    "read_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File extensions treated as images (compared lower-case)."""

SPLIT_FOLDERS = {"train": ("train",), "test": ("test",), "val": ("val", "valid", "validation")}
"""Sub-folder names that make ``root`` a split image folder, per split."""

MAX_IN_MEMORY_BYTES = 2**30
"""Largest ``uint8`` image tensor an :class:`ImageFolderDataset` holds in memory by default (1 GiB)."""

_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _open(path: Path):
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return image


def read_image(
    path: str | os.PathLike, *, channels: int = 3, size: int | Sequence[int] | None = None
) -> torch.Tensor:
    """Read one image file as a ``uint8`` tensor.

    Args:
        path: Image file.
        channels: 1 (grayscale, ITU-R 601-2 luma for colour images) or 3 (RGB; gray is repeated;
            alpha is dropped).
        size: Resize to this ``(height, width)`` (int: square) with Pillow's bilinear filter
            (antialiased when shrinking); ``None`` keeps the size.

    Returns:
        ``uint8`` tensor ``(channels, H, W)``.

    Raises:
        DataError: The file is missing, truncated or not an image; the message names it.
    """
    path = Path(path)
    target = _pair(size)
    try:
        with _open(path) as image:
            image.load()
            if image.mode.startswith("I;16") or image.mode == "I":
                array = np.asarray(image, dtype=np.float64)
                scale = 65535.0 if image.mode != "I" or array.max() > 255 else 255.0

                image = Image.fromarray(np.clip(array / scale * 255.0 + 0.5, 0, 255).astype(np.uint8))
            image = image.convert("L" if channels == 1 else "RGB")
            if target is not None and image.size != (target[1], target[0]):
                image = image.resize((target[1], target[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow raises these for truncated/corrupt data
        raise DataError(f"cannot read image {path}: {exc}") from exc
    tensor = torch.from_numpy(array.copy())
    return tensor[None] if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_image_folder(root: str | os.PathLike) -> bool:
    """Whether ``root`` looks like ``root/<class>/<images>`` or a split folder of those."""
    root = Path(root)
    if not root.is_dir():
        return False
    for names in SPLIT_FOLDERS.values():
        for name in names:
            if (root / name).is_dir() and is_image_folder(root / name) and _class_dirs(root / name):
                return True
    return any(any(_is_image_file(f) for f in d.iterdir()) for d in _class_dirs(root))


def split_folder(root: str | os.PathLike, split: str) -> Path | None:
    """The sub-folder holding ``split`` when ``root`` is a split image folder, else ``None``.

    ``root`` is a split folder when ``root/train`` (or ``test``/``val``...) itself holds class
    sub-folders with images; a flat folder whose class happens to be called ``train`` holds images
    directly and so does not count.
    """
    root = Path(root)
    if split not in SPLIT_FOLDERS:
        raise DataError(f"unknown split {split!r}; use one of {sorted(SPLIT_FOLDERS)}")
    any_split = False
    for names in SPLIT_FOLDERS.values():
        for name in names:
            sub = root / name
            if sub.is_dir() and _class_dirs(sub) and not any(_is_image_file(f) for f in sub.iterdir()):
                any_split = True
    if not any_split:
        return None
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{root} is a split image folder without a {split} split (looked for {SPLIT_FOLDERS[split]})"
    )


class ImageFolderDataset(Dataset):
    """A labelled data set read from ``root/<class>/<images>``, held in memory when that is cheap.

    With ``in_memory=None`` (the default) the images are read once at construction into one ``uint8``
    tensor when they all have the same size (given ``size=``, or from the headers) and it takes at most
    :data:`MAX_IN_MEMORY_BYTES`; otherwise each item is read from its file in ``__getitem__``.

    Args:
        root: Folder of class sub-folders.
        size: Resize every image to this ``(height, width)`` (int: square) when reading; ``None`` keeps
            each image's own size (then batches need equal sizes).
        channels: 1 or 3; ``None`` infers it from the image headers: 1 if every image is grayscale,
            else 3.
        normalize: Normalize items with ``mean``/``std``; ``False`` gives raw ``[0, 1]`` floats.
        mean: Per-channel mean in ``[0, 1]`` units (from the training split). ``None`` with
            ``normalize=True`` computes it from this folder's images at construction.
        std: Per-channel standard deviation, like ``mean``.
        classes: Class sub-folders to use, in label order (a listed class without a folder has no
            images; folders not listed are ignored); default all sub-folders, sorted.
        validate: Decode every image at construction, so a broken file fails now rather than mid-epoch.
        in_memory: ``True`` reads every image now (they must have equal sizes); ``False`` reads lazily;
            ``None`` decides as described above.
        name: Data set name, for display.
        split: Split name, for display.

    Attributes:
        root: ``Path``.
        classes: ``list[str]``.
        files: ``list[Path]``, one per item.
        targets: ``int64`` tensor ``(N,)``.
        images: Every image as one ``uint8`` tensor ``(N, C, H, W)`` when held in memory, else ``None``.
        channels: Channels of the items.
        size: ``(height, width)`` or ``None``.
        mean, std: Per-channel statistics (computed on first access when ``normalize=False``; a
            constant channel gets std 1).
        preprocess: :class:`~netvis.data.transforms.Preprocess` mapping the ``uint8`` images read from
            the files to items.

    Raises:
        DataError: ``root`` has no class folders or no images, or an image cannot be read when it is
            read (at construction with ``validate=True``, when held in memory, when inferring
            ``channels`` or computing statistics); the message names the file.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        size: int | Sequence[int] | None = None,
        channels: int | None = None,
        normalize: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        classes: Sequence[str] | None = None,
        validate: bool = False,
        in_memory: bool | None = None,
        name: str | None = None,
        split: str | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"image folder not found: {self.root}")
        self.classes = list(classes) if classes is not None else [d.name for d in _class_dirs(self.root)]
        if not self.classes:
            raise DataError(f"{self.root} has no class sub-folders (expected root/<class>/<images>)")
        self.files: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(self.classes):
            folder = self.root / cls
            if not folder.is_dir():
                if classes is None:
                    raise DataError(f"class folder not found: {folder}")
                continue  # a class given explicitly may have no images in this split
            for f in sorted(folder.iterdir()):
                if _is_image_file(f):
                    self.files.append(f)
                    labels.append(label)
        if not self.files:
            raise DataError(
                f"{self.root} has no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders"
            )
        self.targets = torch.tensor(labels, dtype=torch.int64)
        self.size = _pair(size)
        self.name = name or self.root.name
        self.split = split
        self.normalize = normalize
        headers: list[tuple[str, tuple[int, int]]] = []
        if channels is None or (in_memory is None and self.size is None):
            for f in self.files:
                with _open(f) as image:
                    gray = image.mode in _GRAY_MODES or (image.mode == "P" and _gray_palette(image))
                    headers.append(("gray" if gray else "colour", (image.size[1], image.size[0])))
        if channels is None:
            channels = 1 if all(kind == "gray" for kind, _ in headers) else 3
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.channels = channels
        if in_memory is None:
            sizes = {self.size} if self.size is not None else {hw for _, hw in headers}
            if len(sizes) == 1:
                h, w = next(iter(sizes))
                in_memory = len(self.files) * channels * h * w <= MAX_IN_MEMORY_BYTES
            else:
                in_memory = False
        self.images: torch.Tensor | None = None
        if in_memory:
            tensors = [self._read(f) for f in self.files]
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) > 1:
                raise DataError(
                    f"the images in {self.root} have different sizes {sorted(shapes)[:4]}; pass "
                    "size=(height, width) to resize them when reading, or in_memory=False"
                )
            self.images = torch.stack(tensors)
        elif validate:
            for f in self.files:
                self._read(f)
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self._mean = tuple(float(m) for m in mean) if mean is not None else None
        self._std = tuple(float(s) for s in std) if std is not None else None
        # self.mean/std compute the statistics on first access: only when normalizing.
        p_mean, p_std = (self.mean, self.std) if normalize else ((0.0,), (1.0,))
        self.preprocess = Preprocess(mean=p_mean, std=p_std, size=self.size, channels=channels)

    def _read(self, path: Path) -> torch.Tensor:
        return read_image(path, channels=self.channels, size=self.size)

    def _compute_stats(self) -> None:
        if self.images is not None:
            self._mean, self._std = channel_stats(self.images)
            return
        total = torch.zeros(self.channels, dtype=torch.float64)
        total_sq = torch.zeros(self.channels, dtype=torch.float64)
        count = 0
        for f in self.files:
            x = self._read(f).to(torch.float64) / 255.0
            total += x.sum(dim=(1, 2))
            total_sq += (x * x).sum(dim=(1, 2))
            count += x.shape[1] * x.shape[2]
        mean = total / count
        std = (total_sq / count - mean**2).clamp_min(0).sqrt()
        self._mean = tuple(float(m) for m in mean)
        self._std = usable_std(std.tolist())

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean in ``[0, 1]`` units (given, or computed from this folder's images)."""
        if self._mean is None:
            self._compute_stats()
        return self._mean  # type: ignore[return-value]

    @mean.setter
    def mean(self, value: Sequence[float]) -> None:
        self._mean = tuple(float(m) for m in value)

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation in ``[0, 1]`` units."""
        if self._std is None:
            self._compute_stats()
        return self._std  # type: ignore[return-value]

    @std.setter
    def std(self, value: Sequence[float]) -> None:
        self._std = tuple(float(s) for s in value)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index] if self.images is not None else self._read(self.files[index])
        return self.preprocess(image[None])[0], int(self.targets[index])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageFolderDataset:
        """The items at ``indices`` as a new folder data set with the same classes, statistics and options."""
        idx = [int(i) for i in torch.as_tensor(indices, dtype=torch.int64)]
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.files = [self.files[i] for i in idx]
        new.targets = self.targets[idx]
        new.images = self.images[idx] if self.images is not None else None
        return new

    def __repr__(self) -> str:
        return (
            f"ImageFolderDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
            f"classes={len(self.classes)}, channels={self.channels}, size={self.size}, "
            f"in_memory={self.images is not None})"
        )


def _gray_palette(image) -> bool:
    palette = image.getpalette() or []
    triples = [palette[i : i + 3] for i in range(0, len(palette) - 2, 3)]
    return all(r == g == b for r, g, b in triples)
