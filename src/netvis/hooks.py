"""Every hook, mode switch and gradient override netvis uses, each inside a context manager.

netvis's methods never leave anything behind on the user's model: the context managers here register
their hooks and switch modes on entry and undo all of it on exit, also when the body raises.

* :func:`preserved_state` snapshots what a call could change on a model (each module's train/eval flag,
  ``requires_grad`` flags, parameter ``.grad`` tensors, buffers such as BatchNorm running statistics)
  and restores it on exit. :func:`snapshot` and :func:`state_differences` expose the same snapshot for
  checks.
* :func:`eval_session` is what every saliency method runs in: the model in eval mode, state preserved,
  gradients on or off as asked.
* :func:`capture_activation` records a layer's output with a forward hook that is removed on exit.
* :func:`guided_relus` routes every ReLU of a forward pass through the guided-backpropagation or
  deconvnet backward rule, and refuses models whose rectifiers it cannot route.
* :func:`resolve_layer` turns a layer given as a module or a dotted name into the module.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from netvis import _compat
from netvis._compat import TorchDispatchMode
from netvis.devices import model_device

__all__ = [
    "ActivationCapture",
    "GuidedReLUError",
    "StopForward",
    "ModelState",
    "call_order",
    "capture_activation",
    "capture_outputs",
    "eval_session",
    "guided_relus",
    "model_device",
    "preserved_state",
    "record_calls",
    "resolve_layer",
    "snapshot",
    "state_differences",
]


# ----------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """Return the submodule of ``model`` that ``layer`` names.

    Args:
        model: the network.
        layer: an ``nn.Module`` that belongs to ``model`` or a dotted name such as ``"layer4.1.conv2"``
            resolved with ``model.get_submodule``.

    Returns:
        The module.

    Raises:
        ValueError: the name is not a submodule of ``model`` (the message lists the closest names), or
            the module is not part of ``model``.
        TypeError: ``layer`` is neither a module nor a string.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer(model, "0") is model[0]
        True
    """
    if isinstance(layer, nn.Module):
        if any(m is layer for m in model.modules()):
            return layer
        raise ValueError(
            f"the layer {type(layer).__name__} passed as a module is not part of the model "
            f"{type(model).__name__}; pass one of its submodules or a dotted name"
        )
    if isinstance(layer, str):
        try:
            return model.get_submodule(layer)
        except AttributeError:
            names = [name for name, _ in model.named_modules() if name]
            close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5)
            if not close:
                close = [n for n in names if n.startswith(layer.split(".")[0])][:5] or names[-5:]
            raise ValueError(
                f"{type(model).__name__} has no layer named {layer!r}; close names: "
                + ", ".join(repr(n) for n in close)
            ) from None
    raise TypeError(f"layer must be an nn.Module or a dotted name (str), got {type(layer).__name__}")


def named_layer(model: nn.Module, layer: nn.Module | str) -> tuple[str, nn.Module]:
    """Return ``(dotted name, module)`` for ``layer``, resolved (with its errors) by :func:`resolve_layer`."""
    module = resolve_layer(model, layer)
    if isinstance(layer, str):
        return layer, module
    return next(name for name, m in model.named_modules() if m is module), module


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): (name or "<model>") for name, m in model.named_modules()}


# ----------------------------------------------------------------------------------------------------
# State snapshots
# ----------------------------------------------------------------------------------------------------

@dataclass
class ModelState:
    """What :func:`snapshot` records about a model; compare two with :func:`state_differences`.

    Attributes:
        training: ``(name, module, module.training)`` for every module.
        requires_grad: ``(name, parameter, parameter.requires_grad)`` for every parameter.
        grads: ``(name, parameter, grad object, copy of its values)``; the object and copy are ``None``
            when the parameter has no gradient.
        buffers: ``(name, module, buffer name, buffer object, copy of its values)``.
        hooks: ``(name, dict name, hook ids)`` for every module hook dictionary, the global module hook
            dictionaries and every parameter's tensor hooks.
        modes: the grad mode, the depth of the torch-function and dispatch mode stacks.
    """

    training: list[tuple[str, nn.Module, bool]] = field(default_factory=list)
    requires_grad: list[tuple[str, nn.Parameter, bool]] = field(default_factory=list)
    grads: list[tuple[str, nn.Parameter, torch.Tensor | None, torch.Tensor | None]] = field(
        default_factory=list
    )
    buffers: list[tuple[str, nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = field(
        default_factory=list
    )
    hooks: list[tuple[str, str, tuple]] = field(default_factory=list)
    modes: tuple = ()


def snapshot(model: nn.Module, *, values: bool = True) -> ModelState:
    """Record the state a method could change on ``model``.

    Args:
        model: the network.
        values: also copy the values of existing parameter gradients and of buffers (needed to restore
            them or to compare values later).

    Returns:
        A :class:`ModelState`.
    """
    state = ModelState()
    for name, m in model.named_modules():
        name = name or "<model>"
        state.training.append((name, m, m.training))
        for dict_name in _compat.MODULE_HOOK_DICTS:
            hooks = _compat.module_hook_dict(m, dict_name)
            state.hooks.append((name, dict_name, tuple(hooks) if hooks is not None else ()))
        for bname, buf in _compat.module_buffers(m).items():
            copy = buf.detach().clone() if (values and buf is not None) else None
            state.buffers.append((name, m, bname, buf, copy))
    for name, p in model.named_parameters():
        state.requires_grad.append((name, p, p.requires_grad))
        g = p.grad
        state.grads.append((name, p, g, g.detach().clone() if (values and g is not None) else None))
        state.hooks.append((name, "tensor hooks", _compat.tensor_hook_keys(p)))
    for dict_name in _compat.GLOBAL_HOOK_DICTS:
        hooks = _compat.global_hook_dict(dict_name)
        state.hooks.append(("torch.nn.modules.module", dict_name, tuple(hooks) if hooks is not None else ()))
    state.modes = (
        torch.is_grad_enabled(),
        _compat.torch_function_mode_depth(),
        _compat.dispatch_mode_depth(),
    )
    return state


def state_differences(before: ModelState, after: ModelState) -> list[str]:
    """Describe what changed between two snapshots of the same model (an empty list: nothing).

    Compares train/eval flags, ``requires_grad`` flags, gradient objects and values, buffer objects and
    values, hook dictionaries (module, parameter and global) and the grad/function/dispatch modes.
    """
    diffs: list[str] = []
    for (name, _, a), (_, _, b) in zip(before.training, after.training, strict=False):
        if a != b:
            diffs.append(f"{name}: training {a} -> {b}")
    if len(before.training) != len(after.training):
        diffs.append(f"number of modules {len(before.training)} -> {len(after.training)}")
    for (name, _, a), (_, _, b) in zip(before.requires_grad, after.requires_grad, strict=False):
        if a != b:
            diffs.append(f"{name}: requires_grad {a} -> {b}")
    for (name, _, g0, v0), (_, _, g1, v1) in zip(before.grads, after.grads, strict=False):
        if g0 is not g1:
            diffs.append(f"{name}: .grad object replaced ({_describe(g0)} -> {_describe(g1)})")
        elif v0 is not None and v1 is not None and not torch.equal(v0, v1):
            diffs.append(f"{name}: .grad values changed")
    for (name, _, bname, b0, v0), (_, _, _, b1, v1) in zip(before.buffers, after.buffers, strict=False):
        if b0 is not b1:
            diffs.append(f"{name}.{bname}: buffer object replaced")
        elif v0 is not None and v1 is not None and not torch.equal(v0, v1):
            diffs.append(f"{name}.{bname}: buffer values changed")
    if len(before.buffers) != len(after.buffers):
        diffs.append(f"number of buffers {len(before.buffers)} -> {len(after.buffers)}")
    for (name, dict_name, k0), (_, _, k1) in zip(before.hooks, after.hooks, strict=False):
        if k0 != k1:
            diffs.append(f"{name}: {dict_name} {len(k0)} -> {len(k1)} hooks")
    if before.modes != after.modes:
        diffs.append(f"(grad mode, function modes, dispatch modes) {before.modes} -> {after.modes}")
    return diffs


def _describe(t: torch.Tensor | None) -> str:
    return "None" if t is None else f"tensor{tuple(t.shape)}"


def _restore(state: ModelState) -> None:
    for _, m, flag in state.training:
        if m.training != flag:
            m.training = flag
    for _, p, flag in state.requires_grad:
        if p.requires_grad != flag:
            p.requires_grad_(flag)
    with torch.no_grad():
        for _, p, g, copy in state.grads:
            if p.grad is not g:
                p.grad = g
            if g is not None and copy is not None and not torch.equal(g, copy):
                g.copy_(copy)
        for _, m, bname, buf, copy in state.buffers:
            buffers = _compat.module_buffers(m)
            if buffers.get(bname) is not buf:
                buffers[bname] = buf
            if buf is not None and copy is not None and not torch.equal(buf, copy):
                buf.copy_(copy)


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[ModelState]:
    """Restore ``model``'s modes, ``requires_grad`` flags, gradients and buffers on exit.

    On exit, also when the body raises: every module's ``training`` flag is set back, every parameter's
    ``requires_grad`` flag, every ``.grad`` (the same tensor object, with its values; ``None`` stays
    ``None``) and every buffer (the same tensor object, with its values, e.g. BatchNorm's running mean,
    variance and ``num_batches_tracked``). Exceptions propagate unchanged.

    Args:
        model: the network.

    Yields:
        The :class:`ModelState` taken on entry.

    Example:
        >>> import torch, torch.nn as nn
        >>> bn = nn.BatchNorm2d(3)
        >>> with preserved_state(bn):
        ...     _ = bn(torch.randn(2, 3, 4, 4))   # train mode: running stats move...
        >>> bool(bn.running_mean.eq(0).all())     # ...and are restored
        True
    """
    state = snapshot(model, values=True)
    try:
        yield state
    finally:
        _restore(state)


@contextmanager
def eval_session(model: nn.Module, *, grad: bool) -> Iterator[None]:
    """Run ``model`` in eval mode with its state preserved; the context every saliency method uses.

    Inside, ``model.eval()`` has been called (so BatchNorm uses its running statistics and dropout is
    off), gradients are enabled iff ``grad`` (inference mode is switched off when ``grad``). On exit each
    module's own train/eval flag is restored, as is everything :func:`preserved_state` restores.

    Args:
        model: the network.
        grad: whether autograd records the forward pass.
    """
    with ExitStack() as stack:
        stack.enter_context(preserved_state(model))
        if grad:
            stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.set_grad_enabled(grad))
        model.eval()
        yield


# ----------------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------------


class ActivationCapture:
    """The outputs a layer produced while :func:`capture_activation` was active.

    Attributes:
        layer: the module.
        name: its dotted name in the model.
        outputs: one entry per call of the layer.
    """

    def __init__(self, layer: nn.Module, name: str) -> None:
        self.layer = layer
        self.name = name
        self.outputs: list[Any] = []

    @property
    def output(self) -> torch.Tensor:
        """The layer's output tensor; raises unless the layer ran exactly once and returned a tensor."""
        if len(self.outputs) != 1:
            raise RuntimeError(
                f"layer {self.name!r} ran {len(self.outputs)} times in the forward pass; expected exactly "
                "once (pick a layer that the forward pass calls once)"
            )
        out = self.outputs[0]
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"layer {self.name!r} returned {type(out).__name__}, expected a tensor")
        return out


@contextmanager
def capture_activation(model: nn.Module, layer: nn.Module | str) -> Iterator[ActivationCapture]:
    """Record the output of ``layer`` on every forward call; the hook is removed on exit.

    The recorded tensor is the layer's output object itself (still part of the autograd graph, so one can
    differentiate with respect to it). If a later operation modifies it in place (e.g. an in-place ReLU),
    the recorded tensor shows the modified values.

    Args:
        model: the network.
        layer: a submodule of ``model`` or its dotted name.

    Yields:
        An :class:`ActivationCapture`.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
        >>> with capture_activation(model, "0") as cap:
        ...     _ = model(torch.zeros(1, 1, 5, 5))
        >>> tuple(cap.output.shape)
        (1, 2, 3, 3)
    """
    module = resolve_layer(model, layer)
    name = layer if isinstance(layer, str) else _module_names(model).get(id(module), type(module).__name__)
    capture = ActivationCapture(module, name)

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        capture.outputs.append(output)

    handle = module.register_forward_hook(hook)
    try:
        yield capture
    finally:
        handle.remove()


@contextmanager
def record_calls(model: nn.Module) -> Iterator[list[tuple[str, nn.Module, tuple, Any]]]:
    """Record ``(dotted name, module, inputs, output)`` for every call of every submodule, as it returns.

    The list is in completion order: a container comes right after the last of its children that
    ran inside it. Inputs (the positional arguments) and outputs are the objects themselves (still in
    the autograd graph). One
    forward hook per module (``model`` included, named ``""``), all removed on exit, also on error.

    Yields:
        The list the hooks append to.
    """
    calls: list[tuple[str, nn.Module, tuple, Any]] = []
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            calls.append((name, module, inputs, output))

        return hook

    try:
        for name, module in model.named_modules():
            handles.append(module.register_forward_hook(make_hook(name)))
        yield calls
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised by a forward hook to end a forward pass early, once what it needs has been seen.

    :func:`capture_outputs` raises it once every wanted layer has run; :func:`netvis.bn.recalibrate` once
    the layer it recalibrates has seen its input. The caller catches it around ``model(x)``.
    """


def call_order(model: nn.Module, modules: Sequence[nn.Module], x: Any) -> list[int]:
    """The indices of ``modules`` in the order one forward pass ``model(x)`` first calls them.

    Modules the forward pass never calls are left out. The pass runs under ``torch.no_grad``; each
    module gets a forward-pre hook for the duration of the pass (removed on exit, also on error). The
    caller sets the mode (e.g. inside :func:`eval_session`).

    Args:
        model: the network.
        modules: submodules of ``model``.
        x: the input of the forward pass.

    Returns:
        Indices into ``modules``, first called first.
    """
    first_call: dict[int, int] = {}
    handles = []

    def make_hook(index: int):
        def hook(_module: nn.Module, _args: Any) -> None:
            first_call.setdefault(index, len(first_call))

        return hook

    try:
        for index, module in enumerate(modules):
            handles.append(module.register_forward_pre_hook(make_hook(index)))
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return sorted(first_call, key=first_call.__getitem__)


@contextmanager
def capture_outputs(
    modules: Mapping[str, nn.Module], store: dict[str, torch.Tensor], *, stop_early: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that put each module's output in ``store[name]``; removed on exit, also on error.

    A module called several times in one forward pass keeps its first output. With ``stop_early`` the
    hook raises :class:`StopForward` once every module has run; the caller catches it around ``model(x)``.

    Raises:
        TypeError: (from the forward pass) a layer's output is not a single tensor.
    """
    handles = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
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


# ----------------------------------------------------------------------------------------------------
# Guided backpropagation / deconvnet
# ----------------------------------------------------------------------------------------------------

Rule = Literal["guided", "deconv"]


class GuidedReLUError(RuntimeError):
    """The model uses a rectifier that guided backpropagation / deconvnet cannot route."""


class _Rectifier(torch.autograd.Function):
    """``max(x, 0)`` forward (in place for ``relu_`` and ``inplace=True``); guided or deconvnet backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, guided: bool, inplace: bool) -> torch.Tensor:
        ctx.guided = guided
        if guided:
            ctx.save_for_backward(x > 0)
        if not inplace:
            return x.clamp(min=0)
        x.clamp_(min=0)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        out = grad.clamp(min=0)  # [g > 0]: both rules
        if ctx.guided:
            (positive,) = ctx.saved_tensors  # [x > 0]: guided backpropagation only
            out = out * positive
        return out, None, None


def _existing(*candidates: tuple[Any, str]) -> set:
    found = set()
    for owner, name in candidates:
        f = getattr(owner, name, None)
        if f is not None:
            found.add(f)
    return found


_T = torch.Tensor
_NN = _compat.nn_functions()
# Calls that compute max(x, 0), routed through the rule; out of place and in place.
_RELU_OUT = _existing((F, "relu"), (torch, "relu"), (_T, "relu"))
_RELU_INPLACE = _existing((torch, "relu_"), (_T, "relu_"), (F, "relu_"))
_THRESHOLD = _existing((F, "threshold"), (torch, "threshold"), (_T, "threshold"))
_THRESHOLD_INPLACE = _existing((F, "threshold_"), (torch, "threshold_"), (_T, "threshold_"))
_CLAMP = _existing(
    (torch, "clamp"), (_T, "clamp"), (torch, "clamp_"), (_T, "clamp_"), (torch, "clip"), (_T, "clip"),
    (torch, "clip_"), (_T, "clip_"), (torch, "clamp_min"), (_T, "clamp_min"), (torch, "clamp_min_"),
    (_T, "clamp_min_"),
)
# Rectifier-like activations without a guided rule: refused.
_REFUSED = {
    f: name
    for name in (
        "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "rrelu", "rrelu_", "prelu", "elu",
        "elu_", "selu", "selu_", "celu", "celu_", "gelu", "silu", "mish", "hardswish", "softplus",
    )
    for f in _existing((F, name), (torch, name), (_T, name), (_NN, name))
}
_REFUSED_MODULES = (
    nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.RReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Softplus,
)
_RECTIFIER_ATEN = {
    "relu", "relu_", "threshold", "threshold_", "hardtanh", "hardtanh_", "relu6", "leaky_relu",
    "leaky_relu_", "rrelu_with_noise", "rrelu_with_noise_", "prelu", "_prelu_kernel", "elu", "elu_", "selu",
    "selu_", "celu", "celu_", "gelu", "gelu_", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_",
    "softplus",
}


def _argument(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _is_zero(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and bool(value == 0)
    return isinstance(value, numbers.Number) and value == 0


def _rule_name(rule: Rule) -> str:
    return "guided backpropagation" if rule == "guided" else "deconvnet"


class _GuidedMode(TorchFunctionMode):
    """Routes every Python-level rectifier call through the guided/deconvnet autograd function."""

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        self.guided = rule == "guided"
        self.rule = rule

    def _apply(self, x: torch.Tensor, inplace: bool) -> torch.Tensor:
        return _Rectifier.apply(x, self.guided, inplace)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in _RELU_OUT:
            inplace = bool(_argument(args, kwargs, 1, "inplace", False)) if func is F.relu else False
            return self._apply(args[0], inplace)
        if func in _RELU_INPLACE:
            return self._apply(args[0], True)
        if func in _THRESHOLD or func in _THRESHOLD_INPLACE:
            threshold = _argument(args, kwargs, 1, "threshold")
            value = _argument(args, kwargs, 2, "value")
            if _is_zero(threshold) and _is_zero(value):
                inplace = func in _THRESHOLD_INPLACE or bool(_argument(args, kwargs, 3, "inplace", False))
                return self._apply(args[0], inplace)
            raise GuidedReLUError(
                f"{_rule_name(self.rule)} cannot route threshold(threshold={threshold}, value={value}): "
                "only threshold(x, 0, 0), which is a ReLU, has a guided rule"
            )
        if func in _CLAMP:
            low = _argument(args, kwargs, 1, "min")
            high = _argument(args, kwargs, 2, "max")
            if _is_zero(low) and high is None:
                raise GuidedReLUError(
                    f"the model computes a ReLU as {getattr(func, '__name__', func)}(x, min=0); "
                    f"{_rule_name(self.rule)} routes only relu calls (nn.ReLU, F.relu, torch.relu, "
                    "Tensor.relu and their in-place forms); write the activation as one of those"
                )
        elif func in _REFUSED:
            raise GuidedReLUError(
                f"the model calls {_REFUSED[func]}, a rectifier-like activation with no "
                f"{_rule_name(self.rule)} rule (defined for ReLU only); netvis refuses rather than return "
                "the plain gradient"
            )
        return func(*args, **kwargs)


class _RectifierWatch(TorchDispatchMode):
    """Records rectifier kernels that ran without passing through Python (TorchScript, torch.ops, C++).

    Recorded rather than raised on the spot: an exception raised inside a TorchScript module loses its
    message, so :func:`guided_relus` raises when the forward pass is over.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unrouted: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = func.overloadpacket.__name__
        if name in _RECTIFIER_ATEN and name not in self.unrouted:
            self.unrouted.append(name)
        return func(*args, **(kwargs or {}))


@contextmanager
def guided_relus(model: nn.Module, rule: Rule = "guided") -> Iterator[None]:
    r"""Route every ReLU of the forward passes run inside through the guided or the deconvnet rule.

    Every rectifier the forward pass computes in Python is intercepted, whatever form it takes:
    ``nn.ReLU`` modules (also one module used several times), ``nn.ReLU(inplace=True)``, ``F.relu``,
    ``F.relu(x, inplace=True)``, ``torch.relu``, ``torch.relu_``, ``Tensor.relu``, ``Tensor.relu_`` and
    ``threshold(x, 0, 0)``. Each is computed as :math:`\max(x, 0)` by an autograd function whose backward
    pass, for the gradient :math:`g` arriving from above, is

    .. math::
        \text{guided: } g \cdot [x > 0] \cdot [g > 0] \qquad \text{deconv: } g \cdot [g > 0].

    Nothing is registered on the model: the interception is a torch-function mode active only inside
    the ``with`` block, and a dispatch mode checks that no rectifier kernel ran unrouted.

    The call raises :class:`GuidedReLUError` instead of silently returning the plain gradient when the
    model holds a rectifier-like module with no guided rule (``ReLU6``, ``Hardtanh``, ``LeakyReLU``,
    ``RReLU``, ``PReLU``, ``ELU``, ``SELU``, ``CELU``, ``GELU``, ``SiLU``, ``Mish``, ``Hardswish``,
    ``Softplus``), when the forward pass calls such an activation functionally, computes a ReLU as
    ``clamp(x, min=0)``, or runs a rectifier kernel outside Python (e.g. inside a TorchScript module; this
    last check raises when the ``with`` block ends, so run only the forward pass inside it).

    Args:
        model: the network (checked for refused activation modules on entry).
        rule: ``"guided"`` (Springenberg et al. 2015) or ``"deconv"`` (Zeiler & Fergus 2014).

    Raises:
        GuidedReLUError: as described above.
        ValueError: unknown ``rule``.
    """
    if rule not in ("guided", "deconv"):
        raise ValueError(f"rule must be 'guided' or 'deconv', got {rule!r}")
    for name, m in model.named_modules():
        if isinstance(m, _REFUSED_MODULES):
            raise GuidedReLUError(
                f"module {name or '<model>'!r} is {type(m).__name__}, a rectifier-like activation with no "
                f"{_rule_name(rule)} rule (defined for ReLU only); netvis refuses rather than return the "
                "plain gradient"
            )
    watch = _RectifierWatch()
    with _GuidedMode(rule), watch:
        yield
    if watch.unrouted:
        kernels = ", ".join(f"aten::{name}" for name in watch.unrouted)
        raise GuidedReLUError(
            f"the kernel(s) {kernels} ran without passing through a Python-level call netvis can intercept "
            f"(a TorchScript module, a torch.ops call or a compiled or C++ module); {_rule_name(rule)} "
            "cannot route them"
        )

