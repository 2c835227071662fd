"""Checkpoints: written atomically, loaded safely, with everything needed to use or resume a model.

A netvis checkpoint is a ``torch.save`` file holding one dict (loaded with ``weights_only=True``, so no
arbitrary code runs when it is opened):

======================  ===========================================================================
key                     content
======================  ===========================================================================
``format``              ``"netvis-checkpoint"``
``format_version``      :data:`FORMAT_VERSION` (an int; newer files are refused with a clear error)
``model``               ``{"name": "resnet20_cifar", "options": {...}}``: ``netvis.models.create`` args
``state_dict``          the model's weights and buffers
``optimizer``           optimizer state dict (``None`` in a shipped, inference-only copy)
``scheduler``           learning-rate scheduler state dict or ``None``
``scaler``              fp16 gradient scaler state dict or ``None``
``epoch``               number of completed epochs
``rng``                 generator states (shuffling, augmentation, torch's CPU/CUDA state in the run)
``data``                ``{"name", "preprocess": Preprocess.to_dict(), "mean", "std", "channels",
                        "size", "num_train"}``
``classes``             class names, ``classes[i]`` is output ``i``
``metrics``             one dict per completed epoch (losses, accuracies, images/s, ...)
``config``              the training configuration (:class:`netvis.train.TrainConfig` as a dict)
``versions``            netvis and torch versions that wrote the file
======================  ===========================================================================

:func:`save_checkpoint` writes to a temporary file in the destination folder, flushes and
``fsync``\\ s it, then renames it over the destination with ``os.replace`` (atomic on POSIX and
Windows): a crash or Ctrl-C during the write leaves the previous checkpoint intact and no temporary
file behind.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netvis.data import Preprocess
from netvis.io import atomic_save
from netvis.models import create

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SHIPPED",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "build_model",
    "export_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint_path",
    "save_checkpoint",
    "strip_training_state",
]

FORMAT = "netvis-checkpoint"
"""The value of a netvis checkpoint's ``format`` key."""

FORMAT_VERSION = 1
"""The checkpoint format version this netvis writes and the newest it reads."""

SHIPPED = ("fashion-mnist-small", "wafer-maps-resnet")
"""Names of the checkpoints shipped inside the package (``netvis/assets/checkpoints/<name>.pt``)."""

_REQUIRED = ("model", "state_dict", "classes", "data", "epoch")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, truncated, not a netvis checkpoint, or does not fit its model.

    The message always names the file. Subclasses ``ValueError``.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file (or shipped name) does not exist. Also a ``FileNotFoundError``."""


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` with ``torch.save`` atomically: ``path`` holds either the old or the new file.

    Writes a temporary file next to ``path`` (same folder, so the rename cannot cross file systems),
    flushes and ``fsync``\\ s it, and ``os.replace``\\ s it over ``path``. If anything fails or the
    process is interrupted before the rename, the temporary file is removed and the exception
    propagates; an existing file at ``path`` is never touched.

    Args:
        payload: the checkpoint dict (see the module docstring); ``format`` and ``format_version`` are
            added if missing.
        path: destination; its folder is created if needed.

    Returns:
        The path written.

    Raises:
        OSError: the folder cannot be written (the message names it).
    """
    payload = dict(payload)
    payload.setdefault("format", FORMAT)
    payload.setdefault("format_version", FORMAT_VERSION)
    return atomic_save(payload, path)


def strip_training_state(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a checkpoint dict without optimizer, scheduler, scaler and RNG state (for shipping).

    The result still loads with :func:`load_checkpoint` but cannot be resumed.
    """
    out = dict(payload)
    for key in ("optimizer", "scheduler", "scaler", "rng"):
        out[key] = None
    return out


def export_checkpoint(
    source: str | os.PathLike, destination: str | os.PathLike, *, keep_training_state: bool = False
) -> Path:
    """Copy a checkpoint for inference: without optimizer, scheduler and random states by default.

    This is how the shipped ``fashion-mnist-small`` checkpoint was made from its run folder. The copy
    loads with :func:`load_checkpoint` exactly like the original (same weights, preprocessing, classes
    and metrics) at about half the size; it cannot be resumed.

    Args:
        source: a checkpoint file or run folder.
        destination: the file to write (atomically).
        keep_training_state: copy everything, optimizer state included.

    Returns:
        The path written.
    """
    payload, _ = read_checkpoint(source)
    if not keep_training_state:
        payload = strip_training_state(payload)
    return save_checkpoint(payload, destination)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _shipped_dir():
    return resources.files("netvis") / "assets" / "checkpoints"


def resolve_checkpoint_path(path_or_name: str | os.PathLike) -> Path:
    """Turn a path or a shipped checkpoint name into the file to open.

    An existing file wins; otherwise a name from :data:`SHIPPED` (with or without ``.pt``) points into
    the package.

    Raises:
        CheckpointNotFoundError: neither an existing file nor a shipped name (the message lists them).
    """
    if isinstance(path_or_name, (str, os.PathLike)):
        path = Path(os.fspath(path_or_name)).expanduser()
    else:
        raise TypeError(f"expected a path or a checkpoint name, got {type(path_or_name).__name__}")
    if path.is_file():
        return path
    if path.is_dir() and (path / "checkpoint.pt").is_file():
        return path / "checkpoint.pt"
    name = os.fspath(path_or_name)
    stem = name[:-3] if name.endswith(".pt") else name
    if stem in SHIPPED:
        shipped = Path(os.fspath(_shipped_dir() / f"{stem}.pt"))
        if shipped.is_file():
            return shipped
        raise CheckpointNotFoundError(
            f"the shipped checkpoint {stem!r} is missing from the installation (expected {shipped})"
        )
    if path.is_dir():
        raise CheckpointNotFoundError(f"{path} is a folder without a checkpoint.pt")
    raise CheckpointNotFoundError(
        f"checkpoint file not found: {path} (shipped checkpoints: {', '.join(SHIPPED)})"
    )


def read_checkpoint(path_or_name: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """Open a checkpoint and check its format, without building the model.

    Args:
        path_or_name: a file, a run folder holding ``checkpoint.pt``, or a shipped name.

    Returns:
        ``(payload, path)``: the checkpoint dict and the file it came from.

    Raises:
        CheckpointNotFoundError: no such file or name.
        CheckpointError: the file is corrupt or truncated, not a netvis checkpoint, of a newer format
            version, or lacks required entries. The message names the file.
    """
    path = resolve_checkpoint_path(path_or_name)
    try:
        with open(path, "rb") as handle:
            payload = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:  # removed between resolving and opening
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}") from exc
    except Exception as exc:  # torch.load raises many types on damaged files; keep the cause
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated or not a torch.save file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        what = (
            f"a {type(payload).__name__}"
            if not isinstance(payload, dict)
            else "a dict without format=" + repr(FORMAT)
        )
        hint = ""
        if (
            isinstance(payload, dict)
            and payload
            and all(isinstance(v, torch.Tensor) for v in payload.values())
        ):
            hint = (
                " (it looks like a bare state_dict: build the model and call model.load_state_dict, or "
                "train with `netvis train` to get a full checkpoint)"
            )
        raise CheckpointError(f"{path} is not a netvis checkpoint: it holds {what}{hint}")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, newer than this netvis reads "
            f"({FORMAT_VERSION}); upgrade netvis"
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is an incomplete netvis checkpoint: missing {', '.join(missing)}")
    model = payload["model"]
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise CheckpointError(
            f"{path} has no model name (expected model={{'name': ..., 'options': {{...}}}})"
        )
    return payload, path


def build_model(payload: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>") -> nn.Module:
    """Build the checkpoint's model with ``netvis.models.create`` and load its weights (strict).

    Args:
        payload: a checkpoint dict from :func:`read_checkpoint`.
        path: the file, for messages.

    Returns:
        The model on the CPU, in eval mode.

    Raises:
        CheckpointError: the model cannot be built from the recorded name and options, or the weights
            do not match it (missing or unexpected keys, wrong shapes; the message lists them).
    """
    name = payload["model"]["name"]
    options = dict(payload["model"].get("options") or {})
    try:
        # The initial weights are overwritten below; drawing them must not move the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            model = create(name, **options)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot build model {name!r} with options {options}: {exc}") from exc
    state = payload["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: state_dict is a {type(state).__name__}, not a mapping of tensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the weights do not match model {name!r} with options {options}: {exc}"
        ) from exc
    return model.eval()


@dataclass
class Checkpoint:
    """A loaded checkpoint, ready for inference.

    Attributes:
        model (nn.Module): the trained model, on the CPU, in eval mode.
        preprocess (netvis.data.Preprocess): callable mapping ``uint8`` images ``(N, C, H, W)`` or
            ``(N, H, W)`` (tensor or numpy) to the normalised float tensor ``(N, C, H, W)`` the model
            takes; ``None`` if the training data had no netvis preprocessing.
        classes (list[str]): ``classes[i]`` names output ``i``.
        meta (dict): ``model`` (name and options), ``data`` (name, mean, std, channels, size),
            ``epoch``, ``metrics`` (per-epoch list), ``final_metrics`` (the last epoch's), ``config``
            (training configuration), ``versions``, ``format_version``.
        path (Path): the file it was loaded from.
    """

    model: nn.Module
    preprocess: Any
    classes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def predict(self, images: Any, *, batch_size: int = 512) -> torch.Tensor:
        """Class indices for ``uint8`` images: ``preprocess`` then ``model`` (no gradients).

        Args:
            images: ``uint8`` images ``(N, C, H, W)`` or ``(N, H, W)``.
            batch_size: images per forward pass.

        Returns:
            ``int64`` tensor ``(N,)``.
        """
        if self.preprocess is None:
            raise ValueError(f"{self.path} records no preprocessing; call ckpt.model on your own inputs")
        x = self.preprocess(images)
        device = next(self.model.parameters()).device
        outputs = []
        with torch.no_grad():
            for start in range(0, x.shape[0], batch_size):
                outputs.append(self.model(x[start : start + batch_size].to(device)).argmax(dim=1).cpu())
        return torch.cat(outputs) if outputs else torch.empty(0, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"Checkpoint(model={self.meta.get('model', {}).get('name')!r}, epoch={self.meta.get('epoch')}, "
            f"classes={len(self.classes)}, path={str(self.path)!r})"
        )


def preprocess_from(payload: Mapping[str, Any], path: str | os.PathLike = "<checkpoint>"):
    """The :class:`netvis.data.Preprocess` recorded in a checkpoint dict."""
    data = payload.get("data") or {}
    if data.get("preprocess") is None and data.get("mean") is None:
        return None  # trained on a data set without netvis preprocessing: inputs are the model's own
    try:
        if data.get("preprocess") is not None:
            return Preprocess.from_dict(data["preprocess"])
        return Preprocess(
            mean=data["mean"], std=data["std"], size=data.get("size"), channels=data.get("channels")
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid data normalisation record {data!r}: {exc}") from exc


def load_checkpoint(path_or_name: str | os.PathLike) -> Checkpoint:
    """Load a netvis checkpoint for inference: model, preprocessing, class names and metadata.

    Args:
        path_or_name: a checkpoint file, a run folder (its ``checkpoint.pt``), or the name of a
            checkpoint shipped with netvis: ``"fashion-mnist-small"`` (a CIFAR-style ResNet-20 with
            batch norm trained on Fashion-MNIST; see ``docs/training.md``) or ``"wafer-maps-resnet"``
            (the same architecture trained on 64x64 synthetic wafer maps; see ``docs/wafer_maps.md``).

    Returns:
        A :class:`Checkpoint`; ``ckpt.model`` is on the CPU in eval mode.

    Raises:
        CheckpointNotFoundError: no such file or shipped name.
        CheckpointError: corrupt or truncated file, not a netvis checkpoint, newer format, or weights
            that do not fit the recorded model. Every message names the file.

    Example:
        >>> import netvis
        >>> ckpt = netvis.load_checkpoint("fashion-mnist-small")
        >>> ckpt.classes[9]
        'Ankle boot'
    """
    payload, path = read_checkpoint(path_or_name)
    model = build_model(payload, path)
    preprocess = preprocess_from(payload, path)
    classes = [str(c) for c in payload["classes"]]
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int) and num_classes != len(classes):
        raise CheckpointError(f"{path}: {len(classes)} class names for a model with {num_classes} outputs")
    metrics = list(payload.get("metrics") or [])
    meta = {
        "model": dict(payload["model"]),
        "data": dict(payload["data"]),
        "epoch": payload["epoch"],
        "metrics": metrics,
        "final_metrics": metrics[-1] if metrics else {},
        "config": dict(payload.get("config") or {}),
        "versions": dict(payload.get("versions") or {}),
        "format_version": payload["format_version"],
        "resumable": payload.get("optimizer") is not None,
    }
    return Checkpoint(model=model, preprocess=preprocess, classes=classes, meta=meta, path=path)
