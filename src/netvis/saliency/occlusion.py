"""Occlusion sensitivity (Zeiler & Fergus 2014): the class score as a grey patch slides over the image."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from netvis.saliency._common import Select, TargetLike, check_images, check_model
from netvis.saliency._occlusion_grid import (
    Fill,
    batched_occlusion,
    check_arguments,
    occlusion_grid_size,
    upsample_map,
)
from netvis.saliency.incremental import run_occlusion

__all__ = ["Fill", "occlusion", "occlusion_grid_size", "upsample_map"]


def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    fill: Fill = "mean",
    output: Literal["score", "drop"] = "score",
    upsample: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    precision: Literal["fp32", "bf16"] = "fp32",
    engine: Literal["auto", "batched", "incremental"] = "auto",
    select: Select = None,
) -> torch.Tensor:
    r"""Occlusion sensitivity map: the class score while a patch of the image is hidden.

    For each grid position :math:`(i, j)` a copy of image :math:`x` has the :math:`k_h \times k_w` patch
    whose top-left corner is :math:`(i s_h, j s_w)` replaced by the fill value :math:`v`, and the map holds
    the target's score for that copy:

    .. math::
        M_{ij} = f_c\big(x \odot (1 - P_{ij}) + v \, P_{ij}\big), \qquad
        i < H' = \lfloor (H - k_h) / s_h \rfloor + 1,\; j < W' = \lfloor (W - k_w) / s_w \rfloor + 1,

    where :math:`P_{ij}` is 1 on the patch (all channels) and 0 elsewhere. Low values mark the regions
    the class depends on. With ``output="drop"`` the map holds :math:`f_c(x) - M_{ij}` instead (high =
    important). Positions whose window would cross the right or bottom border are not evaluated.

    From Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.

    The fill value is, by default, the mean of the image over all its pixels and channels (one number per
    image), as in the lecture's pseudo-code; ``fill="channel_mean"`` uses one mean per channel, and a
    number or a tensor broadcastable to the patch ``(C, kh, kw)`` (or ``(N, C, kh, kw)``) is used as is
    (e.g. ``0.0`` for a black patch on unnormalised images).

    The target is resolved once on the clean images (``None``: each image's predicted class). All
    positions run under ``torch.no_grad`` with the model in eval mode, in forward passes of at most
    ``batch_size`` occluded images (positions of several images may share a pass); the result does not
    depend on ``batch_size`` beyond floating-point rounding. A callable target is called on the outputs
    of each pass and must score each row independently.

    Args:
        model: a classifier mapping ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        x: images ``(N, C, H, W)``.
        target: ``None``, an int, ``N`` ints or a callable ``outputs -> (M,) scores``.
        window: patch size ``k`` or ``(k_h, k_w)``.
        stride: step ``s`` or ``(s_h, s_w)``; ``None`` means ``max(k // 2, 1)`` per dimension.
        fill: ``"mean"``, ``"channel_mean"``, a number or a tensor, as above.
        output: ``"score"`` (the occluded score) or ``"drop"`` (clean score minus occluded score).
        upsample: return an ``(N, H, W)`` map in which each pixel holds the average of the values of all
            windows that cover it. Pixels covered by no window (a strip at the right/bottom border when
            ``(H - k_h)`` is not a multiple of ``s_h``, or gaps when the stride exceeds the window) are NaN:
            there is no evidence about them. ``torch.nan_to_num`` replaces them; netvis's renderers show
            them transparent.
        batch_size: the most images per forward pass.
        progress: show a progress bar over the forward passes.
        precision: ``"fp32"`` or ``"bf16"`` (autocast to bfloat16, plus channels-last inputs on CUDA);
            the map's dtype does not change.
        engine: ``"batched"`` re-runs the model on every occluded image; ``"incremental"`` runs the clean
            image once and recomputes in each layer only the region the window can reach (same map up to
            rounding, see :func:`netvis.saliency.incremental.incremental_occlusion`; it falls back to
            ``"batched"`` with a warning for models it cannot trace); ``"auto"`` picks ``"incremental"``
            where it saves work (fp32, the model traces, the window is small relative to the image and
            the job is large), else ``"batched"``.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, H', W')``, or ``(N, H, W)`` with ``upsample=True``, on ``x``'s device (float32, or float64
        for float64 inputs).

    Raises:
        ValueError: window larger than the image, window or stride below 1, bad target, wrong input rank.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 10))
        >>> occlusion(model, torch.rand(2, 3, 32, 32), window=8, stride=4).shape
        torch.Size([2, 7, 7])
    """
    check_model(model)
    check_images(x)
    (kh, kw), (sh, sw), grid = check_arguments(x, window, stride, output, precision, batch_size)
    if engine not in ("auto", "batched", "incremental"):
        raise ValueError(f"engine must be 'auto', 'batched' or 'incremental', got {engine!r}")
    if engine != "batched":
        return run_occlusion(model, x, target, window=(kh, kw), stride=(sh, sw), fill=fill, output=output,
                             upsample=upsample, batch_size=batch_size, progress=progress, precision=precision,
                             engine=engine, select=select)
    return batched_occlusion(model, x, target, window=(kh, kw), stride=(sh, sw), grid=grid, fill=fill, output=output,
                             upsample=upsample, batch_size=batch_size, progress=progress, precision=precision,
                             select=select)
