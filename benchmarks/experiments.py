"""Do the lecture's claims hold over seeds? Every experiment in its fast setting, on several seeds.

One seed of a three-epoch training on 1,000 images says little: the outcome moves with the seed and
even with the CPU's kernels (AVX-512 vs AVX2 reductions change the last bits, and training amplifies
them). This script runs each experiment of ``netvis.app.experiments`` on ``--seeds`` (the fast setting,
with the overrides listed per experiment below, which only drop parts the claim does not need) and
reduces each run to the numbers the lecture's claims are about, each signed so that **positive is the
lecture's direction**:

=================  ==========================================================================================
``depth``          ``plain_deeper_trains_worse``: train error of plain-56 minus plain-20;
                   ``plain_worse_than_residual_twin``: plain-56 minus resnet-56; ``depth_hurts_plain_more``:
                   the plain gap minus the residual gap (He et al. 2015)
``bn-trainable``   ``bn_only_beats_frozen_random``: test accuracy of the BN-only network minus that of the same
                   architecture left at its random weights (its BN statistics recomputed on the training
                   images, gamma = 1, beta = 0); ``bn_only_above_chance`` (Frankle et al. 2020)
``bn-statistics``  ``train_mode_batch_1_collapses``: eval-mode accuracy minus train-mode accuracy at batch 1;
                   ``one_class_batches_collapse``; ``train_mode_pass_corrupts_running_stats``: eval-mode accuracy
                   minus eval-mode accuracy after the batch-1 train-mode pass
``bias``           ``marker_is_learned``: share of other classes' images called the cue class with the marker
                   minus without; ``occlusion_finds_marker``: occlusion's peak-on-marker share minus the random
                   map's; the same for integrated gradients and the plain gradient
``sanity``         ``gradient_decorrelates``: 0.5 minus the gradient maps' rank correlation after every unit is
                   re-initialised; ``guided_backprop_ignores_top``: guided backprop's correlation after the
                   output layer is re-initialised minus the gradient's (Adebayo et al. 2018)
``faithfulness``   ``<method>_deletes_faster_than_random`` (blur baseline): the random map's deletion area minus
                   the method's, for every method (Petsiuk et al. 2018)
=================  ==========================================================================================

Per claim: the per-seed values, mean, standard error of the mean (sample standard deviation / sqrt(n)),
median, and the fraction of seeds in the lecture's direction; ``supported`` is ``median > 3 SE`` (the
criterion ``tests/slow`` asserts). JSON to stdout and ``--out``; the file is rewritten after every
experiment, so an interrupted run keeps what it measured.

    OMP_NUM_THREADS=1 python benchmarks/experiments.py --out benchmarks/results/experiments_cpu.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import device_name

from netvis.app import experiments
from netvis.app.experiments._common import Context, mix_seed
from netvis.app.experiments.metrics import RANDOM
from netvis.bn import recalibrate
from netvis.models import create
from netvis.train.evaluate import evaluate

MARGIN_SE = 3.0
"""A claim is supported when its median over seeds exceeds this many standard errors of the mean."""

# Overrides of the fast setting: parts of an experiment that no claim below reads are left out.
OPTIONS: dict[str, dict[str, Any]] = {
    "depth": {},
    "bn-trainable": {"policies": ("all", "bn")},
    "bn-statistics": {"batch_sizes": (32,), "eval_batch_sizes": (1, 256)},
    "bias": {"methods": ("occlusion", "gradient", "integrated-gradients")},
    "sanity": {"methods": ("gradient", "guided-backprop", "integrated-gradients", "grad-cam"), "labels": False,
               "independent": False},
    "faithfulness": {"baselines": ("blur",)},
}

# The claims the slow tests assert (the others are reported alongside).
PRIMARY = {
    "depth": ("plain_deeper_trains_worse", "plain_worse_than_residual_twin"),
    "bn-trainable": ("bn_only_beats_frozen_random",),
    "bn-statistics": ("train_mode_batch_1_collapses",),
    "bias": ("marker_is_learned", "occlusion_finds_marker"),
    "sanity": ("gradient_decorrelates", "guided_backprop_ignores_top"),
    "faithfulness": tuple(f"{m}_deletes_faster_than_random" for m in (
        "occlusion", "gradient", "guided_backprop", "deconvnet", "smoothgrad", "integrated_gradients", "grad_cam",
        "guided_grad_cam")),
}


def _depth(result, seed: int) -> dict[str, float]:
    m = result.metrics
    return {"plain_deeper_trains_worse": m["plain_gap"], "plain_worse_than_residual_twin": m["deep_plain_vs_residual"],
            "depth_hurts_plain_more": m["depth_penalty"]}


def frozen_random_accuracy(seed: int, options: dict[str, Any]) -> float:
    """Test accuracy of the bn-trainable network at its random initial weights, nothing trained: its BN
    statistics recomputed over the run's training images (:func:`netvis.bn.recalibrate`), gamma = 1, beta = 0.
    The data are the run's own (the same images, sizes and normalisation)."""
    exp = experiments.get("bn-trainable")
    params = exp.parameters("fast", options)
    ctx = Context(experiment=exp, setting="fast", params=params, data=params["data"], seed=seed,
                  device=torch.device("cpu"))
    train, test = ctx.limited_data()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(mix_seed(seed, 7, 0) % (2**31))  # the seed the run's trainer draws its weights from
        model = create(params["model"], in_channels=train.images.shape[1], num_classes=len(train.classes),
                       stage_channels=tuple(params["stage_channels"]))
    batches = [train.preprocess(train.images[i : i + 512]) for i in range(0, len(train), 512)]
    model = recalibrate(copy.deepcopy(model), batches, device="cpu")
    return evaluate(model, test, device="cpu").accuracy


def _bn_trainable(result, seed: int) -> dict[str, float]:
    acc = result.metrics["test_accuracy"]
    frozen = frozen_random_accuracy(seed, OPTIONS["bn-trainable"])
    return {"bn_only_beats_frozen_random": acc["bn"] - frozen,
            "bn_only_above_chance": acc["bn"] - result.metrics["chance"],
            "all_beats_bn_only": acc["all"] - acc["bn"], "_frozen_random_accuracy": frozen,
            "_bn_only_accuracy": acc["bn"]}


def _bn_statistics(result, seed: int) -> dict[str, float]:
    modes = result.tables["train vs eval mode"]
    eval_acc = modes[0]["accuracy"]
    by = {(r["mode"], r["batch_size"], r["batches"]): r for r in modes}
    one = by["train", 1, "shuffled"]
    large = by["train", 256, "shuffled"]
    one_class = next(r for r in modes if r["batches"] == "one class")
    return {"train_mode_batch_1_collapses": eval_acc - one["accuracy"],
            "one_class_batches_collapse": eval_acc - one_class["accuracy"],
            "train_mode_pass_corrupts_running_stats": eval_acc - one["eval_after"],
            "large_batches_close_to_eval": 0.05 - abs(eval_acc - large["accuracy"]),
            "_eval_accuracy": eval_acc}


def _bias(result, seed: int) -> dict[str, float]:
    behaviour = result.tables["behaviour"]
    peaks = {r["method"]: r["peak_on_marker"] for r in result.table}
    return {"marker_is_learned": behaviour[4]["predicted_as_cue_class"] - behaviour[3]["predicted_as_cue_class"],
            "cue_class_needs_marker": behaviour[2]["accuracy"] - behaviour[1]["accuracy"],
            "occlusion_finds_marker": peaks["occlusion"] - peaks[RANDOM],
            "integrated_gradients_finds_marker": peaks["integrated-gradients"] - peaks[RANDOM],
            "gradient_finds_marker": peaks["gradient"] - peaks[RANDOM]}


def _sanity(result, seed: int) -> dict[str, float]:
    m = result.metrics
    top = m["spearman_top_unit"]
    out = {"gradient_decorrelates": m["pass_below"] - m["spearman_all_units"]["gradient"],
           "guided_backprop_ignores_top": top["guided-backprop"] - top["gradient"]}
    for method, rho in m["spearman_all_units"].items():
        if method != "gradient":
            out[f"{method.replace('-', '_')}_decorrelates"] = m["pass_below"] - rho
    return out


def _faithfulness(result, seed: int) -> dict[str, float]:
    rows = [r for r in result.table if r["baseline"] == "blur"]
    random = next(r for r in rows if r["method"] == RANDOM)
    out = {}
    for r in rows:
        if r["method"] != RANDOM:
            name = r["method"].replace("-", "_")
            out[f"{name}_deletes_faster_than_random"] = random["deletion_auc"] - r["deletion_auc"]
            out[f"{name}_inserts_faster_than_random"] = r["insertion_auc"] - random["insertion_auc"]
    return out


CLAIMS: dict[str, Callable[[Any, int], dict[str, float]]] = {
    "depth": _depth,
    "bn-trainable": _bn_trainable,
    "bn-statistics": _bn_statistics,
    "bias": _bias,
    "sanity": _sanity,
    "faithfulness": _faithfulness,
}


def summarize(values: list[float]) -> dict[str, Any]:
    """Mean, standard error of the mean, median, the fraction of positive values, and whether the median
    exceeds :data:`MARGIN_SE` standard errors."""
    n = len(values)
    mean = sum(values) / n
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else math.inf
    median = statistics.median(values)
    return {"values": values, "mean": mean, "se": se, "median": median,
            "fraction_in_direction": sum(v > 0 for v in values) / n, "supported": bool(median > MARGIN_SE * se)}


def measure(name: str, seeds: list[int], log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run experiment ``name`` on every seed; per claim its :func:`summarize` (keys starting with ``_`` are
    per-seed side numbers, reported under ``"context"``)."""
    per_seed: list[dict[str, float]] = []
    seconds: list[float] = []
    for seed in seeds:
        start = time.perf_counter()
        result = experiments.run(name, seed=seed, device="cpu", **OPTIONS[name])
        per_seed.append(CLAIMS[name](result, seed))
        seconds.append(round(time.perf_counter() - start, 1))
        if log is not None:
            log(f"{name} seed {seed} ({seconds[-1]} s): " + ", ".join(f"{k} {v:+.3f}" for k, v in per_seed[-1].items()))
    keys = list(per_seed[0])
    claims = {k: summarize([s[k] for s in per_seed]) for k in keys if not k.startswith("_")}
    for k in PRIMARY[name]:
        claims[k]["primary"] = True
    context = {k[1:]: [s[k] for s in per_seed] for k in keys if k.startswith("_")}
    return {"options": {k: list(v) if isinstance(v, tuple) else v for k, v in OPTIONS[name].items()},
            "seeds": list(seeds), "seconds": seconds, "claims": claims, "context": context}


def _flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"))
    except OSError:
        pass
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--experiments", nargs="+", default=list(CLAIMS), choices=list(CLAIMS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "experiments", "setting": "fast", "margin_se": MARGIN_SE,
        "cpu": device_name(torch.device("cpu")), "cpu_flags": _flags(), "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
        "command": "OMP_NUM_THREADS=1 python benchmarks/experiments.py " + " ".join(sys.argv[1:]),
        "experiments": {},
    }
    if args.out and Path(args.out).exists():  # keep other experiments' results when re-running some
        previous = json.loads(Path(args.out).read_text())
        report["experiments"] = {k: v for k, v in previous.get("experiments", {}).items() if k not in args.experiments}
    start = time.perf_counter()
    for name in args.experiments:
        measured = measure(name, args.seeds, log=lambda line: print(line, file=sys.stderr, flush=True))
        measured.update(command=report["command"], cpu=report["cpu"], torch=report["torch"])
        report["experiments"][name] = measured
        report["seconds"] = round(time.perf_counter() - start, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
