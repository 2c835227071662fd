"""Tiny models and helpers shared by the inversion tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netvis.hooks import snapshot, state_differences


@pytest.fixture
def one_thread(one_thread):
    """tests/conftest.py's ``one_thread``, importable from here: the test modules name it in
    ``pytest.mark.usefixtures(one_thread.__name__)``."""
    return one_thread


def tiny_cnn(seed: int = 0, channels: int = 1) -> nn.Module:
    """conv-BN-ReLU, then a stride-2 conv-ReLU and a linear head; weights drawn from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential()
    model.add_module("conv1", nn.Conv2d(channels, 8, 3, padding=1))
    model.add_module("bn1", nn.BatchNorm2d(8))
    model.add_module("relu1", nn.ReLU())
    model.add_module("conv2", nn.Conv2d(8, 16, 3, stride=2, padding=1))
    model.add_module("relu2", nn.ReLU())
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(16 * 6 * 6, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() > 1 else 0.1))
        model.bn1.running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
        model.bn1.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    return model


def tiny_images(n: int = 2, seed: int = 1, channels: int = 1, size: int = 12) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (blurred noise), shaped (n, channels, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, channels, size, size, generator=gen)
    x = nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return (x - x.amin()) / (x.amax() - x.amin())


def messy_state(model: nn.Module) -> None:
    """Put a model in a state a careless method would disturb: train mode, a frozen parameter, a
    parameter with a .grad, a user's forward hook."""
    model.train()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 0.5)
    model.conv2.register_forward_hook(lambda module, args, output: None)


def assert_unchanged(before, model: nn.Module) -> None:
    diffs = state_differences(before, snapshot(model))
    assert diffs == [], diffs
