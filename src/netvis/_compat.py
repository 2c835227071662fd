"""Every private PyTorch API netvis touches, in one place.

netvis supports the torch versions listed in ``pyproject.toml`` (the range the test suite runs on). The
names below are not part of PyTorch's public API; when a torch release moves one, this module is the
only file to change, and ``tests/test_architecture.py`` fails first (it checks that each of them still
exists and has the expected type).

Used here:

* the hook dictionaries of ``nn.Module`` (``_forward_hooks``, ``_forward_pre_hooks``, ...) and the global
  ones in ``torch.nn.modules.module`` (``_global_forward_hooks``, ...): read to snapshot and compare a
  model's hooks (:mod:`netvis.hooks`) and to refuse hooked models (the incremental occlusion engine);
* ``nn.Module._buffers``: read and written to put back the very buffer objects a call replaced;
* a tensor's ``_backward_hooks`` and ``_post_accumulate_grad_hooks``: read to snapshot tensor hooks;
* ``torch._C._len_torch_function_stack`` and
  ``torch.utils._python_dispatch._get_current_dispatch_mode_stack``: the depth of the mode stacks;
* ``torch.utils._python_dispatch.TorchDispatchMode``: the base class of the dispatch mode that watches
  for rectifier kernels run outside Python (guided backpropagation);
* ``torch._C._nn``: the namespace of the C++ ``nn`` functions (some rectifiers are reachable there);
* ``torch.nn.modules.batchnorm._BatchNorm``: the base class of torch's BN layers.

``netvis.models.batchnorm`` also overrides ``nn.Module._load_from_state_dict`` (the documented hook for
state-dict versioning); the test checks its signature against torch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import batchnorm as _batchnorm
from torch.nn.modules import module as _module
from torch.utils import _python_dispatch

__all__ = [
    "BatchNormBase",
    "GLOBAL_HOOK_DICTS",
    "MODULE_HOOK_DICTS",
    "TorchDispatchMode",
    "dispatch_mode_depth",
    "global_hook_dict",
    "has_forward_hooks",
    "has_global_forward_hooks",
    "module_buffers",
    "module_hook_dict",
    "nn_functions",
    "tensor_hook_keys",
    "torch_function_mode_depth",
]

MODULE_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
"""The hook dictionaries of an ``nn.Module`` instance (names as in torch 2.x)."""

GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
)
"""The global module hook dictionaries of ``torch.nn.modules.module``."""

_FORWARD_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks")
_GLOBAL_FORWARD_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks")

TorchDispatchMode = _python_dispatch.TorchDispatchMode
"""``torch.utils._python_dispatch.TorchDispatchMode``: the base class of a dispatch (aten-level) mode."""

BatchNormBase: type[nn.Module] = _batchnorm._BatchNorm
"""``torch.nn.modules.batchnorm._BatchNorm``: the base of ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm``."""


def module_hook_dict(module: nn.Module, name: str) -> dict[Any, Any] | None:
    """``module``'s hook dictionary ``name`` (one of :data:`MODULE_HOOK_DICTS`), ``None`` if absent."""
    return getattr(module, name, None)


def global_hook_dict(name: str) -> dict[Any, Any] | None:
    """The global hook dictionary ``name`` (one of :data:`GLOBAL_HOOK_DICTS`), ``None`` if absent."""
    return getattr(_module, name, None)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether ``module`` itself has forward or forward-pre hooks."""
    return any(module_hook_dict(module, name) for name in _FORWARD_HOOK_DICTS)


def has_global_forward_hooks() -> bool:
    """Whether global forward or forward-pre hooks are registered (``register_module_forward_hook``)."""
    return any(global_hook_dict(name) for name in _GLOBAL_FORWARD_HOOK_DICTS)


def module_buffers(module: nn.Module) -> dict[str, torch.Tensor | None]:
    """``module._buffers``: its own buffers by name, the live dictionary (assigning to it replaces a buffer
    without the checks of ``register_buffer``)."""
    return module._buffers


def tensor_hook_keys(tensor: torch.Tensor) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The keys of ``tensor``'s backward hooks and post-accumulate-grad hooks (empty tuples when none)."""
    hooks = getattr(tensor, "_backward_hooks", None)
    post = getattr(tensor, "_post_accumulate_grad_hooks", None)
    return (tuple(hooks) if hooks else (), tuple(post) if post else ())


def torch_function_mode_depth() -> int:
    """How many ``TorchFunctionMode``\\ s are active."""
    return int(torch._C._len_torch_function_stack())


def dispatch_mode_depth() -> int:
    """How many ``TorchDispatchMode``\\ s are active."""
    return len(_python_dispatch._get_current_dispatch_mode_stack())


def nn_functions() -> Any:
    """``torch._C._nn``: the C++ ``nn`` functions (e.g. ``elu``, ``gelu``), looked up by name."""
    return torch._C._nn
