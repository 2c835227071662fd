"""The lecture as one report: every section computed on a checkpoint and its data.

:func:`lecture_report` builds a :class:`netvis.app.render.report.Report` in the lecture's order. Each
``section_*`` function is independent, takes the pieces it needs and appends one section, so the
report, the demo and the viewer share them.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from netvis.app.render.features import display_images, examples_grid
from netvis.app.render.figures import localization_grid, method_grid
from netvis.app.render.report import Report
from netvis.bn import bn_statistics, recalibrate
from netvis.data import load
from netvis.data.wafer import OUTSIDE, pass_value
from netvis.features import dataset_examples, filter_visualization, receptive_field
from netvis.inversion import invert
from netvis.models import create
from netvis.models.batchnorm import BatchNorm2d
from netvis.saliency import methods as saliency_methods
from netvis.saliency.localization import fill_uncovered, localization_scores, mean_score
from netvis.train.checkpoint import load_checkpoint
from netvis.train.evaluate import evaluate

EXPLAIN = {
    "bn": (
        "Batch normalization normalizes each feature over the batch, then scales and shifts it with "
        "learned parameters: <span class='math'>y = &gamma; (x &minus; &mu;<sub>B</sub>) / "
        "&radic;(&sigma;<sup>2</sup><sub>B</sub> + &epsilon;) + &beta;</span>, per entry for fully "
        "connected inputs (B&times;N) and per channel for convolutional ones (B&times;C&times;P&times;Q). "
        "At test time the batch statistics are replaced by running averages, or by statistics "
        "recomputed over the whole training set, layer by layer. "
        "Ioffe &amp; Szegedy, <i>Batch Normalization: Accelerating Deep Network Training by Reducing "
        "Internal Covariate Shift</i>, ICML 2015."
    ),
    "arch": (
        "A residual block learns a correction to its input, <span class='math'>y = F(x) + x</span> "
        "(a 1&times;1 convolution on the shortcut when the shape changes); a dense block feeds every "
        "layer the concatenation of all earlier maps, <span class='math'>x<sub>l</sub> = "
        "H<sub>l</sub>([x<sub>0</sub>, &hellip;, x<sub>l&minus;1</sub>])</span>. "
        "He et al., <i>Deep Residual Learning for Image Recognition</i>, CVPR 2016; Huang et al., "
        "<i>Densely Connected Convolutional Networks</i>, CVPR 2017."
    ),
    "model": "The checkpoint under study: its layers, parameters and accuracy on held-out images.",
    "saliency": (
        "Occlusion slides a k&times;k patch filled with the image mean over the image and records the "
        "class score at each position (Zeiler &amp; Fergus, <i>Visualizing and Understanding "
        "Convolutional Networks</i>, ECCV 2014). The gradient map is <span class='math'>|&part;S<sub>c</sub>"
        "/&part;x|</span> (Simonyan, Vedaldi &amp; Zisserman, <i>Deep Inside Convolutional Networks</i>, "
        "2014). Guided backprop passes gradient through a ReLU only where both the forward input and the "
        "incoming gradient are positive (Springenberg et al., <i>Striving for Simplicity: The All "
        "Convolutional Net</i>, 2015). Grad-CAM weights a layer's maps by their average gradient "
        "(Selvaraju et al., <i>Grad-CAM</i>, ICCV 2017)."
    ),
    "localization": (
        "On natural images a saliency map can only be looked at; on wafer maps, where each defect pattern "
        "(center, donut, edge-ring, edge-loc, loc, scratch, random, near-full: the WM-811K taxonomy of Wu, "
        "Jang &amp; Chen, IEEE TSM 2015) comes with its mask, it can be <i>measured</i>. Three scores per map, "
        "on the wafer only: the pointing game (is the map's maximum on the defect; Zhang et al., ECCV 2016), "
        "the share of the map's energy inside the mask (Wang et al., Score-CAM, 2020) and the ROC-AUC of the "
        "map's pixels as a defect detector. A map of uniform noise is the baseline every method must beat. "
        "The model is the shipped <code>wafer-maps-resnet</code> checkpoint; the maps are from the wafer-map "
        "sample that ships with netvis, explaining each map's true class."
    ),
    "features": (
        "Dataset examples: the k images of the data that most activate a unit (here the spatial mean of a "
        "channel), with the region the unit sees outlined (Zeiler &amp; Fergus 2014; Girshick et al. 2014). "
        "Beside them, the unit's filter visualization: the guided-backprop gradient of "
        "<span class='math'>(n<sub>1</sub> + &hellip; + n<sub>k</sub>)<sup>2</sup></span>, the squared sum "
        "of the unit's activations, with respect to its top image (Springenberg et al. 2015)."
    ),
    "inversion": (
        "Model inversion reconstructs an image from its representation alone: minimise "
        "<span class='math'>&Vert;&Phi;(x) &minus; &Phi;(x<sub>0</sub>)&Vert;<sup>2</sup> / "
        "&Vert;&Phi;(x<sub>0</sub>)&Vert;<sup>2</sup> + &lambda; TV<sub>&beta;</sub>(x)</span> over the "
        "image x with L-BFGS. Shallow layers keep nearly everything; deep layers keep what the class needs "
        "(Mahendran &amp; Vedaldi, <i>Understanding Deep Image Representations by Inverting Them</i>, CVPR 2015)."
    ),
}


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def section_batchnorm(report: Report, model: nn.Module, train_data, test_data, *, progress: bool = False):
    """BN from its equations vs ``torch.nn.BatchNorm2d``, the model's BN statistics, and recalibration."""
    sec = report.section("Batch normalization", EXPLAIN["bn"])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, 6, 6, generator=gen) * 3 + 1
    ours, ref = BatchNorm2d(8), nn.BatchNorm2d(8)
    diff_train = (ours(x) - ref(x)).abs().max().item()
    diff_stats = (ours.running_var - ref.running_var).abs().max().item()
    ours.eval(), ref.eval()
    diff_eval = (ours(x) - ref(x)).abs().max().item()
    sec.text(
        "netvis.models.BatchNorm2d computes the batch statistics itself. Against torch.nn.BatchNorm2d on a "
        f"16x8x6x6 batch: max |difference| {diff_train:.2e} in train mode, {diff_eval:.2e} in eval mode, "
        f"{diff_stats:.2e} in the running variance."
    )

    stats = bn_statistics(model)
    columns = ("running_mean", "running_var", "weight", "bias")
    rows = [[s["name"], s["num_features"], *(f"{s[c].mean():.3f}" if s[c] is not None else "-" for c in columns)]
            for s in stats]
    sec.text(f"The model has {len(stats)} BN layers (averages over channels):")
    sec.table(["layer", "channels", "mean(running mean)", "mean(running var)", "mean(gamma)", "mean(beta)"],
              rows)
    if stats:
        fig = Figure(figsize=(9, 2.8))
        axes = fig.subplots(1, 2)
        names = [s["name"] for s in stats]
        gammas = [s["weight"].numpy() for s in stats if s["weight"] is not None]
        if gammas:
            axes[0].boxplot(gammas, showfliers=False)
            axes[0].set_title("gamma per BN layer")
        variances = [s["running_var"].numpy() for s in stats if s["running_var"] is not None]
        if variances:
            axes[1].boxplot(variances, showfliers=False)
            axes[1].set_yscale("log")
            axes[1].set_title("running variance per BN layer")
        for ax in axes:
            ax.set_xticks(range(1, len(names) + 1), [str(i) for i in range(1, len(names) + 1)])
            ax.set_xlabel("BN layer (forward order)")
        sec.figure(fig, "Distribution over channels of gamma and of the running variance, per BN layer.")

    before = evaluate(model, test_data)
    recal = copy.deepcopy(model)
    recalibrate(recal, train_data, progress=progress)
    after = evaluate(recal, test_data)
    sec.text(
        "The other strategy for test-time statistics: with the weights fixed, recompute every BN layer's "
        "mean and variance over the training images, layer by layer, first layers first "
        "(netvis.bn.recalibrate)."
    )
    sec.table(["test-time statistics", "test accuracy"],
              [["running averages (training)", f"{before.accuracy:.2%}"],
               ["recomputed over the training data", f"{after.accuracy:.2%}"]])
    return {"bn_layers": len(stats), "accuracy_running": before.accuracy, "accuracy_recalibrated": after.accuracy}


ARCHITECTURES = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169",
                 "densenet201", "densenet264", "resnet20_cifar", "plain20_cifar", "resnet56_cifar",
                 "plain56_cifar", "densenet_bc_100"]


def section_architectures(report: Report):
    """Parameter counts of the lecture's architectures, beside torchvision's where it has the model."""
    # Local on purpose: importing torchvision costs about a second, and only this section needs it.
    import torchvision

    sec = report.section("ResNet and DenseNet", EXPLAIN["arch"])
    rows = []
    for name in ARCHITECTURES:
        with torch.device("meta"):
            count = _param_count(create(name))
            tv = getattr(torchvision.models, name, None)
            ref = f"{_param_count(tv(weights=None)):,}" if tv is not None else "-"
        rows.append([name, f"{count:,}", ref])
    sec.table(["model", "parameters (netvis)", "parameters (torchvision)"], rows)
    return {"architectures": len(rows)}


def section_model(report: Report, ckpt, test_data, *, run_dir: Path | None = None):
    """The checkpoint: layers, parameters, curves, accuracy and confusion matrix."""
    model = ckpt.model
    sec = report.section("The model", EXPLAIN["model"])
    meta = ckpt.meta
    model_meta = meta.get("model", {})
    sec.text(
        f"{model_meta.get('name', type(model).__name__)} with options {json.dumps(model_meta.get('options', {}))}, "
        f"{_param_count(model):,} parameters, trained for {meta.get('epoch', '?')} epoch(s) on "
        f"{meta.get('data', {}).get('name', '?')}."
    )
    rows = []
    for name, child in model.named_children():
        rows.append([name, type(child).__name__, f"{_param_count(child):,}"])
    sec.table(["top-level layer", "type", "parameters"], rows)

    curves = run_dir / "curves.png" if run_dir is not None else None
    if curves is not None and curves.exists():
        sec.image_bytes(curves.read_bytes(), "Training curves (loss and accuracy per epoch).")

    ev = evaluate(model, test_data, classes=list(ckpt.classes))
    sec.text(f"Accuracy on {ev.count} held-out images: {ev.accuracy:.2%} (mean loss {ev.loss:.3f}).")
    fig = Figure(figsize=(5.5, 4.8))
    ax = fig.subplots()
    im = ax.imshow(ev.confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(len(ev.classes)), ev.classes, rotation=70, fontsize=7)
    ax.set_yticks(range(len(ev.classes)), ev.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax)
    sec.figure(fig, "Confusion matrix on the held-out images.")
    return {"accuracy": ev.accuracy, "test_images": ev.count}


def sample_images(test_data, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` test images of distinct classes where possible (deterministic), as model inputs."""
    targets = torch.as_tensor(test_data.targets)
    chosen: list[int] = []
    for c in torch.unique(targets).tolist():
        idx = torch.nonzero(targets == c).flatten()
        if len(idx):
            chosen.append(int(idx[seed % len(idx)]))
        if len(chosen) == n:
            break
    xs = torch.stack([test_data[i][0] for i in chosen])
    return xs, targets[chosen]


def section_saliency(report: Report, ckpt, test_data, *, n_images: int = 4, window: int = 6, stride: int = 2):
    """The lecture's saliency methods (those the registry marks ``lecture``) side by side on sample images."""
    model = ckpt.model
    sec = report.section("Saliency: where the model looks", EXPLAIN["saliency"])
    x, labels = sample_images(test_data, n_images)
    with torch.no_grad():
        scores = model(x)
    pred = scores.argmax(dim=1)
    settings = {"window": window, "stride": stride, "generator": 0}
    maps = {}
    for method in saliency_methods.methods():
        if not method.lecture:
            continue
        options = {**method.figure_options, **method.select(settings)}
        label = method.title + (f" (k={options['window']})" if "window" in options else "")
        maps[label] = method.display(method(model, x, pred, **options))
    mean = getattr(test_data, "mean", None)
    std = getattr(test_data, "std", None)
    fig = method_grid(x, maps, scores=scores.softmax(dim=1), class_names=list(ckpt.classes), target=pred.tolist(),
                      mean=mean, std=std)
    sec.figure(fig, "Each row: a test image (true class "
               + ", ".join(ckpt.classes[i] for i in labels.tolist())
               + ") and its saliency for the predicted class.")
    return {"saliency_images": int(x.shape[0]), "saliency_methods": list(maps)}


def section_localization(report: Report, *, checkpoint: str = "wafer-maps-resnet", data: str = "wafer-maps-sample",
                         per_class: int = 2, window: int = 6, stride: int = 3, seed: int = 0):
    """The lecture's saliency methods scored against wafer-map defect masks, next to a random map.

    ``per_class`` test maps of every defect class of ``data`` (seeded), each method explaining the true
    class; occlusion hides ``window``-sized patches every ``stride`` pixels with passing dies. The table
    holds the mean pointing game, energy inside the mask and ROC-AUC (on the wafer only); the figure one map
    per class. ``netvis experiment localization`` is the full study (every method, more maps, per class).
    """
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.model
    raw = load(data, "test")
    if not hasattr(raw, "masks"):
        raise ValueError(f"the localization section needs a data set with defect masks, not {data!r}")
    sec = report.section("Do the maps point at the defect? Localization on wafer maps", EXPLAIN["localization"])
    generator = torch.Generator().manual_seed(seed)
    chosen, labels_fig = [], []
    for k, name in enumerate(raw.classes):
        where = torch.nonzero(raw.targets == k).flatten()
        if name == "none" or len(where) == 0:
            continue
        picked = where[torch.randperm(len(where), generator=generator)[:per_class]].sort().values
        chosen.append(picked)
        labels_fig.append(name)
    if not chosen:
        raise ValueError(f"the localization section needs maps with a defect; the test split of {data!r} has none")
    indices = torch.cat(chosen)
    images = raw.images[indices]
    x = ckpt.preprocess(images)
    target = raw.targets[indices]
    masks = raw.masks[indices]
    valid = images[:, 0] != OUTSIDE
    settings = {"window": window, "stride": stride, "fill": pass_value(ckpt.preprocess), "generator": seed}
    maps: dict[str, torch.Tensor] = {}
    for method in saliency_methods.methods():
        if not method.lecture:
            continue
        options = {**method.figure_options, **method.select(settings)}
        maps[method.title] = fill_uncovered(method.display(method(model, x, target, **options)).detach().abs().float())
    maps["random map"] = torch.rand(tuple(masks.shape), generator=generator)
    rows, summary = [], {}
    for label, m in maps.items():
        scores = localization_scores(m, masks, valid=valid)
        means = {key: mean_score(scores[key]) for key in ("pointing", "energy", "auc")}
        summary[label] = means
        rows.append([label, f"{means['pointing']:.3f}", f"{means['energy']:.3f}", f"{means['auc']:.3f}"])
    first = [sum(len(c) for c in chosen[:i]) for i in range(len(chosen))]
    sec.figure(localization_grid(images[:, 0], masks, maps, first, labels_fig),
               "One map per defect class: the defect's mask outlined, each map's maximum marked with a cross.")
    sec.table(["method", "pointing game", "energy inside the mask", "ROC-AUC"], rows)
    return {"localization_images": int(len(indices)), "localization": summary}


def _stage_layers(model: nn.Module) -> list[str]:
    """Names of the model's top-level stages that hold convolutions, in order (e.g. layer1..layer3)."""
    names = []
    for name, child in model.named_children():
        if any(isinstance(m, nn.Conv2d) for m in child.modules()) and not isinstance(child, nn.Conv2d):
            names.append(name)
    return names


def section_features(report: Report, ckpt, test_data, *, layer: str | None = None, channels: int = 4, k: int = 8):
    """Dataset examples of a few channels beside guided-backprop visualizations of the same units."""
    model = ckpt.model
    stages = _stage_layers(model)
    layer = layer or (stages[len(stages) // 2] if stages else None)
    if layer is None:
        raise ValueError("the model has no convolutional stage to show dataset examples for")
    sec = report.section("What units respond to: dataset examples and filter visualization", EXPLAIN["features"])
    result = dataset_examples(model, layer, test_data, k=k)
    # The channels with the strongest top activations are the most legible.
    chosen = result.values[:, 0].argsort(descending=True)[:channels].tolist()
    x0 = test_data[0][0]
    boxes = result.regions(receptive_field(model, layer, tuple(x0.shape)))
    for c in chosen:
        idx = result.indices[c]
        images = display_images(test_data, idx)
        captions = [f"{v:.2f}" for v in result.values[c].tolist()]
        grid = examples_grid(images, boxes[c], captions, columns=k, scale=3,
                             title=f"{layer} channel {c}: top {k} of {len(test_data)} images")
        top = test_data[int(idx[0])][0].unsqueeze(0)
        vis = filter_visualization(model, top, layer, c, guided=True).grad[0]
        fig = Figure(figsize=(4.4, 2.2))
        axes = fig.subplots(1, 2)
        axes[0].imshow(images[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
        axes[0].set_title("top image", fontsize=8)
        g = vis.abs().amax(dim=0)
        axes[1].imshow(g.numpy(), cmap="inferno")
        axes[1].set_title("guided backprop of (sum n)^2", fontsize=8)
        for ax in axes:
            ax.axis("off")
        buf = io.BytesIO()
        grid.save(buf, format="PNG")
        sec.image_bytes(buf.getvalue(), f"Dataset examples of {layer}, channel {c} (activation under each).")
        sec.figure(fig, f"Filter visualization of {layer}, channel {c}, on its top image.")
    return {"layer": layer, "channels": chosen, "k": k}


def section_inversion(report: Report, ckpt, test_data, *, steps: int = 100, index: int = 0):
    """Reconstructions of one image from each stage, shallow to deep."""
    model = ckpt.model
    sec = report.section("Model inversion: what a layer keeps", EXPLAIN["inversion"])
    stages = _stage_layers(model)
    x0 = test_data[index][0].unsqueeze(0)
    # A stronger TV prior past the first stage: deep features constrain the pixels less.
    tv_weights = {name: 0.05 if i == 0 else 1.0 for i, name in enumerate(stages)}
    results = {name: invert(model, x0, name, steps=steps, seed=0, tv_weight=tv_weights[name]) for name in stages}
    fig = Figure(figsize=(2.1 * (len(stages) + 1), 2.4))
    axes = fig.subplots(1, len(stages) + 1)
    axes[0].imshow(x0[0].permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
    axes[0].set_title("original", fontsize=9)
    rows = []
    for ax, name in zip(axes[1:], stages, strict=True):
        r = results[name]
        ax.imshow(r.image[0].detach().permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
        ax.set_title(f"from {name}\nerror {r.error:.3f}", fontsize=9)
        rows.append([name, tv_weights[name], f"{r.initial_error:.3f}", f"{r.error:.4f}", r.n_evals])
    for ax in axes:
        ax.axis("off")
    sec.figure(fig, "The same image reconstructed from the features of each stage (L-BFGS, TV prior).")
    sec.table(["layer", "TV weight", "feature error at start", "feature error at end", "function evaluations"],
              rows)
    return {"layers": stages, "errors": [results[n].error for n in stages]}


def lecture_report(ckpt, train_data, test_data, *, run_dir: str | Path | None = None,
                   progress: bool = False, title: str = "netvis: network visualization",
                   localization: bool | dict[str, Any] = False) -> tuple[Report, dict]:
    """Build the whole lecture's report for ``ckpt`` on ``train_data``/``test_data``.

    ``localization`` adds :func:`section_localization` after the saliency section (``True``, or a dict of
    its options, e.g. ``{"per_class": 1}``): saliency scored against wafer-map defect masks, with its own
    checkpoint and data, whatever ``ckpt`` is.

    Returns:
        The :class:`Report` and a dict of the headline numbers of every section.
    """
    report = Report(title, subtitle=f"checkpoint {ckpt.path}" if ckpt.path else "")
    summary: dict[str, Any] = {}
    steps = [
        ("model", lambda: section_model(report, ckpt, test_data, run_dir=Path(run_dir) if run_dir else None)),
        ("batchnorm", lambda: section_batchnorm(report, ckpt.model, train_data, test_data, progress=progress)),
        ("architectures", lambda: section_architectures(report)),
        ("saliency", lambda: section_saliency(report, ckpt, test_data)),
        ("features", lambda: section_features(report, ckpt, test_data)),
        ("inversion", lambda: section_inversion(report, ckpt, test_data)),
    ]
    if localization:
        options = localization if isinstance(localization, dict) else {}
        steps.insert(4, ("localization", lambda: section_localization(report, **options)))

    for name, step in tqdm(steps, desc="report", disable=not progress):
        summary[name] = step()
    return report, summary
