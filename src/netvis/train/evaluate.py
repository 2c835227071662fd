"""Evaluation: accuracy, mean cross-entropy and the confusion matrix of a classifier on a data set."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from netvis.data import load
from netvis.devices import device_for, resolve_device
from netvis.hooks import eval_session
from netvis.train._batches import classes_of, first_items, iterate
from netvis.train.checkpoint import Checkpoint, load_checkpoint

__all__ = [
    "Evaluation",
    "autocast_context",
    "confusion_matrix",
    "evaluate",
    "evaluate_checkpoint",
    "with_preprocess",
]


def confusion_matrix(predictions: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Count how often each true class was predicted as each class.

    .. math:: C_{ij} = \\#\\{n : y_n = i,\\ \\hat y_n = j\\}

    Args:
        predictions: predicted class indices ``(N,)``.
        targets: true class indices ``(N,)``.
        num_classes: ``K``.

    Returns:
        ``int64`` tensor ``(K, K)``: rows are true classes, columns predicted classes.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    predictions = predictions.reshape(-1).to(torch.int64)
    targets = targets.reshape(-1).to(torch.int64)
    if predictions.shape != targets.shape:
        raise ValueError(f"{predictions.numel()} predictions but {targets.numel()} targets")
    flat = targets * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


@dataclass
class Evaluation:
    """The result of :func:`evaluate`.

    Attributes:
        accuracy (float): fraction of correctly classified images.
        loss (float): mean cross-entropy.
        confusion (Tensor): ``int64 (K, K)``, rows true classes, columns predictions.
        classes (list[str]): the ``K`` class names.
        count (int): number of images.
    """

    accuracy: float
    loss: float
    confusion: Tensor
    classes: list[str] = field(default_factory=list)
    count: int = 0

    @property
    def per_class_accuracy(self) -> Tensor:
        """Recall of each class: the diagonal over the row sums (``nan`` for an absent class)."""
        totals = self.confusion.sum(dim=1).to(torch.float64)
        return self.confusion.diagonal().to(torch.float64) / totals

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "count": self.count,
            "classes": list(self.classes),
            "confusion": self.confusion.tolist(),
        }

    def format(self, *, width: int = 10) -> str:
        """The accuracy, per-class accuracy and confusion matrix as a plain-text table."""
        names = [c[:width] for c in self.classes]
        corner = "true\\pred"
        label = max([len(n) for n in names] + [len(corner)])
        cell = max(6, max((len(str(int(v))) for v in self.confusion.flatten()), default=1) + 1)
        lines = [
            f"accuracy {self.accuracy:.2%} ({int(self.confusion.diagonal().sum())}/{self.count}), "
            f"mean loss {self.loss:.4f}",
            "",
            "confusion matrix (rows: true class, columns: predicted class)",
        ]
        lines.append(f"{corner:>{label}} " + "".join(f"{i:>{cell}d}" for i in range(len(names))) + "  recall")
        recall = self.per_class_accuracy
        for i, name in enumerate(names):
            row = "".join(f"{int(v):>{cell}d}" for v in self.confusion[i])
            r = recall[i].item()
            lines.append(f"{name:>{label}} {row}  " + ("   n/a" if r != r else f"{r:6.1%}"))
        lines.append("")
        lines.append("columns: " + ", ".join(f"{i}={name}" for i, name in enumerate(self.classes)))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def autocast_context(device: torch.device, precision: str):
    """``torch.autocast`` for ``"bf16"``/``"fp16"`` on ``device``, a null context for ``"fp32"``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'fp16', got {precision!r}")
    return torch.autocast(device_type=device.type, dtype=dtypes[precision])


def evaluate_sums(
    model: nn.Module,
    data: Dataset,
    indices: Tensor,
    num_classes: int,
    *,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "evaluate",
) -> tuple[Tensor, Tensor]:
    """Confusion matrix and summed loss over ``data[indices]`` (the model's mode is not changed here).

    Returns:
        ``(confusion int64 (K, K) on device, loss sum float64 0-d on device)``: sums, so that shards
        of a data set evaluated on several ranks add up.
    """
    return _sums(model, iterate(data, indices, batch_size, device), num_classes, device=device,
                 precision=precision, channels_last=channels_last, progress=progress, desc=desc,
                 total=len(indices))


def _sums(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    progress: bool,
    desc: str,
    total: int | None,
) -> tuple[Tensor, Tensor]:
    """Confusion matrix and summed loss over ``(inputs, targets)`` batches already on ``device``."""
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    bar = None
    if progress:
        bar = tqdm(total=total, desc=desc, unit="img", leave=False)
    try:
        with torch.no_grad():
            for x, y in batches:
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast_context(device, precision):
                    logits = model(x)
                logits = logits.float()
                if logits.dim() != 2 or logits.shape[1] != num_classes:
                    raise ValueError(
                        f"the model returned logits of shape {tuple(logits.shape)}; expected "
                        f"(N, {num_classes}) for a data set with {num_classes} classes"
                    )
                loss_sum += F.cross_entropy(logits, y, reduction="sum").to(torch.float64)
                confusion += torch.bincount(
                    y * num_classes + logits.argmax(dim=1), minlength=num_classes * num_classes
                )
                if bar is not None:
                    bar.update(len(y))
    finally:
        if bar is not None:
            bar.close()
    return confusion.reshape(num_classes, num_classes), loss_sum


def evaluate(
    model: nn.Module,
    data: Dataset,
    *,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    classes: list[str] | None = None,
    progress: bool = False,
) -> Evaluation:
    """Accuracy, mean cross-entropy and confusion matrix of ``model`` on every image of ``data``.

    The model runs in eval mode (BN uses its running statistics); its train/eval flags, buffers and
    gradients are as before afterwards (:func:`netvis.hooks.eval_session`).

    Args:
        model: a classifier ``(N, C, H, W) -> (N, K)``.
        data: a netvis data set (fast in-memory path), any ``Dataset`` of ``(image, label)`` pairs
            whose images are already the model's input, or any iterable of ``(inputs, targets)``
            batches: a ``DataLoader`` (its own batching; ``batch_size`` is not used), a generator, a list
            of pairs. The class names then come from ``classes``, the loader's data set, the model's
            ``num_classes``, or the logits' width.
        batch_size: images per forward pass.
        device: where to run; default the model's device. The model is not moved: it must be there.
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast).
        channels_last: feed inputs in channels-last memory format.
        classes: class names; default the data set's ``classes``.
        progress: show a tqdm bar.

    Returns:
        An :class:`Evaluation`.

    Raises:
        ValueError: empty data set, or logits whose width is not the number of classes.

    Example:
        >>> from netvis.data import load
        >>> from netvis.train import evaluate
        >>> import netvis
        >>> ckpt = netvis.load_checkpoint("fashion-mnist-small")
        >>> result = evaluate(ckpt.model, load("fashion-mnist-sample", "test"))
        >>> result.accuracy > 0.85
        True
    """
    if _is_batches(data):
        return _evaluate_batches(model, data, device=device, precision=precision, channels_last=channels_last,
                                 classes=classes, progress=progress)
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty data set")
    device = device_for(model, device)
    names = list(classes) if classes is not None else classes_of(data, getattr(model, "num_classes", None))
    indices = torch.arange(len(data))
    with eval_session(model, grad=False):
        confusion, loss_sum = evaluate_sums(
            model,
            data,
            indices,
            len(names),
            batch_size=batch_size,
            device=device,
            precision=precision,
            channels_last=channels_last,
            progress=progress,
        )
    return _evaluation(confusion, loss_sum, names)


def _evaluation(confusion: Tensor, loss_sum: Tensor, names: list[str]) -> Evaluation:
    """The :class:`Evaluation` of a confusion matrix and summed loss (from :func:`_sums`)."""
    confusion = confusion.cpu()
    count = int(confusion.sum())
    return Evaluation(
        accuracy=float(confusion.diagonal().sum()) / count,
        loss=float(loss_sum) / count,
        confusion=confusion,
        classes=names,
        count=count,
    )


def _is_batches(data: Any) -> bool:
    """Whether ``data`` is an iterable of ``(inputs, targets)`` batches rather than a data set of items:
    a ``DataLoader``, an iterator (a generator), or a list/tuple whose first element is a batch."""
    if isinstance(data, DataLoader) or isinstance(data, Iterator):
        return True
    if not isinstance(data, (list, tuple)) or not data:
        return False
    first = data[0]
    if isinstance(first, dict):
        first = first.get("image")
    elif isinstance(first, (list, tuple)) and first:
        first = first[0]
    return isinstance(first, Tensor) and first.dim() == 4


def _pairs(data: Iterable, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
    for batch in data:
        if isinstance(batch, dict) and "image" in batch and "label" in batch:
            x, y = batch["image"], batch["label"]
        elif isinstance(batch, (list, tuple)) and len(batch) >= 2:
            x, y = batch[0], batch[1]
        else:
            raise TypeError(
                f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}; an evaluation "
                "needs the labels"
            )
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise TypeError(f"a batch's inputs must be a (B, C, H, W) tensor, got {type(x).__name__}")
        yield x.to(device), torch.as_tensor(y, dtype=torch.int64).to(device)


def _evaluate_batches(
    model: nn.Module,
    data: Iterable,
    *,
    device: torch.device | str | None,
    precision: str,
    channels_last: bool,
    classes: list[str] | None,
    progress: bool,
) -> Evaluation:
    device = device_for(model, device)
    batches = _pairs(data, device)
    first = next(batches, None)
    if first is None:
        raise ValueError("cannot evaluate on an empty data set")
    num_classes = getattr(model, "num_classes", None)
    if classes is not None:
        names = list(classes)
    else:
        inner = getattr(data, "dataset", None)  # a DataLoader's data set may name its classes
        inner_classes = getattr(inner, "classes", None)
        if inner_classes:
            names = [str(c) for c in inner_classes]
        elif isinstance(num_classes, int):
            names = [str(i) for i in range(num_classes)]
        else:
            with eval_session(model, grad=False), autocast_context(device, precision):
                width = model(first[0]).shape[-1]  # the number of classes is the logits' width
            names = [str(i) for i in range(width)]
    with eval_session(model, grad=False):
        confusion, loss_sum = _sums(model, itertools.chain([first], batches), len(names), device=device,
                                    precision=precision, channels_last=channels_last, progress=progress,
                                    desc="evaluate", total=None)
    return _evaluation(confusion, loss_sum, names)


def with_preprocess(data: Dataset, preprocess: Any) -> Dataset:
    """A shallow copy of an in-memory netvis data set whose items use ``preprocess``.

    A checkpoint's model expects the normalisation of *its* training data; a data set loaded today
    normalises with its own training split's statistics. For netvis's in-memory data sets the copy
    shares the ``uint8`` images and applies the checkpoint's :class:`netvis.data.Preprocess` instead.
    Other data sets are returned unchanged.
    """
    if getattr(data, "preprocess", None) is None or not hasattr(data, "images"):
        return data
    clone = copy.copy(data)
    clone.preprocess = preprocess
    for key in ("mean", "std"):
        if hasattr(clone, key) and hasattr(preprocess, key):
            setattr(clone, key, tuple(getattr(preprocess, key)))
    return clone


def evaluate_checkpoint(
    checkpoint: Any,
    data: str | Dataset | None = None,
    *,
    split: str = "test",
    batch_size: int = 512,
    device: torch.device | str = "auto",
    limit: int | None = None,
    progress: bool = False,
) -> Evaluation:
    """Evaluate a checkpoint on a data set, with the checkpoint's own preprocessing.

    Args:
        checkpoint: a path, run folder, shipped name (``"fashion-mnist-small"``) or a loaded
            :class:`~netvis.train.checkpoint.Checkpoint`.
        data: a data set name or folder (default: the checkpoint's training data), or a data set.
        split: the split to load when ``data`` is a name.
        batch_size: images per forward pass.
        device: ``"auto"`` (GPU when available), ``"cpu"``, ``"cuda"``...
        limit: evaluate the first ``limit`` images only.
        progress: show a progress bar.

    Returns:
        An :class:`Evaluation` with the checkpoint's class names.

    Raises:
        CheckpointError: the checkpoint cannot be loaded.
        ValueError: the data's class count differs from the model's.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if data is None:
        data = ckpt.meta.get("data", {}).get("name")
        if not data:
            raise ValueError(f"{ckpt.path} does not record its data set; pass data=")
    if isinstance(data, str):
        data = load(data, split)
    dataset_classes = getattr(data, "classes", None)
    if dataset_classes is not None and len(dataset_classes) != len(ckpt.classes):
        raise ValueError(
            f"the data has {len(dataset_classes)} classes but the checkpoint {ckpt.path} predicts "
            f"{len(ckpt.classes)}"
        )
    data = first_items(with_preprocess(data, ckpt.preprocess), limit)
    dev = resolve_device(device)
    model = ckpt.model.to(dev)
    return evaluate(model, data, batch_size=batch_size, device=dev, classes=ckpt.classes, progress=progress)
