"""``netvis examples`` end to end: checkpoint and data in, dataset-example grids and an index page out.

The command line only parses arguments and calls :func:`run_examples`, which loads, computes (one pass,
resumable, split between processes under torchrun) and hands the results to :mod:`netvis.app.render.features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from netvis.app.render.features import write_examples
from netvis.data import load
from netvis.features.dataset_examples import dataset_examples
from netvis.features.receptive_field import receptive_field
from netvis.train._batches import first_items
from netvis.train.checkpoint import load_checkpoint
from netvis.train.distributed import init_distributed
from netvis.train.evaluate import with_preprocess

__all__ = ["STATE_FILE", "run_examples"]

STATE_FILE = ".examples-state.pt"
"""Name of the running state in the output folder: a rerun of the same command resumes from it."""


def run_examples(
    checkpoint: str,
    layers: Sequence[str],
    *,
    data: str | None = None,
    split: str = "test",
    k: int = 20,
    reduce: str = "mean",
    out: str | Path = "netvis-examples",
    batch_size: int = 256,
    device: str = "auto",
    limit: int | None = None,
    progress: bool = False,
) -> Path | None:
    """Dataset examples of a checkpoint's layers, written as grids and an ``index.html``.

    Args:
        checkpoint: A checkpoint path, run folder or shipped name (see :func:`netvis.load_checkpoint`).
        layers: Dotted layer names.
        data: Data set name or folder; default: the checkpoint's training data set.
        split: Split to search.
        k: Images per channel.
        reduce: ``"mean"`` or ``"max"``.
        out: Output folder; also holds the running state, so the same call resumes after a crash.
        batch_size: Images per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; under torchrun each rank uses its own GPU.
        limit: Search the first ``limit`` images only.
        progress: Show a progress bar.

    Returns:
        The path of ``index.html`` (``None`` on ranks other than 0).
    """
    ckpt = load_checkpoint(checkpoint)
    ctx = init_distributed(device)
    try:
        model = ckpt.model.to(ctx.device)
        name = data or ckpt.meta.get("data", {}).get("name")
        if not name:
            raise ValueError(f"{ckpt.path} does not record its data set; pass --data")
        dataset = with_preprocess(load(name, split), ckpt.preprocess)
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit must be positive, got {limit}")
            dataset = first_items(dataset, limit)
        out = Path(out)
        meta = {"checkpoint": str(checkpoint), "data": str(name), "split": split}
        results = dataset_examples(
            model, list(layers), dataset, k, reduce=reduce, batch_size=batch_size, device=ctx.device,
            progress=progress, checkpoint_path=out / STATE_FILE, meta=meta,
        )
        if not ctx.is_main:
            return None
        first = dataset[0]
        input_shape = tuple((first[0] if isinstance(first, (tuple, list)) else first).shape)
        boxes = {layer: receptive_field(model, layer, input_shape, device=ctx.device) for layer in results}
        labels = getattr(dataset, "targets", None)
        return write_examples(
            out, results, dataset, boxes=boxes, input_size=input_shape[-2:],
            labels=labels if isinstance(labels, torch.Tensor) else None, class_names=ckpt.classes,
            title=f"Dataset examples: {Path(str(checkpoint)).name} on {name} ({split})",
        )
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()
