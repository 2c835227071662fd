"""Training curves (loss and accuracy per epoch) drawn with matplotlib's object API (no pyplot state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from netvis.io import atomic_write

__all__ = ["plot_curves"]


def plot_curves(
    metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Plot loss and accuracy per epoch, train and test, side by side, and save the figure.

    Args:
        metrics: one dict per epoch with ``epoch`` and any of ``train_loss``, ``test_loss``,
            ``train_accuracy``, ``test_accuracy`` (missing or ``None`` values are skipped).
        path: the image file to write (the format follows the suffix, e.g. ``.png``); written to a
            temporary file and renamed, so a reader never sees half an image.
        title: figure title.

    Returns:
        The path written.
    """
    path = Path(path)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("test", "-s")):
            points = [
                (m["epoch"], m[f"{split}_{key}"])
                for m in metrics
                if m.get(f"{split}_{key}") is not None and m.get("epoch") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    return atomic_write(path, lambda handle: fig.savefig(handle, dpi=100, format=path.suffix.lstrip(".") or "png"))
