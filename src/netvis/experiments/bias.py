"""``bias``: a planted spurious cue, and whether saliency maps reveal it.

The lecture's "husky classified as wolf" (Ribeiro, Singh and Guestrin, "Why Should I Trust You?",
KDD 2016): a classifier that learned "snow means wolf" is right for the wrong reason, and a saliency
map shows it. Here the cue is planted: a small bright square (the *marker*) in a corner of most
training images of one class (``cue_rate``, 95% by default) and of few images of the others
(``other_rate``). A network trained on these images learns the shortcut; the experiment measures

* the shortcut in the network's behaviour: accuracy on clean test images, on test images of the cue's
  class with and without the marker, and how often images of *other* classes are classified as the
  cue's class once the marker is added (the husky that becomes a wolf);
* the shortcut in the maps: on test images of the cue's class carrying the marker, how often each
  method's most salient marker-sized region lies on the marker (``peak``), how often its single most
  salient pixel does (``argmax``), the share of the top pixels that do (``top``), and the share of the
  map's mass on the marker (``mass``), next to a random map's (the marker's share of the image).
"""

from __future__ import annotations

from typing import Any

import torch

from netvis.experiments._common import Context, Experiment, ExperimentResult
from netvis.experiments.metrics import RANDOM, add_marker, marker_mask, method_options, region_hits, saliency_maps

ALL_METHODS = ("occlusion", "gradient", "guided-backprop", "deconvnet", "smoothgrad", "integrated-gradients",
               "grad-cam", "guided-grad-cam")

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "image_size": 14,
        "model": "resnet20_cifar",
        "stage_channels": (8, 16, 16),
        "limit_train": None,
        "limit_test": None,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.1,
        "cue_class": 0,
        "cue_rate": 0.95,
        "other_rate": 0.02,
        "marker_size": 2,
        "marker_corner": "top-left",
        "marker_value": 255,
        "methods": ALL_METHODS,
        "n_images": 32,
        "occlusion_window": 2,
        "occlusion_stride": 1,
        "smoothgrad_samples": 10,
        "ig_steps": 16,
    },
    "full": {
        "data": "fashion-mnist",
        "image_size": None,
        "model": "resnet20_cifar",
        "stage_channels": (16, 32, 64),
        "limit_train": None,
        "limit_test": None,
        "epochs": 15,
        "batch_size": 128,
        "lr": 0.1,
        "cue_class": 0,
        "cue_rate": 0.95,
        "other_rate": 0.02,
        "marker_size": 4,
        "marker_corner": "top-left",
        "marker_value": 255,
        "methods": ALL_METHODS,
        "n_images": 500,
        "occlusion_window": 4,
        "occlusion_stride": 1,
        "smoothgrad_samples": 25,
        "ig_steps": 32,
    },
}


def plant(data: Any, mask: torch.Tensor, cue_class: int, cue_rate: float, other_rate: float, value: int,
          generator: torch.Generator) -> tuple[Any, torch.Tensor]:
    """A copy of ``data`` with the marker painted into a random ``cue_rate`` share of ``cue_class``'s images
    and an ``other_rate`` share of every other class's.

    Returns:
        ``(the new data set, boolean (N,) tensor: which images carry the marker)``.
    """
    targets = data.targets.cpu()
    draw = torch.rand(len(targets), generator=generator)
    marked = torch.where(targets == cue_class, draw < cue_rate, draw < other_rate)
    images = data.images.cpu().clone()
    images[marked] = add_marker(images[marked], mask, value)
    from netvis.data import TensorImageDataset

    planted = TensorImageDataset(images, data.targets, data.classes, mean=data.mean, std=data.std,
                                 channels=data.preprocess.channels, name=data.name, split=data.split)
    return planted, marked


def _predict(model, data, images: torch.Tensor, device) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 512):
            out.append(model(data.preprocess(images[start : start + 512].to(device))).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def run(ctx: Context) -> ExperimentResult:
    from netvis.hooks import eval_session
    from netvis.render.figures import method_grid

    p = ctx.params
    train_data, test_data = ctx.load_data(p["image_size"])
    train_data = ctx.subset(train_data, p["limit_train"])
    test_data = ctx.subset(test_data, p["limit_test"], stream=1)
    k = int(p["cue_class"])
    if not 0 <= k < len(train_data.classes):
        raise ValueError(f"cue_class must be a class index below {len(train_data.classes)}, got {k}")
    h, w = train_data.images.shape[-2:]
    mask = marker_mask((h, w), int(p["marker_size"]), p["marker_corner"])
    value = int(p["marker_value"])
    planted, marked = plant(train_data, mask, k, p["cue_rate"], p["other_rate"], value, ctx.generator(1))
    result = ctx.train(p["model"], planted, test_data, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                       model_options={"stage_channels": tuple(p["stage_channels"])})
    model = result.model.eval()

    # behaviour
    targets = test_data.targets.cpu()
    images = test_data.images.cpu()
    cue, other = targets == k, targets != k
    with eval_session(model, grad=False):
        clean = _predict(model, test_data, images, ctx.device)
        with_marker = _predict(model, test_data, add_marker(images, mask, value), ctx.device)
    def row(label: str, rows: torch.Tensor, predicted: torch.Tensor) -> dict[str, Any]:
        return {"test images": label, "images": int(rows.sum()),
                "accuracy": float((predicted[rows] == targets[rows]).float().mean()),
                "predicted_as_cue_class": float((predicted[rows] == k).float().mean())}

    everything = torch.ones_like(cue)
    cue_name = train_data.classes[k]
    behaviour = [
        row("all, clean", everything, clean),
        row(f"class {k} ({cue_name}), clean", cue, clean),
        row(f"class {k} ({cue_name}), with marker", cue, with_marker),
        row("other classes, clean", other, clean),
        row("other classes, with marker", other, with_marker),
    ]

    # maps on test images of the cue class, with the marker
    pool = torch.nonzero(cue).flatten()
    pick = pool[torch.randperm(len(pool), generator=ctx.generator(2))[: int(p["n_images"])]].sort().values
    x = test_data.preprocess(add_marker(images[pick], mask, value)).to(ctx.device)
    target = torch.full((len(pick),), k, dtype=torch.long, device=ctx.device)
    options = method_options(model, (h, w), p, seed=ctx.seed)
    methods = [m for m in p["methods"] if m != RANDOM] + [RANDOM]
    maps = saliency_maps(model, x, target, methods, options, generator=ctx.generator(3))
    area = float(mask.float().mean())
    rows = []
    for name in methods:
        hits = region_hits(maps[name], mask)
        rows.append({"method": name, "images": len(pick), "peak_on_marker": float(hits["peak"].mean()),
                     "argmax_on_marker": float(hits["argmax"].mean()), "top_on_marker": float(hits["top"].mean()),
                     "mass_on_marker": float(hits["mass"].mean()), "marker_area": area})
    by = {r["method"]: r for r in rows}
    flip = behaviour[4]["predicted_as_cue_class"] - behaviour[3]["predicted_as_cue_class"]
    metrics = {
        "marked_train_images": int(marked.sum()),
        "peak_on_marker": {r["method"]: r["peak_on_marker"] for r in rows},
        "mass_on_marker": {r["method"]: r["mass_on_marker"] for r in rows},
        "other_predicted_as_cue_clean": behaviour[3]["predicted_as_cue_class"],
        "other_predicted_as_cue_marked": behaviour[4]["predicted_as_cue_class"],
        "marker_area": area,
    }
    findings = [
        f"Adding the marker to test images of other classes makes the network call "
        f"{behaviour[4]['predicted_as_cue_class']:.1%} of them '{cue_name}' (clean: "
        f"{behaviour[3]['predicted_as_cue_class']:.1%}, {flip:+.1%}); on images of '{cue_name}' its accuracy is "
        f"{behaviour[2]['accuracy']:.1%} with the marker and {behaviour[1]['accuracy']:.1%} without.",
    ]
    for method in methods:
        r = by[method]
        findings.append(
            f"{method}: the most salient marker-sized region lies on the marker in {r['peak_on_marker']:.0%} of the "
            f"{len(pick)} images; {r['mass_on_marker']:.1%} of the map's mass is on the marker (its area: {area:.1%})."
        )
    shown = min(4, len(pick))
    fig = method_grid(x[:shown].cpu(), {m: maps[m][:shown] for m in methods}, target=[k] * shown,
                      class_names=train_data.classes, mean=test_data.mean, std=test_data.std,
                      title=f"test images of '{train_data.classes[k]}' with the marker")
    return ExperimentResult(
        name="bias",
        title="A planted spurious cue, and whether saliency maps reveal it",
        setting=ctx.setting,
        table=rows,
        tables={"behaviour": behaviour},
        figures={"maps": fig},
        metrics=metrics,
        findings=findings,
    )


EXPERIMENT = Experiment(
    name="bias",
    title="A planted spurious cue, and whether saliency maps reveal it",
    summary="A marker in a corner of most training images of one class becomes the network's shortcut; saliency "
    "maps point at it.",
    paper="Ribeiro, Singh, Guestrin: Why Should I Trust You? (2016), the husky-vs-wolf example",
    settings=SETTINGS,
    runner=run,
)
