"""How fast are netvis's saliency methods? Occlusion, gradient and guided backprop against Captum.

Prints one JSON object: the device, versions, and for torchvision's ResNet-18 (weights=None, eval) on
224x224 images:

* occlusion (window 16, stride 8: 27 x 27 = 729 positions per image): seconds per map for netvis, for
  Captum's ``Occlusion`` at several ``perturbations_per_eval`` (best reported), and for a naive loop
  over positions (one forward pass per position, timed on a subset of positions and extrapolated; the
  JSON says so); the largest difference between the maps;
* gradient and guided backprop: images per second at batch 16, netvis vs Captum (``Saliency``,
  ``GuidedBackprop``), and the largest difference between their results.

Usage::

    python benchmarks/saliency.py [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
import warnings

import torch
import torchvision

from netvis import saliency


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls (after the first result is kept) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best, result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def naive_occlusion(model, x, target, window, stride, positions):
    """The lecture's loop: one copy, one fill and one forward pass per position (first ``positions`` only)."""
    _, _, h, w = x.shape
    wp = (w - window) // stride + 1
    out = []
    with torch.no_grad():
        for p in range(positions):
            i, j = divmod(p, wp)
            img = x[0].clone()
            img[:, i * stride : i * stride + window, j * stride : j * stride + window] = img.mean()
            out.append(model(img[None])[0, target])
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and Captum settings")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")

    from captum import __version__ as captum_version
    from captum.attr import GuidedBackprop, Occlusion, Saliency

    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    window, stride = 16, 8
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    x1 = torch.rand(1, 3, args.size, args.size, device=device)
    with torch.no_grad():
        target = int(model(x1).argmax(1))
    hp = (args.size - window) // stride + 1
    positions = hp * hp

    # occlusion: batched re-inference (the incremental engine has benchmarks/occlusion_incremental.py)
    batched = {"engine": "batched"} if "engine" in inspect.signature(saliency.occlusion).parameters else {}
    netvis_s, netvis_map = timed(
        lambda: saliency.occlusion(model, x1, target, window=window, stride=stride, output="drop",
                                   upsample=True, **batched), device, repeats)
    captum = {}
    captum_map = None
    baselines = x1.mean()
    for ppe in ([64] if args.quick else [16, 64, 256]):
        seconds, captum_map = timed(
            lambda ppe=ppe: Occlusion(model).attribute(
                x1, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                baselines=baselines, target=target, perturbations_per_eval=ppe),
            device, 1)
        captum[str(ppe)] = seconds
    best_ppe = min(captum, key=captum.get)
    subset = min(16 if args.quick else 48, positions)
    naive_subset_s, naive_scores = timed(
        lambda: naive_occlusion(model, x1, target, window, stride, subset), device, 1)
    score_map = saliency.occlusion(model, x1, target, window=window, stride=stride, **batched)
    naive_diff = float((score_map.flatten()[:subset] - naive_scores).abs().max())
    occlusion = {
        "image": [args.size, args.size], "window": window, "stride": stride, "positions_per_map": positions,
        "netvis_s_per_map": netvis_s, "netvis_batch_size": 256, "netvis_engine": "batched",
        "captum_s_per_map_by_perturbations_per_eval": captum,
        "captum_best_perturbations_per_eval": int(best_ppe),
        "captum_best_s_per_map": captum[best_ppe],
        "naive_loop_s_per_map": naive_subset_s * positions / subset,
        "naive_loop_note": f"timed on the first {subset} of {positions} positions, extrapolated linearly",
        "speedup_vs_captum_best": captum[best_ppe] / netvis_s,
        "speedup_vs_naive_loop": naive_subset_s * positions / subset / netvis_s,
        "max_abs_diff_vs_captum": float((netvis_map - captum_map[:, 0]).abs().max()),
        "max_abs_diff_vs_naive_loop": naive_diff,
    }

    # gradient and guided backprop -----------------------------------------------------------------
    xb = torch.rand(args.batch, 3, args.size, args.size, device=device)
    tb = torch.arange(args.batch, device=device) % 1000
    gradients = {}
    pairs = {
        "gradient": (lambda: saliency.gradient(model, xb, tb),
                     lambda: Saliency(model).attribute(xb, target=tb, abs=True)),
        "guided_backprop": (lambda: saliency.guided_backprop(model, xb, tb),
                            lambda: GuidedBackprop(model).attribute(xb, target=tb)),
    }
    for name, (ours, theirs) in pairs.items():
        ours()  # warm-up
        ours_s, ours_out = timed(ours, device, repeats)
        theirs_s, theirs_out = timed(theirs, device, repeats)
        gradients[name] = {
            "batch": args.batch,
            "netvis_images_per_s": args.batch / ours_s,
            "captum_images_per_s": args.batch / theirs_s,
            "netvis_over_captum_speed": theirs_s / ours_s,
            "max_abs_diff": float((ours_out - theirs_out).abs().max()),
        }

    print(json.dumps({
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum_version,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "model": "torchvision resnet18, weights=None, eval",
        "quick": args.quick,
        "occlusion": occlusion,
        **gradients,
    }, indent=2))


if __name__ == "__main__":
    main()
