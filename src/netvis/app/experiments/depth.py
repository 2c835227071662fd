"""``depth``: is deeper better? Plain and residual networks at two depths, trained identically.

He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016, arXiv 2015), section
4.2: on CIFAR-10 the 56-layer *plain* network has a higher *training* error than the 20-layer one (the
degradation problem: not overfitting, an optimisation difficulty), while the 56-layer ResNet trains to
a lower error than the 20-layer ResNet. Here the four networks (``plain20_cifar``, ``plain56_cifar``,
``resnet20_cifar``, ``resnet56_cifar``; the ResNets with the parameter-free shortcut A, so that each
ResNet has exactly its plain twin's parameters) train with the same data, schedule and seed.
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from netvis.app.experiments._common import Context, Experiment, ExperimentResult, Timer

SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {
        "data": "fashion-mnist-sample",
        "image_size": 14,
        "depths": (20, 56),
        "stage_channels": (4, 8, 8),
        "limit_train": 1000,
        "limit_test": None,
        "epochs": 3,
        "batch_size": 32,
        "lr": 0.1,
    },
    "full": {
        "data": "fashion-mnist",
        "image_size": None,
        "depths": (20, 56),
        "stage_channels": (16, 32, 64),
        "limit_train": None,
        "limit_test": None,
        "epochs": 30,
        "batch_size": 128,
        "lr": 0.1,
    },
}


def _figure(rows: list[dict[str, Any]], curves: dict[str, list[dict[str, Any]]]):
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind in zip(axes, ("plain", "residual"), strict=True):
        for row in rows:
            if row["kind"] != kind:
                continue
            metrics = curves[row["model"]]
            epochs = [m["epoch"] for m in metrics]
            line = ax.plot(epochs, [1 - m["train_accuracy"] for m in metrics], label=f"{row['layers']}-layer train")
            if all("test_accuracy" in m for m in metrics):
                ax.plot(epochs, [1 - m["test_accuracy"] for m in metrics], linestyle="--",
                        color=line[0].get_color(), label=f"{row['layers']}-layer test")
        ax.set_title(f"{kind} networks")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("error")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def result_row(model: str, kind: str, layers: int, network: Any, metrics: list[dict[str, Any]],
               seconds: float) -> dict[str, Any]:
    """One row of the table from a finished training: the last epoch's training loss and errors.

    Args:
        model: the model's name; kind: ``"plain"`` or ``"residual"``; layers: its depth.
        network: the trained ``nn.Module`` (its parameters are counted).
        metrics: the per-epoch metrics of :func:`netvis.train.train` (``train_loss``, ``train_accuracy``,
            ``test_accuracy``).
        seconds: how long it trained.
    """
    last = metrics[-1]
    return {
        "model": model,
        "kind": kind,
        "layers": layers,
        "parameters": sum(q.numel() for q in network.parameters()),
        "train_loss": last["train_loss"],
        "train_error": 1 - last["train_accuracy"],
        "test_error": 1 - last["test_accuracy"],
        "seconds": round(seconds, 1),
    }


def degradation(rows: list[dict[str, Any]], depths: Any) -> dict[str, Any]:
    """The degradation problem in numbers: how much more training error the deeper net of each kind ends with.

    .. math:: \\text{gap}_{k} = e_{\\text{train}}(k, d_{\\max}) - e_{\\text{train}}(k, d_{\\min})

    He et al.'s finding is ``plain_gap > 0`` (the deeper plain net trains worse) and
    ``residual_gap < plain_gap``; ``depth_penalty`` is ``plain_gap - residual_gap`` (positive: depth
    hurts the plain net more), ``deep_plain_vs_residual`` the deep plain net's training error minus its
    residual twin's.

    Args:
        rows: :func:`result_row` rows, one per kind and depth.
        depths: the depths trained.
    """
    by = {(r["kind"], r["layers"]): r for r in rows}
    shallow, deep = min(depths), max(depths)
    plain_gap = by["plain", deep]["train_error"] - by["plain", shallow]["train_error"]
    residual_gap = by["residual", deep]["train_error"] - by["residual", shallow]["train_error"]
    return {"plain_gap": plain_gap, "residual_gap": residual_gap, "depth_penalty": plain_gap - residual_gap,
            "deep_plain_vs_residual": by["plain", deep]["train_error"] - by["residual", deep]["train_error"],
            "shallow": shallow, "deep": deep}


def run(ctx: Context) -> ExperimentResult:
    p = ctx.params
    train_data, test_data = ctx.limited_data()
    rows: list[dict[str, Any]] = []
    curves: dict[str, list[dict[str, Any]]] = {}
    for kind in ("plain", "residual"):
        for depth in p["depths"]:
            model = f"{'plain' if kind == 'plain' else 'resnet'}{depth}_cifar"
            options: dict[str, Any] = {"stage_channels": tuple(p["stage_channels"])}
            if kind == "residual":
                options["shortcut"] = "A"
            timer = Timer()
            result = ctx.train(model, train_data, test_data, epochs=p["epochs"], batch_size=p["batch_size"],
                               lr=p["lr"], model_options=options, seed_stream=depth)
            curves[model] = result.metrics
            rows.append(result_row(model, kind, depth, result.model, result.metrics, timer()))
    by = {(r["kind"], r["layers"]): r for r in rows}
    metrics = degradation(rows, p["depths"])
    shallow, deep = metrics["shallow"], metrics["deep"]
    plain_gap, residual_gap = metrics["plain_gap"], metrics["residual_gap"]
    findings = [
        f"plain: the {deep}-layer net ends with a training error {abs(plain_gap):.1%} "
        f"{'higher' if plain_gap > 0 else 'lower'} than the {shallow}-layer net "
        f"({by['plain', deep]['train_error']:.1%} vs {by['plain', shallow]['train_error']:.1%}).",
        f"residual: the {deep}-layer net ends with a training error {abs(residual_gap):.1%} "
        f"{'higher' if residual_gap > 0 else 'lower'} than the {shallow}-layer net "
        f"({by['residual', deep]['train_error']:.1%} vs {by['residual', shallow]['train_error']:.1%}).",
    ]
    if plain_gap > 0 and residual_gap < plain_gap:
        findings.append(
            "Depth hurts the plain network's training error more than the residual network's: the degradation "
            "problem, and the shortcuts that remove it."
        )
    else:
        findings.append("This run does not show the degradation problem (train longer: the full setting).")
    return ctx.result(
        rows,
        figures={"training-error": _figure(rows, curves)},
        metrics=metrics,
        findings=findings,
        tables={"per-epoch": [{"model": m, **{k: e[k] for k in ("epoch", "train_loss", "train_accuracy",
                                                                 "test_accuracy") if k in e}}
                               for m, es in curves.items() for e in es]},
    )


EXPERIMENT = Experiment(
    name="depth",
    title="Plain vs residual networks at two depths",
    summary="The deeper plain network trains to a higher training error than the shallower one; the residual "
    "network does not (the degradation problem).",
    paper="He, Zhang, Ren, Sun: Deep Residual Learning for Image Recognition (2015)",
    settings=SETTINGS,
    runner=run,
)
