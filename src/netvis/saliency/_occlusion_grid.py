"""The occlusion grid, fills and the batched engine, shared by :mod:`netvis.saliency.occlusion` and
:mod:`netvis.saliency.incremental` (both import this module; it imports neither)."""

from __future__ import annotations

import math
import numbers
from contextlib import ExitStack
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from netvis._checks import check_pair, check_positive_int
from netvis.hooks import eval_session
from netvis.saliency._common import Select, TargetLike, check_precision, clean_target, precision_context

Fill = Literal["mean", "channel_mean"] | float | torch.Tensor


def occlusion_grid_size(
    image_size: tuple[int, int],
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
) -> tuple[int, int]:
    r"""The shape ``(H', W')`` of an occlusion map: :math:`H' = \lfloor (H - k_h) / s_h \rfloor + 1`.

    Args:
        image_size: ``(H, W)``.
        window: patch size ``k`` or ``(k_h, k_w)``.
        stride: step ``s`` or ``(s_h, s_w)``; ``None`` means ``max(k // 2, 1)`` per dimension.
    """
    (kh, kw), (sh, sw) = _window_and_stride(window, stride)
    h, w = image_size
    if kh > h or kw > w:
        raise ValueError(f"the occlusion window {kh}x{kw} is larger than the image {h}x{w}")
    return (h - kh) // sh + 1, (w - kw) // sw + 1


def _window_and_stride(
    window: int | tuple[int, int], stride: int | tuple[int, int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    kh, kw = check_pair(window, "window")
    if stride is None:
        return (kh, kw), (max(kh // 2, 1), max(kw // 2, 1))
    return (kh, kw), check_pair(stride, "stride")


def check_arguments(
    x: torch.Tensor,
    window: int | tuple[int, int],
    stride: int | tuple[int, int] | None,
    output: str,
    precision: str,
    batch_size: int,
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """The checks :func:`occlusion` and :func:`netvis.saliency.incremental.run_occlusion` share.

    Returns ``(kh, kw), (sh, sw), (H', W')``.
    """
    (kh, kw), (sh, sw) = _window_and_stride(window, stride)
    grid = occlusion_grid_size(tuple(x.shape[2:]), (kh, kw), (sh, sw))
    if output not in ("score", "drop"):
        raise ValueError(f"output must be 'score' or 'drop', got {output!r}")
    check_precision(precision)
    check_positive_int(batch_size, "batch_size")
    return (kh, kw), (sh, sw), grid


def fill_values(fill: Fill, x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The patch content per image, ``(N, C, 1, 1)`` when constant over the patch, else ``(N, C, kh, kw)``."""
    n, c = x.shape[:2]
    if isinstance(fill, str):
        if fill == "mean":
            return x.mean(dim=(1, 2, 3)).view(n, 1, 1, 1).expand(n, c, 1, 1)
        if fill == "channel_mean":
            return x.mean(dim=(2, 3)).view(n, c, 1, 1)
        raise ValueError(f"fill must be 'mean', 'channel_mean', a number or a tensor, got {fill!r}")
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        return x.new_full((1, 1, 1, 1), float(fill)).expand(n, c, 1, 1)
    if not isinstance(fill, torch.Tensor):
        raise TypeError(
            f"fill must be 'mean', 'channel_mean', a number or a tensor, got {type(fill).__name__}"
        )
    t = fill.detach().to(device=x.device, dtype=x.dtype)
    if t.dim() > 4:
        raise ValueError(f"a fill tensor has at most 4 dimensions (N, C, kh, kw), got shape {tuple(t.shape)}")
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    try:
        ok = torch.broadcast_shapes(t.shape, (n, c, kh, kw)) == (n, c, kh, kw)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"a fill tensor must broadcast to the patch (C, kh, kw) = {(c, kh, kw)} or to (N, C, kh, kw) = "
            f"{(n, c, kh, kw)}; got shape {tuple(fill.shape)}"
        )
    if t.shape[2] == 1 and t.shape[3] == 1:
        return t.expand(n, c, 1, 1)
    return t.expand(n, c, kh, kw)


def upsample_map(maps: torch.Tensor, size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]):
    """Average, for each pixel, the map values of the windows that cover it; NaN where none does."""
    n, hp, wp = maps.shape
    blocks = maps.reshape(n, 1, hp * wp).expand(n, window[0] * window[1], hp * wp)
    total = F.fold(blocks, output_size=size, kernel_size=window, stride=stride)
    count = F.fold(torch.ones_like(blocks[:1]), output_size=size, kernel_size=window, stride=stride)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))[:, 0]


def batched_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike,
    *,
    window: tuple[int, int],
    stride: tuple[int, int],
    grid: tuple[int, int],
    fill: Fill,
    output: str,
    upsample: bool,
    batch_size: int,
    progress: bool,
    precision: str,
    select: Select = None,
) -> torch.Tensor:
    """Batched re-inference: every occluded image through the whole model, ``batch_size`` per pass.

    The arguments are already checked (:func:`check_arguments`); ``grid`` is ``(H', W')``.
    """
    (kh, kw), (sh, sw), (hp, wp) = window, stride, grid
    n, _, h, w = x.shape
    x = x.detach()
    fills = fill_values(fill, x, kh, kw)
    channels_last = precision != "fp32" and x.device.type == "cuda"

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        # torch.where may return a strided view-like layout; models that call .view need contiguous inputs.
        return batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    positions = hp * wp
    total = n * positions
    dtype = torch.promote_types(x.dtype, torch.float32)
    scores = torch.empty(total, device=x.device, dtype=dtype)
    rows_y = torch.arange(h, device=x.device)
    cols_x = torch.arange(w, device=x.device)
    with ExitStack() as stack:
        stack.enter_context(eval_session(model, grad=False))
        stack.enter_context(precision_context(precision, x.device))
        resolved, clean = clean_target(model, prepare(x), target, batch_size, select)
        bar = None
        if progress:
            bar = stack.enter_context(tqdm(total=total, desc="occlusion", unit="img"))
        for f0 in range(0, total, batch_size):
            f = torch.arange(f0, min(f0 + batch_size, total), device=x.device)
            image, pos = f // positions, f % positions
            top, left = (pos // wp) * sh, (pos % wp) * sw
            in_rows = (rows_y >= top[:, None]) & (rows_y < top[:, None] + kh)  # (B, H)
            in_cols = (cols_x >= left[:, None]) & (cols_x < left[:, None] + kw)  # (B, W)
            patch = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
            if fills.shape[2] == 1:
                values = fills[image]  # (B, C, 1, 1)
            else:  # the patch content, placed at each window's position
                ry = (rows_y - top[:, None]).clamp(0, kh - 1)
                cx = (cols_x - left[:, None]).clamp(0, kw - 1)
                values = fills[image[:, None, None], :, ry[:, :, None], cx[:, None, :]].permute(0, 3, 1, 2)
            batch = torch.where(patch, values, x[image])
            out = model(prepare(batch))
            scores[f0 : f0 + len(f)] = resolved.scores(out, len(f), rows=image).to(dtype)
            if bar is not None:
                bar.update(len(f))
    maps = scores.view(n, hp, wp)
    if output == "drop":
        maps = clean.to(dtype).view(n, 1, 1) - maps
    if upsample:
        maps = upsample_map(maps, (h, w), (kh, kw), (sh, sw))
    return maps
