"""``netvis demo``: the whole lecture on the Fashion-MNIST sample that ships with netvis.

By default the demo studies the shipped ``fashion-mnist-small`` checkpoint; with ``train=True`` it first
trains a fresh model on the shipped sample on the CPU. Either way it needs no network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from netvis.app.render.lecture import lecture_report
from netvis.data import load
from netvis.train._batches import first_items
from netvis.train.checkpoint import load_checkpoint
from netvis.train.evaluate import with_preprocess
from netvis.train.trainer import TrainConfig
from netvis.train.trainer import train as train_run

SAMPLE = "fashion-mnist-sample"


def run_demo(
    out: str | Path = "netvis-report",
    *,
    checkpoint: str = "fashion-mnist-small",
    train: bool = False,
    epochs: int = 4,
    model: str = "resnet20_cifar",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Run the lecture end to end and write the report.

    Args:
        out: folder for the report (``index.html``, ``summary.json``) and, with ``train``, the run.
        checkpoint: the checkpoint to study (a path or a shipped name) when ``train`` is false.
        train: train ``model`` on the shipped sample first and study that instead.
        epochs: epochs of that training run.
        model: the model that training run builds.
        seed: seed of that training run.
        progress: show progress bars.

    Returns:
        The path of the report's ``index.html``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run_dir = None
    if train:
        run_dir = out / "run"
        config = TrainConfig(model=model, data=SAMPLE, epochs=epochs, out=str(run_dir), seed=seed,
                             batch_size=64, augment=False, progress=progress, device="auto")
        result = train_run(config)
        checkpoint = str(result.checkpoint)
    return write_report(checkpoint, SAMPLE, out, run_dir=run_dir, progress=progress, started=start,
                        localization=True)


def write_report(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    run_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    started: float | None = None,
    localization: bool = False,
) -> Path:
    """Write the lecture's report for ``checkpoint`` on ``data`` into ``out``; return ``index.html``'s path.

    Args:
        checkpoint: a checkpoint path, a run folder holding ``checkpoint.pt``, or a shipped name.
        data: a :func:`netvis.data.load` name or folder; its train split feeds BN recalibration, its test
            split everything else, both through the checkpoint's own preprocessing.
        out: the report's folder (``index.html`` and ``summary.json``).
        run_dir: a training run folder whose curves the report shows (default: the checkpoint's folder
            when it holds ``curves.png``).
        limit: use at most this many images of each split.
        progress: show progress bars.
        started: ``time.perf_counter()`` at the start, for the summary's duration.
        localization: add the lecture's wafer-map localization section (the shipped ``wafer-maps-resnet``
            on the shipped wafer-map sample; ``netvis demo`` does).
    """
    start = time.perf_counter() if started is None else started
    path = Path(checkpoint)
    if path.is_dir():
        run_dir = run_dir or path
        path = path / "checkpoint.pt"
        checkpoint = path
    elif run_dir is None and path.is_file() and (path.parent / "curves.png").exists():
        run_dir = path.parent
    ckpt = load_checkpoint(checkpoint)
    train_data = with_preprocess(load(data, "train"), ckpt.preprocess)
    test_data = with_preprocess(load(data, "test"), ckpt.preprocess)
    train_data, test_data = first_items(train_data, limit), first_items(test_data, limit)
    report, summary = lecture_report(ckpt, train_data, test_data, run_dir=run_dir, progress=progress,
                                     localization=localization)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    summary["checkpoint"] = str(ckpt.path)
    out = Path(out)
    index = report.write(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return index
