"""Pictures of feature visualizations: dataset-example grids and their HTML index.

:func:`examples_grid` draws one channel's top-k images side by side, each with the region the channel's
maximum sees outlined; :func:`write_examples` writes one such PNG per channel of every layer, the results
themselves (``examples.pt``, see :class:`netvis.features.DatasetExamples`) and an ``index.html`` listing
the channels with their grids.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

__all__ = ["display_images", "examples_grid", "write_examples"]

_OUTLINE = (255, 64, 32)
_BACKGROUND = (250, 250, 250)
_TEXT = (40, 40, 40)


def display_images(data: Any, indices: Sequence[int] | Tensor) -> Tensor:
    """The images at ``indices`` of a data set as ``uint8 (n, C, H, W)`` for display.

    netvis's in-memory data sets give their stored ``uint8`` pixels; a tensor of images is taken as is
    (``uint8``) or min-max scaled per image (floats); other data sets' items (``(image, label)`` or images)
    are min-max scaled per image.
    """
    idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1).cpu()
    stored = getattr(data, "images", None)
    if isinstance(stored, Tensor) and stored.dtype == torch.uint8 and stored.dim() == 4:
        return stored[idx.to(stored.device)].cpu()
    if isinstance(data, Tensor):
        images = data[idx.to(data.device)].cpu()
    else:
        items = [data[int(i)] for i in idx]
        images = torch.stack([item[0] if isinstance(item, (tuple, list)) else item for item in items]).cpu()
    if images.dtype == torch.uint8:
        return images
    images = images.float()
    low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = images.flatten(1).amax(1).view(-1, 1, 1, 1)
    return ((images - low) / (high - low).clamp_min(1e-12) * 255).round().to(torch.uint8)


def _tile(image: Tensor, scale: int):
    array = image.numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    picture = Image.fromarray(np.ascontiguousarray(array[:3].transpose(1, 2, 0)), mode="RGB")
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def examples_grid(
    images: Tensor,
    boxes: Tensor | None = None,
    captions: Sequence[str] | None = None,
    *,
    columns: int = 10,
    scale: int | None = None,
    title: str | None = None,
):
    """One channel's examples in a grid, each with an outlined region.

    Args:
        images: ``uint8 (k, C, H, W)`` (1 or 3 channels), best first (see :func:`display_images`).
        boxes: ``(k, 4)`` ``(top, left, bottom, right)`` in these images' pixels (bottom/right exclusive),
            e.g. :meth:`netvis.features.DatasetExamples.regions`; ``None`` draws no outline.
        captions: One short text per image (e.g. the score and the class).
        columns: Images per row.
        scale: Pixel size of one image pixel (default: at least 100 pixels per image).
        title: Text above the grid.

    Returns:
        A ``PIL.Image.Image`` (RGB).
    """
    if images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (k, C, H, W), got {images.dtype} {tuple(images.shape)}")
    k, _, h, w = images.shape
    scale = scale or max(1, math.ceil(100 / max(h, w)))
    columns = max(1, min(columns, k))
    rows = -(-k // columns)
    font = ImageFont.load_default()
    caption_h = 14 if captions else 0
    title_h = 18 if title else 0
    pad = 4
    cell_w, cell_h = w * scale + pad, h * scale + caption_h + pad
    grid = Image.new("RGB", (columns * cell_w + pad, title_h + rows * cell_h + pad), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 3), title, fill=_TEXT, font=font)
    for n in range(k):
        x0 = pad + (n % columns) * cell_w
        y0 = title_h + pad + (n // columns) * cell_h
        grid.paste(_tile(images[n], scale), (x0, y0))
        if boxes is not None:
            top, left, bottom, right = (int(v) for v in boxes[n])
            if bottom > top and right > left:
                draw.rectangle(
                    [x0 + left * scale, y0 + top * scale, x0 + right * scale - 1, y0 + bottom * scale - 1],
                    outline=_OUTLINE,
                    width=max(1, scale // 2),
                )
        if captions:
            text = str(captions[n])[: max(4, w * scale // 6)]
            draw.text((x0, y0 + h * scale + 1), text, fill=_TEXT, font=font)
    return grid


def _folder_name(layer: str) -> str:
    name = layer or "model"
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


def write_examples(
    out_dir: str | os.PathLike,
    results: Mapping[str, Any],
    data: Any,
    *,
    boxes: Mapping[str, Tensor] | None = None,
    input_size: Sequence[int] | None = None,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    title: str = "Dataset examples",
) -> Path:
    """Write every layer's results, one grid PNG per channel, and an ``index.html`` listing them.

    Layout: ``out_dir/index.html``; per layer ``out_dir/<layer>/examples.pt`` (the
    :class:`~netvis.features.DatasetExamples`, for the report and the viewer) and
    ``out_dir/<layer>/channel_<c>.png``.

    Args:
        out_dir: Output folder (created).
        results: ``{layer name: DatasetExamples}``.
        data: The data set the results index (for the pictures; see :func:`display_images`).
        boxes: ``{layer name: (C, H', W', 4)}`` receptive fields from :func:`netvis.features.receptive_field`
            in model-input pixels; a layer without boxes gets no outlines.
        input_size: ``(H, W)`` of the model's inputs, when the displayed images have another size (the boxes
            are rescaled).
        labels: ``int64 (N,)`` labels of the data set, for the captions.
        class_names: Names for the labels.
        title: Heading of the page.

    Returns:
        The path of ``index.html``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for layer, result in results.items():
        name = _folder_name(layer)
        folder_id = html.escape(name)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        result.save(folder / "examples.pt")
        regions = None
        if boxes is not None and layer in boxes:
            regions = result.regions(boxes[layer]).float()
        figures = []
        for c in range(result.channels):
            images = display_images(data, result.indices[c])
            channel_boxes = None
            if regions is not None:
                channel_boxes = regions[c].clone()
                if input_size is not None:
                    sy, sx = images.shape[2] / input_size[0], images.shape[3] / input_size[1]
                    channel_boxes *= torch.tensor([sy, sx, sy, sx])
                channel_boxes = channel_boxes.round().long()
            captions = []
            for index, value in zip(result.indices[c].tolist(), result.values[c].tolist(), strict=True):
                text = f"{value:.3g}"
                if labels is not None:
                    label = int(labels[index])
                    text += f" {class_names[label] if class_names is not None else label}"
                captions.append(text)
            grid = examples_grid(images, channel_boxes, captions, title=f"{layer} channel {c}")
            png = folder / f"channel_{c:04d}.png"
            grid.save(png)
            src = html.escape(png.relative_to(out).as_posix())
            figures.append(
                f'<figure id="{folder_id}-{c}"><img loading="lazy" src="{src}" alt="channel {c}">'
                f"<figcaption>channel {c} &middot; top score {result.values[c, 0].item():.4g}</figcaption>"
                "</figure>"
            )
        info = (f"{result.channels} channels, top {result.k} of {result.num_images} images by the "
                f"{html.escape(result.reduce)} activation; output {tuple(result.feature_shape)}")
        links = " ".join(f'<a href="#{folder_id}-{c}">{c}</a>' for c in range(result.channels))
        sections.append(
            f'<section id="{folder_id}"><h2>{html.escape(layer)}</h2><p>{info}</p>'
            f'<p class="links">channels: {links}</p>{"".join(figures)}</section>'
        )
    nav = " ".join(
        f'<a href="#{html.escape(_folder_name(layer))}">{html.escape(layer)}</a>' for layer in results
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 2em 2em; color: #1d232a; background: #fafafa; }}
h1 {{ color: #18324a; }} h2 {{ color: #18324a; margin-top: 1.5em; }}
figure {{ margin: .8em 0; }} figure img {{ border: 1px solid #dde3e8; max-width: 100%; }}
figcaption {{ font-size: .9em; color: #555; }} .links a {{ margin-right: .4em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>For every channel, the images of the data set that activate it most, best first; the outline is the
region of the image that the channel's strongest unit sees (its receptive field). Layers: {nav}</p>
{"".join(sections)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
