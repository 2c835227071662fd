"""Train a model on the full Fashion-MNIST with ``netvis.train`` and report accuracy and wall time as JSON.

Models: ``resnet18`` with the CIFAR stem (3x3 conv, no max-pool) for 1-channel 28x28 images, or
``densenet_bc_100`` (DenseNet-BC, L=100, k=12). On a GPU the default is the full setting (all 60,000
training images, 10 epochs, one-cycle SGD, crop-and-flip augmentation, bf16 autocast, channels-last).
On the CPU a full run takes hours, so the default there is a *reduced* setting (1 epoch on the first
2,000 training images, evaluated on the full test set); the JSON says ``"reduced": true`` and why, and
its accuracy is not the model's Fashion-MNIST accuracy.

Usage::

    python benchmarks/train_fashion_mnist.py --model resnet18              # auto device
    python benchmarks/train_fashion_mnist.py --model densenet_bc_100 --device cpu --epochs 1 --limit-train 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import torch

from netvis.devices import resolve_device
from netvis.train import TrainConfig, train

MODELS = {
    "resnet18": {"stem": "cifar"},
    "densenet_bc_100": {},
}
CPU_EPOCHS = 1
CPU_LIMIT_TRAIN = 2000


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    epochs = args.epochs if args.epochs is not None else (10 if cuda else CPU_EPOCHS)
    limit_train = args.limit_train if args.limit_train is not None else (None if cuda else CPU_LIMIT_TRAIN)
    reduced = limit_train is not None and limit_train < 60000
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model=args.model, data=args.data, epochs=epochs, out=args.out or out, batch_size=args.batch_size,
            lr=args.lr, augment=args.augment, seed=args.seed, device=str(device), limit_train=limit_train,
            limit_test=args.limit_test, model_options=dict(MODELS[args.model]), progress=args.progress,
        )
        start = time.perf_counter()
        result = train(config)
        wall = time.perf_counter() - start
    last = result.metrics[-1]
    hardware = {"device": str(device), "cpu_threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine(), "platform": platform.platform()}
    if cuda:
        hardware["gpu"] = torch.cuda.get_device_name(device)
    report = {
        "benchmark": "train_fashion_mnist",
        "model": args.model,
        "model_options": MODELS[args.model],
        "data": args.data,
        "epochs": epochs,
        "train_images": limit_train or 60000,
        "test_images": args.limit_test or 10000,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "precision": "auto (bf16/fp16 autocast)" if cuda else "fp32",
        "wall_time_s": round(wall, 1),
        "train_time_s": round(last["time_s"], 1),
        "images_per_s": round(last["images_per_s"], 1),
        "test_accuracy": last.get("test_accuracy"),
        "train_accuracy": last.get("train_accuracy"),
        "hardware": hardware,
        "torch": str(torch.__version__),
        "reduced": reduced,
    }
    if reduced:
        report["note"] = (f"reduced setting ({epochs} epoch(s) on the first {limit_train} training images): "
                          "a full Fashion-MNIST run is a GPU job; this accuracy is not the model's full-data "
                          "accuracy")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18", choices=list(MODELS))
    parser.add_argument("--data", default="fashion-mnist", help="data set name or folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=None, help=f"default 10 on a GPU, {CPU_EPOCHS} on the CPU")
    parser.add_argument("--limit-train", type=int, default=None,
                        help=f"default: all on a GPU, {CPU_LIMIT_TRAIN} on the CPU")
    parser.add_argument("--limit-test", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=None, help="keep the run folder here (default: a temporary one)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    report = run(parser.parse_args(argv))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
