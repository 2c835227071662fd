"""Private helpers for inversion: resolve a layer, freeze a model for one call, capture a layer's output.

Every change these make to a user's model (``requires_grad`` flags, train/eval mode, forward hooks) is
undone in a ``finally`` block, so it is undone also when the call raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from netvis import hooks

LayerLike = nn.Module | str


# ``(dotted name, module)`` for a layer given as a module or a dotted name.
resolve_layer = hooks.named_layer


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with every parameter's ``requires_grad`` off, for the ``with`` block.

    Built on :func:`netvis.hooks.preserved_state`: each module's ``training`` flag, each parameter's
    ``requires_grad`` flag and ``.grad``, and every buffer are exactly as before on exit (also on error).
    """
    with hooks.preserved_state(model):
        for p in model.parameters():
            p.requires_grad_(False)
        for module in model.modules():
            module.training = False
        yield model


def layer_outputs(
    model: nn.Module, x: torch.Tensor, modules: Mapping[str, nn.Module], *, stop_early: bool = True
) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` and return the outputs of ``modules`` (name -> tensor).

    With ``stop_early`` the forward pass is cut short (by a private exception raised from a forward hook
    and caught here) as soon as every layer has produced its output. The hooks are removed on exit.

    Raises:
        ValueError: a layer did not run during the forward pass.
    """
    store: dict[str, torch.Tensor] = {}
    with hooks.capture_outputs(modules, store, stop_early=stop_early):
        try:
            model(x)
        except hooks.StopForward:
            pass
    missing = [name for name in modules if name not in store]
    if missing:
        raise ValueError(
            f"layer(s) {', '.join(map(repr, missing))} did not run in {type(model).__name__}'s forward pass"
        )
    return store
