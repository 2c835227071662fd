"""Train the shipped ``wafer-maps-resnet`` checkpoint and report its accuracy at 64x64 and 224x224 as JSON.

A CIFAR-style ResNet-20 (``resnet20_cifar``: 3x3 stem, no max-pool, stages of 16/32/64 channels, global
average pooling, so it takes any input size) with one input channel and nine outputs, trained with
``netvis.train`` on the ``wafer-maps`` data set (3,600 synthetic 64x64 training maps, seed 0; see
``docs/wafer_maps.md``): one-cycle SGD, peak learning rate 0.05, batch 64, random crop (padding 4) and
horizontal flip, seed 0, fp32 on the CPU. The accuracy is measured on the 900 test maps (64x64, the
size it was trained at) and, to show how the fully convolutional net behaves at another size, on
test maps drawn at 224x224 in two ways: one die per pixel (``dies=224``: the same noise texture, defects
3.5x larger in pixels) and 64 dies across (``dies=64``: the very maps of the 64x64 test split, each die
a block of 3.5 pixels).

The last epoch's metrics in the checkpoint get these numbers too (``ckpt.meta["final_metrics"]``), and
the inference-only copy goes to ``src/netvis/assets/checkpoints/wafer-maps-resnet.pt``.

Usage (about 6 minutes on 2 CPU cores)::

    OMP_NUM_THREADS=2 python benchmarks/train_wafer_maps.py --epochs 8 \
        --export src/netvis/assets/checkpoints/wafer-maps-resnet.pt \
        --json benchmarks/results/train_wafer_maps_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from netvis.data.wafer import WAFER_CLASSES, load_wafer_maps
from netvis.train import TrainConfig, train
from netvis.train.checkpoint import read_checkpoint, save_checkpoint, strip_training_state
from netvis.train.evaluate import evaluate, with_preprocess

MODEL = "resnet20_cifar"
MODEL_OPTIONS = {"stage_channels": (16, 32, 64)}


def accuracy_at(model, preprocess, size: int, dies: int, per_class: int) -> dict:
    test = load_wafer_maps("test", size=size, dies=dies, per_class=per_class, normalize=False)
    result = evaluate(model, with_preprocess(test, preprocess), batch_size=32)
    return {"size": size, "dies": dies, "maps": result.count, "accuracy": result.accuracy, "loss": result.loss,
            "per_class_accuracy": dict(zip(WAFER_CLASSES, result.per_class_accuracy.tolist(), strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class-224", type=int, default=20, help="test maps per class at 224x224")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--export", default=None, help="write the inference-only checkpoint here")
    parser.add_argument("--json", default=None, help="also write the JSON report here")
    args = parser.parse_args()

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        config = TrainConfig(
            model=MODEL, data="wafer-maps", epochs=args.epochs, out=str(out), batch_size=args.batch_size,
            lr=args.lr, optimizer="sgd", schedule="onecycle", weight_decay=5e-4, augment=True, seed=args.seed,
            device="cpu", precision="fp32", model_options=dict(MODEL_OPTIONS), progress=False,
        )
        result = train(config, on_epoch_end=lambda m: print(json.dumps(m), flush=True))
        train_s = time.perf_counter() - start
        model = result.model.eval()
        at_64 = accuracy_at(model, result.preprocess, 64, 64, 100)
        at_224 = [accuracy_at(model, result.preprocess, 224, dies, args.per_class_224) for dies in (224, 64)]
        payload, _ = read_checkpoint(result.checkpoint)
        payload = strip_training_state(payload)
        last = dict(payload["metrics"][-1])
        last["test_accuracy_64"] = at_64["accuracy"]
        last["test_accuracy_224_dies224"] = at_224[0]["accuracy"]
        last["test_accuracy_224_dies64"] = at_224[1]["accuracy"]
        last["trained_at"] = "64x64"
        payload["metrics"] = [*payload["metrics"][:-1], last]
        if args.export:
            save_checkpoint(payload, args.export)
    report = {
        "benchmark": "train_wafer_maps",
        "model": MODEL, "model_options": {k: list(v) for k, v in MODEL_OPTIONS.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
        "data": "wafer-maps (3,600 train / 900 test synthetic 64x64 maps, seed 0)",
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "augment": "random crop (padding 4) + horizontal flip", "precision": "fp32",
        "trained_at": "64x64",
        "per_epoch": result.metrics,
        "test_64": at_64,
        "test_224": at_224,
        "train_seconds": round(train_s, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "hardware": {"device": "cpu", "cpu_threads": torch.get_num_threads(),
                     "processor": platform.processor() or platform.machine()},
        "torch": torch.__version__,
        "exported": args.export,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
