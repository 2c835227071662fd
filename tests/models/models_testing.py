"""Helpers shared by the model tests: parameter counts, random BN statistics, counting module calls."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import torch
from torch import nn


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_norms(model: nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters, so eval-mode BN is not ~identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
                m.num_batches_tracked.zero_()


def forward_call_counts(
    model: nn.Module, modules: Iterable[tuple[Hashable, nn.Module]], x: torch.Tensor
) -> dict[Hashable, int]:
    """Run ``model(x)`` without gradients; return how often each ``(key, module)`` was called (hooks removed)."""
    modules = list(modules)
    calls = {key: 0 for key, _ in modules}
    handles = [m.register_forward_hook(lambda mod, i, o, key=key: calls.__setitem__(key, calls[key] + 1))
               for key, m in modules]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls
