"""Saliency on files, with files written: what ``netvis saliency`` runs.

* :func:`load_classifier` turns ``CHECKPOINT`` into a model, its preprocess and class names: a netvis
  checkpoint (a path or a shipped name such as ``fashion-mnist-small``), or ``torchvision:NAME`` with
  optional local weights (``--weights PATH``; nothing is downloaded).
* :func:`run_saliency` computes the chosen methods for each image and writes, per image and method, an
  overlay (PNG) and the raw map (``.npy``), plus one side-by-side grid per image.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from netvis.app.jobs._inputs import load_target
from netvis.app.render.figures import method_grid, overlay, save_figure
from netvis.data import Preprocess
from netvis.devices import resolve_device
from netvis.io import atomic_write, atomic_write_text
from netvis.saliency import methods as registry
from netvis.saliency._common import PRECISIONS
from netvis.saliency.methods import Method
from netvis.train.checkpoint import CheckpointError, load_checkpoint

__all__ = ["Classifier", "load_classifier", "method_options", "run_saliency"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Classifier:
    """A model ready for saliency: ``model`` (eval, CPU), ``preprocess`` (images to inputs), ``classes``."""

    model: nn.Module
    preprocess: Any
    classes: list[str]
    name: str


def load_classifier(spec: str, weights: str | os.PathLike | None = None) -> Classifier:
    """Load ``spec``: a netvis checkpoint (path or shipped name) or ``torchvision:NAME``.

    Args:
        spec: ``torchvision:resnet18`` (any name ``torchvision.models.get_model`` knows) or a checkpoint.
        weights: for ``torchvision:`` models, a local ``state_dict`` file (``torch.save``); without it the
            weights are random (useful to test a pipeline, not to explain a decision).

    Raises:
        ValueError: an unknown torchvision model, or ``weights`` given for a netvis checkpoint.
        netvis.train.checkpoint.CheckpointError: a missing, corrupt or mismatched checkpoint or weights file.
    """
    if spec.startswith("torchvision:"):
        # Local on purpose: importing torchvision costs about a second, and only torchvision: models need it.
        import torchvision

        name = spec.split(":", 1)[1]
        available = torchvision.models.list_models()
        if name not in available:
            close = difflib.get_close_matches(name, available, n=4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"torchvision has no model {name!r}.{hint}")
        model = torchvision.models.get_model(name, weights=None)
        if weights is not None:
            path = Path(weights)
            if not path.is_file():
                raise CheckpointError(f"weights file {str(path)!r} does not exist")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"cannot read weights file {str(path)!r}: {exc}") from exc
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                model.load_state_dict(state)
            except (RuntimeError, TypeError) as exc:
                raise CheckpointError(f"weights file {str(path)!r} does not fit torchvision's {name}: {exc}") from exc
        try:
            categories = torchvision.models.get_model_weights(name).DEFAULT.meta["categories"]
        except Exception:  # models without published weights metadata
            categories = None
        num = _num_outputs(model)
        classes = list(categories) if categories and len(categories) == num else [str(i) for i in range(num)]
        preprocess = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, size=224, channels=3)
        return Classifier(model.eval(), preprocess, classes, spec)
    if weights is not None:
        raise ValueError("--weights applies to torchvision:NAME models; a netvis checkpoint holds its own weights")

    ckpt = load_checkpoint(spec)
    return Classifier(ckpt.model, ckpt.preprocess, list(ckpt.classes), spec)


def _num_outputs(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def _target_index(target: str | None, classes: Sequence[str]) -> int | None:
    """``None`` (predicted class), an index, or a class name (case-insensitive)."""
    if target is None:
        return None
    if target.lstrip("-").isdigit():
        return int(target)
    lowered = [c.lower() for c in classes]
    if target.lower() in lowered:
        return lowered.index(target.lower())
    raise ValueError(f"unknown class {target!r}; give an index 0..{len(classes) - 1} or one of: {', '.join(classes)}")


def method_options(method: Method, settings: dict[str, Any]) -> dict[str, Any]:
    """The options ``method`` runs with: its figure options, then the settings that are its options.

    ``settings`` holds the command's option values by option name (``None``: not given), shared by all
    methods; a ``precision`` the method cannot run in is left out (the method runs in fp32, and
    ``saliency.json`` says so). A seeded method without a seed gets seed 0, so that a rerun gives the
    same files.
    """
    chosen = method.select(settings)
    if chosen.get("precision") not in method.precisions:
        chosen.pop("precision", None)
    if "generator" in method.option_names() and "generator" not in chosen:
        chosen["generator"] = 0
    return {**method.figure_options, **chosen}


def run_saliency(
    spec: str,
    images: Sequence[str],
    methods: Sequence[str],
    out: str | os.PathLike,
    *,
    target: str | None = None,
    weights: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
    **options: Any,
) -> list[Path]:
    """Compute ``methods`` for every image and write overlays, raw maps, grids and ``saliency.json``.

    Args:
        spec: the model (see :func:`load_classifier`).
        images: image files (PNG, JPG, ...) or ``sample:N`` (test image ``N`` of the shipped sample).
        methods: names of the registry (:func:`netvis.saliency.methods.names`).
        out: output folder.
        target: class index or name; default each image's predicted class.
        weights: local weights for ``torchvision:`` models.
        progress: called with a short message before each image and method.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).
        **options: method options by name (``window``, ``stride``, ``batch_size``, ``layer``, ``generator``,
            ``precision``, ...; ``None``: the method's default), each passed to the methods that have it (see
            :func:`method_options`); a ``precision`` applies to the methods that support it.

    Returns:
        The paths written.
    """
    chosen = [registry.get(name) for name in methods]  # ValueError naming the registered methods
    if options.get("precision") not in (None, *PRECISIONS):
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {options['precision']!r}")
    runs = {method.name: method_options(method, options) for method in chosen}
    for method in chosen:
        method.check_options(runs[method.name])  # bad options fail before any model is loaded
    dev = resolve_device(device)
    clf = load_classifier(spec, weights)
    clf.model.to(dev)
    target_index = _target_index(target, clf.classes)
    mean, std = getattr(clf.preprocess, "mean", None), getattr(clf.preprocess, "std", None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    summary = []
    for spec_image in images:
        x = load_target(spec_image, clf.preprocess).float().to(dev)
        with torch.no_grad():
            scores = clf.model(x).softmax(dim=1)[0]
        cls = int(scores.argmax()) if target_index is None else target_index
        stem = Path(spec_image.replace(":", "_")).stem
        image = x[0].cpu()
        displays = {}
        for method in chosen:
            name = method.name
            if progress is not None:
                progress(f"{spec_image}: {name}")
            result = method(clf.model, x, cls, **runs[name]).detach().cpu()
            raw = out / f"{stem}_{name}.npy"
            array = result[0].numpy()
            atomic_write(raw, lambda handle: np.save(handle, array))  # noqa: B023 (called at once)
            display = displays[name] = method.display(result)[0]
            png = save_figure(overlay(image, display, mean=mean, std=std, title=f"{name}: {clf.classes[cls]}"),
                              out / f"{stem}_{name}.png")
            written += [raw, png]
        grid = method_grid(image, displays, scores=scores.cpu(), class_names=clf.classes, target=cls, mean=mean,
                           std=std)
        written.append(save_figure(grid, out / f"{stem}_grid.png"))
        summary.append({"image": spec_image, "target": cls, "class": clf.classes[cls],
                        "probability": float(scores[cls]), "methods": list(methods),
                        "device": str(dev), "precision": options.get("precision") or "fp32",
                        "precisions": {name: runs[name].get("precision", "fp32") for name in runs}})
    path = out / "saliency.json"
    atomic_write_text(path, json.dumps({"model": spec, "images": summary}, indent=2) + "\n")
    written.append(path)
    return written
