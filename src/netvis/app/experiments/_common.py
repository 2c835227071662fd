"""What every experiment shares: its definition, the run context, the result and its files.

An experiment is a function ``run(ctx) -> ExperimentResult`` with two named settings of parameters
(``"fast"``: a CPU in a few minutes at most, on the Fashion-MNIST sample shipped with netvis;
``"full"``: the real thing, for a GPU). :class:`Context` carries the resolved parameters, the data,
the seed and the device, and offers the pieces the experiments reuse: loading the data in memory at
the setting's image size, training a netvis model on it, seeded generators, saliency maps of every
method with the setting's options.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netvis.app.render.report import Report
from netvis.data import TensorImageDataset, load
from netvis.hooks import eval_session
from netvis.io import atomic_write_text
from netvis.train import TrainConfig
from netvis.train import train as train_model
from netvis.train.checkpoint import load_checkpoint
from netvis.train.evaluate import with_preprocess

__all__ = ["Context", "Experiment", "ExperimentResult", "format_table", "mix_seed"]

SETTINGS = ("fast", "full")


def mix_seed(seed: int, *streams: int) -> int:
    """A 63-bit seed from ``seed`` and stream numbers (splitmix64 finaliser: nearby inputs, unrelated seeds)."""
    z = seed & (2**64 - 1)
    for i, s in enumerate(streams, start=1):
        z = (z + (s + 1) * 0x9E3779B97F4A7C15 * i) & (2**64 - 1)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
        z = z ^ (z >> 31)
    return z & (2**63 - 1)


# --------------------------------------------------------------------------------------------------
# definition
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Experiment:
    """One experiment of the lecture.

    Attributes:
        name: the command-line name (``"depth"``, ``"sanity"``...).
        title: a one-line title.
        summary: what it shows, in a sentence or two.
        paper: the paper it reproduces.
        settings: ``{"fast": {...}, "full": {...}}``: every parameter of the experiment with its value
            in each setting; ``run(..., **options)`` overrides single parameters.
        runner: ``runner(ctx) -> ExperimentResult``.
    """

    name: str
    title: str
    summary: str
    paper: str
    settings: Mapping[str, Mapping[str, Any]]
    runner: Callable[[Context], ExperimentResult]

    def parameters(self, setting: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The parameters of ``setting`` with ``overrides`` applied.

        Raises:
            ValueError: unknown setting or an override that names no parameter of this experiment.
        """
        if setting not in self.settings:
            raise ValueError(f"setting must be one of {', '.join(self.settings)}; got {setting!r}")
        params = dict(self.settings[setting])
        unknown = sorted(set(overrides or {}) - set(params))
        if unknown:
            raise ValueError(
                f"experiment {self.name!r} has no option {', '.join(map(repr, unknown))}; its options are "
                f"{', '.join(sorted(params))}"
            )
        for key, value in (overrides or {}).items():
            default = params[key]
            if isinstance(default, tuple) and isinstance(value, str):
                value = (value,)  # --option methods=gradient means ("gradient",)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            params[key] = value
        return params


# --------------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,d}"
    return "" if value is None else str(value)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    return columns


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts as a Markdown table (floats with three decimals; missing cells empty)."""
    if not rows:
        return "(no rows)"
    columns = _columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


@dataclass
class ExperimentResult:
    """What :func:`netvis.app.experiments.run` returns.

    Attributes:
        name: the experiment's name.
        title: its title.
        setting: ``"fast"``, ``"full"``.
        table: the main result, one dict per row (the same keys in every row).
        figures: name -> ``matplotlib.figure.Figure``.
        metrics: the headline numbers the findings are read from (JSON-serialisable).
        findings: sentences stating what the numbers show (computed from them, not written in advance).
        tables: further tables, name -> rows.
        params: the parameters the experiment ran with.
        meta: data, seed, device, hardware, versions, seconds, the equivalent command.
        out: the folder written by :meth:`write` (``None`` until then).
    """

    name: str
    title: str
    setting: str
    table: list[dict[str, Any]]
    figures: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything but the figures, JSON-serialisable (the content of ``results.json``)."""
        return _jsonable(
            {
                "experiment": self.name,
                "title": self.title,
                "setting": self.setting,
                "params": self.params,
                "meta": self.meta,
                "metrics": self.metrics,
                "findings": self.findings,
                "table": self.table,
                "tables": self.tables,
                "figures": [f"figures/{name}.png" for name in self.figures],
            }
        )

    def format(self) -> str:
        """The table(s) and findings as plain text (Markdown tables)."""
        parts = [f"{self.title} ({self.setting} setting)", "", format_table(self.table)]
        for name, rows in self.tables.items():
            parts += ["", f"{name}:", format_table(rows)]
        if self.findings:
            parts += [""] + [f"- {line}" for line in self.findings]
        return "\n".join(parts)

    def write(self, out: str | os.PathLike) -> Path:
        """Write ``index.html`` (netvis's report), ``results.json`` and ``figures/*.png`` into ``out``.

        Returns:
            The path of ``index.html``.
        """
        out = Path(out)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        report = Report(f"netvis experiment: {self.title}", f"{self.setting} setting; {self.meta.get('command', '')}")
        def shown(value: Any) -> str:
            return repr(value) if isinstance(value, (list, tuple, dict)) else _cell(value)

        setup = report.section("Setup", _html_escape(self.meta.get("summary", "")))
        setup.table(["parameter", "value"], [[k, shown(v)] for k, v in self.params.items()])
        setup.table(["run", ""], [[k, shown(v)] for k, v in self.meta.items() if k != "summary"])
        results = report.section("Results")
        columns = _columns(self.table)
        results.table(columns, [[_cell(row.get(c)) for c in columns] for row in self.table])
        for name, rows in self.tables.items():
            results.text(name)
            cols = _columns(rows)
            results.table(cols, [[_cell(row.get(c)) for c in cols] for row in rows])
        if self.findings:
            found = report.section("Findings")
            for line in self.findings:
                found.text(line)
        if self.figures:
            figs = report.section("Figures")
            for name, fig in self.figures.items():
                fig.savefig(out / "figures" / f"{name}.png", dpi=110, bbox_inches="tight")
                figs.figure(fig, caption=name)
        path = report.write(out)
        atomic_write_text(out / "results.json", json.dumps(self.to_dict(), indent=2) + "\n")
        self.out = out
        return path


def _html_escape(text: str) -> str:
    return html.escape(text)


# --------------------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------------------


def _resize_uint8(images: Tensor, size: int | None) -> Tensor:
    if size is None or tuple(images.shape[-2:]) == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)


def _in_memory(data: Any, what: str) -> Any:
    images = getattr(data, "images", None)
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or not hasattr(data, "targets"):
        raise ValueError(
            f"the experiments need the {what} data held in memory as uint8 images (a netvis data set with "
            f".images and .targets, e.g. netvis.data.load(...) or netvis.data.TensorImageDataset); got "
            f"{type(data).__name__}"
        )
    return data


@dataclass
class Context:
    """One run of an experiment: its parameters, data, seed and device.

    Attributes:
        experiment: the :class:`Experiment`.
        setting: the setting's name.
        params: the resolved parameters.
        data: a data set name or folder for :func:`netvis.data.load`, or a ``(train, test)`` pair of
            in-memory netvis data sets.
        seed: the seed every random choice derives from.
        device: where models run.
        progress: show progress bars.
    """

    experiment: Experiment
    setting: str
    params: dict[str, Any]
    data: Any
    seed: int
    device: torch.device
    progress: bool = False
    _raw: tuple[Any, Any] | None = None

    @property
    def data_name(self) -> str:
        if isinstance(self.data, (str, os.PathLike)):
            return os.fspath(self.data)
        train = self.data[0]
        return str(getattr(train, "name", None) or type(train).__name__)

    def raw_data(self) -> tuple[Any, Any]:
        """The ``(train, test)`` data as given or loaded (native size, the data's own preprocessing)."""
        if self._raw is None:
            if isinstance(self.data, (str, os.PathLike)):
                train, test = load(self.data, "train"), load(self.data, "test")
            elif isinstance(self.data, (tuple, list)) and len(self.data) == 2:
                train, test = self.data
            else:
                raise ValueError(
                    "data must be a data set name or folder, or a (train, test) pair of in-memory data sets; "
                    f"got {type(self.data).__name__}"
                )
            self._raw = (_in_memory(train, "training"), _in_memory(test, "test"))
        return self._raw

    def load_data(self, image_size: int | None = None) -> tuple[Any, Any]:
        """The data as in-memory :class:`netvis.data.TensorImageDataset` s, resized to ``image_size``.

        Images are resized once (bilinear, antialiased, stored as ``uint8``); both splits are normalised
        with the training split's statistics at that size.
        """
        train, test = self.raw_data()
        channels = getattr(getattr(train, "preprocess", None), "channels", None)
        x_train = _resize_uint8(train.images.cpu(), image_size)
        x_test = _resize_uint8(test.images.cpu(), image_size)
        train_ds = TensorImageDataset(x_train, train.targets.cpu(), train.classes, channels=channels,
                                      name=self.data_name, split="train")
        test_ds = TensorImageDataset(x_test, test.targets.cpu(), test.classes, mean=train_ds.mean,
                                     std=train_ds.std, channels=channels, name=self.data_name, split="test")
        return train_ds, test_ds

    def generator(self, *streams: int) -> torch.Generator:
        """A CPU generator seeded from the run's seed and ``streams``."""
        return torch.Generator().manual_seed(mix_seed(self.seed, *streams))

    def pick(self, count: int, n: int, *streams: int) -> Tensor:
        """``n`` of the positions ``0..count-1`` drawn at random (seeded from ``streams``), in increasing order."""
        return torch.randperm(count, generator=self.generator(*streams))[:n].sort().values

    def subset(self, data: Any, limit: int | None, stream: int = 0) -> Any:
        """``limit`` images of ``data`` drawn at random (seeded), or all of them."""
        if limit is None or limit >= len(data):
            return data
        return data.subset(self.pick(len(data), limit, 99, stream))

    def limited_data(self) -> tuple[Any, Any]:
        """:meth:`load_data` at the ``image_size`` parameter, each split cut to ``limit_train`` and
        ``limit_test`` images (:meth:`subset`)."""
        p = self.params
        train, test = self.load_data(p["image_size"])
        return self.subset(train, p["limit_train"]), self.subset(test, p["limit_test"], stream=1)

    def result(self, table: list[dict[str, Any]], **fields: Any) -> ExperimentResult:
        """An :class:`ExperimentResult` of this run (the experiment's name and title, the setting)."""
        return ExperimentResult(name=self.experiment.name, title=self.experiment.title, setting=self.setting,
                                table=table, **fields)

    def train(
        self,
        model: str,
        train_data: Any,
        test_data: Any | None,
        *,
        epochs: int,
        batch_size: int,
        model_options: Mapping[str, Any] | None = None,
        lr: float | None = None,
        trainable: str = "all",
        seed_stream: int = 0,
    ):
        """Train a netvis model on in-memory data (:func:`netvis.train.train`); returns its ``TrainResult``."""
        config = TrainConfig(
            model=model,
            data=self.data_name,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            model_options=dict(model_options or {}),
            trainable=trainable,
            seed=mix_seed(self.seed, 7, seed_stream) % (2**31),
            device=str(self.device),
            eval_split="test" if test_data is not None else None,
            progress=self.progress,
        )
        return train_model(config, train_data=train_data, test_data=test_data)

    def checkpoint_model(self) -> tuple[nn.Module, Any] | None:
        """The trained model named by the ``checkpoint`` parameter, with its preprocessing, or ``None``.

        ``"auto"`` means the shipped ``fashion-mnist-small`` checkpoint when the data is Fashion-MNIST
        (the shipped sample or the full set) at its native 28x28, else ``None`` (the experiment trains
        a model); ``None`` always trains; anything else is a checkpoint path or shipped name.
        """
        choice = self.params.get("checkpoint")
        if choice is None:
            return None
        if choice == "auto":
            name = self.data_name.strip().lower().replace("_", "-")
            train, _ = self.raw_data()
            if name not in ("fashion-mnist", "fashion-mnist-sample") or tuple(train.images.shape[1:]) != (1, 28, 28):
                return None
            choice = "fashion-mnist-small"

        with torch.random.fork_rng(devices=[]):  # building the model draws initial weights from the global RNG
            ckpt = load_checkpoint(choice)
        return ckpt.model.to(self.device).eval(), ckpt

    def model_for_maps(self, stream: int = 0) -> tuple[nn.Module, Any, Any, dict[str, Any]]:
        """A trained classifier and its test data: the checkpoint (see :meth:`checkpoint_model`) or one
        trained here with the setting's ``train_*`` parameters.

        Returns:
            ``(model in eval mode on the device, train data, test data, description)``; the data use the
            model's preprocessing; the description's ``test_accuracy`` is the one the checkpoint records
            (on its own test split), or the last epoch's of the training here.
        """
        found = self.checkpoint_model()
        if found is not None:
            model, ckpt = found
            train, test = self.raw_data()
            test = with_preprocess(test, ckpt.preprocess)
            train = with_preprocess(train, ckpt.preprocess)
            recorded = (ckpt.meta.get("final_metrics") or {}).get("test_accuracy")
            return model, train, test, {"model": f"checkpoint {ckpt.path.name}", "test_accuracy": recorded}
        p = self.params
        train, test = self.load_data(p["image_size"])
        result = self.train(p["train_model"], self.subset(train, p["train_limit"]), test,
                            epochs=p["train_epochs"], batch_size=p["train_batch_size"],
                            model_options=p["train_model_options"], seed_stream=stream)
        accuracy = result.metrics[-1].get("test_accuracy") if result.metrics else None
        return result.model.eval(), train, test, {"model": f"{p['train_model']} trained here",
                                                  "test_accuracy": accuracy}


def inputs(data: Any, indices: Tensor, device: torch.device) -> Tensor:
    """The images of ``data`` at ``indices``, preprocessed, on ``device``: a model's input."""
    return data.preprocess(data.images[indices.to(data.images.device)]).to(device)


def predict(model: nn.Module, x: Tensor) -> Tensor:
    """The classes ``model`` predicts for the inputs ``x`` (one forward pass in eval mode, no gradients)."""
    with eval_session(model, grad=False):
        return model(x).argmax(1)


def describe_model(description: Mapping[str, Any]) -> str:
    """``"Model: ... (test accuracy ...)"`` from :meth:`Context.model_for_maps`'s description."""
    value = description.get("test_accuracy")
    accuracy = "test accuracy unknown" if value is None else f"test accuracy {value:.1%}"
    return f"Model: {description['model']} ({accuracy})"


def hardware(device: torch.device) -> str:
    """The machine in words: the GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    return f"CPU, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), {platform.machine()}"


class Timer:
    """Seconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start
