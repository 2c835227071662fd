"""Inversion on a netvis checkpoint, with files written: what ``netvis invert`` and ``netvis train-inverter`` run.

* :func:`~netvis.app.jobs._inputs.load_target` (re-exported here) reads the image to invert: a PNG/JPG
  path, or ``sample:N`` (test image ``N`` of the Fashion-MNIST sample shipped with netvis), put through the
  checkpoint's preprocess.
* :func:`run_invert` inverts it at one or more layers and writes the reconstructions and a JSON summary.
* :func:`run_train_inverter` trains an :class:`~netvis.inversion.Inverter` on a data set and writes it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from netvis.app.jobs._inputs import SAMPLE_DATA, load_target
from netvis.app.render.figures import save_figure
from netvis.data import DataError, load
from netvis.inversion.network import CHECKPOINT_NAME, Inverter, train_inverter
from netvis.inversion.optimise import InversionResult, invert, pixel_bounds
from netvis.io import atomic_write, atomic_write_text
from netvis.train.checkpoint import load_checkpoint

__all__ = ["load_target", "run_invert", "run_train_inverter", "save_png", "SAMPLE_DATA"]

def _to_unit(images: Tensor, preprocess: Any) -> Tensor:
    """Model inputs back to ``[0, 1]`` pixels (via ``preprocess.denormalize`` when there is one)."""
    if hasattr(preprocess, "denormalize"):
        return preprocess.denormalize(images.detach().cpu().float()).clamp(0, 1)
    lo, hi = pixel_bounds(preprocess, images.shape[1])
    return ((images.detach().cpu().float() - lo) / (hi - lo)).clamp(0, 1)


def save_png(image: Tensor, path: str | os.PathLike, preprocess: Any) -> Path:
    """Write one model-input image ``(C, H, W)`` or ``(1, C, H, W)`` as an 8-bit PNG (grey or RGB)."""
    if image.dim() == 4:
        image = image[0]
    unit = _to_unit(image[None], preprocess)[0]
    array = (unit * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return atomic_write(path, lambda handle: picture.save(handle, format="PNG"))


def _file_name(layer: str) -> str:
    return (layer or "output").replace("/", "_")


def _figure(target: Tensor, results: dict[str, InversionResult], preprocess: Any, path: Path) -> Path:
    panels = [("target", target)] + [
        (f"{name or 'output'}\nerror {r.error:.2%}", r.image) for name, r in results.items()
    ]
    fig = Figure(figsize=(2.0 * len(panels), 2.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, image) in zip(axes[0], panels, strict=True):
        unit = _to_unit(image[:1], preprocess)[0].permute(1, 2, 0).numpy()
        ax.imshow(unit[..., 0] if unit.shape[-1] == 1 else unit, cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return save_figure(fig, path)


def run_invert(
    checkpoint: str | os.PathLike,
    image: str,
    layers: Sequence[str],
    out: str | os.PathLike,
    **options: Any,
) -> dict[str, Any]:
    """Invert a checkpoint's model at ``layers`` for one image and write the results into ``out``.

    Writes ``target.png``, ``<layer>.png`` per layer (the reconstruction), ``inversion.png`` (target and
    reconstructions side by side, shallow to deep as given) and ``inversion.json`` (per layer: final and
    initial normalised feature error, function evaluations, the loss history; plus the options).

    Args:
        checkpoint: Path or shipped name for :func:`netvis.load_checkpoint`.
        image: See :func:`load_target`.
        layers: Dotted layer names.
        out: Output folder (created).
        **options: Passed to :func:`~netvis.inversion.invert` (``steps``, ``tv_weight``, ``optimizer``,
            ``seed``, ``progress``, ...). ``bounds`` defaults to the valid range of the preprocess.

    Returns:
        The JSON summary as a dict.
    """
    ckpt = load_checkpoint(checkpoint)
    target = load_target(image, ckpt.preprocess)
    options.setdefault("bounds", pixel_bounds(ckpt.preprocess, target.shape[1]))
    results = invert(ckpt.model, target, layers=list(layers), **options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"target": save_png(target, out / "target.png", ckpt.preprocess).name}
    for name, result in results.items():
        files[name] = save_png(result.image, out / f"{_file_name(name)}.png", ckpt.preprocess).name
    files["figure"] = _figure(target, results, ckpt.preprocess, out / "inversion.png").name
    summary = {
        "checkpoint": str(ckpt.path),
        "image": image,
        "layers": {name: result.to_dict() for name, result in results.items()},
        "files": files,
    }
    atomic_write_text(out / "inversion.json", json.dumps(summary, indent=2, default=str))
    return summary


def _inputs(dataset: Any, preprocess: Any, limit: int | None) -> Tensor:
    """The first ``limit`` images of a netvis data set as model inputs, made by the checkpoint's preprocess
    from the stored ``uint8`` pixels (so that they are normalised exactly as the model expects)."""
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    stored = getattr(dataset, "images", None)
    if stored is not None:
        return preprocess(stored[:n])
    return torch.stack([dataset[i][0] for i in range(n)])


def run_train_inverter(
    checkpoint: str | os.PathLike,
    layer: str,
    data: str,
    out: str | os.PathLike,
    *,
    split: str = "train",
    limit: int | None = None,
    **options: Any,
) -> tuple[Inverter, dict[str, Any]]:
    """Train an inverter for a checkpoint's model on a netvis data set; checkpoint into ``out``.

    ``out/inverter.pt`` is the (resumable) checkpoint; ``out/inverter.json`` sums up the run, including
    the pixel MSE on the first 256 images of the test split when there is one.

    Args:
        checkpoint: Path or shipped name for :func:`netvis.load_checkpoint`.
        layer: Dotted layer name.
        data: A name or folder for :func:`netvis.data.load`; its stored images are put through the
            checkpoint's preprocess.
        out: Output folder.
        split: Training split.
        limit: Train on the first ``limit`` images only.
        **options: Passed to :func:`~netvis.inversion.train_inverter` (``epochs``, ``batch_size``, ``lr``,
            ``feature_loss_weight``, ``resume``, ``seed``, ``progress``, ...).
    """
    ckpt = load_checkpoint(checkpoint)
    train_images = _inputs(load(data, split), ckpt.preprocess, limit)
    inverter = train_inverter(ckpt.model, layer, train_images, out=out, **options)
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt.path),
        "layer": inverter.layer,
        "data": data,
        "split": split,
        "train_images": len(train_images),
        "epochs": len(inverter.history),
        "history": inverter.history,
        "file": str(Path(out) / CHECKPOINT_NAME),
    }
    if split != "test":
        try:
            test_images = _inputs(load(data, "test"), ckpt.preprocess, 256)
        except DataError:  # no test split: no held-out number
            test_images = None
        if test_images is not None:
            summary["test_images"] = len(test_images)
            summary["test_mse"] = float(torch.nn.functional.mse_loss(inverter(test_images), test_images))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "inverter.json").write_text(json.dumps(summary, indent=2))
    return inverter, summary
