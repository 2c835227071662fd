"""Preprocessing (stored ``uint8`` pixels to the float tensor a model expects) and batch augmentations.

:class:`Preprocess` is the one object that turns raw images into model inputs. netvis datasets apply
it in ``__getitem__``; a checkpoint keeps it (``Preprocess.to_dict()``) so that the same mapping is
applied to a user's own images at inspection time.

The augmentations work on whole batches on any device and draw their randomness from an explicit
``torch.Generator`` (a CPU generator; the draws are moved to the batch's device), never from the
global random state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["Preprocess", "to_uint8_batch", "random_hflip", "random_crop", "LUMA_WEIGHTS"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R 601-2 luma weights, the ones Pillow's ``convert("L")`` uses, for RGB to grayscale."""


def _pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        pair: tuple[int, ...] = (size, size)
    else:
        pair = tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or a (height, width) pair, got {size!r}")
    return pair  # type: ignore[return-value]


def to_uint8_batch(images: Any) -> torch.Tensor:
    """Bring images into a 4-D ``(N, C, H, W)`` tensor without changing dtype or values.

    Args:
        images: A ``torch.Tensor`` or numpy array shaped ``(N, C, H, W)``, ``(N, H, W)`` (a batch of
            grayscale images) or ``(H, W)`` (one grayscale image); or a ``PIL.Image.Image`` (one image,
            grayscale kept as one channel, RGBA and palette images as RGB).

    Returns:
        A 4-D tensor (a view where possible).
    """
    if isinstance(images, Image.Image):
        if images.mode not in ("L", "RGB"):
            images = images.convert(
                "L" if images.mode in ("1", "I;16", "I;16B", "I;16L", "I", "F") else "RGB"
            )
        array = np.asarray(images)
        tensor = torch.from_numpy(array.copy())
        return tensor[None, None] if tensor.dim() == 2 else tensor.permute(2, 0, 1)[None].contiguous()
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a tensor, numpy array or PIL image, got {type(images).__name__}")
    if images.dim() == 2:
        return images[None, None]
    if images.dim() == 3:
        return images[:, None]
    if images.dim() == 4:
        return images
    raise ValueError(f"expected images shaped (N, C, H, W), (N, H, W) or (H, W); got {tuple(images.shape)}")


@dataclass(frozen=True)
class Preprocess:
    r"""Map stored images to the normalized float tensor a model expects.

    Steps, in order: to ``float32`` in ``[0, 1]`` (``uint8`` is divided by 255, float input is taken
    as already in ``[0, 1]``); channel conversion (drop an alpha channel; 1 to 3 channels by repeating,
    3 to 1 by ITU-R 601-2 luma); bilinear, antialiased resize to ``size``; then per channel

    .. math:: y_c = (x_c - \mu_c) / \sigma_c

    It is a frozen dataclass of plain numbers, so it pickles, and :meth:`to_dict` /
    :meth:`from_dict` carry it through JSON (a checkpoint stores it this way).

    Args:
        mean: Per-channel mean ``mu`` in ``[0, 1]`` units (one value is broadcast to every channel).
        std: Per-channel standard deviation ``sigma`` (positive).
        size: Output ``(height, width)`` (an int means square); ``None`` keeps the input's size.
        channels: Output channels (1 or 3); ``None`` keeps the input's channels.

    Example:
        >>> import torch
        >>> p = Preprocess(mean=(0.5,), std=(0.25,), size=4, channels=3)
        >>> x = p(torch.full((2, 8, 8), 255, dtype=torch.uint8))
        >>> x.shape, x.max().item()
        (torch.Size([2, 3, 4, 4]), 2.0)
        >>> Preprocess.from_dict(p.to_dict()) == p
        True
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    size: tuple[int, int] | None = None
    channels: int | None = None

    def __post_init__(self) -> None:
        mean = tuple(float(m) for m in np.atleast_1d(np.asarray(self.mean, dtype=np.float64)))
        std = tuple(float(s) for s in np.atleast_1d(np.asarray(self.std, dtype=np.float64)))
        if not mean or not std:
            raise ValueError("mean and std need at least one value")
        if min(std) <= 0 or not all(np.isfinite(std)) or not all(np.isfinite(mean)):
            raise ValueError(f"std must be positive and finite and mean finite, got mean={mean} std={std}")
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {self.channels!r}")
        for name, values in (("mean", mean), ("std", std)):
            if len(values) != 1 and self.channels is not None and len(values) != self.channels:
                raise ValueError(f"{name} has {len(values)} values but channels={self.channels}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "size", _pair(self.size))
        if self.channels is not None:
            object.__setattr__(self, "channels", int(self.channels))

    def to_float(self, images: Any) -> torch.Tensor:
        """Apply every step but the normalization: float ``(N, C, H, W)`` in ``[0, 1]``.

        Args:
            images: See :func:`to_uint8_batch` for the accepted shapes and types.

        Returns:
            Float tensor on the input's device.
        """
        x = to_uint8_batch(images)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32) / 255.0
        elif x.dtype == torch.bool:
            x = x.to(torch.float32)
        elif not x.is_floating_point():
            raise TypeError(
                f"images must be uint8 (0..255) or floating point (0..1), got {x.dtype}; convert them first"
            )
        c = x.shape[1]
        if c == 4 or (c == 2 and self.channels in (1, 3)):  # drop alpha (RGBA, LA)
            x = x[:, : c - 1]
            c -= 1
        target = self.channels if self.channels is not None else c
        if c != target:
            if c == 1 and target == 3:
                x = x.expand(-1, 3, -1, -1)
            elif c == 3 and target == 1:
                weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
                x = (x * weights).sum(dim=1, keepdim=True)
            else:
                raise ValueError(f"cannot convert {c}-channel images to {target} channels")
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, c):
                raise ValueError(f"{name} has {len(values)} values but the images have {c} channels")
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def __call__(self, images: Any) -> torch.Tensor:
        """Preprocess a batch.

        Args:
            images: ``uint8`` or ``[0, 1]`` float images shaped ``(N, C, H, W)``, ``(N, H, W)`` or
                ``(H, W)``, as a tensor (any device) or numpy array, or one ``PIL.Image.Image``.

        Returns:
            ``float32`` (or the input's float dtype) tensor ``(N, channels, *size)`` on the input's device.
        """
        x = self.to_float(images)
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the normalization: model inputs ``(N, C, H, W)`` back to ``[0, 1]`` units (not clamped).

        Args:
            x: Normalized float tensor shaped ``(N, C, H, W)`` or ``(C, H, W)``.

        Returns:
            ``x * std + mean``, same shape.
        """
        batch = x if x.dim() == 4 else x[None]
        mean, std = self._stats(batch)
        out = batch * std + mean
        return out if x.dim() == 4 else out[0]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description: ``{"mean", "std", "size", "channels"}``."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "size": list(self.size) if self.size is not None else None,
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        """Rebuild from :meth:`to_dict`'s output.

        Args:
            data: Mapping with ``mean`` and ``std`` and optionally ``size`` and ``channels``.

        Returns:
            The equal :class:`Preprocess`.
        """
        unknown = set(data) - {"mean", "std", "size", "channels"}
        if unknown:
            raise ValueError(f"unknown Preprocess fields: {sorted(unknown)}")
        return cls(mean=data["mean"], std=data["std"], size=data.get("size"), channels=data.get("channels"))


def random_hflip(images: torch.Tensor, *, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image of a batch left-right with probability ``p``.

    Args:
        images: ``(N, C, H, W)`` tensor on any device.
        generator: CPU generator the coin flips come from (the global random state is not used).
        p: Flip probability.

    Returns:
        New tensor, same shape, dtype and device.
    """
    flip = torch.rand(images.shape[0], generator=generator) < p
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(-1), images)


def random_crop(
    images: torch.Tensor, *, padding: int, generator: torch.Generator, fill: float = 0.0
) -> torch.Tensor:
    """Pad each image by ``padding`` pixels and crop it back to its size at a random offset.

    The standard CIFAR-10 augmentation of "Deep Residual Learning for Image Recognition" (He et al.
    2016): pad 4, random 32x32 crop.

    Args:
        images: ``(N, C, H, W)`` tensor on any device.
        padding: Pixels added on every side.
        generator: CPU generator the offsets come from.
        fill: Value of the padded pixels (in the images' units).

    Returns:
        New tensor, same shape, dtype and device.
    """
    if padding <= 0:
        return images.clone()
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding), value=fill)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(images.device)
    rows = offsets[0].view(n, 1, 1) + torch.arange(h, device=images.device).view(1, h, 1)
    cols = offsets[1].view(n, 1, 1) + torch.arange(w, device=images.device).view(1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1)
    # Advanced indexing with a slice in the middle puts the indexed dims first: (N, H, W, C).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
