"""In-memory image datasets and the per-channel statistics netvis normalizes with.

:class:`TensorImageDataset` holds every image as one ``uint8`` tensor ``(N, C, H, W)`` plus ``int64``
targets, so a whole data set can live on the GPU and be batched by indexing (see
:func:`netvis.data.batches`). Items are ``(float tensor (C, H, W), int label)``, produced by the
dataset's :class:`~netvis.data.transforms.Preprocess`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from netvis.data.errors import DataError
from netvis.data.transforms import Preprocess

__all__ = ["TensorImageDataset", "DatasetSubset", "channel_stats", "usable_std"]


def usable_std(std: Sequence[float]) -> tuple[float, ...]:
    """Replace a zero (constant channel) standard deviation by 1, so normalizing only centres that channel."""
    return tuple(float(s) if s > 1e-12 else 1.0 for s in std)


def channel_stats(
    images: torch.Tensor, *, channels: int | None = None, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    r"""Per-channel mean and (population) standard deviation of ``uint8`` images, in ``[0, 1]`` units.

    .. math:: \mu_c = \frac{1}{NHW} \sum_{n,h,w} x_{nchw}, \qquad
              \sigma_c = \sqrt{\frac{1}{NHW} \sum_{n,h,w} (x_{nchw} - \mu_c)^2}

    When no channel conversion is needed the statistics come exactly from a 256-bin histogram per
    channel (60,000 Fashion-MNIST images take about 0.1 s); RGB to grayscale goes through
    :class:`~netvis.data.transforms.Preprocess` in chunks.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` or ``(N, H, W)``.
        channels: Channels after conversion (``None``: the stored ones); 1-channel images converted to
            3 get the same value three times.
        chunk: Images per chunk for the converted path.

    Returns:
        ``(mean, std)``: tuples with one float per output channel; a constant channel gets std 1
        (see :func:`usable_std`).
    """
    if images.dim() == 3:
        images = images[:, None]
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"channel_stats needs uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise DataError("cannot compute normalization statistics of an empty data set")
    c = images.shape[1]
    target = channels if channels is not None else (3 if c == 4 else c)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    if c == target or (c == 1 and target == 3) or (c == 4 and target == 3):
        mean, std = [], []
        for k in range(min(c, 3)):
            hist = torch.bincount(images[:, k].reshape(-1).cpu(), minlength=256).to(torch.float64)
            total = hist.sum()
            m = (hist * values).sum() / total
            v = (hist * (values - m) ** 2).sum() / total
            mean.append(float(m))
            std.append(float(v.sqrt()))
        if c == 1 and target == 3:
            mean, std = mean * 3, std * 3
        return tuple(mean), usable_std(std)
    convert = Preprocess(channels=target)
    total = torch.zeros(target, dtype=torch.float64)
    total_sq = torch.zeros(target, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], chunk):
        x = convert.to_float(images[start : start + chunk].cpu()).to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean_t = total / count
    std_t = (total_sq / count - mean_t**2).clamp_min(0).sqrt()
    return tuple(float(m) for m in mean_t), usable_std(std_t.tolist())


class TensorImageDataset(Dataset):
    """A labelled image data set held in memory as one ``uint8`` tensor.

    Args:
        images: ``uint8`` tensor ``(N, C, H, W)`` or ``(N, H, W)`` (stored as ``(N, 1, H, W)``).
        targets: Integer labels ``(N,)``.
        classes: Class names; ``targets`` index into it.
        mean: Per-channel training-split mean in ``[0, 1]`` units; ``None`` computes it from ``images``
            (right when these images *are* the training split).
        std: Per-channel training-split standard deviation, like ``mean``.
        normalize: Items are normalized with ``mean``/``std``; ``False`` gives raw ``[0, 1]`` floats.
        size: Items are resized to this ``(height, width)`` (int: square); ``None`` keeps the stored size.
        channels: Items get this many channels (1 or 3); ``None`` keeps the stored channels.
        name: Data set name, for display.
        split: Split name (``"train"``, ``"test"``, ...), for display.
        source: Where the data came from (a folder), for display.

    Attributes:
        images: ``uint8`` tensor ``(N, C, H, W)`` as stored (before resizing/channel conversion).
        targets: ``int64`` tensor ``(N,)``.
        classes: ``list[str]``.
        mean: Tuple, one float per item channel: the training split's mean.
        std: Tuple, one float per item channel: the training split's standard deviation.
        normalize: Whether items are normalized.
        preprocess: :class:`~netvis.data.transforms.Preprocess` mapping ``images`` to items; with
            ``normalize=False`` its mean/std are 0/1.
        name, split, source: As given.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor | Sequence[int],
        classes: Sequence[str],
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: bool = True,
        size: int | Sequence[int] | None = None,
        channels: int | None = None,
        name: str | None = None,
        split: str | None = None,
        source: str | Path | None = None,
    ) -> None:
        if not isinstance(images, torch.Tensor):
            images = torch.as_tensor(images)
        if images.dim() == 3:
            images = images[:, None]
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W) or (N, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if targets.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but targets shaped {tuple(targets.shape)}")
        self.images = images
        self.targets = targets
        self.classes = list(classes)
        if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= len(self.classes)):
            raise DataError(
                f"labels run from {int(targets.min())} to {int(targets.max())} "
                f"but there are {len(self.classes)} classes"
            )
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is None:
            mean, std = channel_stats(images, channels=channels)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)  # type: ignore[union-attr]
        self.normalize = normalize
        self.name = name
        self.split = split
        self.source = source
        out_channels = channels if channels is not None else len(self.mean)
        p_mean, p_std = (self.mean, self.std) if normalize else ((0.0,), (1.0,))
        self.preprocess = Preprocess(mean=p_mean, std=p_std, size=size, channels=out_channels)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a data set of {len(self)} images")
        return self.preprocess(self.images[index][None])[0], int(self.targets[index])

    def _rebuild(self, images: torch.Tensor, targets: torch.Tensor) -> TensorImageDataset:
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.images = images
        new.targets = targets
        return new

    def subset(self, indices: Sequence[int] | torch.Tensor) -> TensorImageDataset:
        """The items at ``indices``, as a new in-memory data set with the same statistics and preprocessing.

        Args:
            indices: Integer positions.

        Returns:
            A :class:`TensorImageDataset` (copies of the selected images).
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).to(self.images.device)
        return self._rebuild(self.images[idx], self.targets[idx.to(self.targets.device)])

    def to(self, device: torch.device | str) -> TensorImageDataset:
        """The same data set with ``images`` and ``targets`` on ``device`` (for GPU-resident batching)."""
        return self._rebuild(self.images.to(device), self.targets.to(device))

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"stored=({c}, {h}, {w}), classes={len(self.classes)}, normalize={self.normalize})"
        )


class DatasetSubset(Subset):
    """:class:`torch.utils.data.Subset` that keeps the parent's ``classes``, statistics and preprocessing.

    Attributes:
        dataset: The parent data set.
        indices: Positions in the parent.
        classes, mean, std, preprocess: The parent's (``None`` where the parent has none).
        targets: ``int64`` tensor of the subset's labels when the parent has ``targets``, else ``None``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        self.classes: Any = getattr(dataset, "classes", None)
        self.mean: Any = getattr(dataset, "mean", None)
        self.std: Any = getattr(dataset, "std", None)
        self.preprocess: Any = getattr(dataset, "preprocess", None)
        parent_targets = getattr(dataset, "targets", None)
        self.targets = (
            torch.as_tensor(parent_targets, dtype=torch.int64)[
                torch.as_tensor(self.indices, dtype=torch.int64)
            ]
            if parent_targets is not None
            else None
        )
