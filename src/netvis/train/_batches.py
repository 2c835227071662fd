"""Batching shared by training and evaluation: the fast in-memory path and the generic ``DataLoader`` path.

netvis's in-memory data sets (:class:`netvis.data.TensorImageDataset`) hold every image as ``uint8``;
batches are gathered by indexing, moved to the device as ``uint8`` (four times less traffic than
floats), augmented there and only then preprocessed to float. Any other ``Dataset`` of ``(image,
label)`` pairs goes through a ``DataLoader`` over the same indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from netvis.data import DatasetSubset

Augment = Callable[[Tensor], Tensor]


def is_tensor_dataset(data: Any) -> bool:
    """Whether ``data`` has in-memory ``uint8`` ``images``, ``targets`` and a callable ``preprocess``."""
    images = getattr(data, "images", None)
    return (
        isinstance(images, Tensor)
        and images.dtype == torch.uint8
        and isinstance(getattr(data, "targets", None), Tensor)
        and callable(getattr(data, "preprocess", None))
    )


def first_items(data: Any, n: int | None) -> Any:
    """The first ``n`` items of a data set (all when ``n`` is ``None`` or too large).

    A data set with a ``subset(indices)`` method gives a part of its own type; any other a
    :class:`netvis.data.DatasetSubset`.
    """
    if n is None or n >= len(data):
        return data
    if hasattr(data, "subset"):
        return data.subset(torch.arange(n))

    return DatasetSubset(data, range(n))


def iterate(
    data: Dataset,
    indices: Tensor,
    batch_size: int,
    device: torch.device,
    *,
    augment: Augment | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(inputs, targets)`` on ``device`` for ``data[indices]`` in order, ``batch_size`` at a time.

    Args:
        data: an in-memory netvis data set (fast path) or any ``Dataset`` of ``(image, label)``.
        indices: ``int64`` positions, in the order to visit them.
        batch_size: items per batch (the last one may be smaller).
        device: where the batches go.
        augment: applied to each batch before preprocessing: to ``uint8`` images on the fast path, to
            the data set's float items otherwise.
        num_workers: ``DataLoader`` workers on the generic path.

    Yields:
        Float inputs ``(B, C, H, W)`` and ``int64`` targets ``(B,)``.
    """
    if len(indices) == 0:
        return
    if is_tensor_dataset(data):
        images, targets = data.images, data.targets
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            x = images[idx.to(images.device)].to(device, non_blocking=True)
            y = targets[idx.to(targets.device)].to(device, non_blocking=True)
            if augment is not None:
                x = augment(x)
            yield data.preprocess(x), y
        return
    loader = DataLoader(
        Subset(data, indices.tolist()),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    for batch in loader:
        x, y = batch[0], batch[1]
        x = x.to(device, non_blocking=True)
        y = torch.as_tensor(y, dtype=torch.int64).to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        yield x, y


def data_description(data: Any, name: str | None = None) -> dict[str, Any]:
    """What a checkpoint records about the training data: name, normalisation, channels, size, count."""
    preprocess = getattr(data, "preprocess", None)
    record: dict[str, Any] = {"name": name or getattr(data, "name", None), "num_train": len(data)}
    if preprocess is not None and hasattr(preprocess, "to_dict"):
        record["preprocess"] = preprocess.to_dict()
    mean = getattr(data, "mean", None)
    std = getattr(data, "std", None)
    record["mean"] = [float(m) for m in mean] if mean is not None else None
    record["std"] = [float(s) for s in std] if std is not None else None
    sample = data[0][0] if len(data) else None
    record["channels"] = int(sample.shape[0]) if isinstance(sample, Tensor) else None
    record["size"] = [int(s) for s in sample.shape[-2:]] if isinstance(sample, Tensor) else None
    return record


def classes_of(data: Any, num_classes: int | None = None) -> list[str]:
    """The data set's class names (``"0"``, ``"1"``, ... when it has none)."""
    classes: Sequence[Any] | None = getattr(data, "classes", None)
    if classes:
        return [str(c) for c in classes]
    if num_classes is None:
        targets = getattr(data, "targets", None)
        if targets is None:  # read every label once
            targets = [int(data[i][1]) for i in range(len(data))]
        if len(targets) == 0:
            raise ValueError("the data set is empty; cannot tell the number of classes")
        num_classes = int(torch.as_tensor(targets).max()) + 1
    return [str(i) for i in range(num_classes)]
