r"""Receptive fields: the input pixels each unit of a layer depends on.

The receptive field of a unit :math:`A_{c,i,j}` is the set of input pixels :math:`(r, s)` on which it
depends at all. netvis measures it instead of deriving it from kernel sizes and strides, so that it holds for
any architecture (residual and dense connections, pooling, padding clipped at the image border): a NaN put in
one input row propagates, through every convolution, pooling, normalisation and non-linearity, exactly to the
units that depend on some pixel of that row (:math:`0 \cdot \text{NaN} = \text{NaN}`, so a zero weight or a
ReLU that happens to be off does not hide a dependency, unlike a gradient). One forward pass per input row
and per input column (``H + W`` images, batched) gives, for every unit, the first and last row and column it
depends on: the bounding box of its receptive field, which is what the unit "sees" (Zeiler & Fergus,
"Visualizing and Understanding Convolutional Networks", ECCV 2014, crop their examples to it).

A layer that removes NaNs (``torch.nan_to_num``, or ``torch.where`` on a comparison) would make boxes too
small; netvis's models and torchvision's CNNs have none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from netvis.devices import device_for
from netvis.features._common import LayerLike, StopForward, capture, resolve_layer
from netvis.hooks import eval_session

__all__ = ["receptive_field"]


def _first_float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def receptive_field(
    model: nn.Module,
    layer: LayerLike,
    input_shape: Sequence[int],
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Tensor:
    """Bounding box of the receptive field of every unit of a layer, in input pixels.

    Args:
        model: Any ``nn.Module`` taking images ``(N, C, H, W)``; run in eval mode without gradients, its
            flags restored afterwards.
        layer: A module of ``model`` or its dotted name; its output is ``(N, C, H', W')``, ``(N, C, L)`` or
            ``(N, C)``.
        input_shape: ``(C, H, W)`` or ``(1, C, H, W)``: the model's input size.
        batch_size: Images per forward pass (``H + W`` images in all).
        device: Default: the model's device.

    Returns:
        ``int64`` tensor ``(C_out, H', W', 4)`` of boxes ``(top, left, bottom, right)`` with bottom and
        right exclusive (crop ``image[..., top:bottom, left:right]``), clipped to the image. A 1-D map gives
        ``(C_out, 1, L, 4)``, a linear layer ``(C_out, 1, 1, 4)``. A unit that depends on no pixel gets
        ``(0, 0, 0, 0)``.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2))
        >>> receptive_field(net, "2", (1, 9, 9))[0, 1, 1].tolist()  # a 5 x 5 field at stride 2
        [1, 1, 6, 6]
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (1, C, H, W), got {tuple(input_shape)}")
    channels, height, width = shape
    name, module = resolve_layer(model, layer)
    device = device_for(model, device)
    dtype = _first_float_dtype(model)

    # Image n < H has a NaN row n; image H + m has a NaN column m.
    lines = [("row", r) for r in range(height)] + [("col", c) for c in range(width)]
    first = {"row": None, "col": None}
    last = {"row": None, "col": None}
    store: dict[str, Tensor] = {}
    with eval_session(model, grad=False), capture({name: module}, store, stop_early=True):
        for start in range(0, len(lines), batch_size):
            chunk = lines[start : start + batch_size]
            x = torch.zeros(len(chunk), channels, height, width, dtype=dtype, device=device)
            for n, (kind, at) in enumerate(chunk):
                if kind == "row":
                    x[n, :, at, :] = float("nan")
                else:
                    x[n, :, :, at] = float("nan")
            store.clear()
            try:
                model(x)
            except StopForward:
                pass
            if name not in store:
                raise RuntimeError(f"layer {name!r} did not run in {type(model).__name__}'s forward pass")
            out = store.pop(name)
            if not 2 <= out.dim() <= 4:
                raise ValueError(f"layer {name!r} gives outputs shaped {tuple(out.shape)}; expected (N, C), "
                                 "(N, C, L) or (N, C, H, W)")
            mask = torch.isnan(out)
            mask = mask.reshape(*mask.shape[:2], *([1] * (4 - mask.dim())), *mask.shape[2:])  # (n, C, H', W')
            for kind in ("row", "col"):
                pick = [n for n, (kd, _) in enumerate(chunk) if kd == kind]
                if not pick:
                    continue
                at = torch.tensor([chunk[n][1] for n in pick], device=device).view(-1, 1, 1, 1)
                m = mask[pick]
                lo = torch.where(m, at, torch.iinfo(torch.int64).max).amin(0)
                hi = torch.where(m, at, -1).amax(0)
                first[kind] = lo if first[kind] is None else torch.minimum(first[kind], lo)
                last[kind] = hi if last[kind] is None else torch.maximum(last[kind], hi)
    top, left = first["row"], first["col"]
    bottom, right = last["row"] + 1, last["col"] + 1
    boxes = torch.stack([top, left, bottom, right], dim=-1)
    empty = (bottom == 0) | (right == 0)
    return torch.where(empty[..., None], 0, boxes).cpu()
