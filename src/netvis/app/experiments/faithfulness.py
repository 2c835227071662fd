"""``faithfulness``: do the pixels a map calls important matter to the model? Deletion and insertion.

Petsiuk, Das and Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC
2018. Delete the image's pixels in the order a saliency map ranks them, most important first, a fixed
number per step, and follow the probability of the explained class (the class the model predicts): a
faithful map makes it fall fast, so the area under the *deletion* curve is small. *Insertion* starts
from the baseline image and puts the pixels back in the same order: a faithful map makes the
probability rise fast, a large area. Every method is compared with a random map (uniform noise: the
curves of deleting pixels at random); a method whose deletion area is not below the random map's does
not tell which pixels the model uses.

What a deleted pixel becomes (the *baseline*) matters, so the experiment runs several: ``"blur"``
(the pixel of a Gaussian-blurred copy; the information goes, the image stays an image), ``"mean"``
(each image's mean, as occlusion fills its patch), ``"black"`` (Petsiuk et al.'s deletion). Gray or
black pixels scattered over an image are out of the training distribution and a strong signal in
themselves, which favours the random map's scattered deletions under ``"mean"`` and penalises maps that
rank already-black background pixels high under ``"black"``.
"""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure

from netvis.app.experiments._common import (
    Context,
    Experiment,
    ExperimentResult,
    describe_model,
    inputs,
    mix_seed,
    predict,
)
from netvis.app.experiments.metrics import RANDOM, curve_area, method_options, perturbation_curves, saliency_maps
from netvis.saliency import methods as saliency_methods

ALL_METHODS = tuple(saliency_methods.names())
"""Every method of the saliency registry (:mod:`netvis.saliency.methods`), in its order."""

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "checkpoint": "auto",
        "methods": ALL_METHODS,
        "n_images": 32,
        "steps": 16,
        "baselines": ("blur", "mean"),
        "blur_sigma": 5.0,
        "occlusion_window": 4,
        "occlusion_stride": 4,
        "smoothgrad_samples": 10,
        "ig_steps": 16,
        "image_size": 14,
        "train_model": "resnet20_cifar",
        "train_model_options": {"stage_channels": (8, 16, 16)},
        "train_limit": 1000,
        "train_epochs": 3,
        "train_batch_size": 32,
    },
    "full": {
        "data": "fashion-mnist",
        "checkpoint": None,
        "methods": ALL_METHODS,
        "n_images": 1000,
        "steps": 49,
        "baselines": ("blur", "mean", "black"),
        "blur_sigma": 5.0,
        "occlusion_window": 4,
        "occlusion_stride": 1,
        "smoothgrad_samples": 25,
        "ig_steps": 32,
        "image_size": None,
        "train_model": "resnet20_cifar",
        "train_model_options": {"stage_channels": (16, 32, 64)},
        "train_limit": None,
        "train_epochs": 20,
        "train_batch_size": 128,
    },
}


def _figure(curves: dict[str, dict[str, torch.Tensor]], baseline: str):
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, mode in zip(axes, ("deletion", "insertion"), strict=True):
        for method, by_mode in curves.items():
            mean = by_mode[mode].mean(0)
            fraction = torch.linspace(0, 1, len(mean))
            style = {"color": "black", "linestyle": "--"} if method == RANDOM else {}
            ax.plot(fraction.numpy(), mean.numpy(), label=f"{method} ({float(curve_area(mean)):.3f})", **style)
        ax.set_title(f"{mode} (baseline {baseline}): {'lower' if mode == 'deletion' else 'higher'} area is better",
                     fontsize=9)
        ax.set_xlabel(f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("probability of the explained class")
    return fig


def _baseline_value(name: Any, data: Any, x: torch.Tensor) -> Any:
    """``"black"`` becomes the preprocessed black image; other names go to :func:`perturbation_curves`."""
    if name == "black":
        c, h, w = data.images.shape[1:]
        return data.preprocess(torch.zeros(1, c, h, w, dtype=torch.uint8)).to(x.device)
    return name


def _sem(values: torch.Tensor) -> float:
    return float(values.std() / len(values) ** 0.5) if len(values) > 1 else 0.0


def deletion_insertion(model: Any, x: torch.Tensor, target: torch.Tensor, maps: dict[str, torch.Tensor], *,
                       baseline: Any, steps: int, blur_sigma: float, tie_seed: int
                       ) -> tuple[list[dict[str, Any]], dict[str, dict[str, torch.Tensor]]]:
    """Deletion and insertion curves of every map, their areas, and the comparison with the random map.

    Every map's curves come from :func:`netvis.app.experiments.metrics.perturbation_curves` (ties broken by
    a generator seeded with ``tie_seed``, the same for every map), their areas from
    :func:`netvis.app.experiments.metrics.curve_area`.

    Args:
        model: the classifier.
        x: ``(N, C, H, W)`` inputs; target: ``(N,)`` the classes explained.
        maps: ``{method: (N, H, W)}``, with ``"random"`` among them.
        baseline: what a deleted pixel becomes (a name or tensor, as :func:`perturbation_curves` takes).
        steps: deletion steps; blur_sigma: for the ``"blur"`` baseline.
        tie_seed: seed of the tie-breaking generator.

    Returns:
        ``(rows, curves)``: per method its mean ``deletion_auc``/``insertion_auc`` with standard errors, the
        share of images whose deletion area is below the random map's on the same image
        (``deletion_wins``; ``None`` for the random map), and whether the mean areas beat the random map's;
        ``curves`` is ``{method: {"deletion", "insertion": (N, steps + 1)}}``.
    """
    if RANDOM not in maps:
        raise ValueError(f"maps must include the {RANDOM!r} map, the baseline every method is compared with")
    curves: dict[str, dict[str, torch.Tensor]] = {}
    for method, saliency in maps.items():
        curves[method] = {
            mode: perturbation_curves(model, x, saliency.to(x.device), target, mode=mode, steps=int(steps),
                                      baseline=baseline, blur_sigma=float(blur_sigma),
                                      generator=torch.Generator().manual_seed(tie_seed))
            for mode in ("deletion", "insertion")
        }
    random_deletion = curve_area(curves[RANDOM]["deletion"])
    random_insertion = curve_area(curves[RANDOM]["insertion"])
    rows: list[dict[str, Any]] = []
    for method in maps:
        deletion, insertion = curve_area(curves[method]["deletion"]), curve_area(curves[method]["insertion"])
        rows.append({
            "method": method,
            "baseline": str(baseline) if not isinstance(baseline, torch.Tensor) else "tensor",
            "images": len(x),
            "deletion_auc": float(deletion.mean()),
            "deletion_sem": _sem(deletion),
            "insertion_auc": float(insertion.mean()),
            "insertion_sem": _sem(insertion),
            # per image, paired with the random map on the same image
            "deletion_wins": float((deletion < random_deletion).double().mean()) if method != RANDOM else None,
            "deletion_below_random": method != RANDOM and float(deletion.mean()) < float(random_deletion.mean()),
            "insertion_above_random": method != RANDOM and float(insertion.mean()) > float(random_insertion.mean()),
        })
    return rows, curves


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    model, _, test_data, description = ctx.model_for_maps()
    indices = ctx.pick(len(test_data), int(p["n_images"]), 1)
    x = inputs(test_data, indices, ctx.device)
    target = predict(model, x)
    methods = [m for m in p["methods"] if m != RANDOM] + [RANDOM]
    options = method_options(model, tuple(x.shape[-2:]), p, seed=ctx.seed)
    maps = saliency_maps(model, x, target, methods, options, generator=ctx.generator(2), absolute=False)
    rows: list[dict[str, Any]] = []
    figures = {}
    mean_curves: dict[str, Any] = {}
    baselines = list(p["baselines"])
    for baseline in baselines:
        base = _baseline_value(baseline, test_data, x)
        these, curves = deletion_insertion(model, x, target, {m: maps[m] for m in methods}, baseline=base,
                                           steps=int(p["steps"]), blur_sigma=float(p["blur_sigma"]),
                                           tie_seed=mix_seed(ctx.seed, 3))
        for row in these:
            row["baseline"] = str(baseline)
        rows += these
        figures[f"curves-{baseline}"] = _figure(curves, str(baseline))
        mean_curves[str(baseline)] = {m: {mode: c[mode].mean(0).tolist() for mode in c} for m, c in curves.items()}

    findings = [f"{describe_model(description)}; {len(indices)} test images, {p['steps']} steps."]
    for baseline in baselines:
        these = [r for r in rows if r["baseline"] == str(baseline)]
        chance = next(r for r in these if r["method"] == RANDOM)
        below = [r["method"] for r in these if r["deletion_below_random"]]
        not_below = [r["method"] for r in these if r["method"] != RANDOM and not r["deletion_below_random"]]
        line = (f"Baseline {baseline!s}: random map deletion area {chance['deletion_auc']:.3f}, insertion area "
                f"{chance['insertion_auc']:.3f}; deletion area below random: {', '.join(below) or 'none'}")
        if not_below:
            line += f"; NOT below random: {', '.join(not_below)}"
        findings.append(line + ".")
    metrics: dict[str, Any] = {
        key: {str(b): {r["method"]: r[key] for r in rows if r["baseline"] == str(b)} for b in baselines}
        for key in ("deletion_auc", "insertion_auc")
    }
    metrics.update(mean_curves=mean_curves, model=description)
    return ctx.result(rows, figures=figures, metrics=metrics, findings=findings)


EXPERIMENT = Experiment(
    name="faithfulness",
    title="Deletion and insertion curves",
    summary="Remove (or insert) pixels in each map's order and follow the class probability: a faithful map beats "
    "a random one.",
    paper="Petsiuk, Das, Saenko: RISE: Randomized Input Sampling for Explanation of Black-box Models (2018)",
    settings=SETTINGS,
    runner=run,
)
