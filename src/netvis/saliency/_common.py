"""What every saliency method shares: input checks, target resolution, batching of many rows per image."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from netvis._checks import check_positive_int

TargetLike = None | int | Sequence[int] | torch.Tensor | np.ndarray | Callable[[Any], torch.Tensor]
"""A target: ``None`` (the predicted class), an int, N ints (a sequence, a tensor or a numpy array), or a
callable ``outputs -> (N,) scores``."""

Select = None | str | int | Callable[[Any], torch.Tensor]
"""Which part of a model's output holds the scores: ``None`` (automatic), a key or attribute name, a
position, or a callable ``outputs -> tensor``; see :func:`select_output`."""

_AUTO_KEYS = ("logits", "out")


def _describe_output(outputs: Any) -> str:
    if isinstance(outputs, torch.Tensor):
        return f"a tensor of shape {tuple(outputs.shape)}"
    if isinstance(outputs, Mapping):
        return f"{type(outputs).__name__} with keys {list(outputs.keys())}"
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        return f"{type(outputs).__name__} with fields {[f.name for f in dataclasses.fields(outputs)]}"
    if isinstance(outputs, (tuple, list)):
        return f"a {type(outputs).__name__} of {len(outputs)} elements"
    return type(outputs).__name__


def select_output(outputs: Any, select: Select = None, *, classes: bool = True) -> Any:
    """The part of a model's ``outputs`` that the target scores.

    Models may return a tensor, a tuple or list (``select=0``), a dict (torchvision's segmentation
    models: ``select="out"``), a dataclass or a Hugging Face ``ModelOutput`` (``select="logits"``).

    Args:
        outputs: what ``model(x)`` returned.
        select: ``None``: a tensor is used as it is; for a class target (``classes=True``) an output
            that is not a tensor is searched for a ``"logits"`` then an ``"out"`` entry (key or
            attribute), and refused, with a message naming ``select=``, when it has neither; a callable
            target gets the output unchanged. A str: that key of a mapping, else that attribute. An int:
            that position of a tuple or list. A callable: ``select(outputs)``.
        classes: whether the target is a class target (``None``, ints) rather than a callable.

    Returns:
        The selected output (a tensor, unless a callable target is to receive the raw output).

    Raises:
        KeyError: a str key that the output does not have (the message lists the keys).
        IndexError: an int position out of range.
        TypeError: a class target and an output that is neither a tensor nor selectable automatically.
    """
    if select is None:
        if isinstance(outputs, torch.Tensor) or not classes:
            return outputs
        for key in _AUTO_KEYS:
            if isinstance(outputs, Mapping) and isinstance(outputs.get(key), torch.Tensor):
                return outputs[key]
            if not isinstance(outputs, Mapping) and isinstance(getattr(outputs, key, None), torch.Tensor):
                return getattr(outputs, key)
        raise TypeError(
            f"the model returned {_describe_output(outputs)}; pass select= (a key or attribute name such as "
            "'logits', a position such as 0, or a callable outputs -> tensor) to say which part holds the "
            "class scores, or a callable target outputs -> (N,) scores"
        )
    if isinstance(select, bool):
        raise TypeError("select must be None, a str, an int or a callable, not a bool")
    if isinstance(select, str):
        if isinstance(outputs, Mapping):
            if select not in outputs:
                raise KeyError(f"select={select!r}: the model returned {_describe_output(outputs)}")
            return outputs[select]
        if not hasattr(outputs, select):
            raise KeyError(f"select={select!r}: the model returned {_describe_output(outputs)}")
        return getattr(outputs, select)
    if isinstance(select, int):
        if isinstance(outputs, torch.Tensor) or not isinstance(outputs, Sequence):
            raise TypeError(
                f"select={select}: a position needs a tuple or list output; the model returned "
                f"{_describe_output(outputs)}"
            )
        if not -len(outputs) <= select < len(outputs):
            raise IndexError(f"select={select} is out of range: the model returned {_describe_output(outputs)}")
        return outputs[select]
    if callable(select):
        return select(outputs)
    raise TypeError(f"select must be None, a str, an int or a callable, got {type(select).__name__}")


def check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def check_images(x: torch.Tensor) -> None:
    """Raise unless ``x`` is a floating-point ``(N, C, H, W)`` tensor with ``N >= 1``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor shaped (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"inputs must be a 4-D tensor shaped (N, C, H, W); got {x.dim()}-D shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else "")
        )
    if not x.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {x.dtype} (convert with x.float())")
    if x.shape[0] == 0:
        raise ValueError("inputs hold no images (N = 0)")


@dataclass
class Target:
    """A resolved target: per-sample class indices, or a callable scoring each row of the outputs.

    ``select`` (see :func:`select_output`) picks the part of the model's outputs that is scored.
    """

    indices: torch.Tensor | None = None
    fn: Callable[[Any], torch.Tensor] | None = None
    select: Select = None

    def scores(self, outputs: Any, n: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(n,)`` of the model ``outputs`` for ``n`` input rows; row ``m`` is sample ``rows[m]``.

        ``rows`` is ``None`` when row ``m`` is sample ``m``.
        """
        outputs = select_output(outputs, self.select, classes=self.fn is None)
        if self.fn is not None:
            scores = self.fn(outputs)
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != (n,):
                got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
                raise ValueError(
                    f"a callable target must return one score per input, a tensor of shape ({n},); "
                    f"it returned {got}"
                )
            return scores
        _check_class_outputs(outputs)
        assert self.indices is not None
        idx = self.indices if rows is None else self.indices[rows]
        return outputs.gather(1, idx.to(outputs.device)[:, None]).squeeze(1)


def _check_class_outputs(outputs: Any) -> None:
    if not isinstance(outputs, torch.Tensor):
        raise TypeError(
            f"the selected output is {_describe_output(outputs)}; a class target needs a tensor of class "
            "scores shaped (N, num_classes) (pass select= to pick it, or a callable target)"
        )
    if outputs.dim() != 2:
        raise ValueError(
            f"the model returned outputs of shape {tuple(outputs.shape)}; a class target needs "
            "(N, num_classes) outputs; pass a callable target (outputs -> (N,) scores) instead"
        )


def _is_callable_target(target: Any) -> bool:
    return callable(target) and not isinstance(target, (torch.Tensor, np.ndarray))


def resolve_target(target: TargetLike, outputs: Any, n: int, select: Select = None) -> Target:
    """Turn ``target`` into a :class:`Target` for ``n`` samples whose clean model outputs are ``outputs``.

    Every saliency method resolves its target here, so all of them accept the same targets and outputs.

    Args:
        target: ``None`` (each sample's predicted class, ``outputs.argmax(1)``), an int (the same class
            for every sample), a sequence, 1-D integer tensor or 1-D integer numpy array of ``n``
            classes, or a callable mapping the (selected) model outputs of ``M`` rows to ``(M,)`` scores
            (each row's score must depend on that row only), e.g. the sum of a segmentation class's
            logits over a mask, or one region's score.
        outputs: the model's outputs on the clean inputs (a tensor, tuple, dict, dataclass...).
        n: the number of samples.
        select: which part of ``outputs`` is scored (see :func:`select_output`).

    Raises:
        ValueError: a class out of range (the message names the number of classes), a wrong number of
            classes, outputs that are not ``(N, num_classes)`` for a class target.
        TypeError: a target of another type, a non-integer tensor or array, an output that needs
            ``select=``.
    """
    if _is_callable_target(target):
        return Target(fn=target, select=select)
    outputs = select_output(outputs, select, classes=True)
    if isinstance(outputs, torch.Tensor) and outputs.shape[0] != n:
        raise ValueError(f"the model returned {outputs.shape[0]} rows of outputs for {n} inputs")
    _check_class_outputs(outputs)
    num_classes = outputs.shape[1]
    device = outputs.device
    if target is None:
        return Target(indices=outputs.detach().argmax(1), select=select)
    if isinstance(target, (bool, np.bool_)):
        raise TypeError("target must be an int class index, not a bool")
    if isinstance(target, np.ndarray):
        if target.dtype.kind not in "iu":
            raise TypeError(
                f"a numpy target must hold integer class indices, got dtype {target.dtype} "
                "(convert with target.astype(int))"
            )
        target = torch.from_numpy(np.array(target, dtype=np.int64))
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"a target tensor must hold integer class indices, got dtype {target.dtype}")
        if target.dim() > 1:
            raise ValueError(f"a target tensor must be 0-D or 1-D, got shape {tuple(target.shape)}")
        indices = target.reshape(-1).to(device=device, dtype=torch.long)
        if target.dim() == 0:
            indices = indices.expand(n)
    elif isinstance(target, Sequence) and not isinstance(target, str):
        try:
            values = [operator.index(t) for t in target]
        except TypeError:
            raise TypeError("a target sequence must hold int class indices") from None
        indices = torch.tensor(values, dtype=torch.long, device=device)
    else:
        try:
            value = operator.index(target)
        except TypeError:
            raise TypeError(
                "target must be None, an int, a sequence or tensor of ints, or a callable "
                f"outputs -> scores; got {type(target).__name__}"
            ) from None
        indices = torch.full((n,), value, dtype=torch.long, device=device)
    if indices.numel() != n:
        raise ValueError(f"target holds {indices.numel()} class indices for {n} inputs; expected {n}")
    bad = (indices < 0) | (indices >= num_classes)
    if bool(bad.any()):
        value = int(indices[bad][0])
        raise ValueError(
            f"target {value} is out of range for a model with {num_classes} classes "
            f"(valid targets: 0..{num_classes - 1})"
        )
    return Target(indices=indices, select=select)


def row_chunks(n_images: int, per_image: int, batch_size: int) -> Iterator[list[tuple[int, int, int]]]:
    """Split ``n_images * per_image`` rows into forward passes of at most ``batch_size`` rows.

    Rows are ordered image by image. Yields, per forward pass, a list of ``(image, start, stop)``: rows
    ``start:stop`` of that image.
    """
    check_positive_int(batch_size, "batch_size")
    total = n_images * per_image
    for f0 in range(0, total, batch_size):
        f1 = min(f0 + batch_size, total)
        segments = []
        for image in range(f0 // per_image, (f1 - 1) // per_image + 1):
            start = max(f0, image * per_image) - image * per_image
            stop = min(f1, (image + 1) * per_image) - image * per_image
            segments.append((image, start, stop))
        yield segments


PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` to bfloat16 for ``"bf16"``, nothing for ``"fp32"``."""
    check_precision(precision)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def gradient_of_scores(
    model: nn.Module,
    inputs: torch.Tensor,
    target: Target | TargetLike,
    rows: torch.Tensor | None = None,
    forward_context: Callable[[], AbstractContextManager] | None = None,
    precision: str = "fp32",
    select: Select = None,
) -> tuple[torch.Tensor, Target]:
    """``d score / d inputs`` for each row, by ``torch.autograd.grad`` on a detached copy of ``inputs``.

    The caller provides the context (:func:`netvis.hooks.eval_session` with ``grad=True``). The model
    gets a copy of ``inputs`` (it may modify it in place without touching the caller's tensor).
    ``forward_context`` (e.g. :func:`netvis.hooks.guided_relus`) wraps the forward pass only; the target
    is scored and differentiated outside it. ``target`` is a resolved :class:`Target` (then ``rows`` maps
    rows to its samples) or a raw target, resolved on these inputs' outputs with ``select``.
    ``precision="bf16"`` runs the forward pass under bfloat16 autocast (channels-last input on CUDA); the
    gradient keeps ``inputs``' dtype.

    Returns:
        The gradient ``(M, C, H, W)`` (detached) and the resolved target.
    """
    xi = inputs.detach().clone().requires_grad_(True)
    fast = precision != "fp32" and xi.device.type == "cuda"
    with precision_context(precision, xi.device), (forward_context() if forward_context else nullcontext()):
        copy = xi.clone(memory_format=torch.channels_last) if fast else xi.clone()
        outputs = model(copy)  # a non-leaf copy: a model may modify its input in place
    if not isinstance(target, Target):
        target = resolve_target(target, outputs, xi.shape[0], select)
    scores = target.scores(outputs, xi.shape[0], rows)
    if not scores.requires_grad:
        raise RuntimeError(
            "the target scores do not depend on the inputs through autograd (does the model detach its "
            "input or run under torch.no_grad?)"
        )
    (grad,) = torch.autograd.grad(scores.float().sum(), xi, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(xi)
    return grad.detach().contiguous(), target


def clean_target(
    model: nn.Module, x: torch.Tensor, target: TargetLike, batch_size: int, select: Select = None
) -> tuple[Target, torch.Tensor]:
    """Resolve ``target`` on the clean images (no gradient); return it with the clean scores ``(N,)``.

    The caller provides the context (:func:`netvis.hooks.eval_session`). At most ``batch_size`` images
    go through the model at once. ``select`` picks the scored part of the outputs (:func:`select_output`).
    """
    n = x.shape[0]
    with torch.no_grad():
        chunks = [model(x[i : i + batch_size].clone()) for i in range(0, n, batch_size)]
        if _is_callable_target(target):
            resolved = Target(fn=target, select=select)
            sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
            scores = torch.cat([resolved.scores(o, m) for o, m in zip(chunks, sizes, strict=True)])
            return resolved, scores
        chunks = [select_output(out, select, classes=True) for out in chunks]
        for out in chunks:
            _check_class_outputs(out)
        outputs = torch.cat(chunks)
        resolved = resolve_target(target, outputs, n)  # on the selected, concatenated outputs
        scores = resolved.scores(outputs, n)
        resolved.select = select  # later calls score the model's raw outputs
        return resolved, scores
