"""Where a computation runs: one place that turns ``"auto"``, ``"cpu"``, ``"cuda"`` or a model into a device.

* :func:`resolve_device` -- an option as users write it (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a
  ``torch.device``) to a ``torch.device``, with a clear error when CUDA is asked for but absent;
* :func:`model_device` -- the device a model lives on;
* :func:`device_for` -- the device a method runs a model on: the one asked for, else the model's own.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DeviceLike", "device_for", "model_device", "resolve_device"]

DeviceLike = str | torch.device
"""``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ... or a ``torch.device``."""


def resolve_device(device: DeviceLike = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` that ``device`` names.

    Args:
        device: ``"auto"`` (``cuda:local_rank`` when CUDA is available, else the CPU), ``"cuda"``
            (``cuda:local_rank``; CUDA must be available), any other ``torch.device`` string, or a
            ``torch.device`` (returned as is).
        local_rank: the GPU index for ``"auto"`` and ``"cuda"`` (the process's ``LOCAL_RANK`` under torchrun).

    Raises:
        RuntimeError: ``"cuda"`` was asked for and CUDA is not available.
        ValueError: ``device`` is not a device name (``torch.device`` refuses it).
        TypeError: ``device`` is neither a string nor a ``torch.device``.
    """
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu' or 'cuda', or a torch.device; got {device!r}")
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was requested but CUDA is not available; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r} ({exc})") from exc


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    for parameter in model.parameters():
        return parameter.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def device_for(model: nn.Module, device: DeviceLike | None = None) -> torch.device:
    """``resolve_device(device)``, or the model's own device (:func:`model_device`) when ``device`` is ``None``."""
    return model_device(model) if device is None else resolve_device(device)
