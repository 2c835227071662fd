"""Figures for saliency maps: heatmap overlays and method-by-method grids, as matplotlib ``Figure`` objects.

Everything here uses matplotlib's object API (``matplotlib.figure.Figure``), never pyplot's global state:
figures work headless (saved with :func:`save_figure`) and display in notebooks when returned from a cell.

Images are ``(C, H, W)`` tensors or arrays with 1 or 3 channels (``(1, C, H, W)`` and ``(H, W)`` are
accepted too); maps are ``(H, W)``, ``(1, H, W)`` or ``(C, H, W)`` (channels reduced by the maximum
absolute value, as Simonyan et al. do for gradients) and may be smaller than the image (they are resized
bilinearly) or hold NaN (drawn transparent, e.g. the uncovered border of an upsampled occlusion map).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from netvis.io import atomic_write

__all__ = [
    "image_to_array",
    "localization_grid",
    "map_to_array",
    "method_grid",
    "overlay",
    "overlay_array",
    "save_figure",
]

ArrayLike = torch.Tensor | np.ndarray


def _to_tensor(value: ArrayLike, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor or a numpy array, got {type(value).__name__}")
    return value.detach().to("cpu", torch.float64)


def image_to_array(
    image: ArrayLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """An image as an ``(H, W, 3)`` float array in ``[0, 1]``, ready for ``imshow``.

    Args:
        image: ``(C, H, W)`` with ``C`` 1 or 3, ``(1, C, H, W)`` or ``(H, W)``.
        mean, std: per-channel values of the normalisation the image went through
            (:math:`x = (u - \\text{mean}) / \\text{std}`); undone first when given.
        normalize: if the (un-normalised) values leave ``[0, 1]``, rescale them to it with the image's
            minimum and maximum; values already in ``[0, 1]`` are kept as they are.

    Returns:
        ``(H, W, 3)`` float64; a one-channel image is repeated into grey RGB.
    """
    t = _to_tensor(image, "image")
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(
            f"image must be (C, H, W) with 1 or 3 channels, or (H, W); got shape {tuple(t.shape)}"
        )
    c = t.shape[0]
    if std is not None:
        t = t * torch.as_tensor(std, dtype=t.dtype).reshape(-1, 1, 1).expand(c, 1, 1)
    if mean is not None:
        t = t + torch.as_tensor(mean, dtype=t.dtype).reshape(-1, 1, 1).expand(c, 1, 1)
    if normalize:
        lo, hi = float(t.min()), float(t.max())
        if lo < 0 or hi > 1:
            t = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
    t = t.clamp(0, 1)
    if c == 1:
        t = t.expand(3, -1, -1)
    return t.permute(1, 2, 0).numpy().copy()


def map_to_array(
    saliency_map: ArrayLike, *, size: tuple[int, int] | None = None, signed: bool = False
) -> np.ndarray:
    """A saliency map as an ``(H, W)`` float array in ``[0, 1]`` (NaN where the map is NaN).

    Args:
        saliency_map: ``(H, W)``, ``(1, H, W)``, ``(C, H, W)`` or ``(1, C, H, W)``; several channels are
            reduced to their maximum absolute value (or, with ``signed``, to the value of largest magnitude).
        size: resize to ``(H, W)`` (bilinear) when given and different.
        signed: map ``0`` to ``0.5`` and ``±max|m|`` to ``1``/``0`` (for diverging colormaps);
            otherwise rescale the finite minimum to 0 and maximum to 1. A constant map becomes 0
            (0.5 with ``signed``).

    Returns:
        ``(H, W)`` float64.
    """
    m = _to_tensor(saliency_map, "saliency map")
    if m.dim() == 4 and m.shape[0] == 1:
        m = m[0]
    if m.dim() == 3:
        if m.shape[0] == 1:
            m = m[0]
        elif signed:
            idx = m.abs().nan_to_num(-1.0).argmax(dim=0, keepdim=True)
            m = m.gather(0, idx)[0]
        else:
            m = m.abs().amax(dim=0)
    if m.dim() != 2:
        raise ValueError(f"a saliency map must be (H, W), (1, H, W) or (C, H, W); got shape {tuple(m.shape)}")
    if size is not None and tuple(m.shape) != tuple(size):
        m = F.interpolate(m[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]
    finite = m[torch.isfinite(m)]
    if signed:
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        m = 0.5 + 0.5 * m / scale if scale > 0 else torch.where(torch.isnan(m), m, torch.full_like(m, 0.5))
    else:
        lo = float(finite.min()) if finite.numel() else 0.0
        hi = float(finite.max()) if finite.numel() else 0.0
        m = (m - lo) / (hi - lo) if hi > lo else torch.where(torch.isnan(m), m, torch.zeros_like(m))
    return m.clamp(0, 1).numpy().copy()


def _colormap(cmap: str | Colormap) -> Colormap:
    return matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap


def overlay_array(
    image: ArrayLike,
    saliency_map: ArrayLike,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    signed: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Blend a colour-mapped saliency map onto an image: ``(1 - alpha) * image + alpha * cmap(map)``.

    Args:
        image: see :func:`image_to_array` (``mean``/``std`` undo a normalisation).
        saliency_map: see :func:`map_to_array`; resized to the image, NaN pixels show the image alone.
        cmap: a matplotlib colormap or its name.
        alpha: the heatmap's weight in ``[0, 1]``.
        signed: normalise the map symmetrically around 0 (use a diverging ``cmap`` such as ``"bwr"``).

    Returns:
        ``(H, W, 3)`` float64 RGB in ``[0, 1]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return _blend(image_to_array(image, mean=mean, std=std), saliency_map, cmap, alpha, signed)


def _blend(rgb: np.ndarray, saliency_map: ArrayLike, cmap: str | Colormap, alpha: float, signed: bool):
    m = map_to_array(saliency_map, size=rgb.shape[:2], signed=signed)
    heat = _colormap(cmap)(np.nan_to_num(m))[..., :3]
    weight = alpha * (~np.isnan(m))[..., None]
    return (1 - weight) * rgb + weight * heat


def overlay(
    image: ArrayLike,
    saliency_map: ArrayLike,
    *,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    signed: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    title: str | None = None,
    show_image: bool = True,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """A figure with the image and the saliency map blended onto it.

    Args:
        image, saliency_map, cmap, alpha, signed, mean, std: as in :func:`overlay_array`.
        title: the overlay panel's title.
        show_image: put the plain image in a panel on the left.
        figsize: inches; defaults to 3 per panel.

    Returns:
        A ``matplotlib.figure.Figure`` (not registered with pyplot); save it with :func:`save_figure`.
    """
    blended = overlay_array(image, saliency_map, cmap=cmap, alpha=alpha, signed=signed, mean=mean, std=std)
    panels = 2 if show_image else 1
    fig = Figure(figsize=figsize or (3.0 * panels, 3.2), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    if show_image:
        axes[0].imshow(image_to_array(image, mean=mean, std=std), interpolation="nearest")
        axes[0].set_title("image")
        axes[0].set_axis_off()
    axes[-1].imshow(blended, interpolation="nearest")
    axes[-1].set_axis_off()
    if title:
        axes[-1].set_title(title)
    return fig


def _batch(value: ArrayLike, n_dims: int) -> list[ArrayLike]:
    """Split a leading batch dimension: a value with ``n_dims`` dims is a batch, fewer is one item."""
    if value.ndim >= n_dims:
        return [value[i] for i in range(value.shape[0])]
    return [value]


def _class_label(index: int, class_names: Sequence[str] | None) -> str:
    if class_names is not None and 0 <= index < len(class_names):
        return str(class_names[index])
    return f"class {index}"


def method_grid(
    image: ArrayLike,
    maps: Mapping[str, ArrayLike],
    *,
    scores: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    target: int | Sequence[int] | torch.Tensor | None = None,
    cmap: str | Colormap = "jet",
    alpha: float = 0.5,
    overlay: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cell_size: float = 2.4,
    title: str | None = None,
) -> Figure:
    """Side-by-side saliency maps: one row per image, the image first, then one column per method.

    Args:
        image: one image ``(C, H, W)`` or a batch ``(N, C, H, W)``.
        maps: method name -> map for that image (``(H, W)``, ``(C, H, W)``, ...) or batch of maps
            (``(N, H, W)``, ``(N, C, H, W)``); a 3-D map is taken as a batch when ``image`` is a batch.
        scores: the model's class scores ``(num_classes,)`` or ``(N, num_classes)``; the image's title then
            names the top class and its score.
        class_names: names of the classes, for titles.
        target: the class(es) the maps explain, shown in the image's title.
        cmap, alpha: heatmap colormap and weight.
        overlay: blend the maps onto the image (else show the maps alone).
        mean, std: undo the input normalisation when showing the image.
        cell_size: inches per panel.
        title: the figure's title.

    Returns:
        A ``matplotlib.figure.Figure``.
    """
    if not maps:
        raise ValueError("maps is empty; pass at least one {name: map}")
    batched = image.ndim == 4
    images = _batch(image, 4) if batched else [image]
    n = len(images)
    columns: dict[str, list[ArrayLike]] = {}
    for name, m in maps.items():
        items = _batch(m, 3) if batched else [m]
        if len(items) != n:
            raise ValueError(f"map {name!r} holds {len(items)} maps for {n} images")
        columns[name] = items
    score_rows = None
    if scores is not None:
        s = _to_tensor(scores, "scores")
        score_rows = s.reshape(n, -1) if s.numel() % n == 0 else None
        if score_rows is None:
            raise ValueError(f"scores of shape {tuple(s.shape)} do not split over {n} images")
    targets: list[int | None]
    if isinstance(target, torch.Tensor | np.ndarray):
        target = target.tolist()
    if target is None:
        targets = [None] * n
    elif isinstance(target, int | np.integer):
        targets = [int(target)] * n
    else:
        targets = [int(t) for t in target]
        if len(targets) != n:
            raise ValueError(f"target holds {len(targets)} classes for {n} images")

    fig = Figure(figsize=(cell_size * (1 + len(columns)), cell_size * n + 0.4), layout="constrained")
    axes = fig.subplots(n, 1 + len(columns), squeeze=False)
    for row in range(n):
        rgb = image_to_array(images[row], mean=mean, std=std)
        ax = axes[row, 0]
        ax.imshow(rgb, interpolation="nearest")
        ax.set_axis_off()
        lines = []
        if score_rows is not None:
            top = int(score_rows[row].argmax())
            lines.append(f"{_class_label(top, class_names)}: {float(score_rows[row, top]):.3g}")
        if targets[row] is not None:
            lines.append(f"target: {_class_label(targets[row], class_names)}")
        ax.set_title("\n".join(lines) if lines else "image", fontsize=9)
        for col, (name, items) in enumerate(columns.items(), start=1):
            ax = axes[row, col]
            if overlay:
                ax.imshow(_blend(rgb, items[row], cmap, alpha, False), interpolation="nearest")
            else:
                arr = np.ma.masked_invalid(map_to_array(items[row]))
                ax.imshow(arr, cmap=_colormap(cmap), vmin=0, vmax=1, interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Save ``fig`` (PNG, or the format the suffix names) atomically, creating parent folders; returns the path."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    return atomic_write(path, lambda handle: fig.savefig(handle, dpi=dpi, format=fmt))


def localization_grid(images: torch.Tensor, masks: torch.Tensor, maps: Mapping[str, torch.Tensor],
                      rows: Sequence[int], labels: Sequence[str]) -> Figure:
    """Maps against ground-truth masks: per row an image (grey, the mask outlined in red) and each method's
    map (the mask in cyan, the map's maximum as a green cross).

    Args:
        images: ``(N, H, W)`` grey images, ``0..255``.
        masks: ``(N, H, W)`` bool masks.
        maps: method name -> ``(N, H, W)`` map.
        rows: which images to show, one row each.
        labels: a label per row (e.g. the defect class).
    """
    methods = list(maps)
    fig = Figure(figsize=(1.25 * (len(methods) + 1), 1.3 * len(rows) + 0.4), layout="constrained")
    axes = fig.subplots(len(rows), len(methods) + 1, squeeze=False)
    for r, i in enumerate(rows):
        mask = masks[i].numpy().astype(float)
        ax = axes[r, 0]
        ax.imshow(images[i].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_ylabel(labels[r], fontsize=7)
        if r == 0:
            ax.set_title("map + defect", fontsize=7)
        for c, method in enumerate(methods, start=1):
            ax = axes[r, c]
            ax.imshow(maps[method][i].numpy(), cmap="inferno")
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
            peak = int(maps[method][i].flatten().argmax())
            w = maps[method][i].shape[-1]
            ax.plot([peak % w], [peak // w], marker="+", color="lime", markersize=6)
            if r == 0:
                ax.set_title(method, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
