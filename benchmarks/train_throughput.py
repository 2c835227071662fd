"""Training throughput of netvis's ResNet-18 and DenseNet-121 against torchvision's, as JSON.

Both implementations get the same input batch, loss (cross-entropy), optimizer (SGD with momentum)
and device; each training step is forward, backward and optimizer step. The timed steps alternate
between the two implementations so that a busy machine slows both alike. On a GPU the step runs
under bf16 autocast (fp16 where bf16 is unsupported) with channels-last tensors, as ``netvis train``
does; on the CPU in fp32 with a small batch and image size.

Usage::

    python benchmarks/train_throughput.py                 # auto device
    python benchmarks/train_throughput.py --device cpu --batch-size 4 --image-size 96 --steps 3

Prints one JSON object: device, settings, and per model the images/s of both implementations and
their ratio (netvis / torchvision; 1.0 means equally fast).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torchvision

from netvis.devices import resolve_device
from netvis.models import create
from netvis.train.evaluate import autocast_context

MODELS = {"resnet18": torchvision.models.resnet18, "densenet121": torchvision.models.densenet121}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(model, x, y, device, precision):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, precision):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    return step


def _timed(step, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    precision = args.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    batch = args.batch_size or (64 if cuda else 4)
    size = args.image_size or (224 if cuda else 96)
    steps = args.steps or (20 if cuda else 3)
    channels_last = cuda if args.channels_last is None else args.channels_last
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator).to(device)
    y = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for name in args.models:
        torch.manual_seed(0)
        models = {"netvis": create(name), "torchvision": MODELS[name]()}
        fns = {}
        for key, model in models.items():
            model.to(device).train()
            if channels_last:
                model.to(memory_format=torch.channels_last)
            fns[key] = _step_fn(model, x, y, device, precision)
            for _ in range(args.warmup):
                _timed(fns[key], device)
        times: dict[str, list[float]] = {key: [] for key in fns}
        for _ in range(steps):
            for key, fn in fns.items():
                times[key].append(_timed(fn, device))
        rates = {key: batch / statistics.median(ts) for key, ts in times.items()}
        results.append({
            "model": name,
            "netvis_images_per_s": round(rates["netvis"], 2),
            "torchvision_images_per_s": round(rates["torchvision"], 2),
            "ratio": round(rates["netvis"] / rates["torchvision"], 3),
            "parameters": sum(p.numel() for p in models["netvis"].parameters()),
        })
        del models, fns
    hardware = {"device": str(device), "cpu_threads": torch.get_num_threads(),
                "processor": platform.processor() or platform.machine()}
    if cuda:
        hardware["gpu"] = torch.cuda.get_device_name(device)
    return {
        "benchmark": "train_throughput",
        "hardware": hardware,
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "settings": {"batch_size": batch, "image_size": size, "steps": steps, "warmup": args.warmup,
                     "precision": precision, "channels_last": channels_last,
                     "step": "forward + cross-entropy + backward + SGD step", "statistic": "median step time"},
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 on a GPU, 4 on the CPU")
    parser.add_argument("--image-size", type=int, default=None, help="default 224 on a GPU, 96 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="timed steps; default 20 on a GPU, 3 on the CPU")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    result = run(parser.parse_args(argv))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
