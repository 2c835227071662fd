"""Tiny models, hand-written reference rules and an independent side-effect check for the saliency tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_globals

RELU_KINDS = (
    "module",  # a distinct nn.ReLU per use
    "reused",  # one nn.ReLU module called at every position
    "inplace",  # distinct nn.ReLU(inplace=True)
    "reused_inplace",  # one nn.ReLU(inplace=True) for all (torchvision's ResNet blocks)
    "functional",  # F.relu
    "functional_inplace",  # F.relu(x, inplace=True)
    "torch",  # torch.relu
    "tensor",  # x.relu()
    "tensor_inplace",  # x.relu_()
    "threshold",  # F.threshold(x, 0, 0)
)


class TinyNet(nn.Module):
    """conv-act-conv-act-maxpool-linear-act-linear, with the activations written in one of RELU_KINDS."""

    def __init__(self, relu: str = "module", in_channels: int = 3, classes: int = 5, bn: bool = False):
        super().__init__()
        assert relu in RELU_KINDS
        self.kind = relu
        self.conv1 = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(6 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, classes)
        if relu in ("module", "inplace"):
            inplace = relu == "inplace"
            self.act1, self.act2, self.act3 = (nn.ReLU(inplace=inplace) for _ in range(3))
        elif relu in ("reused", "reused_inplace"):
            self.act = nn.ReLU(inplace=relu == "reused_inplace")

    def activation(self, x: torch.Tensor, i: int) -> torch.Tensor:
        kind = self.kind
        if kind in ("module", "inplace"):
            return getattr(self, f"act{i}")(x)
        if kind in ("reused", "reused_inplace"):
            return self.act(x)
        if kind == "functional":
            return F.relu(x)
        if kind == "functional_inplace":
            return F.relu(x, inplace=True)
        if kind == "torch":
            return torch.relu(x)
        if kind == "tensor":
            return x.relu()
        if kind == "tensor_inplace":
            x.relu_()
            return x
        return F.threshold(x, 0.0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(x, self.activation)

    def forward_with(self, x: torch.Tensor, act) -> torch.Tensor:
        """The same network with ``act(tensor, index)`` as every activation (for the references)."""
        x = act(self.bn1(self.conv1(x)), 1)
        x = self.pool(act(self.conv2(x), 2))  # 12x12 -> 6x6 -> 3x3
        x = act(self.fc1(x.flatten(1)), 3)
        return self.fc2(x)


class RefRule(torch.autograd.Function):
    """The guided / deconvnet ReLU written out: forward max(x, 0); backward as the papers define it."""

    @staticmethod
    def forward(ctx, x, rule):
        ctx.rule = rule
        ctx.save_for_backward(x)
        return torch.where(x > 0, x, torch.zeros_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        positive_grad = (g > 0).to(g.dtype)
        if ctx.rule == "guided":
            return g * (x > 0).to(g.dtype) * positive_grad, None
        return g * positive_grad, None


class RefReLU(nn.Module):
    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule

    def forward(self, x):
        return RefRule.apply(x, self.rule)


def reference_rule_gradient(forward, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``d f_target / d x`` by a manual backward pass through ``forward`` on a copy of ``x``."""
    xi = x.detach().clone().requires_grad_(True)
    out = forward(xi)
    out.gather(1, target[:, None]).sum().backward()
    return xi.grad


def swap_relus(model: nn.Module, rule: str) -> nn.Module:
    """Replace every nn.ReLU module of ``model`` (a copy) by a RefReLU; reused modules stay reused."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(model, name, RefReLU(rule))
        else:
            swap_relus(child, rule)
    return model


def small_cnn(in_channels: int = 3, classes: int = 5, *, bn: bool = True) -> nn.Sequential:
    """A small conv net with BatchNorm (module ReLUs, not in place) for the generic checks."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 6, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    ]
    model = nn.Sequential(*layers)
    if bn:  # non-trivial running statistics
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.2, 0.2)
            model[1].running_var.uniform_(0.5, 1.5)
            model[1].weight.uniform_(0.5, 1.5)
            model[1].bias.uniform_(-0.2, 0.2)
    return model


# ----------------------------------------------------------------------------------------------------
# Side effects, checked without netvis's own snapshot code
# ----------------------------------------------------------------------------------------------------

_HOOK_DICTS = [a for a in vars(nn.Module()) if "hook" in a and isinstance(getattr(nn.Module(), a), dict)]
_GLOBAL_HOOKS = [a for a in dir(module_globals) if a.startswith("_global_") and "hook" in a and
                 isinstance(getattr(module_globals, a), dict)]


def fingerprint(model: nn.Module) -> dict:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    params = list(model.named_parameters())
    modules = list(model.named_modules())
    return {
        "training": [(n, m.training) for n, m in modules],
        "requires_grad": [(n, p.requires_grad) for n, p in params],
        "grads": [(n, p.grad, None if p.grad is None else p.grad.clone()) for n, p in params],
        "buffers": [(n, b, b.clone()) for n, b in model.named_buffers()],
        "hooks": [(n, a, tuple(getattr(m, a).items())) for n, m in modules for a in _HOOK_DICTS],
        "tensor_hooks": [(n, tuple((p._backward_hooks or {}).keys())) for n, p in params],
        "global_hooks": [(a, tuple(getattr(module_globals, a).items())) for a in _GLOBAL_HOOKS],
        "modes": (torch.is_grad_enabled(), torch._C._len_torch_function_stack(),
                  len(_get_current_dispatch_mode_stack())),
    }


def assert_untouched(before: dict, model: nn.Module) -> None:
    after = fingerprint(model)
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    for (name, g0, v0), (_, g1, _) in zip(before["grads"], after["grads"], strict=True):
        assert g1 is g0, f"{name}.grad object changed"
        if g0 is not None:
            assert torch.equal(g1, v0), f"{name}.grad values changed"
    for (name, b0, v0), (_, b1, _) in zip(before["buffers"], after["buffers"], strict=True):
        assert b1 is b0, f"buffer {name} replaced"
        assert torch.equal(b1, v0), f"buffer {name} changed"
    assert before["hooks"] == after["hooks"]
    assert before["tensor_hooks"] == after["tensor_hooks"]
    assert before["global_hooks"] == after["global_hooks"]
    assert before["modes"] == after["modes"]
