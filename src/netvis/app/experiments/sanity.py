"""``sanity``: do the saliency maps depend on what the model learned? (Adebayo et al. 2018)

Adebayo, Gilmer, Muelly, Goodfellow, Hardt and Kim, "Sanity Checks for Saliency Maps", NeurIPS 2018: an
explanation of a trained model should change when the model's learned parameters are destroyed, and
when the model is trained on randomly permuted labels. A method whose maps barely change explains the
image (edges, a kind of image recovery), not the model. Three tests, for every saliency method:

* **cascading randomisation** -- re-initialise the model's units from the top (the output layer)
  down, one more at a time, and compare each map with the trained model's map;
* **independent randomisation** -- re-initialise one unit at a time, the rest trained;
* **label randomisation** -- train the same network twice, on the true labels and on randomly
  permuted labels, and compare the two models' maps.

Similarity of two maps: the Spearman rank correlation of their absolute values (:func:`spearman`) and
the SSIM of the maps scaled to ``[0, 1]`` (:func:`map_ssim`), averaged over the test images. Maps of
all models explain the same class: the one the trained model predicts. Re-initialisation: see
:func:`netvis.app.experiments.metrics.randomized_copy`.
"""

from __future__ import annotations

from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from netvis.app.experiments._common import (
    Context,
    Experiment,
    ExperimentResult,
    describe_model,
    inputs,
    mix_seed,
    predict,
)
from netvis.app.experiments.metrics import (
    layer_units,
    map_ssim,
    method_options,
    randomized_copy,
    saliency_maps,
    spearman,
)
from netvis.data import TensorImageDataset
from netvis.saliency import methods as saliency_methods

ALL_METHODS = tuple(saliency_methods.names())
"""Every method of the saliency registry (:mod:`netvis.saliency.methods`), in its order."""
PASS_BELOW = 0.5
"""A method passes the model randomisation test when its rank correlation after every unit has been
randomised falls below this."""

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "checkpoint": "auto",
        "methods": ALL_METHODS,
        "n_images": 8,
        "granularity": "stages",
        "independent": True,
        "labels": True,
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
        "n_images": 200,
        "granularity": "blocks",
        "independent": True,
        "labels": True,
        "occlusion_window": 4,
        "occlusion_stride": 2,
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


def _compare(reference: dict[str, torch.Tensor], maps: dict[str, torch.Tensor], test: str, randomized: str,
             units: int) -> list[dict[str, Any]]:
    """One row per method: how similar ``maps`` are to ``reference`` (mean Spearman correlation and SSIM)."""
    return [{"method": m, "test": test, "randomized": randomized, "units": units,
             "spearman": float(spearman(reference[m], maps[m]).mean()),
             "ssim": float(map_ssim(reference[m], maps[m]).mean())}
            for m in reference]


def cascading_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: list[str],
                            options: dict[str, Any], units: list[str], seed: int,
                            reference: dict[str, torch.Tensor] | None = None,
                            ) -> tuple[list[dict[str, Any]], list[tuple[str, dict[str, torch.Tensor]]]]:
    """Adebayo et al.'s cascading test: re-initialise the units from the top down, one more at a time.

    Step :math:`i = 1..U` re-initialises the top :math:`i` units (``units[-i:]``, with
    :func:`netvis.app.experiments.metrics.randomized_copy`, so ``model`` itself is untouched) and compares
    every method's maps of the copy with those of the trained model (:func:`_compare`).

    Args:
        model: the trained classifier.
        x: ``(N, C, H, W)`` inputs; target: ``(N,)`` classes explained (the same for every model).
        methods: saliency method names; options: their options.
        units: dotted unit names, input side first (:func:`netvis.app.experiments.metrics.layer_units`).
        seed: the seed of the new weights.
        reference: the trained model's maps, if already computed.

    Returns:
        ``(rows, steps)``: one row per step and method (``test`` ``"cascading"``, ``randomized`` the lowest
        unit re-initialised, ``units`` :math:`i`, ``spearman``, ``ssim``), and per step the lowest unit's
        name with the copy's maps.
    """
    original = reference if reference is not None else saliency_maps(model, x, target, methods, options)
    rows: list[dict[str, Any]] = []
    steps: list[tuple[str, dict[str, torch.Tensor]]] = []
    for i in range(1, len(units) + 1):
        top = units[-i:]
        maps = saliency_maps(randomized_copy(model, top, seed), x, target, methods, options)
        steps.append((top[0], maps))
        rows += _compare(original, maps, "cascading", top[0], i)
    return rows, steps


def independent_randomization(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods: list[str],
                              options: dict[str, Any], units: list[str], seed: int,
                              reference: dict[str, torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Adebayo et al.'s independent test: re-initialise one unit at a time (from the top), the rest trained.

    Same arguments as :func:`cascading_randomization`; rows have ``test`` ``"independent"`` and ``units`` 1.
    A unit gets the same new weights here as in the cascading test (the seed is per unit).
    """
    original = reference if reference is not None else saliency_maps(model, x, target, methods, options)
    rows: list[dict[str, Any]] = []
    for unit in reversed(units):
        maps = saliency_maps(randomized_copy(model, [unit], seed), x, target, methods, options)
        rows += _compare(original, maps, "independent", unit, 1)
    return rows


def summary_table(rows: list[dict[str, Any]], methods: list[str], units: list[str], labels: bool
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The experiment's main table from every comparison.

    Per method: the Spearman correlation after re-initialising the top unit only (``spearman_top_unit``)
    and every unit (``spearman_all_units``), the first unit from the top whose cascading step brings it
    below :data:`PASS_BELOW` (``"never"`` if none), and the label test's correlation (``None`` without it).

    Returns:
        ``(summary rows, {"full", "top_only", "labels", "below_at"})`` (the last as method -> value).
    """
    def value(method: str, test: str, units_count: int | None = None) -> float | None:
        for r in rows:
            if r["method"] == method and r["test"] == test and (units_count is None or r["units"] == units_count):
                return r["spearman"]
        return None

    full = {m: value(m, "cascading", len(units)) for m in methods}
    top_only = {m: value(m, "cascading", 1) for m in methods}
    label_values = {m: value(m, "labels") for m in methods} if labels else {}
    below_at: dict[str, str | None] = {}
    for m in methods:
        below_at[m] = next((units[-i] for i in range(1, len(units) + 1)
                            if (value(m, "cascading", i) or 0.0) < PASS_BELOW), None)
    summary = [{"method": m, "spearman_top_unit": top_only[m], "spearman_all_units": full[m],
                f"below_{PASS_BELOW}_from": below_at[m] or "never", "spearman_labels": label_values.get(m)}
               for m in methods]
    return summary, {"full": full, "top_only": top_only, "labels": label_values, "below_at": below_at}


def _figure(methods: list[str], original: dict[str, torch.Tensor], steps: list[tuple[str, dict[str, torch.Tensor]]]):
    if len(steps) > 6:  # keep the first, the last and evenly spaced ones between
        keep = sorted({round(i * (len(steps) - 1) / 5) for i in range(6)})
        steps = [steps[i] for i in keep]
    columns = [("trained", original)] + steps
    fig = Figure(figsize=(1.5 * len(columns), 1.5 * len(methods) + 0.6), layout="constrained")
    axes = fig.subplots(len(methods), len(columns), squeeze=False)
    for r, method in enumerate(methods):
        for c, (label, maps) in enumerate(columns):
            m = maps[method][0]
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-12)
            ax = axes[r, c]
            ax.imshow(m.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label if c == 0 else f"down to\n{label}", fontsize=8)
            if c == 0:
                ax.set_ylabel(method, fontsize=8)
    fig.suptitle("cascading randomisation, from the output layer down (one test image)", fontsize=9)
    return fig


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    methods = list(p["methods"])
    model, _, test_data, description = ctx.model_for_maps()
    x = inputs(test_data, ctx.pick(len(test_data), int(p["n_images"]), 1), ctx.device)
    target = predict(model, x)
    options = method_options(model, tuple(x.shape[-2:]), p, seed=ctx.seed)
    original = saliency_maps(model, x, target, methods, options)
    units = layer_units(model, x, p["granularity"])
    seed = mix_seed(ctx.seed, 11)
    rows, steps = cascading_randomization(model, x, target, methods, options, units, seed, reference=original)
    if p["independent"]:
        rows += independent_randomization(model, x, target, methods, options, units, seed, reference=original)
    label_info: dict[str, Any] = {}
    if p["labels"]:
        train, test = ctx.load_data(p["image_size"])
        train = ctx.subset(train, p["train_limit"])
        permuted = train.targets[torch.randperm(len(train), generator=ctx.generator(5))]
        shuffled = TensorImageDataset(train.images, permuted, train.classes, mean=train.mean, std=train.std,
                                      channels=train.preprocess.channels, name=train.name, split="train")
        trained = {}
        for kind, data in (("true labels", train), ("permuted labels", shuffled)):
            result = ctx.train(p["train_model"], data, test, epochs=p["train_epochs"], batch_size=p["train_batch_size"],
                               model_options=p["train_model_options"], seed_stream=21)
            trained[kind] = result.model.eval()
            label_info[kind] = {"train_accuracy": result.metrics[-1]["train_accuracy"],
                                "test_accuracy": result.metrics[-1]["test_accuracy"]}
        xl = inputs(test, ctx.pick(len(test), int(p["n_images"]), 2), ctx.device)
        tl = predict(trained["true labels"], xl)
        opts = method_options(trained["true labels"], tuple(xl.shape[-2:]), p, seed=ctx.seed)
        true_maps = saliency_maps(trained["true labels"], xl, tl, methods, opts)
        random_maps = saliency_maps(trained["permuted labels"], xl, tl, methods, opts)
        rows += _compare(true_maps, random_maps, "labels", "training labels", 0)

    summary, found = summary_table(rows, methods, units, bool(p["labels"]))
    full, top_only, labels, below_at = found["full"], found["top_only"], found["labels"], found["below_at"]
    findings = [f"{describe_model(description)}; {len(units)} units, from the top: {', '.join(reversed(units))}."]
    for m in methods:
        line = f"{m}: rank correlation with the trained model's maps {top_only[m]:.2f} after randomising {units[-1]}"
        if below_at[m] is None:
            line += f", still {full[m]:.2f} with every unit randomised: the maps do not depend on the learned weights"
        else:
            depth = units[::-1].index(below_at[m]) + 1
            line += (f"; below {PASS_BELOW} once {below_at[m]} is randomised ({depth} of {len(units)} units from the "
                     f"top); {full[m]:.2f} with every unit randomised")
        if labels.get(m) is not None:
            line += f"; {labels[m]:.2f} between the models trained on true and on permuted labels"
        findings.append(line + ".")
    if label_info:
        findings.append(
            "Label randomisation: the true-label model reaches {:.1%} training accuracy, the permuted-label model "
            "{:.1%} (test {:.1%}).".format(label_info["true labels"]["train_accuracy"],
                                    label_info["permuted labels"]["train_accuracy"],
                                    label_info["permuted labels"]["test_accuracy"])
        )
    return ctx.result(
        summary,
        tables={"all comparisons": rows},
        figures={"cascading": _figure(methods, original, steps)},
        metrics={"spearman_all_units": full, "spearman_top_unit": top_only, "spearman_labels": labels,
                 "units": units, "model": description, "label_models": label_info, "pass_below": PASS_BELOW},
        findings=findings,
    )


EXPERIMENT = Experiment(
    name="sanity",
    title="Sanity checks for saliency maps",
    summary="Cascading and independent parameter randomisation and label randomisation: which methods' maps "
    "depend on what the model learned.",
    paper="Adebayo, Gilmer, Muelly, Goodfellow, Hardt, Kim: Sanity Checks for Saliency Maps (2018)",
    settings=SETTINGS,
    runner=run,
)
