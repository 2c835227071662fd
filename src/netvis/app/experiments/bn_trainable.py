"""``bn-trainable``: how much can batch normalization's gamma and beta alone learn?

Frankle, Schwab and Morcos, "Training BatchNorm and Only BatchNorm: On the Expressive Power of Random
Features in CNNs" (ICLR 2021; arXiv 2020): a ResNet whose convolutions and output layer stay at their
random initialisation, with only the per-channel scale :math:`\\gamma` and shift :math:`\\beta` of its BN
layers trained, reaches an accuracy far above chance (and, for deep wide ResNets, a large part of the
full network's), with a tiny fraction of the parameters. Freezing BN's parameters at
:math:`\\gamma = 1, \\beta = 0` and training everything else costs little.

The same ResNet trains with each policy of :func:`netvis.bn.set_trainable` (``"all"``, ``"bn"``,
``"all-but-bn"``, optionally ``"bn+fc"``), with the same data, schedule and seed (so the same initial
weights).
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from netvis.app.experiments._common import Context, Experiment, ExperimentResult, Timer
from netvis.bn import set_trainable

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "image_size": 14,
        "model": "resnet20_cifar",
        "stage_channels": (8, 16, 32),
        "policies": ("all", "bn", "all-but-bn"),
        "limit_train": 1000,
        "limit_test": None,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.1,
    },
    "full": {
        "data": "fashion-mnist",
        "image_size": None,
        "model": "resnet56_cifar",
        "stage_channels": (16, 32, 64),
        "policies": ("all", "bn", "bn+fc", "all-but-bn"),
        "limit_train": None,
        "limit_test": None,
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
    },
}


def _figure(curves: dict[str, list[dict[str, Any]]], chance: float):
    fig = Figure(figsize=(5.5, 3.6), layout="constrained")
    ax = fig.subplots()
    for policy, metrics in curves.items():
        ax.plot([m["epoch"] for m in metrics], [m.get("test_accuracy", float("nan")) for m in metrics],
                marker="o", label=policy)
    ax.axhline(chance, color="gray", linestyle=":", label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="trainable")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def parameter_counts(model: Any, policy: str) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``model`` under a :func:`netvis.bn.set_trainable` policy.

    The model's ``requires_grad`` flags are as before afterwards.
    """
    total = sum(q.numel() for q in model.parameters())
    with set_trainable(model, policy) as state:
        params = dict(model.named_parameters())
        trainable = sum(params[name].numel() for name in state.trainable)
    return trainable, total


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    train_data, test_data = ctx.limited_data()
    chance = 1 / len(train_data.classes)
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    for policy in p["policies"]:
        timer = Timer()
        result = ctx.train(p["model"], train_data, test_data, epochs=p["epochs"], batch_size=p["batch_size"],
                           lr=p["lr"], model_options={"stage_channels": tuple(p["stage_channels"])},
                           trainable=policy)
        trainable, total = parameter_counts(result.model, policy)
        last = result.metrics[-1]
        curves[policy] = result.metrics
        rows.append(
            {
                "trainable": policy,
                "trainable_parameters": trainable,
                "fraction": trainable / total,
                "train_accuracy": last["train_accuracy"],
                "test_accuracy": last["test_accuracy"],
                "seconds": round(timer(), 1),
            }
        )
    by = {r["trainable"]: r for r in rows}
    findings = []
    metrics: dict[str, Any] = {"chance": chance, "test_accuracy": {r["trainable"]: r["test_accuracy"] for r in rows}}
    if "bn" in by:
        bn = by["bn"]
        findings.append(
            f"Training only BN's gamma and beta ({bn['trainable_parameters']:,d} parameters, {bn['fraction']:.2%} of "
            f"the network) reaches {bn['test_accuracy']:.1%} test accuracy; chance is {chance:.1%}."
        )
        if "all" in by:
            findings.append(f"Training every parameter reaches {by['all']['test_accuracy']:.1%}.")
    if "all-but-bn" in by and "all" in by:
        diff = by["all-but-bn"]["test_accuracy"] - by["all"]["test_accuracy"]
        findings.append(
            f"Freezing BN at gamma=1, beta=0 and training the rest changes test accuracy by {diff:+.1%}."
        )
    return ctx.result(
        rows,
        figures={"test-accuracy": _figure(curves, chance)},
        metrics=metrics,
        findings=findings,
    )


EXPERIMENT = Experiment(
    name="bn-trainable",
    title="Training all parameters, only BN, or all but BN",
    summary="A ResNet with only BatchNorm's gamma and beta trained (random convolutions) learns far above chance.",
    paper="Frankle, Schwab, Morcos: Training BatchNorm and Only BatchNorm (2020)",
    settings=SETTINGS,
    runner=run,
)
