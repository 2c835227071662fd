"""Helpers shared by netvis's model families: input checks, norm-layer resolution and construction."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from netvis.models.batchnorm import BatchNorm2d

NormLayer = Callable[[int], nn.Module]


def check_input(x: torch.Tensor, in_channels: int, model_name: str) -> torch.Tensor:
    """Raise a clear error unless ``x`` is an ``(N, in_channels, H, W)`` tensor.

    Model files import this as ``_check_input`` and call ``torch.fx.wrap("_check_input")`` at module
    level, so that ``torch.fx.symbolic_trace`` records the check as one leaf call instead of failing on
    its data-dependent branch.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{model_name} expects a 4-D input shaped (N, C, H, W); got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{model_name} was built for {in_channels} input channel(s) but the input has {x.shape[1]} "
            f"(shape {tuple(x.shape)}); build it with in_channels={x.shape[1]} or convert the images"
        )
    return x


def resolve_norm_layer(norm_layer: str | NormLayer | None) -> NormLayer | None:
    """Turn the ``norm_layer`` option into a constructor ``num_features -> nn.Module`` (or ``None``).

    Accepts ``"torch"`` (``torch.nn.BatchNorm2d``, the default), ``"netvis"``
    (:class:`netvis.models.BatchNorm2d`), ``"none"``/``None`` (no normalization), or any callable
    taking the number of channels.
    """
    if norm_layer is None:
        return None
    if callable(norm_layer):
        return norm_layer
    if isinstance(norm_layer, str):
        key = norm_layer.lower()
        if key in ("torch", "batchnorm", "bn"):
            return nn.BatchNorm2d
        if key == "netvis":
            return BatchNorm2d
        if key == "none":
            return None
    raise ValueError(
        f"norm_layer must be 'torch', 'netvis', 'none', None or a callable; got {norm_layer!r}"
    )


def make_norm(norm: NormLayer | None, channels: int) -> nn.Module:
    """A normalization layer over ``channels`` channels, or ``nn.Identity`` when ``norm`` is ``None``."""
    return nn.Identity() if norm is None else norm(channels)
