"""``localization``: does each saliency method point at the defect? Scores against ground-truth masks.

Wafer maps (:mod:`netvis.data.wafer`) come with a mask of each defect, so whether a map points at the
right place can be *measured*, not eyeballed. For the shipped ``wafer-maps-resnet`` checkpoint and
test maps of every defect class (``none`` has no mask and is left out), every saliency method explains
the map's true class and is scored by :mod:`netvis.saliency.localization`:

* ``pointing``: the map's maximum lies on the defect (Zhang et al., ECCV 2016), and
  ``pointing_tol``: within ``tolerance`` pixels of it;
* ``energy``: the share of the map's positive mass on the defect (Wang et al., Score-CAM, 2020);
* ``auc``: the ROC-AUC of the map's pixels as a detector of defect pixels (0.5 is chance).

All three are computed on the wafer only (pixels outside the round wafer do not count), and a map of
uniform noise (``random``) sits in the same table: it scores the defects' area share in the pointing
game and energy, and 0.5 in AUC. ``random`` and ``near-full`` defects cover the whole wafer, so every
map hits them; the per-class table shows the classes separately.

Occlusion fills its window with passing dies (``occlusion_fill="pass"``: the occluded patch looks like a
healthy part of the wafer, so its drop measures what the failing dies there contributed); ``"mean"``
uses the image's mean as in the lecture.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from netvis.app.experiments._common import Context, Experiment, ExperimentResult, inputs, predict
from netvis.app.experiments.metrics import RANDOM, method_options, saliency_maps
from netvis.app.render.figures import localization_grid
from netvis.data import load
from netvis.data.wafer import OUTSIDE, WAFER_CLASSES, pass_value
from netvis.saliency import METHODS
from netvis.saliency.localization import localization_scores, mean_score
from netvis.train.evaluate import with_preprocess

DEFECTS = tuple(c for c in WAFER_CLASSES if c != "none")

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "wafer-maps",
        "checkpoint": "wafer-maps-resnet",
        "methods": "all",
        "per_class": 3,
        "target": "label",
        "tolerance": 2.0,
        "occlusion_window": 6,
        "occlusion_stride": 3,
        "occlusion_fill": "pass",
        "smoothgrad_samples": 10,
        "ig_steps": 16,
        "figure_images": 8,
    },
    "full": {
        "data": "wafer-maps",
        "checkpoint": "wafer-maps-resnet",
        "methods": "all",
        "per_class": 100,
        "target": "label",
        "tolerance": 2.0,
        "occlusion_window": 6,
        "occlusion_stride": 1,
        "occlusion_fill": "pass",
        "smoothgrad_samples": 25,
        "ig_steps": 32,
        "figure_images": 8,
    },
}


def _test_split(ctx: Context) -> Any:
    data = ctx.data
    test = load(data, "test") if isinstance(data, str) else data[1]
    if not hasattr(test, "masks") or not hasattr(test, "images"):
        raise ValueError("the localization experiment needs test data with ground-truth masks (.masks), e.g. "
                         "'wafer-maps' or 'wafer-maps-sample'")
    return test


def _pick(ctx: Context, targets: torch.Tensor, classes: list[str], per_class: int) -> torch.Tensor:
    """``per_class`` images of every defect class (seeded), sorted by class then position."""
    chosen = []
    for k, name in enumerate(classes):
        if name == "none":
            continue
        where = torch.nonzero(targets.cpu() == k).flatten()
        if len(where) == 0:
            continue
        order = torch.randperm(len(where), generator=ctx.generator(11, k))[:per_class]
        chosen.append(where[order].sort().values)
    if not chosen:
        raise ValueError("the test data has no images of a defect class")
    return torch.cat(chosen)


def _fill_value(fill: Any, data: Any) -> Any:
    if fill == "pass":  # a passing die, through the model's preprocessing
        return pass_value(data.preprocess)
    return fill


def _method_names(choice: Any) -> list[str]:
    names = list(METHODS) if choice == "all" else list(choice)
    unknown = [m for m in names if m not in METHODS and m != RANDOM]
    if unknown:
        raise ValueError(f"unknown saliency method(s) {unknown}; choose from {', '.join(METHODS)}")
    return [m for m in names if m != RANDOM] + [RANDOM]


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    raw = _test_split(ctx)
    found = ctx.checkpoint_model()
    if found is None:
        raise ValueError("the localization experiment explains a trained checkpoint: set checkpoint (default "
                         "'wafer-maps-resnet')")
    model, ckpt = found
    test = with_preprocess(raw, ckpt.preprocess)
    indices = _pick(ctx, raw.targets, list(raw.classes), int(p["per_class"]))
    x = inputs(test, indices, ctx.device)
    labels = raw.targets[indices].to(ctx.device)
    predicted = predict(model, x)
    if p["target"] not in ("label", "predicted"):
        raise ValueError(f"target must be 'label' or 'predicted', got {p['target']!r}")
    target = labels if p["target"] == "label" else predicted
    masks = raw.masks[indices].cpu()
    valid = raw.images[indices][:, 0].cpu() != OUTSIDE  # the wafer
    methods = _method_names(p["methods"])
    options = method_options(model, tuple(x.shape[-2:]), p, seed=ctx.seed)
    options["occlusion"]["fill"] = _fill_value(p["occlusion_fill"], test)
    maps: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        start = time.perf_counter()
        maps.update(saliency_maps(model, x, target, [method], options, generator=ctx.generator(2)))
        seconds[method] = time.perf_counter() - start

    tolerance = float(p["tolerance"])
    class_of = [raw.classes[int(k)] for k in raw.targets[indices]]
    rows: list[dict[str, Any]] = []
    per_class: list[dict[str, Any]] = []
    scores: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        s = localization_scores(maps[method], masks, tolerance=tolerance, valid=valid)
        scores[method] = s
        rows.append({
            "method": method,
            "images": len(indices),
            "pointing": mean_score(s["pointing"]),
            f"pointing_tol{tolerance:g}px": mean_score(s["pointing_tolerance"]) if tolerance > 0 else None,
            "energy": mean_score(s["energy"]),
            "auc": mean_score(s["auc"]),
            "seconds": round(seconds[method], 2),
        })
        row: dict[str, Any] = {"method": method}
        for name in DEFECTS:
            sel = torch.tensor([c == name for c in class_of])
            row[name] = mean_score(s["pointing"][sel]) if sel.any() else None
        per_class.append(row)

    chance = next(r for r in rows if r["method"] == RANDOM)
    accuracy = float((predicted == labels).double().mean())
    recorded = (ckpt.meta.get("final_metrics") or {}).get("test_accuracy")
    recorded = math.nan if recorded is None else recorded
    findings = [
        f"Checkpoint {ckpt.path.name} (test accuracy {recorded:.1%} recorded; {accuracy:.1%} on these "
        f"{len(indices)} maps), explaining the {p['target']} class; scores on the wafer only.",
        f"Random map: pointing {chance['pointing']:.3f}, energy {chance['energy']:.3f}, AUC {chance['auc']:.3f} "
        "(the defects' area share and chance).",
    ]
    beat = [r["method"] for r in rows if r["method"] != RANDOM and all(
        r[k] > chance[k] for k in ("pointing", "energy", "auc"))]
    not_beat = [r["method"] for r in rows if r["method"] != RANDOM and r["method"] not in beat]
    findings.append(f"Above the random map on all three scores: {', '.join(beat) or 'none'}"
                    + (f"; not on all three: {', '.join(not_beat)}." if not_beat else "."))
    occ = next((r for r in rows if r["method"] == "occlusion"), None)
    if occ is not None:
        findings.append(f"Occlusion's pointing game: {occ['pointing']:.3f} (goal 0.9: "
                        f"{'met' if occ['pointing'] >= 0.9 else 'NOT met'}); within {tolerance:g} px: "
                        f"{occ[f'pointing_tol{tolerance:g}px'] if tolerance > 0 else math.nan:.3f}.")
    best = max((r for r in rows if r["method"] != RANDOM), key=lambda r: r["pointing"])
    findings.append(f"Best pointing game: {best['method']} ({best['pointing']:.3f}).")

    # one image per defect class for the figure
    rows_fig: list[int] = []
    names_fig: list[str] = []
    for name in DEFECTS:
        where = [i for i, c in enumerate(class_of) if c == name]
        if where and len(rows_fig) < int(p["figure_images"]):
            rows_fig.append(where[0])
            names_fig.append(name)
    figures = {"overlays": localization_grid(raw.images[indices][:, 0].cpu(), masks, maps, rows_fig, names_fig)}
    metrics = {
        key: {r["method"]: r[key] for r in rows} for key in ("pointing", "energy", "auc")
    }
    metrics["accuracy_on_images"] = accuracy
    metrics["per_image"] = {m: {k: v.tolist() for k, v in s.items()} for m, s in scores.items()}
    metrics["classes_of_images"] = class_of
    return ctx.result(rows, figures=figures, metrics=metrics, findings=findings,
                      tables={"pointing game per defect class": per_class})


EXPERIMENT = Experiment(
    name="localization",
    title="Do saliency maps point at the defect? Localization on wafer maps",
    summary="Every saliency method on the trained wafer-map ResNet, scored against the defects' ground-truth "
    "masks: pointing game, energy inside the mask, ROC-AUC, next to a random map.",
    paper="Zhang et al.: Top-down Neural Attention by Excitation Backprop (ECCV 2016); Wang et al.: Score-CAM "
    "(2020); wafer-map taxonomy of Wu, Jang and Chen (IEEE TSM 2015)",
    settings=SETTINGS,
    runner=run,
)
