"""Train torchvision's ResNet-18 on 224x224 wafer maps: the trained ImageNet-size network for the occlusion contract.

No pretrained weights can be downloaded here, and ``benchmarks/occlusion_incremental.py --part contract``
needs a *trained* ResNet-18 at 224x224 to say whether approximate occlusion keeps its quality on a real
network of that size. This script trains one from scratch on wafer maps (:mod:`netvis.data.wafer`,
one die per pixel, ``per_class`` training maps per class, seed 0), in the input format the contract
benchmark feeds torchvision models: three equal channels, ``uint8 / 255`` (no normalisation).

Recipe: ``torchvision.models.resnet18(num_classes=9)``, channels-last fp32 on the CPU, SGD (momentum 0.9,
Nesterov, weight decay 5e-4), one-cycle learning rate peaking at ``--lr``, batch 32, random horizontal
flips, seed 0. It writes the weights (``state_dict``, about 45 MB: not in git) to ``--weights`` and prints
a JSON report with the loss and test accuracy after every epoch.

Usage (about 10 minutes on 2 CPU cores)::

    OMP_NUM_THREADS=2 python benchmarks/train_wafer_resnet18.py --weights ~/.cache/netvis/wafer-resnet18.pt \\
        --json benchmarks/results/train_wafer_resnet18_cpu.json
    python benchmarks/occlusion_incremental.py --part contract --trained resnet18=~/.cache/netvis/wafer-resnet18.pt
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from _timing import device_name

from netvis.data.wafer import WAFER_CLASSES, load_wafer_maps
from netvis.train.evaluate import evaluate


def as_input(images: torch.Tensor) -> torch.Tensor:
    """``uint8 (N, 1, H, W)`` maps to the contract benchmark's torchvision input: ``(N, 3, H, W)`` in ``[0, 1]``."""
    return (images.float() / 255).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> float:
    batches = ((as_input(images[s : s + batch]), labels[s : s + batch]) for s in range(0, len(images), batch))
    return evaluate(model, batches, classes=list(WAFER_CLASSES)).accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=200, help="training maps per class")
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", required=True, help="write the trained state_dict here")
    parser.add_argument("--json", default=None, help="also write the JSON report here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    start_all = time.perf_counter()
    train = load_wafer_maps("train", per_class=args.per_class, size=224, seed=args.seed, normalize=False)
    test = load_wafer_maps("test", per_class=args.test_per_class, size=224, seed=args.seed, normalize=False)
    x_train, y_train = train.images, train.targets
    x_test, y_test = test.images, test.targets

    model = torchvision.models.resnet18(num_classes=len(WAFER_CLASSES)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, epochs=args.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    generator = torch.Generator().manual_seed(args.seed)
    epochs = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x_train), generator=generator)
        loss_sum, seen = 0.0, 0
        for i in range(steps_per_epoch):
            idx = order[i * args.batch_size : (i + 1) * args.batch_size]
            x = as_input(x_train[idx])
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
        seconds = time.perf_counter() - start
        acc = accuracy(model, x_test, y_test)
        epochs.append({"epoch": epoch, "train_loss": loss_sum / seen, "test_accuracy": acc,
                       "seconds": round(seconds, 1)})
        print(json.dumps(epochs[-1]), flush=True, file=sys.stderr)

    weights = Path(args.weights).expanduser()
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    report = {
        "benchmark": "train_wafer_resnet18",
        "model": "torchvision.models.resnet18(num_classes=9), random init",
        "data": f"wafer-maps at 224x224, one die per pixel: {len(x_train)} train / {len(x_test)} test maps, "
                f"seed {args.seed}",
        "input": "3 equal channels, uint8 / 255",
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "SGD nesterov 0.9",
                   "weight_decay": 5e-4, "schedule": "one-cycle", "augment": "horizontal flip", "seed": args.seed},
        "per_epoch": epochs,
        "test_accuracy": epochs[-1]["test_accuracy"],
        "weights": str(weights),
        "seconds": round(time.perf_counter() - start_all, 1),
        "cpu": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "command": "python benchmarks/train_wafer_resnet18.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "json"),
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
