r"""Filter visualization: which pixels of an image drive chosen units of an intermediate layer.

For units :math:`n_1, \dots, n_k` of a layer (whole channels, or single positions of a channel) the method
back-propagates

.. math:: \frac{\partial}{\partial x} \big( n_1(x) + \dots + n_k(x) \big)^2

to the image :math:`x`, either as the plain gradient or with guided backpropagation, which at every ReLU
passes on only positive gradients through positive inputs and gives much sharper pictures of the pattern
the units respond to (Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR
workshop 2015; Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, for the
idea of projecting one layer's units back to pixel space).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from netvis.features._common import LayerLike, StopForward, capture, resolve_layer
from netvis.hooks import eval_session, guided_relus

__all__ = ["FilterVisualization", "filter_visualization", "unit_mask", "nonzero_box"]

Unit = int | tuple[int, ...]
Units = Unit | Sequence[Unit] | Tensor


@dataclass
class FilterVisualization:
    """What :func:`filter_visualization` returns.

    Attributes:
        grad: ``(N, C, H, W)``: :math:`\\partial (n_1 + \\dots + n_k)^2 / \\partial x`, one image's units
            for each image (signed; take ``.abs()`` or normalise to display).
        crop_boxes: ``int64 (N, 4)``: per image, the bounding box ``(top, left, bottom, right)`` (bottom and
            right exclusive) of the pixels where ``grad`` is non-zero: the crop of the image the units see.
            ``(0, 0, 0, 0)`` where the gradient is zero everywhere.
        score: ``(N,)``: :math:`n_1 + \\dots + n_k` for each image.
    """

    grad: Tensor
    crop_boxes: Tensor
    score: Tensor

    def crops(self, images: Tensor) -> list[Tensor]:
        """``images[n, :, top:bottom, left:right]`` for every image ``n`` (e.g. ``x`` or ``grad``)."""
        return [img[:, t:b, l:r] for img, (t, l, b, r) in zip(images, self.crop_boxes.tolist(), strict=True)]


def _as_index(value: object, size: int, what: str) -> int:
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{what} {value} is out of range: the layer has {size}")
    return value


def unit_mask(units: Units, feature_shape: Sequence[int]) -> Tensor:
    """A boolean mask over a layer's output ``(C, *spatial)`` that selects ``units``.

    Args:
        units: A channel ``c`` (an int: all its positions; for a linear layer, unit ``c``); a position
            ``(c, row, col)`` given as a *tuple* with one entry per output dimension (``(c, l)`` for 1-D maps,
            ``(c,)`` for a linear layer); or a *list* (or 1-D tensor of channels) of such units, whose masks
            are joined.
        feature_shape: The layer's output shape without the batch dimension.

    Returns:
        ``bool`` tensor of shape ``feature_shape`` (a unit given twice counts once).

    Example:
        >>> unit_mask([0, (2, 1, 1)], (3, 2, 2)).sum(dim=(1, 2)).tolist()
        [4, 0, 1]
    """
    shape = tuple(int(s) for s in feature_shape)
    mask = torch.zeros(shape, dtype=torch.bool)
    if isinstance(units, Tensor):
        if units.dim() > 1 or units.is_floating_point():
            raise TypeError("a tensor of units must be a 1-D integer tensor of channels")
        units = units.tolist()
    items = list(units) if isinstance(units, list) else [units]
    if not items:
        raise ValueError("no units selected")
    dims = ("channel", "row", "column") if len(shape) == 3 else ("channel", "position")[: len(shape)]
    for unit in items:
        if isinstance(unit, tuple):
            if len(unit) != len(shape):
                raise ValueError(
                    f"a position must have {len(shape)} entries ({', '.join(dims)}) for a layer whose "
                    f"outputs are shaped {shape}; got {unit!r} (use a list for several channels)"
                )
            index = tuple(_as_index(v, s, d) for v, s, d in zip(unit, shape, dims, strict=True))
            mask[index] = True
        else:
            mask[_as_index(unit, shape[0], "channel")] = True
    return mask


def nonzero_box(maps: Tensor) -> Tensor:
    """Bounding box ``(top, left, bottom, right)`` (exclusive) of the non-zero pixels of ``(C, H, W)`` maps.

    Args:
        maps: ``(N, C, H, W)``.

    Returns:
        ``int64 (N, 4)``; ``(0, 0, 0, 0)`` for a map that is zero everywhere.
    """
    nonzero = maps.ne(0).any(dim=1)  # (N, H, W)
    rows, cols = nonzero.any(dim=2), nonzero.any(dim=1)

    def span(flags: Tensor) -> tuple[Tensor, Tensor]:
        size = flags.shape[1]
        at = torch.arange(size, device=flags.device)
        first = torch.where(flags, at, size).amin(dim=1)
        last = torch.where(flags, at, -1).amax(dim=1)
        return first, last + 1

    top, bottom = span(rows)
    left, right = span(cols)
    boxes = torch.stack([top, left, bottom, right], dim=1)
    return torch.where((bottom > 0)[:, None], boxes, 0).cpu()


def filter_visualization(
    model: nn.Module,
    x: Tensor,
    layer: LayerLike,
    units: Units,
    *,
    guided: bool = True,
) -> FilterVisualization:
    r"""Back-propagate :math:`(n_1 + \dots + n_k)^2` of chosen units of a layer to the image.

    For each image :math:`x` the selected units' activations are summed, :math:`S(x) = n_1(x) + \dots +
    n_k(x)`, and the method returns

    .. math:: \frac{\partial S(x)^2}{\partial x} = 2\, S(x)\, \frac{\partial S(x)}{\partial x}

    computed with ``torch.autograd.grad`` (images do not interact: the model runs in eval mode). With
    ``guided=True`` every ReLU of the forward pass uses the guided-backpropagation rule
    :math:`g \cdot [x > 0] \cdot [g > 0]` (Springenberg et al., "Striving for Simplicity: The All
    Convolutional Net", ICLR workshop 2015) through :func:`netvis.hooks.guided_relus`, which routes module,
    reused, in-place and functional ReLUs alike and raises :class:`netvis.hooks.GuidedReLUError` rather than
    return a plain gradient for activations it cannot route.

    The forward pass stops after ``layer``. The model's modes, ``requires_grad`` flags, ``.grad`` tensors,
    buffers and hooks are as before after the call, also when it raises.

    Args:
        model: Any ``nn.Module`` taking images ``(N, C, H, W)``.
        x: Images ``(N, C, H, W)``, already preprocessed for the model.
        layer: A module of ``model`` or its dotted name.
        units: Which units: a channel (int), a position ``(channel, row, col)`` (a tuple), or a list of
            either; see :func:`unit_mask`.
        guided: Guided backpropagation (``True``) or the plain gradient.

    Returns:
        A :class:`FilterVisualization` with ``grad`` (shaped like ``x``), ``crop_boxes`` (``(N, 4)``, the
        region where the gradient is non-zero) and ``score`` (:math:`S(x)`, ``(N,)``).

    Raises:
        ValueError: an unknown layer, units out of range, or images not shaped ``(N, C, H, W)``.
        netvis.hooks.GuidedReLUError: ``guided=True`` and the model has rectifiers without a guided rule.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        >>> vis = filter_visualization(net, x, "2", (1, 4, 4))  # channel 1 at row 4, column 4
        >>> vis.grad.shape
        torch.Size([2, 1, 12, 12])
        >>> bool((vis.crop_boxes[:, 2:] - vis.crop_boxes[:, :2] <= 5).all())  # within its 5 x 5 field
        True
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be floating-point images shaped (N, C, H, W), got {got}")
    name, module = resolve_layer(model, layer)
    xi = x.detach().clone().requires_grad_(True)
    store: dict[str, Tensor] = {}
    with eval_session(model, grad=True):
        with capture({name: module}, store, stop_early=True):
            context = guided_relus(model, "guided") if guided else torch.enable_grad()
            with context:
                try:
                    model(xi.clone())  # a copy: the model may modify its input in place
                except StopForward:
                    pass
        if name not in store:
            raise RuntimeError(f"layer {name!r} did not run in {type(model).__name__}'s forward pass")
        acts = store.pop(name)
        if acts.dim() < 2:
            raise ValueError(f"layer {name!r} gives outputs shaped {tuple(acts.shape)}; expected (N, C, ...)")
        mask = unit_mask(units, acts.shape[1:]).to(acts.device)
        score = (acts * mask).flatten(1).sum(dim=1)
        if not score.requires_grad:
            raise RuntimeError(f"the output of layer {name!r} does not depend on the images through autograd")
        (grad,) = torch.autograd.grad(score.pow(2).sum(), xi, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(xi)
    grad = grad.detach()
    return FilterVisualization(grad=grad, crop_boxes=nonzero_box(grad), score=score.detach())
