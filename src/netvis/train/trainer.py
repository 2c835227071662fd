"""The training loop behind ``netvis train``: seeded, resumable, mixed-precision, data-parallel.

:func:`train` takes a :class:`TrainConfig` and returns a :class:`TrainResult`. In a run folder it writes

* ``checkpoint.pt`` after every epoch (atomically, see :mod:`netvis.train.checkpoint`): weights,
  optimizer, scheduler and generator states, data normalisation, class names, metrics, configuration;
* ``metrics.jsonl``: one JSON object per epoch (losses, accuracies, learning rate, images/s, times);
* ``curves.png``: loss and accuracy per epoch;
* ``config.json``: the configuration.

Randomness. Everything random comes from ``config.seed``: the model's initial weights (drawn inside
``torch.random.fork_rng`` after ``torch.manual_seed(seed)``, so the caller's global random state is the
same before and after :func:`train`), the shuffling order (a ``torch.Generator`` seeded with ``seed``)
and the augmentation (a second generator). The same configuration on the CPU gives the same weights,
and ``resume=True`` continues a stopped run to exactly the weights an uninterrupted run reaches: the
checkpoint holds the generators' states as well as the optimizer's and scheduler's.

Devices and precision. ``device="auto"`` trains on the GPU when CUDA is available (the in-memory
images then live on the GPU too), else on the CPU. ``precision="auto"`` means bf16 autocast on GPUs
that support it (fp16 with a gradient scaler otherwise) and fp32 on the CPU; ``channels_last=None``
means channels-last memory format on GPUs.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from netvis import __version__ as netvis_version
from netvis._checks import check_positive_int
from netvis.bn import TRAINABLE_POLICIES, set_trainable
from netvis.data import load
from netvis.io import atomic_write_text
from netvis.models import create
from netvis.train import distributed as D
from netvis.train._batches import classes_of, data_description, first_items, is_tensor_dataset
from netvis.train.augment import CropFlip
from netvis.train.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from netvis.train.curves import plot_curves
from netvis.train.evaluate import autocast_context, evaluate_sums

__all__ = [
    "CHECKPOINT_NAME",
    "TrainConfig",
    "TrainResult",
    "parse_model_option",
    "resume_config",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("onecycle", "cosine", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Options that change the computation: a resumed run must use the values of the run it continues.
_RESUME_FIXED = (
    "model",
    "data",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "schedule",
    "weight_decay",
    "seed",
    "trainable",
    "augment",
    "crop_padding",
    "model_options",
    "limit_train",
    "label_smoothing",
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (the options of ``netvis train``).

    Attributes:
        model: a :func:`netvis.models.list_models` name, e.g. ``"resnet20_cifar"``.
        data: a data set name or folder for :func:`netvis.data.load` (``"fashion-mnist"``, ...).
        epochs: total number of epochs (the learning-rate schedule spans them).
        out: run folder for checkpoint, metrics and plot; ``None`` writes nothing.
        batch_size: global batch size (split evenly over torchrun's processes).
        lr: peak learning rate; ``None``: 0.1 for SGD, 1e-3 for Adam.
        optimizer: ``"sgd"`` (momentum, Nesterov) or ``"adam"`` (AdamW-style decoupled weight decay).
        momentum: SGD momentum.
        schedule: ``"onecycle"`` (warm-up then cosine annealing, per step), ``"cosine"`` (per step,
            from ``lr`` to 0) or ``"none"`` (constant).
        weight_decay: L2 penalty (SGD) or decoupled weight decay (Adam), on every trainable parameter.
        seed: seed of the weights, the shuffling and the augmentation.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 uses a gradient
            scaler and needs a GPU).
        channels_last: channels-last memory format; ``None``: on GPUs.
        trainable: ``"all"``, ``"bn"``, ``"bn+fc"`` or ``"all-but-bn"`` (:func:`netvis.bn.set_trainable`).
        augment: random crop with padding and horizontal flip (:class:`netvis.train.augment.CropFlip`).
        crop_padding: padding of the random crop.
        model_options: extra ``netvis.models.create`` options (``in_channels`` and ``num_classes``
            default to the data's).
        limit_train: train on the first ``N`` training images only.
        limit_test: evaluate on the first ``N`` test images only.
        eval_split: split evaluated after every epoch (``None``: none).
        label_smoothing: cross-entropy label smoothing.
        sync_bn: convert BN layers to ``torch.nn.SyncBatchNorm`` (multi-GPU torchrun runs only).
        num_workers: ``DataLoader`` workers for data sets that are not in memory.
        progress: show tqdm progress bars.
        stop_after: stop after this many epochs *in this call* (the run stays resumable).
    """

    model: str
    data: str
    epochs: int = 10
    out: str | None = None
    batch_size: int = 128
    lr: float | None = None
    optimizer: str = "sgd"
    momentum: float = 0.9
    schedule: str = "onecycle"
    weight_decay: float = 5e-4
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool | None = None
    trainable: str = "all"
    augment: bool = False
    crop_padding: int = 4
    model_options: dict[str, Any] = field(default_factory=dict)
    limit_train: int | None = None
    limit_test: int | None = None
    eval_split: str | None = "test"
    label_smoothing: float = 0.0
    sync_bn: bool = False
    num_workers: int = 0
    progress: bool = True
    stop_after: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid option."""
        def positive(name: str, value: Any, allow_none: bool = False) -> None:
            if value is None and allow_none:
                return
            check_positive_int(value, name)

        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)
        positive("limit_train", self.limit_train, allow_none=True)
        positive("limit_test", self.limit_test, allow_none=True)
        positive("stop_after", self.stop_after, allow_none=True)
        for name, value, allowed in (
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
            ("precision", self.precision, PRECISIONS),
            ("trainable", self.trainable, TRAINABLE_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.model_options, Mapping):
            raise ValueError(f"model_options must be a dict, got {type(self.model_options).__name__}")
        for key, value in self.model_options.items():
            if not _plain(value):
                raise ValueError(
                    f"model option {key}={value!r} is not plain data (str, number, bool, None or a tuple/list "
                    "of those): a checkpoint must rebuild the model from its options without running code"
                )

    @property
    def peak_lr(self) -> float:
        """``lr``, or the optimizer's default (0.1 for SGD, 1e-3 for Adam)."""
        if self.lr is not None:
            return float(self.lr)
        return 0.1 if self.optimizer == "sgd" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (model option values that JSON lacks become ``repr`` strings)."""
        out = dataclasses.asdict(self)
        out["model_options"] = {k: _jsonable(v) for k, v in self.model_options.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` (unknown keys are an error)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown training options {unknown}")
        return cls(**dict(data))


def _plain(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(_plain(v) for v in value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return repr(value)


def parse_model_option(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` into ``(key, value)``; the value as a Python literal if it is one, else a string.

    Literals are read with ``ast.literal_eval`` (numbers, ``True``/``False``/``None``, tuples, lists,
    quoted strings); nothing is executed.

    Example:
        >>> parse_model_option("stage_channels=(8, 16, 32)")
        ('stage_channels', (8, 16, 32))
        >>> parse_model_option("norm_layer=none")
        ('norm_layer', 'none')
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise ValueError(f"model options are key=value with a Python identifier as key; got {text!r}")
    raw = raw.strip()
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key, value


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model (nn.Module): the trained model (on the training device, eval mode).
        metrics (list[dict]): one dict per completed epoch.
        classes (list[str]): class names.
        preprocess: the data's :class:`netvis.data.Preprocess` (``uint8`` images to model inputs).
        checkpoint (Path | None): the checkpoint written (``None`` without ``out``).
        run_dir (Path | None): the run folder.
        epochs_done (int): completed epochs in total (including those of resumed runs).
        finished (bool): whether all ``config.epochs`` are done.
        config (TrainConfig): the configuration used.
    """

    model: nn.Module
    metrics: list[dict[str, Any]]
    classes: list[str]
    preprocess: Any
    checkpoint: Path | None
    run_dir: Path | None
    epochs_done: int
    finished: bool
    config: TrainConfig


def resume_config(run_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The configuration stored in a run folder's checkpoint, with ``overrides`` applied.

    ``out`` is set to ``run_dir``. :func:`train` (with ``resume=True``) refuses overrides that would
    change the computation, such as a different model or learning rate.

    Raises:
        CheckpointError: the folder holds no readable checkpoint.
    """
    payload, path = read_checkpoint(Path(run_dir) / CHECKPOINT_NAME)
    stored = payload.get("config")
    if not isinstance(stored, Mapping):
        raise CheckpointError(f"{path} holds no training configuration: it cannot be resumed")
    data = dict(stored)
    data["model_options"] = dict(payload["model"].get("user_options", data.get("model_options", {})))
    data.update(overrides)
    data["out"] = os.fspath(run_dir)
    return TrainConfig.from_dict(data)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "precision 'fp16' needs a CUDA GPU (fp16 CPU kernels are slow or missing); use 'bf16' or 'fp32' on the CPU"
        )
    return precision


def _load_data(config: TrainConfig) -> tuple[Any, Any]:
    train_data = first_items(load(config.data, "train"), config.limit_train)
    test_data = None
    if config.eval_split is not None:
        test_data = first_items(load(config.data, config.eval_split), config.limit_test)
    return train_data, test_data


def _model_options(config: TrainConfig, channels: int | None, num_classes: int) -> dict[str, Any]:
    options = dict(config.model_options)
    for key, value in (("in_channels", channels), ("num_classes", num_classes)):
        if value is None:
            continue
        if key in options and options[key] != value:
            raise ValueError(
                f"model option {key}={options[key]!r} contradicts the data ({config.data!r} has {key}={value})"
            )
        options[key] = value
    return options


def _state_cpu(state: Any) -> Any:
    if isinstance(state, Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _state_cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_state_cpu(v) for v in state]
    if isinstance(state, tuple):
        return tuple(_state_cpu(v) for v in state)
    return state


def _check_resume(saved: Mapping[str, Any], config: TrainConfig, path: Path) -> None:
    stored = dict(saved)
    current = config.to_dict()
    diffs = [
        f"{key}: {stored.get(key)!r} in the checkpoint, {current.get(key)!r} now"
        for key in _RESUME_FIXED
        if key in stored and stored.get(key) != current.get(key)
    ]
    if stored.get("epochs") != config.epochs and config.schedule != "none":
        diffs.append(
            f"epochs: {stored.get('epochs')!r} in the checkpoint, {config.epochs!r} now (the "
            f"{config.schedule!r} schedule spans the epochs; only schedule 'none' can be extended)"
        )
    if diffs:
        raise ValueError(f"cannot resume {path} with a different configuration:\n  " + "\n  ".join(diffs))


def _build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if not params:
        raise ValueError(f"trainable={config.trainable!r} leaves no parameter to train")
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=config.peak_lr,
            momentum=config.momentum,
            nesterov=config.momentum > 0,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay)


def _build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.peak_lr, total_steps=total_steps)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return None


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


class _Run:
    """One call of :func:`train`; holds the pieces of the loop so that each stays short."""

    def __init__(
        self,
        config: TrainConfig,
        ctx: D.DistContext,
        resume: bool,
        train_data: Any,
        test_data: Any,
        on_epoch_end: Callable[[dict[str, Any]], None] | None,
    ):
        self.config = config
        self.ctx = ctx
        self.device = ctx.device
        self.precision = _resolve_precision(config.precision, self.device)
        self.channels_last = self.device.type == "cuda" if config.channels_last is None else config.channels_last
        self.run_dir = Path(config.out) if config.out is not None else None
        self.on_epoch_end = on_epoch_end
        self.resume = resume

        if train_data is None:
            train_data, loaded_test = _load_data(config)
            test_data = loaded_test if test_data is None else test_data
        else:
            train_data = first_items(train_data, config.limit_train)
            test_data = first_items(test_data, config.limit_test) if test_data is not None else None
        if len(train_data) == 0:
            raise ValueError(f"the training data {config.data!r} is empty")
        self.description = data_description(train_data, config.data)
        self.classes = classes_of(train_data)
        if self.device.type == "cuda" and is_tensor_dataset(train_data) and hasattr(train_data, "to"):
            train_data = train_data.to(self.device)
            if test_data is not None and is_tensor_dataset(test_data) and hasattr(test_data, "to"):
                test_data = test_data.to(self.device)
        self.train_data, self.test_data = train_data, test_data
        self.preprocess = getattr(train_data, "preprocess", None)
        self.local_batch = config.batch_size // ctx.world_size
        if config.batch_size % ctx.world_size:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {ctx.world_size} processes")

    # -- setup -------------------------------------------------------------------------------------

    def build(self) -> None:
        config = self.config
        self.options = _model_options(config, self.description.get("channels"), len(self.classes))
        self.model = create(config.model, **self.options)
        set_trainable(self.model, config.trainable)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = _build_optimizer(config, params)
        self.steps_per_epoch = math.ceil(len(self.train_data) / config.batch_size)
        self.scheduler = _build_scheduler(config, self.optimizer, config.epochs * self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.shuffle_gen = torch.Generator()
        self.aug_gen = torch.Generator()
        self.augment = CropFlip(self.aug_gen, padding=config.crop_padding) if config.augment else None
        self.metrics: list[dict[str, Any]] = []
        self.start_epoch = 0
        self.elapsed = 0.0
        if self.run_dir is not None:
            self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
            if self.resume:
                self._restore()
            elif self.checkpoint_path.exists():
                raise FileExistsError(
                    f"{self.checkpoint_path} exists: resume that run (--resume / resume=True) or choose "
                    "a new run folder"
                )
        elif self.resume:
            raise ValueError("resume=True needs the run folder (out) that holds the checkpoint")
        if self.config.sync_bn:
            self.model = D.convert_sync_batchnorm(self.model, self.ctx)

    def _restore(self) -> None:
        payload, path = read_checkpoint(self.checkpoint_path)
        if payload.get("optimizer") is None or payload.get("rng") is None:
            raise CheckpointError(f"{path} holds no optimizer/generator state (a shipped copy?): it cannot be resumed")
        _check_resume(payload.get("config") or {}, self.config, path)
        if _jsonable(payload["model"].get("options")) != _jsonable(self.options):
            raise CheckpointError(
                f"{path} was trained with model options {payload['model'].get('options')}, "
                f"this run builds {self.options}"
            )
        try:
            self.model.load_state_dict(payload["state_dict"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.scheduler is not None and payload.get("scheduler") is not None:
                self.scheduler.load_state_dict(payload["scheduler"])
            if self.scaler is not None and payload.get("scaler"):
                self.scaler.load_state_dict(payload["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: cannot restore the training state: {exc}") from exc
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.metrics = list(payload.get("metrics") or [])
        self.start_epoch = int(payload["epoch"])
        self.elapsed = float(self.metrics[-1].get("time_s", 0.0)) if self.metrics else 0.0

    # -- one epoch ---------------------------------------------------------------------------------

    def _seed_generators(self, epoch: int) -> None:
        """Seed the shuffling and augmentation generators from (seed, epoch).

        Every epoch's random stream depends only on the seed and the epoch number, so a resumed run
        draws exactly what an uninterrupted one draws. On in-memory data every rank draws the
        augmentation of the whole global batch (the same draws as a single process) and keeps its
        share; other data sets augment per rank, with a rank-specific stream.
        """
        seed = self.config.seed
        self.shuffle_gen.manual_seed(_mix(seed, epoch, 0))
        stream = 1 if is_tensor_dataset(self.train_data) else 2 + self.ctx.rank
        self.aug_gen.manual_seed(_mix(seed, epoch, stream))

    def _batches(self, order: Tensor) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Yield ``(global batch size, inputs, targets)``: this rank's share of each global batch,
        augmented and preprocessed, on the device.

        In-memory netvis data sets are indexed directly (``uint8`` to the device, augmented there, then
        preprocessed); any other data set goes through a ``DataLoader`` (``num_workers``) over this
        rank's shares, and is augmented after loading.
        """
        rank, world, size = self.ctx.rank, self.ctx.world_size, self.config.batch_size
        data = self.train_data
        global_batches = [order[start : start + size] for start in range(0, len(order), size)]
        if is_tensor_dataset(data):
            for indices in global_batches:
                x = data.images[indices.to(data.images.device)].to(self.device, non_blocking=True)
                y = data.targets[indices.to(data.targets.device)].to(self.device, non_blocking=True)
                if self.augment is not None:
                    x = self.augment(x)
                x, y = D.shard(x, rank, world), D.shard(y, rank, world)
                yield len(indices), self._layout(data.preprocess(x)), y
            return
        shares = [D.shard(indices, rank, world).tolist() for indices in global_batches]
        loader = DataLoader(
            data,
            batch_sampler=shares,
            num_workers=self.config.num_workers,
            collate_fn=_collate_or_none,
            pin_memory=self.device.type == "cuda",
        )
        for indices, batch in zip(global_batches, loader, strict=True):
            if batch is None:  # a last, small global batch left this rank without images
                yield (
                    len(indices),
                    torch.empty(0, device=self.device),
                    torch.empty(0, dtype=torch.int64, device=self.device),
                )
                continue
            x = batch[0].to(self.device, non_blocking=True)
            y = torch.as_tensor(batch[1], dtype=torch.int64).to(self.device, non_blocking=True)
            if self.augment is not None:
                x = self.augment(x)
            yield len(indices), self._layout(x), y

    def _layout(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_epoch(self, epoch: int) -> dict[str, float]:
        config = self.config
        self.model.train()
        self._seed_generators(epoch)
        order = torch.randperm(len(self.train_data), generator=self.shuffle_gen)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        bar = None
        if config.progress and self.ctx.is_main:
            bar = tqdm(
                total=self.steps_per_epoch,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                unit="batch",
                dynamic_ncols=True,
            )
        start = time.perf_counter()
        try:
            for step, (count, x, y) in enumerate(self._batches(order)):
                self.optimizer.zero_grad(set_to_none=True)
                if len(y):
                    with autocast_context(self.device, self.precision):
                        logits = self.model(x)
                    logits = logits.float()
                    loss = F.cross_entropy(logits, y, reduction="sum", label_smoothing=config.label_smoothing) / count
                    if self.scaler is not None:
                        self.scaler.scale(loss).backward()
                    else:
                        loss.backward()
                    loss_sum += loss.detach().to(torch.float64) * count
                    correct += (logits.detach().argmax(dim=1) == y).sum()
                D.all_reduce_gradients(self.model.parameters(), self.ctx)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                seen += count
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == self.steps_per_epoch - 1:
                        rate = seen / max(time.perf_counter() - start, 1e-9)
                        # Running loss/accuracy of this rank's share (exact totals are reduced at the end).
                        local = max(1, math.ceil(seen / self.ctx.world_size))
                        bar.set_postfix(
                            loss=f"{float(loss_sum) / max(seen, 1):.4f}",
                            acc=f"{int(correct) / local:.3f}",
                            img_s=f"{rate:.0f}",
                        )
        finally:
            if bar is not None:
                bar.close()
        totals = torch.stack([loss_sum, correct.to(torch.float64)])
        D.all_reduce_sum(totals, self.ctx)
        seconds = time.perf_counter() - start
        return {
            "train_loss": float(totals[0]) / len(self.train_data),
            "train_accuracy": float(totals[1]) / len(self.train_data),
            "epoch_time_s": seconds,
            "images_per_s": len(self.train_data) / seconds,
        }

    def test_epoch(self) -> dict[str, float]:
        if self.test_data is None:
            return {}
        indices = D.shard(torch.arange(len(self.test_data)), self.ctx.rank, self.ctx.world_size)
        self.model.eval()
        try:
            confusion, loss_sum = evaluate_sums(
                self.model,
                self.test_data,
                indices,
                len(self.classes),
                batch_size=max(256, self.local_batch),
                device=self.device,
                precision=self.precision,
                channels_last=self.channels_last,
                progress=self.config.progress and self.ctx.is_main,
                desc="test",
            )
        finally:
            self.model.train()
        confusion = D.all_reduce_sum(confusion.contiguous(), self.ctx)
        loss_sum = D.all_reduce_sum(loss_sum.reshape(1), self.ctx)
        count = int(confusion.sum())
        return {
            "test_loss": float(loss_sum) / count,
            "test_accuracy": float(confusion.diagonal().sum()) / count,
        }

    # -- files -------------------------------------------------------------------------------------

    def payload(self, epoch: int) -> dict[str, Any]:
        model = self.model
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        rng = {
            "shuffle": self.shuffle_gen.get_state(),
            "augment": self.aug_gen.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }
        return {
            "model": {
                "name": self.config.model,
                "options": dict(self.options),
                "user_options": dict(self.config.model_options),
            },
            "state_dict": state,
            "optimizer": _state_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "rng": rng,
            "data": self.description,
            "classes": list(self.classes),
            "metrics": list(self.metrics),
            "config": self.config.to_dict(),
            "versions": {"netvis": str(netvis_version), "torch": str(torch.__version__)},
            "hardware": _hardware(self.device, self.ctx.world_size),
        }

    def write_files(self, epoch: int) -> None:
        assert self.run_dir is not None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(self.payload(epoch), self.checkpoint_path)
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(m) + "\n" for m in self.metrics))
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        plot_curves(self.metrics, self.run_dir / "curves.png", title=f"{self.config.model} on {self.config.data}")

    # -- the loop ----------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.build()
        config = self.config
        last = config.epochs if config.stop_after is None else min(config.epochs, self.start_epoch + config.stop_after)
        for epoch in range(self.start_epoch, last):
            record: dict[str, Any] = {"epoch": epoch + 1}
            record.update(self.train_epoch(epoch))
            D.broadcast_buffers(self.model, self.ctx)
            record.update(self.test_epoch())
            self.elapsed += record["epoch_time_s"]
            record["lr"] = float(self.optimizer.param_groups[0]["lr"])
            record["time_s"] = self.elapsed
            self.metrics.append(record)
            if self.ctx.is_main and self.run_dir is not None:
                self.write_files(epoch + 1)
            if self.ctx.is_main and config.progress:
                text = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
                tqdm.write(text)
            if self.on_epoch_end is not None:
                self.on_epoch_end(dict(record))
            self.ctx.barrier()
        self.model.eval()
        done = max(last, self.start_epoch)
        return TrainResult(
            model=self.model,
            metrics=list(self.metrics),
            classes=list(self.classes),
            preprocess=self.preprocess,
            checkpoint=self.checkpoint_path if self.run_dir is not None else None,
            run_dir=self.run_dir,
            epochs_done=done,
            finished=done >= config.epochs,
            config=config,
        )


def _collate_or_none(items: list) -> Any:
    """``default_collate``, or ``None`` for an empty share."""
    return default_collate(items) if items else None


def _mix(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed from (seed, epoch, stream) (splitmix64 finaliser: nearby inputs give unrelated seeds)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


def _hardware(device: torch.device, world_size: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(device),
        "processes": world_size,
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    train_data: Any = None,
    test_data: Any = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train a netvis model on a data set, with checkpoints, metrics and curves in ``config.out``.

    Each step draws a batch from a seeded shuffle, optionally augments it (random crop, flip), runs
    the model under autocast, and takes an optimizer step on the mean cross-entropy of the batch

    .. math:: \\mathcal{L} = -\\frac{1}{B}\\sum_{i=1}^{B} \\log \\operatorname{softmax}(f(x_i))_{y_i}

    with the learning rate set per step by the schedule. After every epoch the model is evaluated on
    ``config.eval_split`` and a checkpoint is written. Under torchrun the processes share each global
    batch (see :mod:`netvis.train.distributed`); only rank 0 writes files.

    Args:
        config: the run's options (:class:`TrainConfig`).
        resume: continue the run whose checkpoint is in ``config.out`` (same configuration; the number
            of epochs may grow only with ``schedule="none"``). The result equals an uninterrupted run.
        train_data: a data set to use instead of ``netvis.data.load(config.data, "train")``.
        test_data: a data set to use instead of ``netvis.data.load(config.data, config.eval_split)``.
        on_epoch_end: called with each epoch's metrics dict.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: invalid options, or a resumed run with a different configuration.
        FileExistsError: ``config.out`` already holds a checkpoint and ``resume`` is false.
        CheckpointError: ``resume`` and the checkpoint is missing, corrupt or not resumable.
        netvis.data.DataError: the data cannot be loaded.

    Example:
        >>> from netvis.train import TrainConfig, train
        >>> result = train(TrainConfig(model="resnet20_cifar", data="fashion-mnist-sample", epochs=1,
        ...                            limit_train=64, limit_test=64, batch_size=32, progress=False))
        >>> result.metrics[0]["epoch"], 0 <= result.metrics[0]["test_accuracy"] <= 1
        (1, True)
    """
    config.validate()
    ctx = D.init_distributed(config.device)
    try:
        devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.seed)
            run = _Run(config, ctx, resume, train_data, test_data, on_epoch_end)
            return run.run()
    finally:
        if ctx.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
