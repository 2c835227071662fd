"""Private helpers shared by the feature-visualization methods: layers, devices, capturing outputs.

Model state (modes, flags, gradients, buffers), guided ReLUs and the output-capturing hooks
(:func:`netvis.hooks.capture_outputs`, re-exported here as ``capture``) come from :mod:`netvis.hooks`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from netvis import hooks
from netvis.devices import model_device
from netvis.hooks import StopForward
from netvis.hooks import capture_outputs as capture

LayerLike = nn.Module | str


# ``(dotted name, module)`` for a layer given as a module or a dotted name.
resolve_layer = hooks.named_layer


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


__all__ = ["LayerLike", "StopForward", "capture", "model_device", "resolve_layer", "resolve_layers"]
