"""Deterministic splits, shuffled ``DataLoader``\\ s and GPU-resident batching, all from explicit seeds.

Nothing here touches the global random state: every permutation comes from a ``torch.Generator``
seeded by the caller, so ``torch.get_rng_state()`` is the same before and after.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from netvis.data.base import DatasetSubset, TensorImageDataset

__all__ = ["split", "loader", "batches", "split_indices"]


def split_indices(n: int, lengths: Sequence[int | float], *, seed: int = 0) -> list[torch.Tensor]:
    """Deterministically partition ``range(n)`` into random parts.

    Args:
        n: Number of items.
        lengths: Part sizes (ints summing to ``n``) or fractions (floats summing to 1; each part gets
            ``floor(fraction * n)`` and the remainder goes one by one to the first parts).
        seed: Seed of the permutation.

    Returns:
        One sorted ``int64`` tensor of indices per part.
    """
    if not lengths:
        raise ValueError("lengths is empty")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in lengths):
        sizes = [int(x) for x in lengths]
        if sum(sizes) != n or min(sizes) < 0:
            raise ValueError(
                f"sizes {list(lengths)} must be non-negative and sum to the data set's length {n}"
            )
    else:
        fractions = [float(x) for x in lengths]
        if min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
            raise ValueError(f"fractions {list(lengths)} must be non-negative and sum to 1")
        sizes = [math.floor(f * n) for f in fractions]
        for k in range(n - sum(sizes)):
            sizes[k % len(sizes)] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size].sort().values)
        start += size
    return parts


def split(dataset: Dataset, lengths: Sequence[int | float], *, seed: int = 0) -> list[Any]:
    """Split a data set into random, non-overlapping parts, the same ones for the same seed.

    Parts keep the parent's ``classes``, ``mean``/``std`` (the statistics of the data set that was
    split, so a validation part carved out of ``"train"`` is normalized like training) and
    ``preprocess``. Indices within a part are in the parent's order.

    Args:
        dataset: Any sized data set. :class:`~netvis.data.base.TensorImageDataset` and
            :class:`~netvis.data.folders.ImageFolderDataset` (anything with a ``subset(indices)`` method)
            give parts of their own type; others give :class:`~netvis.data.base.DatasetSubset`.
        lengths: Part sizes (ints summing to ``len(dataset)``) or fractions summing to 1.
        seed: Seed of the split.

    Returns:
        One data set per entry of ``lengths``.

    Example:
        >>> import torch
        >>> from netvis.data import TensorImageDataset
        >>> images = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
        >>> ds = TensorImageDataset(images, torch.arange(10) % 2, ["a", "b"])
        >>> train, val = split(ds, [0.8, 0.2], seed=1)
        >>> len(train), len(val)
        (8, 2)
    """
    parts = split_indices(len(dataset), lengths, seed=seed)  # type: ignore[arg-type]
    if hasattr(dataset, "subset"):
        return [dataset.subset(idx) for idx in parts]
    return [DatasetSubset(dataset, idx.tolist()) for idx in parts]


def loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """A :class:`torch.utils.data.DataLoader` whose shuffling (and worker seeds) come from ``seed``.

    The loader owns a ``torch.Generator`` seeded with ``seed``: iterating it twice gives two different
    epochs, and a new loader with the same seed replays the same epochs. The global random state is
    neither used nor changed.

    Args:
        dataset: The data set.
        batch_size: Items per batch.
        shuffle: Shuffle every epoch.
        seed: Seed of the loader's generator.
        **kwargs: Passed to ``DataLoader`` (``num_workers``, ``drop_last``, ``pin_memory``...).

    Returns:
        The loader; its ``generator`` attribute is the seeded generator.
    """
    if "generator" in kwargs:
        raise TypeError("loader() makes its own generator from seed=; do not pass generator=")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def batches(
    dataset: TensorImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Iterate over an in-memory data set in preprocessed batches, without a ``DataLoader``.

    The ``uint8`` images are moved to ``device`` once (a no-op if :meth:`TensorImageDataset.to` put
    them there already); each batch is indexed there and run through ``dataset.preprocess``. This is
    the fast path for small images on a GPU.

    Args:
        dataset: A :class:`~netvis.data.base.TensorImageDataset` (or a part of one from :func:`split`).
        batch_size: Items per batch.
        shuffle: Visit items in a random order drawn from ``generator``.
        generator: CPU generator for the order (required with ``shuffle=True``).
        device: Where batches go; default: where ``dataset.images`` lives.
        drop_last: Drop a last, smaller batch.

    Yields:
        ``(inputs, targets)``: float ``(B, C, H, W)`` and ``int64 (B,)`` on ``device``.
    """
    if shuffle and generator is None:
        raise ValueError(
            "shuffle=True needs an explicit generator= (netvis never uses the global random state)"
        )
    images, targets = dataset.images, dataset.targets
    if device is not None:
        images, targets = images.to(device), targets.to(device)
    n = images.shape[0]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(images.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield dataset.preprocess(images[idx]), targets[idx]
