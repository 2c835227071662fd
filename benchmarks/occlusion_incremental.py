"""Is incremental occlusion faster than re-running the network? Approximations with a quality contract vs Captum.

``--part contract`` (the default) answers the question on *trained* weights, where SSIM means something:
for each model, calibration images pick the cheapest approximate setting that meets ``--min-ssim``
against the exact map (:func:`netvis.saliency.incremental.approximate_occlusion`; exact when none does),
which then maps held-out images. In the same process and on the same images it times Captum's
``Occlusion`` (the peer: batched re-inference of every occluded image) and netvis's exact incremental
engine, and reports per model the speed-up of the approximation over Captum (the map alone, and with the
calibration counted), the SSIM of its maps against the exact maps on the calibration and on the held-out
images, and Captum's largest difference to netvis's exact map (the two compute the same map).

Models: ``wafer-maps-resnet`` (netvis's shipped checkpoint: a ResNet-20 trained on 64x64 synthetic wafer
maps, run here on 224x224 wafer maps; the only trained network on this machine), and torchvision's
``resnet18`` and ``vgg16`` -- no pretrained weights can be downloaded here, so these have *random*
weights (``weights=None``, seed 0); the JSON says so for each model (``"weights"``). Inputs are test wafer
maps from ``netvis.data.wafer`` at 224x224 (three equal channels for the torchvision models).

``--part engines`` is the earlier measurement on random-weight torchvision models: engines, Captum and
the approximations.

Prints one JSON object. For each torchvision model (``weights=None``, eval mode) on one 224x224 image,
window 16, stride 8 (27 x 27 = 729 positions), it times one occlusion map computed by

* ``batched``: :func:`netvis.saliency.occlusion` with ``engine="batched"`` (re-runs the whole network on
  batches of occluded images);
* ``incremental``: :func:`netvis.saliency.incremental.incremental_occlusion` (each layer recomputes only
  the box the window can reach; exact);
* ``captum``: Captum's ``Occlusion`` at each ``perturbations_per_eval`` of ``--captum-ppe`` (best kept);
* ``threshold``: projective-field thresholding, ``tau`` (approximate);
* ``drilldown``: adaptive drill-down, coarse stride ``2 * stride``, the top quarter of positions at the
  fine stride (approximate);

and reports seconds per map (for the approximate modes without the exact map their report also computes),
the speed-up over ``batched``, the largest difference to ``batched``
(relative to the map's largest magnitude), the SSIM of the drop map against ``batched``'s, the share of
multiply-accumulates the incremental plan needs, and the peak memory of each engine: every engine runs
in its own process, which reports its peak resident memory (Linux ``VmHWM``, reset after the model is
loaded; ``ru_maxrss`` where that is not possible) or, on CUDA, ``torch.cuda.max_memory_allocated``.

A last part measures the approximations where SSIM means something: on netvis's trained Fashion-MNIST
ResNet-20 (the shipped checkpoint ``fashion-mnist-small``) and test images of the shipped sample, the SSIM
of ``tau`` in {0.3, 0.5, 0.7} and of drill-down at 10%, 25% and 50% against the exact drop maps.

``--quick`` uses stride 16 (14 x 14 = 196 positions; the windows are still 16 x 16, so each position
costs what it costs at stride 8, and Captum's grid still matches netvis's because 16 divides 224 - 16)
and one Captum setting; ``--captum-ppe none`` leaves Captum out.

Usage::

    python benchmarks/occlusion_incremental.py [--models resnet18,vgg16] [--quick] [--threads N]
        [--device cpu|cuda] [--stride 8] [--window 16] [--size 224] [--batch-size 64] [--tau 0.4]
        [--captum-ppe 16,64|none] [--trained-images 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision
from _timing import device_name, sync, timed

from netvis.data.wafer import pass_value
from netvis.saliency.incremental import approximate_occlusion, calibrate_occlusion, incremental_occlusion, ssim
from netvis.saliency.occlusion import occlusion, upsample_map


def build(name: str, state_path: str | None = None) -> torch.nn.Module:
    """A torchvision model: randomly initialised, or (fast, no initialisation) loaded from ``state_path``."""
    if state_path is None:
        return getattr(torchvision.models, name)(weights=None).eval()
    with torch.device("meta"):
        model = getattr(torchvision.models, name)(weights=None)
    model.load_state_dict(torch.load(state_path, weights_only=True), assign=True)
    return model.eval()


def rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------------
# One engine, in its own process
# ----------------------------------------------------------------------------------------------------


def child(job: dict) -> None:
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    warnings.filterwarnings("ignore", module="captum")
    device = torch.device(job["device"])
    model = build(job["model"], job["state"]).to(device)
    x = torch.load(job["input"], weights_only=True).to(device)
    target, window, stride, engine = job["target"], job["window"], job["stride"], job["engine"]
    options = {"window": window, "stride": stride, "batch_size": job["batch_size"]}
    result: dict = {}

    def run():
        if engine == "batched":
            return occlusion(model, x, target, engine="batched", **options)
        if engine == "incremental":
            maps, report = incremental_occlusion(model, x, target, report=True, **options)
            result["macs_fraction"] = report.macs_fraction
            result["engine_used"] = report.engine
            return maps
        if engine in ("threshold", "drilldown"):
            approximation = {"tau": job["tau"]} if engine == "threshold" else {
                "drilldown": 2 * stride, "drilldown_fraction": 0.25}
            maps, report = incremental_occlusion(model, x, target, report=True, **approximation, **options)
            result["positions_evaluated"] = report.positions
            result["macs_fraction"] = report.macs_fraction
            result["seconds_of_map"] = report.seconds  # the report also computed the exact map, for its SSIM
            result["ssim_vs_exact_incremental"] = report.ssim
            return maps
        from captum.attr import Occlusion

        return Occlusion(model).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=x.mean(),
            target=target, perturbations_per_eval=job["ppe"],
        )[:, 0]

    baseline = rss_mb("VmRSS")
    exact_peak = reset_peak_rss()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        maps = run()
    sync(device)
    result["seconds"] = result.pop("seconds_of_map", time.perf_counter() - start)
    if device.type == "cuda":
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    peak = rss_mb("VmHWM") if exact_peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["peak_rss_mb"] = peak
    result["rss_before_mb"] = baseline
    result["extra_rss_mb"] = None if (peak is None or baseline is None) else peak - baseline
    result["peak_rss_method"] = "VmHWM reset after loading" if exact_peak else "ru_maxrss (includes loading)"
    torch.save(maps.detach().cpu(), job["output"])
    print(json.dumps(result))


def run_job(job: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"job {job['engine']} on {job['model']} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["map"] = torch.load(job["output"], weights_only=True)
    return result


# ----------------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------------


def bench_model(name: str, args: argparse.Namespace, stride: int, ppes: list[int], folder: Path) -> dict:
    torch.manual_seed(0)
    model = build(name)
    state = folder / f"{name}.pt"
    torch.save(model.state_dict(), state)
    x = torch.rand(1, 3, args.size, args.size)
    torch.save(x, folder / "x.pt")
    with torch.no_grad():
        logits = model(x)
    target = int(logits.argmax(1))
    clean = float(logits[0, target])
    base = {
        "model": name, "state": str(state), "input": str(folder / "x.pt"), "target": target, "window": args.window,
        "stride": stride, "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "tau": args.tau,
    }
    jobs = {"batched": {}, "incremental": {}, "threshold": {}, "drilldown": {}}
    jobs.update({f"captum_ppe{p}": {"engine": "captum", "ppe": p} for p in ppes})
    results = {}
    for key, extra in jobs.items():
        job = {**base, "engine": key, **extra, "output": str(folder / f"{name}-{key}.pt")}
        results[key] = run_job(job)

    ref = results["batched"]["map"]  # (1, H', W') scores
    ref_drop = clean - ref
    scale = float(ref.abs().max())
    hp = ref.shape[-2]
    report: dict = {"target": target, "clean_score": clean, "grid": list(ref.shape[-2:])}
    for key, r in results.items():
        entry = {k: v for k, v in r.items() if k != "map"}
        if key.startswith("captum"):
            ours = upsample_map(ref_drop, (args.size, args.size), (args.window, args.window), (stride, stride))
            covered = ~torch.isnan(ours)
            entry["max_abs_diff_vs_batched_drop_upsampled"] = float((r["map"] - ours)[covered].abs().max())
        else:
            entry["max_rel_diff_vs_batched"] = float((r["map"] - ref).abs().max()) / scale
            if hp >= 3:
                entry["ssim_drop_vs_batched"] = float(ssim((clean - r["map"])[0], ref_drop[0]))
        entry["speedup_vs_batched"] = results["batched"]["seconds"] / r["seconds"]
        report[key] = entry
    captum = [k for k in results if k.startswith("captum")]
    if captum:
        best = min(captum, key=lambda k: results[k]["seconds"])
        report["captum_best"] = best
        report["incremental_speedup_vs_captum_best"] = results[best]["seconds"] / results["incremental"]["seconds"]
    report["ref_map_std_over_max"] = float(ref.std()) / scale
    return report


def bench_trained(args: argparse.Namespace) -> dict:
    """Quality of the approximations on a trained model: netvis's shipped Fashion-MNIST ResNet-20.

    Random weights give maps close to noise, on which SSIM says little. This part uses the checkpoint
    ``fashion-mnist-small`` and the first ``--trained-images`` test images of the sample shipped with netvis
    (28 x 28, window 4, stride 2: 13 x 13 positions), in this process.
    """
    import netvis
    from netvis.data.fashion_mnist import load_idx_folder

    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = netvis.load_checkpoint("fashion-mnist-small")
    sample = Path(netvis.__file__).parent / "assets" / "fashion-mnist-sample"
    x = ckpt.preprocess(load_idx_folder(sample, "test").images[: args.trained_images])
    model = ckpt.model.eval()
    with torch.no_grad():
        predicted = model(x).argmax(1)
    options = {"window": 4, "stride": 2, "output": "drop"}
    cpu = torch.device("cpu")
    batched_s, ref = timed(lambda: occlusion(model, x, predicted, engine="batched", **options), cpu)
    incremental_s, (exact, info) = timed(
        lambda: incremental_occlusion(model, x, predicted, report=True, **options), cpu)
    out: dict = {
        "model": "netvis fashion-mnist-small (resnet20_cifar, 1 x 28 x 28, trained)", "images": len(x),
        "window": 4, "stride": 2, "grid": list(exact.shape[-2:]), "map": "drop",
        "batched_s": batched_s, "incremental_s": incremental_s, "speedup": batched_s / incremental_s,
        "incremental_macs_fraction": info.macs_fraction,
        "incremental_max_rel_diff": float((exact - ref).abs().max() / ref.abs().max()),
        "ref_map_std_over_max": float(ref.std() / ref.abs().max()),
        "threshold": {}, "drilldown": {},
    }
    for tau in (0.3, 0.5, 0.7):
        _, report = incremental_occlusion(model, x, predicted, tau=tau, report=True, **options)
        out["threshold"][str(tau)] = {"macs_fraction": report.macs_fraction, "seconds": report.seconds,
                                      "ssim_mean": sum(report.ssim) / len(report.ssim), "ssim": report.ssim}
    for fraction in (0.1, 0.25, 0.5):
        _, report = incremental_occlusion(model, x, predicted, drilldown=4, drilldown_fraction=fraction,
                                          report=True, **options)
        out["drilldown"][str(fraction)] = {
            "coarse_stride": 4, "positions": report.positions, "of": report.total_positions,
            "seconds": report.seconds, "ssim_mean": sum(report.ssim) / len(report.ssim), "ssim": report.ssim,
        }
    return out


# ----------------------------------------------------------------------------------------------------
# The quality contract on trained weights, against Captum
# ----------------------------------------------------------------------------------------------------


def wafer_inputs(n: int, seed: int, size: int, channels: int, preprocess=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test wafer maps with a defect (the first of each class, in class order), preprocessed."""
    from netvis.data.wafer import WAFER_CLASSES, generate_wafer_maps

    labels = torch.arange(len(WAFER_CLASSES) - 1).repeat(n)[:n]  # defect classes only
    maps = generate_wafer_maps(labels.numpy(), rng=seed, size=size)
    images = torch.from_numpy(maps.images)[:, None]
    if preprocess is not None:
        x = preprocess(images)
    else:
        x = images.float() / 255
    return x.expand(-1, channels, -1, -1).contiguous(), labels


def captum_occlusion(model, x, target, window: int, stride: int, fill: float, ppe: int) -> torch.Tensor:
    from captum.attr import Occlusion

    c = x.shape[1]
    out = Occlusion(model).attribute(x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                     baselines=fill, target=target, perturbations_per_eval=ppe)
    return out[:, 0]


def contract_models(names: list[str], trained: dict[str, str] | None = None) -> list[dict]:
    import netvis

    trained = trained or {}
    out = []
    for name in names:
        if name == "wafer-maps-resnet":
            with torch.random.fork_rng(devices=[]):
                ckpt = netvis.load_checkpoint("wafer-maps-resnet")
            final = ckpt.meta["final_metrics"]
            weights = (f"trained on 64x64 synthetic wafer maps (test accuracy {final.get('test_accuracy'):.4f} at "
                       f"64x64, {final.get('test_accuracy_224_dies224')} at 224x224 one die per pixel)")
            out.append({"name": name, "model": ckpt.model.eval(), "channels": 1, "preprocess": ckpt.preprocess,
                        "weights": weights})
        elif name.endswith(":trained"):  # weights trained on 224x224 wafer maps (benchmarks/train_wafer_resnet18.py)
            arch = name.removesuffix(":trained")
            path = Path(trained[arch]).expanduser()
            state = torch.load(path, map_location="cpu", weights_only=True)
            model = getattr(torchvision.models, arch)(num_classes=state["fc.weight"].shape[0])
            model.load_state_dict(state)
            report = path.with_suffix(".json")
            acc = json.loads(report.read_text()).get("test_accuracy") if report.exists() else None
            out.append({"name": f"{arch} (trained)", "model": model.eval(), "channels": 3, "preprocess": None,
                        "weights": f"trained on 224x224 wafer maps ({path.name}; test accuracy {acc})"})
        else:
            torch.manual_seed(0)
            out.append({"name": name, "model": getattr(torchvision.models, name)(weights=None).eval(), "channels": 3,
                        "preprocess": None,
                        "weights": "random (weights=None, seed 0): no pretrained weights can be downloaded here"})
    return out


def bench_contract(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = {}
    trained = dict(item.split("=", 1) for item in args.trained)
    names = [m.strip() for m in args.contract_models.split(",") if m.strip()]
    names += [f"{n}:trained" for n in trained]
    for spec in contract_models(names, trained):
        name, model = spec["name"], spec["model"].to(device)
        stride = args.stride or (8 if name == "wafer-maps-resnet" else 16)
        window = args.window
        x_all, _ = wafer_inputs(args.calibration + args.held_out, 11, args.size, spec["channels"], spec["preprocess"])
        x_all = x_all.to(device)
        with torch.no_grad():
            predicted = model(x_all).argmax(1)
        cal_x, x = x_all[: args.calibration], x_all[args.calibration :]
        cal_t, t = predicted[: args.calibration], predicted[args.calibration :]
        fill = float(x_all.mean()) if spec["preprocess"] is None else pass_value(spec["preprocess"])
        options = {"window": window, "stride": stride, "fill": fill, "output": "drop", "batch_size": args.batch_size}
        # the peer
        start = time.perf_counter()
        captum_map = captum_occlusion(model, x, t, window, stride, fill, args.ppe)
        sync(device)
        captum_s = time.perf_counter() - start
        # netvis exact (incremental) on the held-out images
        start = time.perf_counter()
        exact, exact_report = incremental_occlusion(model, x, t, report=True, **options)
        sync(device)
        exact_s = time.perf_counter() - start
        # calibration, then the approximation on the held-out images
        calibration = calibrate_occlusion(model, cal_x, cal_t, min_ssim=args.min_ssim, margin=args.margin, **options)
        start = time.perf_counter()
        approx, report = approximate_occlusion(model, x, t, min_ssim=args.min_ssim, calibration=calibration, **options)
        sync(device)
        approx_s = time.perf_counter() - start
        held_ssim = [float(v) for v in ssim(approx, exact).reshape(-1)]
        ours_upsampled = upsample_map(exact, tuple(x.shape[-2:]), (window, window), (stride, stride))
        covered = ~torch.isnan(ours_upsampled)
        results[name] = {
            "weights": spec["weights"],
            "input": [spec["channels"], args.size, args.size], "window": window, "stride": stride,
            "grid": list(exact.shape[-2:]), "fill": fill, "calibration_images": len(cal_x), "held_out_images": len(x),
            "min_ssim": args.min_ssim, "margin": args.margin,
            "chosen": calibration.setting.name(), "contract_met_by_an_approximation": calibration.met,
            "estimated_cost_vs_exact_incremental": calibration.cost,
            "ssim_calibration": calibration.ssim, "ssim_held_out": held_ssim,
            "held_out_min_ssim": min(held_ssim), "held_out_meets_min_ssim": min(held_ssim) >= args.min_ssim,
            "captum_s": captum_s, "captum_ppe": args.ppe,
            "exact_incremental_s": exact_s, "exact_incremental_macs_fraction": exact_report.macs_fraction,
            "approximate_s": approx_s, "calibration_s": calibration.seconds,
            "positions_evaluated": report.positions, "positions_total": report.total_positions,
            "speedup_vs_captum": captum_s / approx_s,
            "speedup_vs_captum_with_calibration": captum_s / (approx_s + calibration.seconds),
            "exact_incremental_speedup_vs_captum": captum_s / exact_s,
            "captum_max_abs_diff_vs_exact_upsampled": float((captum_map - ours_upsampled)[covered].abs().max()),
            "exact_map_max": float(exact.abs().max()),
            "tried": calibration.tried,
        }
        print(json.dumps({name: {k: v for k, v in results[name].items() if k != "tried"}}), file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet18,vgg16", help="comma-separated torchvision model names")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="stride 16 (196 positions) and one Captum setting")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=None, help="default 8 (16 with --quick)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tau", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--captum-ppe", default=None,
                        help="comma-separated perturbations_per_eval (default 16,64; 64 with --quick), or none")
    parser.add_argument("--trained-images", type=int, default=4,
                        help="test images for the trained-model part (0 leaves it out)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--part", default="contract", choices=("contract", "engines"))
    parser.add_argument("--contract-models", default="wafer-maps-resnet,resnet18,vgg16")
    parser.add_argument("--trained", action="append", default=[], metavar="NAME=PATH",
                        help="torchvision model NAME with trained weights from PATH (a state_dict, e.g. from "
                        "benchmarks/train_wafer_resnet18.py); measured besides the random-weight one; repeatable")
    parser.add_argument("--min-ssim", type=float, default=0.9)
    parser.add_argument("--margin", type=float, default=0.02)
    parser.add_argument("--calibration", type=int, default=2, help="calibration images per model")
    parser.add_argument("--held-out", type=int, default=2, help="held-out images per model")
    parser.add_argument("--ppe", type=int, default=64, help="Captum's perturbations_per_eval")
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.child is not None:
        child(json.loads(args.child))
        return
    if args.part == "contract":
        from captum import __version__ as captum_version

        start = time.perf_counter()
        out = {
            "benchmark": "occlusion_incremental (quality contract vs Captum)",
            "device": device_name(torch.device(args.device)), "device_type": args.device,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "captum": captum_version,
            "cpu_threads": args.threads or torch.get_num_threads(),
            "models": bench_contract(args),
        }
        out["load_average_1min_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        out["wall_seconds"] = time.perf_counter() - start
        text = json.dumps(out, indent=2)
        print(text)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        return
    stride = args.stride or (16 if args.quick else 8)
    if args.captum_ppe == "none":
        ppes = []
    else:
        ppes = [int(p) for p in args.captum_ppe.split(",")] if args.captum_ppe else ([64] if args.quick else [16, 64])
    from captum import __version__ as captum_version

    start = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "none"]:
            results[name] = bench_model(name, args, stride, ppes, Path(tmp))
    device = torch.device(args.device)
    print(json.dumps({
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "captum": captum_version,
        "cpu_threads": args.threads or torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "quick": args.quick,
        "image": [args.size, args.size], "window": args.window, "stride": stride,
        "batch_size": args.batch_size, "tau": args.tau, "drilldown": {"coarse_stride": 2 * stride, "fraction": 0.25},
        "models": results,
        "trained": bench_trained(args) if args.trained_images > 0 else None,
        "wall_seconds": time.perf_counter() - start,
    }, indent=2))


if __name__ == "__main__":
    main()
