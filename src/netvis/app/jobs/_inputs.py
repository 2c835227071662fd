"""The inputs of the jobs: an image named on the command line, as a model input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from netvis.data import load
from netvis.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image

__all__ = ["SAMPLE_DATA", "load_target"]

SAMPLE_DATA = "fashion-mnist-sample"
"""The data set ``sample:N`` images come from (its test split, as stored ``uint8`` pixels)."""


def load_target(spec: str, preprocess: Any) -> Tensor:
    """The image ``spec`` names, as a model input ``(1, C, H, W)``.

    Args:
        spec: A PNG/JPG file path, or ``sample:N`` for test image ``N`` of the Fashion-MNIST sample that
            ships with netvis (:data:`SAMPLE_DATA`).
        preprocess: The checkpoint's preprocess (``uint8`` images or a PIL image to model inputs).

    Raises:
        ValueError: a bad ``sample:`` index. FileNotFoundError: no such file.
        ImageReadError: the file is not a sound PNG or JPEG of at most :data:`netvis.io.DEFAULT_MAX_PIXELS`
            pixels (empty, another format, truncated, a decompression bomb); the message names the file.
    """
    if spec.startswith("sample:"):
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"expected sample:N with an integer N, got {spec!r}") from None
        data = load(SAMPLE_DATA, "test")
        if not 0 <= index < len(data.images):
            raise ValueError(f"{spec}: the {SAMPLE_DATA} test split has images 0..{len(data.images) - 1}")
        return preprocess(data.images[index : index + 1])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"no image file {spec!r} (give a PNG/JPG path or sample:N)")
    try:
        image = read_image(path, max_pixels=DEFAULT_MAX_PIXELS)
    except ImageReadError as exc:
        raise type(exc)(f"{spec}: {exc}") from None
    with image:
        return preprocess(image)
