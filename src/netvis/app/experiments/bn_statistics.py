"""``bn-statistics``: which statistics a BN layer uses at test time, and what goes wrong.

Three parts, on ResNets trained here (Ioffe and Szegedy, "Batch Normalization", ICML 2015):

1. **Running averages vs recomputed statistics.** During training every BN layer keeps exponential
   running averages of its batch means and variances (PyTorch's default, momentum 0.1); they mix the
   statistics of many weight states. The other strategy of the lecture fixes the weights after
   training and recomputes each layer's statistics over the whole training set, layer by layer, first
   layers first (:func:`netvis.bn.recalibrate`). Both are evaluated on the test set.
2. **Batch size.** The same network trained with several batch sizes (learning rate scaled linearly
   with the batch size, Goyal et al. 2017): with small batches the batch statistics are noisy, and the
   statistics used at test time differ more from those seen in training.
3. **The train/eval pitfall.** Evaluating a trained network in *train* mode makes every BN layer
   normalise with the statistics of the test batch itself: fine for large random batches, wrong for
   small ones (batch size 1: every image is normalised by itself) and for batches of one class (the
   class signal is normalised away). A train-mode pass also overwrites the running averages with the
   test batches' statistics, so even a later eval-mode evaluation changes ("after" column).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from matplotlib.figure import Figure

from netvis.app.experiments._common import Context, Experiment, ExperimentResult, Timer
from netvis.bn import recalibrate
from netvis.hooks import preserved_state
from netvis.train._batches import iterate
from netvis.train.evaluate import evaluate

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "image_size": 14,
        "model": "resnet20_cifar",
        "stage_channels": (8, 16, 32),
        "limit_train": 1000,
        "limit_test": None,
        "epochs": 3,
        "batch_sizes": (8, 32, 128),
        "batch_size": 32,
        "lr": 0.1,
        "eval_batch_sizes": (1, 2, 8, 32, 256),
    },
    "full": {
        "data": "fashion-mnist",
        "image_size": None,
        "model": "resnet20_cifar",
        "stage_channels": (16, 32, 64),
        "limit_train": None,
        "limit_test": None,
        "epochs": 15,
        "batch_sizes": (4, 16, 64, 128, 256),
        "batch_size": 128,
        "lr": 0.1,
        "eval_batch_sizes": (1, 2, 4, 8, 32, 128, 1024),
    },
}


def train_mode_accuracy(model, data, order: torch.Tensor, batch_size: int, device) -> tuple[float, float]:
    """Accuracy with every BN layer normalising by its batch (train mode), and what that pass leaves behind.

    The images of ``data`` go through ``model`` in train mode, ``batch_size`` at a time, in ``order``: each
    BN layer normalises with the batch's own mean and (biased) variance, and, as in training, updates its
    running averages with them (momentum :math:`m`, unbiased variance):

    .. math:: \\hat\\mu \\leftarrow (1 - m)\\,\\hat\\mu + m\\,\\mu_B, \\qquad
              \\hat\\sigma^2 \\leftarrow (1 - m)\\,\\hat\\sigma^2 + m\\,\\tfrac{n}{n-1}\\sigma_B^2

    Then the eval-mode accuracy with the running averages that pass left behind (``eval_after``). The
    model's modes, buffers and flags are restored afterwards (:func:`netvis.hooks.preserved_state`), so the
    trained model keeps its statistics.

    Args:
        model: a classifier with BN layers.
        data: an in-memory netvis data set (images are preprocessed by ``data.preprocess``).
        order: ``(N,)`` positions of ``data`` to visit, in order (batches are consecutive runs of it).
        batch_size: images per train-mode batch.
        device: where the model runs.

    Returns:
        ``(train-mode accuracy over the images of order, eval-mode accuracy on all of data afterwards)``.
    """
    correct = 0
    with preserved_state(model), torch.no_grad():
        model.train()
        for x, y in iterate(data, order, batch_size, device):
            correct += int((model(x).argmax(1) == y).sum())
        after = evaluate(model, data, device=device).accuracy
    return correct / len(order), after


def mode_table(model, test_data, *, eval_accuracy: float, recomputed_accuracy: float | None,
               eval_batch_sizes, one_class_batch_size: int, generator: torch.Generator,
               device) -> list[dict[str, Any]]:
    """The "train vs eval mode" table: eval mode (running averages, recomputed statistics), then train mode
    with shuffled batches of each of ``eval_batch_sizes`` and with batches of one class.

    Shuffled batches follow one random permutation of ``test_data`` drawn from ``generator``; one-class
    batches follow the images sorted by class (stable), ``one_class_batch_size`` at a time (a batch
    spans two classes only where a class's count is not a multiple of it).

    Args:
        model: the trained classifier (left as it was: :func:`train_mode_accuracy`).
        test_data: an in-memory netvis data set.
        eval_accuracy: the eval-mode accuracy with the running averages (the first row).
        recomputed_accuracy: the eval-mode accuracy with recomputed statistics, or ``None`` (no such row).
        eval_batch_sizes: train-mode batch sizes for shuffled batches.
        one_class_batch_size: the batch size of the one-class row.
        generator: draws the shuffled order.
        device: where the model runs.

    Returns:
        Rows with ``mode``, ``statistics``, ``batch_size``, ``batches``, ``accuracy``, ``eval_after``.
    """
    rows: list[dict[str, Any]] = [
        {"mode": "eval", "statistics": "running averages", "batch_size": None, "batches": "",
         "accuracy": eval_accuracy, "eval_after": eval_accuracy},
    ]
    if recomputed_accuracy is not None:
        rows.append({"mode": "eval", "statistics": "recomputed", "batch_size": None, "batches": "",
                     "accuracy": recomputed_accuracy, "eval_after": None})
    shuffled = torch.randperm(len(test_data), generator=generator)
    by_class = torch.sort(test_data.targets.cpu(), stable=True).indices
    for b in eval_batch_sizes:
        acc, after = train_mode_accuracy(model, test_data, shuffled, int(b), device)
        rows.append({"mode": "train", "statistics": "the batch's own", "batch_size": int(b),
                     "batches": "shuffled", "accuracy": acc, "eval_after": after})
    acc, after = train_mode_accuracy(model, test_data, by_class, int(one_class_batch_size), device)
    rows.append({"mode": "train", "statistics": "the batch's own", "batch_size": int(one_class_batch_size),
                 "batches": "one class", "accuracy": acc, "eval_after": after})
    return rows


def _figure(batch_rows: list[dict[str, Any]], mode_rows: list[dict[str, Any]]):
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    sizes = [r["batch_size"] for r in batch_rows]
    left.plot(sizes, [r["test_accuracy_running"] for r in batch_rows], marker="o", label="running averages")
    left.plot(sizes, [r["test_accuracy_recomputed"] for r in batch_rows], marker="s", label="recomputed")
    left.set_xscale("log", base=2)
    left.set_xlabel("training batch size")
    left.set_ylabel("test accuracy")
    left.set_title("BN statistics at test time")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    shuffled = [r for r in mode_rows if r["mode"] == "train" and r["batches"] == "shuffled"]
    right.plot([r["batch_size"] for r in shuffled], [r["accuracy"] for r in shuffled], marker="o",
               label="train mode, shuffled batches")
    for r in mode_rows:
        if r["mode"] == "train" and r["batches"] == "one class":
            right.scatter([r["batch_size"]], [r["accuracy"]], color="C3", marker="x", zorder=3,
                          label="train mode, batches of one class")
    evals = [r for r in mode_rows if r["mode"] == "eval"]
    if evals:
        right.axhline(evals[0]["accuracy"], color="C2", linestyle="--", label="eval mode")
    right.set_xscale("log", base=2)
    right.set_xlabel("evaluation batch size")
    right.set_ylim(0, 1)
    right.set_title("evaluating in train mode")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    return fig


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    train_data, test_data = ctx.limited_data()
    options = {"stage_channels": tuple(p["stage_channels"])}
    reference = int(p["batch_size"])
    sizes = sorted(set(int(b) for b in p["batch_sizes"]) | {reference})
    # the training images, normalised, without augmentation, in batches: what the statistics are recomputed over
    batches = [train_data.preprocess(train_data.images[i : i + 512].to(ctx.device))
               for i in range(0, len(train_data), 512)]
    batch_rows: list[dict[str, Any]] = []
    for b in sizes:
        timer = Timer()
        lr = p["lr"] * b / reference
        result = ctx.train(p["model"], train_data, test_data, epochs=p["epochs"], batch_size=b, lr=lr,
                           model_options=options, seed_stream=0)
        model = result.model
        running = evaluate(model, test_data, device=ctx.device).accuracy
        recomputed_model = recalibrate(copy.deepcopy(model), batches, device=ctx.device)
        recomputed = evaluate(recomputed_model, test_data, device=ctx.device).accuracy
        if b == reference:
            reference_model = model
        batch_rows.append(
            {
                "batch_size": b,
                "lr": lr,
                "steps": p["epochs"] * -(-len(train_data) // b),
                "train_accuracy": result.metrics[-1]["train_accuracy"],
                "test_accuracy_running": running,
                "test_accuracy_recomputed": recomputed,
                "seconds": round(timer(), 1),
            }
        )
    model = reference_model
    ref_row = next(r for r in batch_rows if r["batch_size"] == reference)
    running, recomputed = ref_row["test_accuracy_running"], ref_row["test_accuracy_recomputed"]
    eval_acc = running
    mode_rows = mode_table(model, test_data, eval_accuracy=eval_acc, recomputed_accuracy=recomputed,
                           eval_batch_sizes=p["eval_batch_sizes"], one_class_batch_size=reference,
                           generator=ctx.generator(3), device=ctx.device)

    train_rows = [r for r in mode_rows if r["mode"] == "train" and r["batches"] == "shuffled"]
    smallest = min(train_rows, key=lambda r: r["batch_size"])
    largest = max(train_rows, key=lambda r: r["batch_size"])
    one_class = mode_rows[-1]
    same_size = next((r for r in train_rows if r["batch_size"] == reference), None)
    metrics = {
        "eval_accuracy": eval_acc,
        "train_mode_accuracy": {str(r["batch_size"]): r["accuracy"] for r in train_rows},
        "one_class_batches_accuracy": one_class["accuracy"],
        "recalibration_gain": {str(r["batch_size"]): r["test_accuracy_recomputed"] - r["test_accuracy_running"]
                               for r in batch_rows},
    }
    findings = [
        f"Recomputing the BN statistics over the training set after training changes test accuracy by "
        f"{recomputed - running:+.1%} at batch size {reference} (running averages {running:.1%}, recomputed "
        f"{recomputed:.1%}).",
        "Test accuracy by training batch size (running averages / recomputed): "
        + ", ".join(f"{r['batch_size']}: {r['test_accuracy_running']:.1%} / {r['test_accuracy_recomputed']:.1%}"
                    for r in batch_rows) + ".",
        f"Evaluated in train mode the network scores {smallest['accuracy']:.1%} with batches of "
        f"{smallest['batch_size']} and {largest['accuracy']:.1%} with batches of {largest['batch_size']}, against "
        f"{eval_acc:.1%} in eval mode.",
    ]
    if same_size is not None:
        findings.append(
            f"In train mode, batches of {reference} images of one class score {one_class['accuracy']:.1%} against "
            f"{same_size['accuracy']:.1%} for shuffled batches: BN normalises the class signal away."
        )
    findings.append(
        f"After a train-mode pass with batches of {smallest['batch_size']}, the running averages hold the test "
        f"batches' statistics: eval-mode accuracy becomes {smallest['eval_after']:.1%} (was {eval_acc:.1%})."
    )
    return ctx.result(
        batch_rows,
        tables={"train vs eval mode": mode_rows},
        figures={"bn-statistics": _figure(batch_rows, mode_rows)},
        metrics=metrics,
        findings=findings,
    )


EXPERIMENT = Experiment(
    name="bn-statistics",
    title="BN statistics: running averages, recomputation, batch size, train vs eval mode",
    summary="Running averages vs statistics recomputed after training, the effect of the batch size, and what "
    "evaluating in train mode with small or one-class batches does.",
    paper="Ioffe, Szegedy: Batch Normalization (2015)",
    settings=SETTINGS,
    runner=run,
)
