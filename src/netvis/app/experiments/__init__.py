"""The lecture's experiments, reproducible on your own data, and checks that an explanation really explains.

========================  =============================================================================
``depth``                 plain vs residual networks at 20 and 56 layers (He et al. 2015)
``bn-trainable``          training all parameters, only BN's gamma/beta, or all but BN (Frankle et al. 2020)
``bn-statistics``         running averages vs recomputed statistics, batch size, the train/eval pitfall
``bias``                  a planted spurious cue, and whether saliency maps reveal it
``sanity``                model and label randomisation tests for saliency maps (Adebayo et al. 2018)
``faithfulness``          deletion and insertion curves (Petsiuk et al. 2018)
``localization``          pointing game, energy and AUC of every method against wafer-map defect masks
========================  =============================================================================

Each runs in a ``"fast"`` setting (a CPU, the Fashion-MNIST sample shipped with netvis) and a ``"full"``
setting (a GPU, the full data set)::

    from netvis.app import experiments
    result = experiments.run("faithfulness", setting="fast", out="runs/faithfulness")
    result.table          # list of dicts
    result.figures        # name -> matplotlib Figure
    result.findings       # what the numbers show

``netvis experiment NAME`` does the same from the command line; ``netvis experiment list`` names them.
"""

from __future__ import annotations

import importlib
import os
import shlex
from typing import Any

import torch

from netvis import __version__ as netvis_version
from netvis.app.experiments._common import Context, Timer, hardware
from netvis.devices import resolve_device

_TABLE = {
    "depth": "netvis.app.experiments.depth",
    "bn-trainable": "netvis.app.experiments.bn_trainable",
    "bn-statistics": "netvis.app.experiments.bn_statistics",
    "bias": "netvis.app.experiments.bias",
    "sanity": "netvis.app.experiments.sanity",
    "faithfulness": "netvis.app.experiments.faithfulness",
    "localization": "netvis.app.experiments.localization",
}

__all__ = ["get", "list_experiments", "run"]


def list_experiments() -> list[str]:
    """The experiments' names, in the lecture's order."""
    return list(_TABLE)


def get(name: str):
    """The :class:`netvis.app.experiments._common.Experiment` called ``name``.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in _TABLE:
        raise ValueError(f"unknown experiment {name!r}; choose from {', '.join(_TABLE)}")
    return importlib.import_module(_TABLE[name]).EXPERIMENT


def _command(name: str, data: Any, setting: str, seed: int, options: dict[str, Any]) -> str:
    parts = ["netvis", "experiment", name, "--setting", setting, "--seed", str(seed)]
    if isinstance(data, (str, os.PathLike)):
        parts += ["--data", os.fspath(data)]
    for key, value in options.items():
        parts += ["--option", f"{key}={value!r}" if not isinstance(value, str) else f"{key}={value}"]
    return " ".join(shlex.quote(p) for p in parts)


def run(
    name: str,
    *,
    data: Any = None,
    setting: str = "fast",
    out: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    **options: Any,
):
    """Run an experiment and (with ``out``) write its report.

    Args:
        name: one of :func:`list_experiments`.
        data: a data set name or folder (:func:`netvis.data.load`), or a ``(train, test)`` pair of
            in-memory netvis data sets; ``None`` uses the setting's (the shipped sample for ``"fast"``,
            the full Fashion-MNIST for ``"full"``).
        setting: ``"fast"`` (a CPU) or ``"full"`` (a GPU).
        out: folder for ``index.html`` (netvis's report), ``results.json`` and ``figures/``; ``None``
            writes nothing.
        seed: the seed of every random choice (weights, shuffling, image choice, randomised layers).
        device: ``"auto"`` (the GPU when there is one), ``"cpu"``, ``"cuda"``...
        progress: show progress bars while training.
        **options: override single parameters of the setting (each experiment's ``settings`` lists them).

    Returns:
        An :class:`netvis.app.experiments._common.ExperimentResult`.

    Raises:
        ValueError: unknown experiment, setting, option or device.
    """
    experiment = get(name)
    params = experiment.parameters(setting, options)
    if data is None:
        data = params["data"]
    elif isinstance(data, (str, os.PathLike)):
        params["data"] = os.fspath(data)
    else:
        params["data"] = "(given data sets)"
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:  # e.g. "cuda" on a machine without CUDA
        raise ValueError(str(exc)) from exc
    ctx = Context(experiment=experiment, setting=setting, params=params, data=data, seed=seed, device=dev,
                  progress=progress)
    timer = Timer()
    result = experiment.runner(ctx)
    result.params = params
    result.meta.update(
        {
            "summary": experiment.summary,
            "paper": experiment.paper,
            "data": ctx.data_name,
            "seed": seed,
            "device": str(dev),
            "hardware": hardware(dev),
            "seconds": round(timer(), 1),
            "versions": f"netvis {netvis_version}, torch {torch.__version__}",
            "command": _command(name, data, setting, seed, options),
        }
    )
    if out is not None:
        result.write(out)
    return result
