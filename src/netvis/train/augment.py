"""Batched training augmentation: random crop with padding and horizontal flip, on the device.

The standard augmentation of "Deep Residual Learning for Image Recognition" (He et al. 2016) for
CIFAR-10: pad every side by 4 pixels (with zeros: black) and take a random crop of the original size,
then flip left-right with probability 1/2. netvis applies it to whole ``uint8`` batches on the
training device, before normalisation, with the randomness drawn from an explicit CPU
``torch.Generator`` -- so a seed gives the same augmented batches on the CPU and on a GPU, and the
global random state is never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from netvis.data.transforms import random_crop, random_hflip

__all__ = ["CropFlip"]


@dataclass
class CropFlip:
    """Random crop with zero padding, then random horizontal flip, of a batch ``(N, C, H, W)``.

    Args:
        generator: CPU generator all random draws come from.
        padding: pixels of zero padding on every side before cropping (0: no crop).
        flip: flip each image left-right with probability 1/2.

    Example:
        >>> import torch
        >>> aug = CropFlip(torch.Generator().manual_seed(0), padding=2)
        >>> aug(torch.ones(5, 1, 8, 8, dtype=torch.uint8)).shape
        torch.Size([5, 1, 8, 8])
    """

    generator: torch.Generator
    padding: int = 4
    flip: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be a non-negative int, got {self.padding!r}")
        if self.generator.device.type != "cpu":
            raise ValueError("the augmentation generator must be a CPU torch.Generator")

    def __call__(self, images: Tensor) -> Tensor:
        """Augment a batch; returns a new tensor of the same shape, dtype and device."""
        if images.dim() != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
        if self.padding > 0:
            images = random_crop(images, padding=self.padding, generator=self.generator, fill=0)
        if self.flip:
            images = random_hflip(images, generator=self.generator)
        return images
