"""``bias``: a planted spurious cue, and whether saliency maps reveal it.

The lecture's "husky classified as wolf" (Ribeiro, Singh and Guestrin, "Why Should I Trust You?",
KDD 2016): a classifier that learned "snow means wolf" is right for the wrong reason, and a saliency
map shows it. Here the cue is planted: a small marker in a corner of most training images of one class
(``cue_rate``, 95% by default) and of few images of the others (``other_rate``). A network trained on
these images learns the shortcut; the experiment measures

* the shortcut in the network's behaviour: accuracy on clean test images, on test images of the cue's
  class with and without the marker, and how often images of *other* classes are classified as the
  cue's class once the marker is added (the husky that becomes a wolf);
* the shortcut in the maps: on test images of the cue's class carrying the marker, how often each
  method's most salient marker-sized region lies on the marker (``peak``), how often its single most
  salient pixel does (``argmax``), the share of the top pixels that do (``top``), and the share of the
  map's mass on the marker (``mass``), next to a random map's (the marker's share of the image).

It does this once per marker in ``marker_patterns`` (a flat bright ``"square"``; a ``"checker"``board
of bright and dark pixels, a textured tag), each time on a freshly trained network. ``marker_corner``
places the marker in a corner (on the background) or in the ``"center"`` (on the garment).
``occlusion_window`` ``None`` occludes windows the size of the marker; ``occlusion_fill`` ``"black"``
fills them with black (the background of Fashion-MNIST, so an occluded corner marker is removed rather
than replaced by a gray blob), ``"mean"`` with the image's mean as in the lecture.
"""

from __future__ import annotations

from typing import Any

import torch

from netvis.app.experiments._common import Context, Experiment, ExperimentResult
from netvis.app.experiments.metrics import (
    MARKER_PATTERNS,
    RANDOM,
    add_marker,
    marker_mask,
    method_options,
    region_hits,
    saliency_maps,
)
from netvis.app.render.figures import method_grid
from netvis.data import TensorImageDataset
from netvis.hooks import eval_session
from netvis.saliency import methods as saliency_methods

ALL_METHODS = tuple(saliency_methods.names())
"""Every method of the saliency registry (:mod:`netvis.saliency.methods`), in its order."""

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
        "marker_patterns": ("square",),
        "methods": ALL_METHODS,
        "n_images": 32,
        "occlusion_window": None,
        "occlusion_stride": 1,
        "occlusion_fill": "black",
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
        "marker_patterns": ("square",),
        "methods": ALL_METHODS,
        "n_images": 500,
        "occlusion_window": None,
        "occlusion_stride": 1,
        "occlusion_fill": "black",
        "smoothgrad_samples": 25,
        "ig_steps": 32,
    },
}


def plant(data: Any, mask: torch.Tensor, cue_class: int, cue_rate: float, other_rate: float, value: int,
          generator: torch.Generator, pattern: str = "square") -> tuple[Any, torch.Tensor]:
    """A copy of ``data`` with the marker painted into a random ``cue_rate`` share of ``cue_class``'s images
    and an ``other_rate`` share of every other class's.

    Returns:
        ``(the new data set, boolean (N,) tensor: which images carry the marker)``.
    """
    targets = data.targets.cpu()
    draw = torch.rand(len(targets), generator=generator)
    marked = torch.where(targets == cue_class, draw < cue_rate, draw < other_rate)
    images = data.images.cpu().clone()
    images[marked] = add_marker(images[marked], mask, value, pattern)
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
    p = ctx.params
    train_data, test_data = ctx.limited_data()
    k = int(p["cue_class"])
    if not 0 <= k < len(train_data.classes):
        raise ValueError(f"cue_class must be a class index below {len(train_data.classes)}, got {k}")
    given = (p["marker_patterns"],) if isinstance(p["marker_patterns"], str) else tuple(p["marker_patterns"])
    patterns = tuple(part.strip() for entry in given for part in str(entry).split(",") if part.strip())
    if not patterns:
        raise ValueError("marker_patterns must name at least one marker pattern")
    for pattern in patterns:
        if pattern not in MARKER_PATTERNS:
            raise ValueError(f"marker pattern must be one of {', '.join(MARKER_PATTERNS)}, got {pattern!r}")
    _occlusion_fill(p["occlusion_fill"], train_data, "cpu")  # a bad fill fails before any training
    h, w = train_data.images.shape[-2:]
    mask = marker_mask((h, w), int(p["marker_size"]), p["marker_corner"])
    area = float(mask.float().mean())
    rows: list[dict[str, Any]] = []
    behaviour: list[dict[str, Any]] = []
    saturation: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    findings: list[str] = []
    per_marker = ("marked_train_images", "peak_on_marker", "mass_on_marker", "other_predicted_as_cue_clean",
                  "other_predicted_as_cue_marked")
    metrics: dict[str, Any] = {"marker_patterns": list(patterns), "marker_area": area,
                               **{key: {} for key in per_marker}}
    for index, pattern in enumerate(patterns):
        part = _one_marker(ctx, train_data, test_data, mask, area, pattern, stream=10 * index)
        rows += part["rows"]
        behaviour += part["behaviour"]
        saturation += part["saturation"]
        figures[f"maps-{pattern}"] = part["figure"]
        findings += part["findings"]
        for key in per_marker:
            metrics[key][pattern] = part["metrics"][key]
    if len(patterns) > 1:
        peaks = {pattern: metrics["peak_on_marker"][pattern].get("gradient") for pattern in patterns}
        if all(v is not None for v in peaks.values()):
            findings.append("The plain gradient's peak lies on the marker in " + ", ".join(
                f"{v:.0%} of the images with the {pattern} marker" for pattern, v in peaks.items()) + ".")
    return ctx.result(
        rows,
        tables={"behaviour": behaviour, "gradient along the marker's path": saturation},
        figures=figures,
        metrics=metrics,
        findings=findings,
    )


def _occlusion_fill(fill: Any, data: Any, device: Any) -> Any:
    """``"black"``: the value a black pixel has after the data set's preprocessing, one per channel;
    ``"mean"``/``"channel_mean"`` and numbers as :func:`netvis.saliency.occlusion` takes them."""
    if fill == "black":
        black = torch.zeros(1, data.images.shape[1], 1, 1, dtype=torch.uint8)
        return data.preprocess(black.to(device))[0]  # (C, 1, 1)
    if fill in ("mean", "channel_mean") or (isinstance(fill, (int, float)) and not isinstance(fill, bool)):
        return fill
    raise ValueError(f"occlusion_fill must be 'black', 'mean', 'channel_mean' or a number, got {fill!r}")


def behaviour_table(model: Any, test_data: Any, mask: torch.Tensor, value: int, pattern: str, cue_class: int,
                    device: Any) -> list[dict[str, Any]]:
    """The shortcut in the network's behaviour: five rows, each with the share of images classified
    right (``accuracy``) and classified as ``cue_class`` (``predicted_as_cue_class``).

    The rows: every test image clean; images of ``cue_class`` clean and with the marker; images of the
    other classes clean and with the marker (the husky that becomes a wolf). The model runs in eval mode,
    without gradients; its state is as before afterwards.

    Args:
        model: the classifier.
        test_data: an in-memory netvis data set (``uint8`` images, ``preprocess``).
        mask: ``(H, W)`` boolean marker region (:func:`netvis.app.experiments.metrics.marker_mask`).
        value: the marker's intensity.
        pattern: one of :data:`netvis.app.experiments.metrics.MARKER_PATTERNS`.
        cue_class: the class the marker was planted in.
        device: where the model runs.

    Returns:
        Five dicts with ``marker``, ``test images``, ``images``, ``accuracy``, ``predicted_as_cue_class``.
    """
    k = int(cue_class)
    targets = test_data.targets.cpu()
    images = test_data.images.cpu()
    cue, other = targets == k, targets != k
    with eval_session(model, grad=False):
        clean = _predict(model, test_data, images, device)
        with_marker = _predict(model, test_data, add_marker(images, mask, value, pattern), device)

    def row(label: str, rows: torch.Tensor, predicted: torch.Tensor) -> dict[str, Any]:
        return {"marker": pattern, "test images": label, "images": int(rows.sum()),
                "accuracy": float((predicted[rows] == targets[rows]).float().mean()),
                "predicted_as_cue_class": float((predicted[rows] == k).float().mean())}

    cue_name = test_data.classes[k]
    return [
        row("all, clean", torch.ones_like(cue), clean),
        row(f"class {k} ({cue_name}), clean", cue, clean),
        row(f"class {k} ({cue_name}), with marker", cue, with_marker),
        row("other classes, clean", other, clean),
        row("other classes, with marker", other, with_marker),
    ]


def measure_marker(model: Any, test_data: Any, mask: torch.Tensor, *, pattern: str, cue_class: int, value: int,
                   pick: torch.Tensor, methods: list[str], options: dict[str, Any], device: Any,
                   generator: torch.Generator) -> dict[str, Any]:
    """Everything the experiment measures on one trained network, for one marker pattern.

    * ``behaviour``: :func:`behaviour_table`;
    * ``rows``: one per method, on the test images at ``pick`` with the marker added, each explained for
      ``cue_class``: the means over the images of :func:`netvis.app.experiments.metrics.region_hits`
      (``peak_on_marker``, ``argmax_on_marker``, ``top_on_marker``, ``mass_on_marker``) and the marker's
      share of the image (``marker_area``, what a map spread evenly puts on it);
    * ``saturation``: :func:`_saturation` along the path from those images without to with the marker;
    * ``x`` and ``maps``: the explained inputs and the maps, ``{method: (N, H, W)}``.

    Args:
        model: the classifier.
        test_data: an in-memory netvis data set.
        mask: ``(H, W)`` boolean marker region.
        pattern, value: the marker (:func:`netvis.app.experiments.metrics.add_marker`).
        cue_class: the class explained.
        pick: positions in ``test_data`` of the images to explain.
        methods: saliency method names, ``"random"`` included where wanted.
        options: per-method options (:func:`netvis.app.experiments.metrics.method_options`).
        device: where the model runs.
        generator: for the random map.
    """
    k = int(cue_class)
    area = float(mask.float().mean())
    images = test_data.images.cpu()
    behaviour = behaviour_table(model, test_data, mask, value, pattern, k, device)
    x = test_data.preprocess(add_marker(images[pick], mask, value, pattern)).to(device)
    target = torch.full((len(pick),), k, dtype=torch.long, device=device)
    maps = saliency_maps(model, x, target, methods, options, generator=generator)
    saturation = _saturation(model, test_data.preprocess(images[pick]).to(device), x, target, mask, pattern)
    rows = []
    for name in methods:
        hits = region_hits(maps[name], mask)
        rows.append({"marker": pattern, "method": name, "images": len(pick),
                     "peak_on_marker": float(hits["peak"].mean()), "argmax_on_marker": float(hits["argmax"].mean()),
                     "top_on_marker": float(hits["top"].mean()), "mass_on_marker": float(hits["mass"].mean()),
                     "marker_area": area})
    return {"behaviour": behaviour, "rows": rows, "saturation": saturation, "x": x, "maps": maps}


def _one_marker(ctx: Context, train_data: Any, test_data: Any, mask: torch.Tensor, area: float, pattern: str,
                stream: int) -> dict[str, Any]:
    """Plant one marker pattern, train a network on it and measure its behaviour and the maps."""
    p = ctx.params
    k = int(p["cue_class"])
    h, w = mask.shape
    value = int(p["marker_value"])
    planted, marked = plant(train_data, mask, k, p["cue_rate"], p["other_rate"], value, ctx.generator(1 + stream),
                            pattern)
    result = ctx.train(p["model"], planted, test_data, epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"],
                       model_options={"stage_channels": tuple(p["stage_channels"])})
    model = result.model.eval()

    # maps on test images of the cue class, with the marker
    pool = torch.nonzero(test_data.targets.cpu() == k).flatten()
    pick = pool[ctx.pick(len(pool), int(p["n_images"]), 2)]
    window = p["occlusion_window"] if p["occlusion_window"] is not None else int(p["marker_size"])
    options = method_options(model, (h, w), {**p, "occlusion_window": window}, seed=ctx.seed)
    options["occlusion"]["fill"] = _occlusion_fill(p["occlusion_fill"], test_data, ctx.device)
    methods = [m for m in p["methods"] if m != RANDOM] + [RANDOM]
    measured = measure_marker(model, test_data, mask, pattern=pattern, cue_class=k, value=value, pick=pick,
                              methods=methods, options=options, device=ctx.device, generator=ctx.generator(3))
    behaviour, rows, saturation = measured["behaviour"], measured["rows"], measured["saturation"]
    x, maps = measured["x"], measured["maps"]
    cue_name = train_data.classes[k]
    by = {r["method"]: r for r in rows}
    flip = behaviour[4]["predicted_as_cue_class"] - behaviour[3]["predicted_as_cue_class"]
    metrics = {
        "marked_train_images": int(marked.sum()),
        "peak_on_marker": {r["method"]: r["peak_on_marker"] for r in rows},
        "mass_on_marker": {r["method"]: r["mass_on_marker"] for r in rows},
        "other_predicted_as_cue_clean": behaviour[3]["predicted_as_cue_class"],
        "other_predicted_as_cue_marked": behaviour[4]["predicted_as_cue_class"],
    }
    findings = [
        f"{pattern} marker: adding it to test images of other classes makes the network call "
        f"{behaviour[4]['predicted_as_cue_class']:.1%} of them '{cue_name}' (clean: "
        f"{behaviour[3]['predicted_as_cue_class']:.1%}, {flip:+.1%}); on images of '{cue_name}' its accuracy is "
        f"{behaviour[2]['accuracy']:.1%} with the marker and {behaviour[1]['accuracy']:.1%} without.",
    ]
    half = min(saturation, key=lambda r: abs(r["alpha"] - 0.5))
    end = saturation[-1]
    findings.append(
        f"{pattern} marker: from the image without the marker to the image with it, the logit of '{cue_name}' goes "
        f"from {saturation[0]['logit']:.2f} to {end['logit']:.2f}; the gradient on the marker pixels is "
        f"{half['gradient_on_marker']:.3f} half-way and {end['gradient_on_marker']:.3f} at the image itself "
        f"(elsewhere {end['gradient_elsewhere']:.3f} on average, {end['largest_elsewhere']:.3f} at its largest)."
    )
    for method in methods:
        r = by[method]
        findings.append(
            f"{pattern} marker, {method}: the most salient marker-sized region lies on the marker in "
            f"{r['peak_on_marker']:.0%} of the {len(pick)} images; {r['mass_on_marker']:.1%} of the map's mass is on "
            f"the marker (its area: {area:.1%})."
        )
    shown = min(4, len(pick))
    figure = method_grid(x[:shown].cpu(), {m: maps[m][:shown] for m in methods}, target=[k] * shown,
                         class_names=train_data.classes, mean=test_data.mean, std=test_data.std,
                         title=f"test images of '{cue_name}' with the {pattern} marker")
    return {"rows": rows, "behaviour": behaviour, "saturation": saturation, "figure": figure, "metrics": metrics,
            "findings": findings}


def _saturation(model, clean: torch.Tensor, marked: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                pattern: str, alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> list[dict[str, Any]]:
    """The cue class's logit and the gradient's size along the straight line from the images without the
    marker (``alpha`` 0) to the images with it (``alpha`` 1, where the maps are computed): on the marker
    pixels (mean of |gradient|) and elsewhere (mean, and the mean over images of the largest)."""
    on = mask.to(clean.device)
    rows = []
    with eval_session(model, grad=True):
        for alpha in alphas:
            xa = (clean + alpha * (marked - clean)).detach().requires_grad_(True)
            logit = model(xa).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(logit, xa)
            g = grad.detach().abs().amax(1)  # (N, H, W), as saliency.gradient(reduce="max")
            rows.append({"marker": pattern, "alpha": alpha, "logit": float(logit.detach()) / len(target),
                         "gradient_on_marker": float(g[:, on].mean()), "gradient_elsewhere": float(g[:, ~on].mean()),
                         "largest_elsewhere": float(g[:, ~on].amax(1).mean())})
    return rows


EXPERIMENT = Experiment(
    name="bias",
    title="A planted spurious cue, and whether saliency maps reveal it",
    summary="A marker in a corner of most training images of one class becomes the network's shortcut; saliency "
    "maps point at it.",
    paper="Ribeiro, Singh, Guestrin: Why Should I Trust You? (2016), the husky-vs-wolf example",
    settings=SETTINGS,
    runner=run,
)
