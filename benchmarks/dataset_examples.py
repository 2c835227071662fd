"""How much does a running top-k cost on top of the forward pass, and does memory stay flat? Prints JSON.

1. Throughput: images/s of ``netvis.features.dataset_examples`` over every channel of a ResNet layer against
   a plain ``model(x)`` forward pass over the same batches (goal: ratio >= 0.9).
2. Memory: peak resident memory of a ``dataset_examples`` run over ``n`` and ``10 n`` images streamed from a
   generator (each in a fresh subprocess, so the data never piles up): it should not grow with ``n``.

Usage::

    python benchmarks/dataset_examples.py                      # light settings, CPU or the first GPU
    python benchmarks/dataset_examples.py --images 20000 --batch-size 512 --memory-images 5000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from netvis.features import dataset_examples
from netvis.models import create


def _model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return create("resnet20_cifar", in_channels=1, num_classes=10).to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(args: argparse.Namespace, device: torch.device) -> dict:
    model = _model(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.images, 1, 28, 28, generator=gen).to(device)

    def plain() -> None:
        with torch.no_grad():
            for i in range(0, args.images, args.batch_size):
                model(images[i : i + args.batch_size])

    found = {}

    def examples() -> None:
        found["result"] = dataset_examples(model, args.layer, images, k=args.k, batch_size=args.batch_size,
                                           reduce=args.reduce)

    timings: dict[str, list[float]] = {"forward": [], "dataset_examples": []}
    for fn in (plain, examples):  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved, best of: robust to a busy machine
        for name, fn in (("forward", plain), ("dataset_examples", examples)):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            timings[name].append(time.perf_counter() - start)
    forward = args.images / min(timings["forward"])
    ours = args.images / min(timings["dataset_examples"])
    return {
        "forward_images_per_s": round(forward, 1),
        "dataset_examples_images_per_s": round(ours, 1),
        "ratio": round(ours / forward, 3),
        "goal_ratio": 0.9,
        "channels": found["result"].channels,
    }


def _rss_mib() -> float:
    """Current resident memory (Linux ``/proc``; elsewhere the peak so far, from ``getrusage``)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _memory_child(n: int, args: argparse.Namespace) -> None:
    """Run in a subprocess: stream n images through dataset_examples; print memory figures as JSON.

    The resident memory is sampled between batches; the images come from a generator, so they never
    accumulate, and what could grow with n is netvis's running state.
    """
    device = torch.device(args.device)
    model = _model(device)
    samples: list[float] = []

    def batches():
        gen = torch.Generator().manual_seed(1)
        for start in range(0, n, args.batch_size):
            samples.append(_rss_mib())
            yield torch.randn(min(args.batch_size, n - start), 1, 28, 28, generator=gen)
        samples.append(_rss_mib())

    dataset_examples(model, args.layer, batches(), k=args.k, reduce=args.reduce)  # allocator warm-up
    samples.clear()
    base = _rss_mib()
    result = dataset_examples(model, args.layer, batches(), k=args.k, reduce=args.reduce)
    state = sum(t.numel() * t.element_size() for t in (result.values, result.indices, result.positions))
    print(json.dumps({"images": n, "rss_before_mib": round(base, 1), "peak_rss_mib": round(max(samples), 1),
                      "rss_growth_mib": round(max(samples) - base, 1), "state_bytes": state}))


def _memory(args: argparse.Namespace) -> dict:
    rows = []
    for n in (args.memory_images, 10 * args.memory_images):
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--layer", args.layer, "--k", str(args.k),
               "--batch-size", str(args.batch_size), "--device", args.device, "--reduce", args.reduce]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    small, large = rows
    return {
        "runs": rows,
        "peak_rss_ratio_10x_data": round(large["peak_rss_mib"] / small["peak_rss_mib"], 3),
        "flat": large["peak_rss_mib"] <= small["peak_rss_mib"] * 1.1 + 16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--reduce", default="mean", choices=["mean", "max"])
    parser.add_argument("--images", type=int, default=2000, help="images for the throughput test")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-images", type=int, default=500, help="n for the memory test (n and 10 n)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        _memory_child(args.memory_child, args)
        return
    device = torch.device(args.device)
    report = {
        "benchmark": "dataset_examples",
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "model": "resnet20_cifar (1x28x28 inputs, random weights)",
        "layer": args.layer,
        "k": args.k,
        "reduce": args.reduce,
        "images": args.images,
        "batch_size": args.batch_size,
        "throughput": _throughput(args, device),
        "memory": _memory(args),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
