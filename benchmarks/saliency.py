"""How fast are netvis's saliency methods? Occlusion, gradient and guided backprop against Captum.

Prints one JSON object: the device, versions, and for a torchvision model (weights=None, eval;
``--model``, default ResNet-18 on the CPU and ResNet-50 on a GPU) on 224x224 images:

* occlusion (window 16, stride 8: 27 x 27 = 729 positions per image): seconds per map for netvis, for
  Captum's ``Occlusion`` at several ``perturbations_per_eval`` (best reported), and for a naive loop
  over positions (one forward pass per position, timed on a subset of positions and extrapolated; the
  JSON says so); the largest difference between the maps;
* gradient and guided backprop: images per second at batch 16, netvis vs Captum (``Saliency``,
  ``GuidedBackprop``), and the largest difference between their results;
* with ``--bf16`` (the default on a GPU): netvis's ``precision="bf16"`` (bfloat16 autocast,
  channels-last input on CUDA) for occlusion, gradient and guided backprop, its speed over Captum's
  fp32, and its agreement with netvis's fp32 map (largest difference relative to the map's range, and
  the Pearson correlation).

Usage::

    python benchmarks/saliency.py [--device cpu|cuda] [--model resnet50] [--quick] [--bf16/--no-bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import warnings

import torch
import torchvision
from _timing import device_name, timed

from netvis import saliency


def agreement(low: torch.Tensor, ref: torch.Tensor) -> dict:
    """How close a bf16 map is to the fp32 one: largest difference over the fp32 map's range; correlation."""
    low, ref = low.double().flatten(), ref.double().flatten()
    span = float(ref.max() - ref.min()) or 1.0
    corr = float(torch.corrcoef(torch.stack([low, ref]))[0, 1])
    return {"max_abs_diff_vs_fp32_over_range": float((low - ref).abs().max()) / span, "pearson_vs_fp32": corr}


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
    parser.add_argument("--model", default=None, help="torchvision model (default resnet18 on CPU, resnet50 on GPU)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time precision='bf16' (default: on a GPU)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", module="captum")

    from captum import __version__ as captum_version
    from captum.attr import GuidedBackprop, Occlusion, Saliency

    device = torch.device(args.device)
    repeats = 1 if args.quick else 3
    window, stride = 16, 8
    model_name = args.model or ("resnet50" if device.type == "cuda" else "resnet18")
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    torch.manual_seed(0)
    model = getattr(torchvision.models, model_name)(weights=None).eval().to(device)
    x1 = torch.rand(1, 3, args.size, args.size, device=device)
    with torch.no_grad():
        target = int(model(x1).argmax(1))
    hp = (args.size - window) // stride + 1
    positions = hp * hp

    # occlusion: batched re-inference (the incremental engine has benchmarks/occlusion_incremental.py)
    def netvis_occlusion(**options):
        return saliency.occlusion(model, x1, target, window=window, stride=stride, engine="batched", **options)

    netvis_s, netvis_map = timed(lambda: netvis_occlusion(output="drop", upsample=True), device, repeats)
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
    score_map = netvis_occlusion()
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

    low_precision = {}
    if bf16:
        bf16_s, bf16_map = timed(lambda: netvis_occlusion(output="drop", upsample=True, precision="bf16"),
                                 device, repeats)
        low_precision["occlusion"] = {
            "netvis_bf16_s_per_map": bf16_s,
            "speedup_vs_captum_best_fp32": captum[best_ppe] / bf16_s,
            "speedup_vs_netvis_fp32": netvis_s / bf16_s,
            **agreement(bf16_map, netvis_map),
        }

    # gradient and guided backprop: netvis (fp32, and bf16 with --bf16) against Captum (fp32) ---------
    xb = torch.rand(args.batch, 3, args.size, args.size, device=device)
    tb = torch.arange(args.batch, device=device) % 1000
    gradients = {}
    pairs = {
        "gradient": (lambda p: saliency.gradient(model, xb, tb, precision=p),
                     lambda: Saliency(model).attribute(xb, target=tb, abs=True)),
        "guided_backprop": (lambda p: saliency.guided_backprop(model, xb, tb, precision=p),
                            lambda: GuidedBackprop(model).attribute(xb, target=tb)),
    }
    for name, (ours, theirs) in pairs.items():
        ours("fp32")  # warm-up
        ours_s, ours_out = timed(lambda ours=ours: ours("fp32"), device, repeats)
        theirs_s, theirs_out = timed(theirs, device, repeats)
        gradients[name] = {
            "batch": args.batch,
            "netvis_images_per_s": args.batch / ours_s,
            "captum_images_per_s": args.batch / theirs_s,
            "netvis_over_captum_speed": theirs_s / ours_s,
            "max_abs_diff": float((ours_out - theirs_out).abs().max()),
        }
        if bf16:  # against the fp32 timings and maps above
            ours("bf16")  # warm-up
            bf16_s, bf16_out = timed(lambda ours=ours: ours("bf16"), device, repeats)
            low_precision[name] = {
                "batch": args.batch,
                "netvis_bf16_images_per_s": args.batch / bf16_s,
                "captum_fp32_images_per_s": args.batch / theirs_s,
                "netvis_bf16_over_captum_fp32_speed": theirs_s / bf16_s,
                **agreement(bf16_out, ours_out),
            }

    print(json.dumps({
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum_version,
        "cpu_threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "model": f"torchvision {model_name}, weights=None, eval",
        "quick": args.quick,
        "occlusion": occlusion,
        **gradients,
        "bf16": low_precision or None,
    }, indent=2))


if __name__ == "__main__":
    main()
