"""Model inversion on the shipped Fashion-MNIST model: does it reconstruct, and how fast? Prints JSON.

On ``netvis.load_checkpoint("fashion-mnist-small")`` (or, when that checkpoint is not installed, a freshly
initialised ``resnet20_cifar`` with one input channel -- the JSON says which) and test images of the
Fashion-MNIST sample shipped with netvis:

1. ``early_layer``: L-BFGS inversion (Mahendran & Vedaldi) from an early layer brings the normalised feature
   error below 1% of its starting value (goal: ``ratio < 0.01``).
2. ``total_variation``: the result's total variation with ``tv_weight > 0`` is lower than with 0.
3. ``lbfgs_vs_adam``: on the same problem (same objective, start and seed), the function evaluations
   L-BFGS needs to reach Adam's final loss, against Adam's evaluations (goal: fewer).
4. ``inverter``: a trained up-convolutional inverter (Dosovitskiy & Brox) against optimisation on held-out
   images: pixel MSE of the inverter, of L-BFGS given the same wall time as the inverter's reconstruction
   of the batch, given the inverter's training plus reconstruction time, and of L-BFGS run to its default
   step count; and the inverter's images/s (best of 3 over 512 images: decoder only, the model up to the
   layer only, and end to end; goal >= 1000 on the CPU).

Usage::

    python benchmarks/inversion.py                   # about 3-5 minutes on two CPU cores
    python benchmarks/inversion.py --quick           # fewer images, steps and epochs
    python benchmarks/inversion.py --device cuda --threads 4
    python benchmarks/inversion.py --checkpoint runs/my-run/checkpoint.pt
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

import netvis
from netvis.data import Preprocess, load
from netvis.inversion import invert, pixel_bounds, total_variation, train_inverter


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_and_preprocess(checkpoint: str, device: torch.device) -> tuple[torch.nn.Module, Preprocess, str]:
    try:
        ckpt = netvis.load_checkpoint(checkpoint)
        return ckpt.model.to(device).eval(), ckpt.preprocess, f"netvis.load_checkpoint({checkpoint!r})"
    except netvis.CheckpointError as exc:
        from netvis.models import create

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create("resnet20_cifar", in_channels=1, num_classes=10)
        train = load("fashion-mnist-sample", "train")
        source = (f"fresh resnet20_cifar(in_channels=1), untrained, seed 0: checkpoint {checkpoint!r} is not "
                  f"available ({exc})")
        return model.to(device).eval(), train.preprocess, source


def _evals_to_reach(losses: list[float], target: float) -> int | None:
    return next((i + 1 for i, value in enumerate(losses) if value <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="fashion-mnist-small", help="checkpoint path or shipped name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="fewer images, steps and epochs")
    parser.add_argument("--layer", default="layer1.0", help="the early layer (default layer1.0)")
    parser.add_argument("--images", type=int, help="images inverted by optimisation (default 8, quick 4)")
    parser.add_argument("--epochs", type=int, help="inverter training epochs (default 8, quick 3)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n_images = args.images or (4 if args.quick else 8)
    epochs = args.epochs if args.epochs is not None else (3 if args.quick else 8)
    steps = 60 if args.quick else 100
    adam_steps = 150 if args.quick else 300

    model, preprocess, source = _model_and_preprocess(args.checkpoint, device)
    test = load("fashion-mnist-sample", "test")
    train = load("fashion-mnist-sample", "train")
    targets = preprocess(test.images[:n_images]).to(device)
    bounds = tuple(b.to(device) for b in pixel_bounds(preprocess))
    report: dict = {
        "model": source,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "layer": args.layer,
        "images": n_images,
        "units": "errors are normalised feature errors; pixel MSEs are in model-input (normalised) units",
    }

    invert(model, targets[:1], args.layer, steps=2, seed=0, bounds=bounds)  # warm-up (lazy imports, kernels)

    # 1. early layer: L-BFGS with the defaults (tv_weight 0.05)
    t0 = time.perf_counter()
    lbfgs = invert(model, targets, args.layer, steps=steps, seed=0, bounds=bounds)
    report["early_layer"] = {
        "optimizer": "lbfgs", "steps": lbfgs.steps, "n_evals": lbfgs.n_evals,
        "initial_error": lbfgs.initial_error, "final_error": lbfgs.error,
        "ratio": lbfgs.error / lbfgs.initial_error, "goal": "ratio < 0.01",
        "passed": lbfgs.error < 0.01 * lbfgs.initial_error,
        "pixel_mse": float(F.mse_loss(lbfgs.image, targets)),
        "seconds": time.perf_counter() - t0,
    }

    # 2. total variation with and without the regulariser (same start, same steps)
    no_tv = invert(model, targets, args.layer, steps=steps, seed=0, bounds=bounds, tv_weight=0.0)
    tv = {str(w): float(total_variation(r.image).mean()) for w, r in ((0.0, no_tv), (0.05, lbfgs))}
    report["total_variation"] = {
        "target": float(total_variation(targets).mean()),
        "result_by_tv_weight": tv,
        "feature_error_by_tv_weight": {"0.0": no_tv.error, "0.05": lbfgs.error},
        "passed": tv["0.05"] < tv["0.0"],
    }

    # 3. L-BFGS against Adam on the same problem
    t0 = time.perf_counter()
    adam = invert(model, targets, args.layer, steps=adam_steps, seed=0, bounds=bounds, optimizer="adam")
    adam_seconds = time.perf_counter() - t0
    reach = _evals_to_reach(lbfgs.losses, adam.losses[-1])
    report["lbfgs_vs_adam"] = {
        "adam_evals": adam.n_evals, "adam_final_loss": adam.losses[-1], "adam_final_error": adam.error,
        "adam_seconds": adam_seconds,
        "lbfgs_evals_to_reach_adam_final_loss": reach, "lbfgs_final_loss": lbfgs.losses[-1],
        "lbfgs_evals": lbfgs.n_evals,
        "passed": reach is not None and reach < adam.n_evals,
    }

    # 4. trained inverter against optimisation
    t0 = time.perf_counter()
    train_images = preprocess(train.images).to(device)
    inverter = train_inverter(model, args.layer, train_images, epochs=epochs, batch_size=64, lr=2e-3, seed=0,
                              device=device)
    _sync(device)
    train_seconds = time.perf_counter() - t0
    held_out = preprocess(test.images[:512]).to(device)
    inverter(held_out[:64])  # warm-up

    def best_of_3(fn) -> float:
        times = []
        for _ in range(3):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return min(times)

    recon = inverter(held_out)
    features = inverter.features(held_out)
    end_to_end = best_of_3(lambda: inverter(held_out))
    features_only = best_of_3(lambda: inverter.features(held_out))
    decoder_only = best_of_3(lambda: inverter.reconstruct(features))
    inverter_mse_batch = float(F.mse_loss(recon[:n_images], targets))

    # optimisation at the inverter's time for the same n_images: one L-BFGS iteration costs about
    # seconds / steps of the run above
    per_step = report["early_layer"]["seconds"] / max(1, lbfgs.steps)
    equal_time = end_to_end * n_images / len(held_out)
    equal_total = train_seconds + equal_time
    runs = {}
    for label, budget in (("equal_inference_time", equal_time), ("equal_training_plus_inference_time",
                                                                   equal_total)):
        k = max(1, min(steps, int(budget / per_step)))
        t0 = time.perf_counter()
        result = invert(model, targets, args.layer, steps=k, seed=0, bounds=bounds)
        runs[label] = {"budget_seconds": budget, "steps": k, "seconds": time.perf_counter() - t0,
                       "pixel_mse": float(F.mse_loss(result.image, targets)), "feature_error": result.error}
    runs["default_steps"] = {"steps": lbfgs.steps, "seconds": report["early_layer"]["seconds"],
                             "pixel_mse": report["early_layer"]["pixel_mse"], "feature_error": lbfgs.error}
    report["inverter"] = {
        "train_images": len(train_images), "epochs": epochs, "train_seconds": train_seconds,
        "history": inverter.history,
        "held_out_images": len(held_out),
        "held_out_pixel_mse": float(F.mse_loss(recon, held_out)),
        "pixel_mse_on_the_optimised_images": inverter_mse_batch,
        "images_per_second_end_to_end": len(held_out) / end_to_end,
        "images_per_second_decoder_only": len(held_out) / decoder_only,
        "images_per_second_model_to_layer_only": len(held_out) / features_only,
        "optimisation": runs,
        "passed_pixel_error_at_equal_time": inverter_mse_batch < runs["equal_inference_time"]["pixel_mse"],
        "passed_throughput_end_to_end": len(held_out) / end_to_end >= 1000,
        "passed_throughput_decoder_only": len(held_out) / decoder_only >= 1000,
        "goal": "inverter pixel MSE < optimisation's at equal time; >= 1000 images/s",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
