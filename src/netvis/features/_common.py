"""Private helpers shared by the feature-visualization methods: layers, devices, capturing outputs.

Model state (modes, flags, gradients, buffers) and guided ReLUs come from :mod:`netvis.hooks`; the one thing
added here is :func:`capture`, forward hooks on several layers at once that can cut the forward pass short
after the last of them. The hooks are removed in a ``finally`` block, also when the call raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from netvis import hooks

LayerLike = nn.Module | str


def resolve_layer(model: nn.Module, layer: LayerLike) -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for ``layer``, a module of ``model`` or its dotted name.

    Resolution (and its error messages) is :func:`netvis.hooks.resolve_layer`'s.

    Raises:
        ValueError: no such layer; the message lists the closest names.
        TypeError: ``layer`` is neither a string nor an ``nn.Module``.
    """
    module = hooks.resolve_layer(model, layer)
    if isinstance(layer, str):
        return layer, module
    for name, candidate in model.named_modules():
        if candidate is module:
            return name, module
    raise AssertionError("unreachable: resolve_layer returned a module outside the model")  # pragma: no cover


def resolve_layers(
    model: nn.Module, layers: LayerLike | Sequence[LayerLike]
) -> tuple[dict[str, nn.Module], bool]:
    """Resolve one layer or a list of layers; returns ``({name: module}, single)``.

    Raises:
        ValueError: an unknown layer, an empty list, or the same layer twice.
    """
    single = isinstance(layers, (str, nn.Module))
    items = [layers] if single else list(layers)  # type: ignore[list-item]
    if not items:
        raise ValueError("no layer given")
    out: dict[str, nn.Module] = {}
    for item in items:
        name, module = resolve_layer(model, item)
        if name in out:
            raise ValueError(f"layer {name!r} is given twice")
        out[name] = module
    return out, single


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model without either."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


class StopForward(Exception):
    """Raised by a capture hook once every wanted layer has run, to skip the rest of the forward pass."""


@contextmanager
def capture(
    modules: Mapping[str, nn.Module], store: dict[str, torch.Tensor], *, stop_early: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that put each module's output in ``store[name]``; removed on exit, also on error.

    A module called several times in one forward pass keeps its first output. With ``stop_early`` the
    hook raises :class:`StopForward` once every module has run (the caller catches it).
    """
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args, output):
            if name in store:
                return None
            if not isinstance(output, torch.Tensor):
                raise TypeError(
                    f"layer {name!r} returned {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is a single tensor"
                )
            store[name] = output
            if stop_early and len(store) == len(modules):
                raise StopForward
            return None

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield store
    finally:
        for handle in handles:
            handle.remove()
