r"""Dataset examples: the top-k images of a data set that most activate each unit of a layer.

For every channel :math:`c` of a layer with output :math:`A(x) \in \mathbb{R}^{C \times H \times W}`
each image :math:`x_n` gets a score

.. math:: s_c(x_n) = \frac{1}{HW} \sum_{i,j} A_{c,i,j}(x_n) \quad (\text{reduce="mean"}) \qquad
          s_c(x_n) = \max_{i,j} A_{c,i,j}(x_n) \quad (\text{reduce="max"})

(a linear layer's output :math:`A(x) \in \mathbb{R}^{C}` is its own score), and the examples of unit
:math:`c` are the :math:`k` images with the largest scores, as in Zeiler & Fergus, "Visualizing and
Understanding Convolutional Networks" (ECCV 2014) and Olah et al., "Feature Visualization" (Distill 2017).

:func:`dataset_examples` streams the data once for every channel of one or several layers together, keeping a
running top-k per layer (:class:`RunningTopK`): memory is :math:`O(k \cdot C)` whatever the data set's size.
It checkpoints and resumes, and under ``torch.distributed`` splits the data between processes and merges
their top-k exactly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, Subset
from tqdm.auto import tqdm

from netvis._checks import check_positive_int
from netvis.data.base import TensorImageDataset
from netvis.devices import device_for
from netvis.features._common import LayerLike, StopForward, capture, resolve_layers
from netvis.hooks import eval_session
from netvis.io import atomic_save

__all__ = ["DatasetExamples", "RunningTopK", "dataset_examples", "shard_bounds"]

_REDUCTIONS = ("mean", "max")
_RESULT_FORMAT = "netvis.dataset_examples"
_CHECKPOINT_FORMAT = "netvis.dataset_examples.checkpoint"
_MAX_INDEX = 1 << 32


# ---------------------------------------------------------------------------------------------------
# The running top-k


def _order_key(values: Tensor, indices: Tensor) -> Tensor:
    """A unique ``int64`` key per (value, index) that orders by value descending, then by index ascending.

    The ``float32`` bit pattern is mapped to an integer with the same order (``-0.0`` counts as ``+0.0``),
    shifted up 32 bits, and ``2^32 - 1 - index`` fills the low bits, so that ``torch.topk`` of the keys is
    deterministic: equal values keep the lower image index.
    """
    v = values.to(torch.float32) + 0.0  # -0.0 + 0.0 == +0.0
    bits = v.view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return ordered * _MAX_INDEX + (_MAX_INDEX - 1 - indices)


def _top(values: Tensor, indices: Tensor, k: int) -> Tensor:
    """Column positions ``(C, min(k, n))`` of each row's top ``k`` (value desc, index asc), best first."""
    return torch.topk(_order_key(values, indices), min(k, values.shape[1]), dim=1, sorted=True).indices


class RunningTopK:
    """A running top-k over a stream of one layer's activations, for every channel (unit) at once.

    Each :meth:`update` merges a batch into the current top-k with one ``torch.topk`` over the
    concatenation ``[current k, batch]`` per channel, so memory stays :math:`O(k \\cdot C)`. Equal scores
    are ordered by image index (the lower index first), so results do not depend on batch size, on the
    order in which partial results are :meth:`merge`\\ d or on the device.

    Args:
        k: Images to keep per channel.
        reduce: ``"mean"`` or ``"max"`` over each channel's spatial positions (see the module docstring).

    Attributes:
        values: ``float32 (C, k')`` scores, descending (``k' = min(k, count)``); ``None`` before any update.
        indices: ``int64 (C, k')`` image indices.
        flat_positions: ``int64 (C, k')`` position of the channel's maximum in each image's flattened map.
        feature_shape: The layer output's shape without the batch dimension.
        count: Images seen.

    Example:
        >>> import torch
        >>> top = RunningTopK(k=2)
        >>> top.update(torch.tensor([[1.0, 5.0], [3.0, 2.0]]), first_index=0)
        >>> top.update(torch.tensor([[2.0, 9.0]]), first_index=2)
        >>> top.indices
        tensor([[1, 2],
                [2, 0]])
    """

    def __init__(self, k: int, reduce: str = "mean") -> None:
        check_positive_int(k, "k")
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce must be one of {_REDUCTIONS}, got {reduce!r}")
        self.k = k
        self.reduce = reduce
        self.values: Tensor | None = None
        self.indices: Tensor | None = None
        self.flat_positions: Tensor | None = None
        self.feature_shape: tuple[int, ...] | None = None
        self.count = 0

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        if self.feature_shape is None:
            self.feature_shape = shape
        elif tuple(self.feature_shape) != shape:
            raise ValueError(f"activations shaped {shape} per image after {self.feature_shape}; "
                             "all images must give the layer the same output shape")

    def update(self, activations: Tensor, first_index: int) -> None:
        """Merge a batch of activations.

        Args:
            activations: ``(B, C)``, ``(B, C, L)`` or ``(B, C, H, W)``: the layer's output for images
                ``first_index, ..., first_index + B - 1``.
            first_index: Index of the batch's first image in the whole data set.
        """
        a = activations.detach()
        if not 2 <= a.dim() <= 4:
            raise ValueError(
                f"expected layer outputs shaped (B, C), (B, C, L) or (B, C, H, W), got {tuple(a.shape)}"
            )
        b, c = a.shape[:2]
        if first_index < 0 or first_index + b > _MAX_INDEX:
            raise ValueError(f"image indices must be in [0, 2**32), got {first_index}..{first_index + b - 1}")
        self._check_shape(tuple(a.shape[1:]))
        if b == 0:
            return
        if a.dim() == 2:
            scores, where = a.to(torch.float32), torch.zeros_like(a, dtype=torch.int64)
        else:
            maps = a.flatten(2)
            if self.reduce == "max":
                best, where = maps.max(dim=-1)  # first maximum on ties
                scores = best.to(torch.float32)
            else:
                scores = maps.mean(dim=-1, dtype=torch.float32)
                where = maps.argmax(dim=-1)
        new_values = scores.T
        new_indices = torch.arange(first_index, first_index + b, device=a.device).expand(c, b)
        new_positions = where.T
        self.count += b
        self._absorb(new_values, new_indices, new_positions)

    def _absorb(self, values: Tensor, indices: Tensor, positions: Tensor) -> None:
        if self.values is not None:
            device = values.device
            values = torch.cat([self.values.to(device), values], dim=1)
            indices = torch.cat([self.indices.to(device), indices], dim=1)  # type: ignore[union-attr]
            positions = torch.cat([self.flat_positions.to(device), positions], dim=1)  # type: ignore[union-attr]
        top = _top(values, indices, self.k)
        self.values = values.gather(1, top)
        self.indices = indices.gather(1, top)
        self.flat_positions = positions.gather(1, top)

    def merge(self, other: RunningTopK) -> RunningTopK:
        """Merge another running top-k over *different* images of the same layer (in place; returns self).

        Raises:
            ValueError: ``k``, ``reduce`` or the feature shapes differ.
        """
        if (other.k, other.reduce) != (self.k, self.reduce):
            raise ValueError(f"cannot merge top-{other.k} ({other.reduce}) into top-{self.k} ({self.reduce})")
        if other.feature_shape is not None:
            self._check_shape(tuple(other.feature_shape))
        if other.values is not None:
            self.count += other.count
            self._absorb(other.values, other.indices, other.flat_positions)  # type: ignore[arg-type]
        return self

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors (on the CPU) and numbers; :meth:`load_state_dict` restores them."""

        def cpu(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.detach().cpu()

        return {
            "k": self.k,
            "reduce": self.reduce,
            "values": cpu(self.values),
            "indices": cpu(self.indices),
            "flat_positions": cpu(self.flat_positions),
            "feature_shape": None if self.feature_shape is None else list(self.feature_shape),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`."""
        if (state["k"], state["reduce"]) != (self.k, self.reduce):
            raise ValueError(
                f"state holds top-{state['k']} ({state['reduce']}), not top-{self.k} ({self.reduce})"
            )
        self.values, self.indices = state["values"], state["indices"]
        self.flat_positions = state["flat_positions"]
        shape = state["feature_shape"]
        self.feature_shape = None if shape is None else tuple(int(s) for s in shape)
        self.count = int(state["count"])

    def result(self, layer: str = "", meta: dict[str, Any] | None = None) -> DatasetExamples:
        """The current top-k as a :class:`DatasetExamples` (tensors on the CPU).

        Raises:
            ValueError: nothing has been seen yet.
        """
        if self.values is None or self.feature_shape is None:
            raise ValueError("no images were seen: the data set is empty")
        flat = self.flat_positions.cpu()  # type: ignore[union-attr]
        spatial = self.feature_shape[1:]
        width = spatial[-1] if spatial else 1
        rows = flat // width if len(spatial) == 2 else torch.zeros_like(flat)
        cols = flat % width if spatial else torch.zeros_like(flat)
        return DatasetExamples(
            layer=layer,
            values=self.values.cpu(),
            indices=self.indices.cpu(),  # type: ignore[union-attr]
            positions=torch.stack([rows, cols], dim=-1),
            reduce=self.reduce,
            num_images=self.count,
            feature_shape=tuple(self.feature_shape),
            meta=dict(meta or {}),
        )


# ---------------------------------------------------------------------------------------------------
# The result


@dataclass
class DatasetExamples:
    """The top-k images of a data set for every unit of one layer.

    Attributes:
        layer: The layer's dotted name.
        values: ``float32 (C, k)``: each channel's scores, descending.
        indices: ``int64 (C, k)``: the images' indices in the data set, ``indices[c, 0]`` the best.
        positions: ``int64 (C, k, 2)``: ``(row, col)`` of the channel's maximum in that image's activation
            map (the first maximum in row-major order; ``(0, col)`` for 1-D maps, ``(0, 0)`` for linear
            layers).
        reduce: ``"mean"`` or ``"max"``: how a channel's map was scored.
        num_images: Images the scores were taken over.
        feature_shape: The layer output's shape per image: ``(C, H, W)``, ``(C, L)`` or ``(C,)``.
        meta: Free-form, JSON-like information (data set name, model name, ...).
    """

    layer: str
    values: Tensor
    indices: Tensor
    positions: Tensor
    reduce: str
    num_images: int
    feature_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        """Number of channels (units)."""
        return self.values.shape[0]

    @property
    def k(self) -> int:
        """Images kept per channel."""
        return self.values.shape[1]

    def regions(self, boxes: Tensor) -> Tensor:
        """The input region of each example's maximum: ``(C, k, 4)`` boxes ``(top, left, bottom, right)``.

        Args:
            boxes: ``(C, H, W, 4)`` receptive fields from :func:`netvis.features.receptive_field` for this
                layer (``(C, 1, 1, 4)`` for a linear layer).

        Returns:
            ``boxes[c, row, col]`` at each example's :attr:`positions`; bottom and right are exclusive.
        """
        if boxes.dim() != 4 or boxes.shape[0] != self.channels or boxes.shape[-1] != 4:
            raise ValueError(f"expected boxes shaped ({self.channels}, H, W, 4), got {tuple(boxes.shape)}")
        c = torch.arange(self.channels)[:, None]
        return boxes.cpu()[c, self.positions[..., 0], self.positions[..., 1]]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the result with ``torch.save`` (tensors and plain metadata); returns the path."""
        path = Path(path)
        payload = {
            "format": _RESULT_FORMAT,
            "version": 1,
            "layer": self.layer,
            "values": self.values,
            "indices": self.indices,
            "positions": self.positions,
            "reduce": self.reduce,
            "num_images": self.num_images,
            "feature_shape": list(self.feature_shape),
            "meta": self.meta,
        }
        atomic_save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetExamples:
        """Read a result written by :meth:`save` (on the CPU, with ``weights_only=True``).

        Raises:
            ValueError: the file is not a saved :class:`DatasetExamples`.
        """
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _RESULT_FORMAT:
            raise ValueError(f"{path} is not a netvis dataset-examples file")
        return cls(
            layer=payload["layer"],
            values=payload["values"],
            indices=payload["indices"],
            positions=payload["positions"],
            reduce=payload["reduce"],
            num_images=int(payload["num_images"]),
            feature_shape=tuple(int(s) for s in payload["feature_shape"]),
            meta=dict(payload["meta"]),
        )

    def __repr__(self) -> str:
        return (f"DatasetExamples(layer={self.layer!r}, channels={self.channels}, k={self.k}, "
                f"reduce={self.reduce!r}, num_images={self.num_images}, feature_shape={self.feature_shape})")





# ---------------------------------------------------------------------------------------------------
# Reading the data


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous block ``[start, stop)`` of ``range(n)`` that process ``rank`` of ``world_size`` handles.

    Blocks differ in size by at most one and cover ``range(n)`` in rank order.
    """
    return rank * n // world_size, (rank + 1) * n // world_size


def _first_tensor(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(
        "expected batches that are image tensors or (images, labels, ...) sequences, "
        f"got {type(batch).__name__}"
    )


class _Source:
    """Batches of images with the data-set index of each batch's first image."""

    def __init__(self, data: Any, batch_size: int, num_workers: int) -> None:
        self.data, self.batch_size, self.num_workers = data, batch_size, num_workers
        self.collate_fn = None
        self.pin_memory = False
        if isinstance(data, DataLoader):
            if (
                data.batch_size is not None
                and isinstance(data.sampler, SequentialSampler)
                and not isinstance(data.dataset, IterableDataset)
            ):
                self.data = data.dataset  # in order: re-batch it, so it can be split and resumed cheaply
                self.batch_size, self.num_workers = data.batch_size, data.num_workers
                self.collate_fn, self.pin_memory = data.collate_fn, data.pin_memory
                self.mode = "dataset"
            else:
                self.mode = "stream"
        elif isinstance(data, IterableDataset) or not _indexable(data) or _is_batch_list(data):
            if not hasattr(data, "__iter__"):
                raise TypeError(f"data must be a Dataset, a DataLoader or an iterable of batches, "
                                f"got {type(data).__name__}")
            self.mode = "stream"
        else:
            self.mode = "dataset"
        self.length = len(self.data) if self.mode == "dataset" else None

    def batches(self, start: int, stop: int | None, device: torch.device) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(index of the first image, images)`` for images ``start .. stop - 1``."""
        if self.mode == "stream":
            yield from self._stream(start)
            return
        assert stop is not None
        if isinstance(self.data, Tensor):
            for first in range(start, stop, self.batch_size):
                yield first, self.data[first : min(first + self.batch_size, stop)]
            return
        images = getattr(self.data, "images", None)
        preprocess = getattr(self.data, "preprocess", None)
        if _is_tensor_image_dataset(self.data) and isinstance(images, Tensor) and callable(preprocess):
            for first in range(start, stop, self.batch_size):  # index the uint8 images directly: no collation
                last = min(first + self.batch_size, stop)
                yield first, preprocess(images[first:last].to(device, non_blocking=True))
            return
        loader = DataLoader(
            Subset(self.data, range(start, stop)),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            **({"collate_fn": self.collate_fn} if self.collate_fn is not None else {}),
        )
        first = start
        for batch in loader:
            x = _first_tensor(batch)
            yield first, x
            first += x.shape[0]

    def _stream(self, skip: int) -> Iterator[tuple[int, Tensor]]:
        position = 0
        for batch in self.data:
            x = _first_tensor(batch)
            n = x.shape[0]
            if position + n > skip:
                offset = max(skip - position, 0)
                yield position + offset, x[offset:]
            position += n


def _indexable(data: Any) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _is_batch_list(data: Any) -> bool:
    """A list or tuple of ``(B, C, H, W)`` batches (or of ``(images, labels)`` batches), not of images."""
    if not isinstance(data, (list, tuple)) or not data:
        return False
    first = data[0]
    if isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, Tensor) and first.dim() == 4


def _is_tensor_image_dataset(data: Any) -> bool:
    return isinstance(data, TensorImageDataset)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_path(path: str | os.PathLike | None, rank: int, world: int) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    if world == 1:
        return path
    return path.with_name(f"{path.stem}.rank{rank}of{world}{path.suffix}")


# ---------------------------------------------------------------------------------------------------
# The method


def dataset_examples(
    model: nn.Module,
    layer: LayerLike | Sequence[LayerLike],
    data: Dataset | DataLoader | Any,
    k: int = 20,
    *,
    reduce: str = "mean",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    progress: bool = False,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 10_000,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
) -> DatasetExamples | dict[str, DatasetExamples]:
    r"""Find, for every channel of a layer, the ``k`` images of a data set that activate it most.

    The data is read once. For each batch the layer's output is captured by a forward hook (the forward
    pass stops right after the last requested layer), each channel's map is reduced to one score per image
    (its spatial mean or max; see the module docstring), and a :class:`RunningTopK` merges the batch into
    the current top-k with ``torch.topk`` over ``[current, batch]``: memory :math:`O(k \cdot C)`, whatever
    the number of images. Equal scores keep the lower image index.

    The model runs in eval mode under ``torch.no_grad()``; its train/eval flags are restored afterwards
    (also on error), hooks are removed, and parameters, gradients and BN buffers are not touched.

    **Resuming.** With ``checkpoint_path``, the running top-k and the number of images done are written
    there (atomically: a temporary file then a rename) every ``checkpoint_every`` images and at the end. A
    call with the same path continues where the last one stopped, so a crash costs at most one chunk, and
    a finished run returns at once. The file records the layers, ``k``, ``reduce`` and the data set's
    length; a call that does not match raises instead of mixing results.

    **Distributed.** Inside an initialised ``torch.distributed`` process group (e.g. under ``torchrun``)
    process ``rank`` reads the contiguous block :func:`shard_bounds` of the data, computes its top-k with
    data-set-wide image indices, and the blocks' top-k are gathered (``all_gather_object``) and merged, which
    is exact because the global top-k of each channel is contained in the union of the blocks' top-k. Every
    process returns the same result; each process checkpoints to ``<stem>.rank<r>of<w><suffix>``.

    Args:
        model: Any ``nn.Module``.
        layer: A module of ``model`` or its dotted name (``"layer3.2.conv2"``), or a list of them: then all
            layers are done in the same pass and a dict ``{name: result}`` is returned.
        data: A ``Dataset`` whose items are images ``(C, H, W)`` or ``(image, label, ...)`` tuples, a
            tensor of images ``(N, C, H, W)``, a ``DataLoader`` of such batches, or any iterable of batches
            (a generator; a list or tuple whose first element is a ``(B, C, H, W)`` batch or an
            ``(images, labels)`` batch; any other object with ``__len__`` and ``__getitem__`` is taken as
            a data set of items).
            Index ``n`` is the ``n``-th image in the data set's order (for a ``DataLoader`` with a sampler
            other than sequential, in the order it yields them; such a loader must give the same order every
            time in order to resume, and cannot be split between processes).
        k: Images per channel (fewer if the data set is smaller).
        reduce: ``"mean"`` or ``"max"`` of each channel's activation map.
        batch_size: Images per forward pass (a ``DataLoader`` in sequential order keeps its own).
        device: Where the batches go; default: the device of the model's parameters. The model is not moved.
        transform: Applied to each batch on ``device`` before the model (e.g. a checkpoint's ``preprocess``).
        progress: Show a ``tqdm`` progress bar (on rank 0).
        checkpoint_path: File for the running state; see *Resuming*.
        checkpoint_every: Images between checkpoints (rounded up to whole batches).
        num_workers: ``DataLoader`` workers for reading a generic ``Dataset``.
        meta: Stored in each result's ``meta`` (e.g. the data set's and the model's names).

    Returns:
        A :class:`DatasetExamples` (``indices``/``values`` ``(C, k)``, ``positions`` ``(C, k, 2)``), or a dict
        of them, one per layer, for a list of layers.

    Raises:
        ValueError: an unknown layer (the message suggests names), a bad ``k``/``reduce``/``batch_size``,
            an empty data set, or a checkpoint written for a different call.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> images = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> top = dataset_examples(model, "1", images, k=5, reduce="max")
        >>> top.indices.shape, top.positions.shape
        (torch.Size([4, 5]), torch.Size([4, 5, 2]))
    """
    modules, single = resolve_layers(model, layer)
    check_positive_int(batch_size, "batch_size")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be positive, got {checkpoint_every!r}")
    tops = {name: RunningTopK(k, reduce) for name in modules}
    rank, world = _distributed()
    source = _Source(data, batch_size, num_workers)
    if source.length is None and world > 1:
        raise ValueError("under torch.distributed, data must be a Dataset or a DataLoader in sequential "
                         "order (shuffle=False), so that it can be split between processes")
    start, stop = shard_bounds(source.length, rank, world) if source.length is not None else (0, None)
    fingerprint = {
        "layers": list(modules),
        "k": k,
        "reduce": reduce,
        "num_items": source.length,
        "rank": rank,
        "world_size": world,
    }
    state_path = _rank_path(checkpoint_path, rank, world)
    done = _read_checkpoint(state_path, fingerprint, tops) if state_path is not None else 0
    device = device_for(model, device)
    total = None if stop is None else stop - start
    quiet = not progress or rank != 0
    bar = tqdm(total=total, initial=done, unit="img", desc="dataset examples", disable=quiet)
    since_save = 0
    store: dict[str, Tensor] = {}
    try:
        if total is None or done < total:
            with eval_session(model, grad=False), capture(modules, store, stop_early=True):
                for first, images in source.batches(start + done, stop, device):
                    x = images.to(device, non_blocking=True)
                    if transform is not None:
                        x = transform(x)
                    store.clear()
                    try:
                        model(x)
                    except StopForward:
                        pass
                    missing = [name for name in modules if name not in store]
                    if missing:
                        raise RuntimeError(f"layer(s) {', '.join(map(repr, missing))} did not run in "
                                           f"{type(model).__name__}'s forward pass")
                    for name, top in tops.items():
                        top.update(store[name], first)
                    store.clear()
                    n = x.shape[0]
                    done += n
                    since_save += n
                    bar.update(n)
                    if state_path is not None and since_save >= checkpoint_every:
                        _write_checkpoint(state_path, fingerprint, tops, done)
                        since_save = 0
            if state_path is not None and since_save:
                _write_checkpoint(state_path, fingerprint, tops, done)
    finally:
        store.clear()
        bar.close()
    if world > 1:
        _gather_merge(tops)
    info = dict(meta or {})
    results = {name: top.result(name, info) for name, top in tops.items()}
    return next(iter(results.values())) if single else results


def _write_checkpoint(path: Path, fingerprint: dict[str, Any], tops: dict[str, RunningTopK], done: int):
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "version": 1,
        "fingerprint": fingerprint,
        "done": done,
        "states": {name: top.state_dict() for name, top in tops.items()},
    }
    atomic_save(payload, path)


def _read_checkpoint(path: Path, fingerprint: dict[str, Any], tops: dict[str, RunningTopK]) -> int:
    if not path.exists():
        return 0
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a netvis dataset-examples checkpoint")
    if payload["fingerprint"] != fingerprint:
        theirs, ours = payload["fingerprint"], fingerprint
        diff = ", ".join(f"{key}: {theirs.get(key)!r} there, {ours[key]!r} here" for key in ours
                         if theirs.get(key) != ours[key])
        raise ValueError(f"checkpoint {path} was written for a different call ({diff}); "
                         "delete it or pass another checkpoint_path")
    for name, top in tops.items():
        top.load_state_dict(payload["states"][name])
    return int(payload["done"])


def _gather_merge(tops: dict[str, RunningTopK]) -> None:
    local = {name: top.state_dict() for name, top in tops.items()}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    for name, top in tops.items():
        merged = RunningTopK(top.k, top.reduce)
        for states in gathered:  # rank order; the result does not depend on it
            part = RunningTopK(top.k, top.reduce)
            part.load_state_dict(states[name])
            merged.merge(part)
        top.load_state_dict(merged.state_dict())
