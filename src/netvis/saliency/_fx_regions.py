r"""The incremental occlusion engine's view of a model: a torch.fx graph in which each layer knows its region.

:func:`build_program` traces a classifier with ``torch.fx``, rewrites in-place operations into their
out-of-place forms, runs the clean images through the graph once (keeping every node's output) and
sorts each node into one of the kinds below. :func:`plan_regions` then works out, for every window
position of an occlusion grid and every feature map, the box that the occluded window can change:

* ``elementwise`` -- ReLU and other activations, batch normalization in eval mode, dropout in eval mode,
  ``+ - * /``, channel concatenation, channel-only slicing and padding: the output box is the union of
  the inputs' boxes;
* ``local`` -- convolution (any stride, padding, dilation, groups), max and average pooling, strided
  subsampling ``x[:, :, ::s, ::s]``: an output pixel :math:`o` reads input rows
  :math:`o s - p + j d,\ j < k`, so a changed input box :math:`[a, a + h)` changes the output rows

  .. math::
      \Big\lceil \frac{a + p - (k - 1) d}{s} \Big\rceil \le o \le \Big\lfloor \frac{a + p + h - 1}{s}
      \Big\rfloor,

  at most :math:`\lfloor (h - 1 + (k - 1) d) / s \rfloor + 1` of them; every position of a grid gets a
  box of that one size, shifted inside the map where it would cross the border;
* ``global`` -- adaptive pooling, flatten, reshapes, reductions: they read the whole (patched) map;
* ``dense`` -- nodes whose inputs are already whole per-position tensors (the classifier head);
* ``shape`` -- ``x.size()``, ``x.shape`` and friends, answered without computing anything;
* ``unknown`` -- any other operation; on a partly changed map it makes the engine give up.

Everything here is integer bookkeeping; :mod:`netvis.saliency.incremental` does the arithmetic.
"""

from __future__ import annotations

import builtins
import copy
import inspect
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from netvis import _compat
from netvis.models._common import check_input as _netvis_check_input
from netvis.models.batchnorm import BatchNorm1d as _NetvisBatchNorm1d
from netvis.models.batchnorm import BatchNorm2d as _NetvisBatchNorm2d

__all__ = ["Box", "Program", "Step", "Unsupported", "build_program", "plan_regions"]


class Unsupported(Exception):
    """The engine cannot run this model incrementally; the message says why."""


# ----------------------------------------------------------------------------------------------------
# What each operation is
# ----------------------------------------------------------------------------------------------------


def _existing(owner: Any, *names: str) -> list[Any]:
    return [getattr(owner, n) for n in names if hasattr(owner, n)]


_ACTIVATIONS = (
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid",
    "hardtanh", "sigmoid", "tanh", "softplus", "threshold", "prelu", "softsign", "tanhshrink", "logsigmoid",
)
_POINTWISE_TORCH = (
    "relu", "sigmoid", "tanh", "clamp", "clip", "clamp_min", "clamp_max", "abs", "neg", "exp", "square", "sqrt",
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "maximum", "minimum", "pow",
)
# elementwise functions: every tensor argument is read on the output's box
_ELEMENTWISE_FUNCTIONS = {
    *_existing(F, *_ACTIVATIONS),
    *_existing(torch, *_POINTWISE_TORCH, "prelu", "selu", "celu", "hardshrink"),
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pos,
    _netvis_check_input,
}
_IN_PLACE_FUNCTIONS: dict[Any, Any] = {}
for _owner in (torch, F):
    for _name in dir(_owner):
        if _name.endswith("_") and not _name.startswith("_") and hasattr(_owner, _name[:-1]):
            _IN_PLACE_FUNCTIONS[getattr(_owner, _name)] = getattr(_owner, _name[:-1])
_IN_PLACE_FUNCTIONS.update({
    operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
})
_DROPOUT_FUNCTIONS = set(_existing(F, "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                                   "feature_alpha_dropout"))
_PARAMETER_FUNCTIONS = {F.batch_norm, F.prelu, torch.prelu, _netvis_check_input}
_CAT_FUNCTIONS = set(_existing(torch, "cat", "concat", "concatenate"))
_CONV_FUNCTIONS = {F.conv2d, torch.conv2d}
_MAX_POOL_FUNCTIONS = set(_existing(F, "max_pool2d")) | set(_existing(torch, "max_pool2d"))
_AVG_POOL_FUNCTIONS = set(_existing(F, "avg_pool2d")) | set(_existing(torch, "avg_pool2d"))
_GLOBAL_FUNCTIONS = {
    *_existing(F, "adaptive_avg_pool2d", "adaptive_max_pool2d", "linear", "softmax", "log_softmax"),
    *_existing(torch, "flatten", "reshape", "mean", "sum", "amax", "amin", "squeeze", "unsqueeze", "softmax",
               "log_softmax", "transpose", "permute", "adaptive_avg_pool2d", "adaptive_max_pool2d"),
}
_ELEMENTWISE_METHODS = {
    *_POINTWISE_TORCH, "contiguous", "clone", "detach", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__",
    "__rmul__", "__truediv__", "__rtruediv__", "__neg__", "relu6", "sigmoid", "hardtanh", "float", "to", "type_as",
}
_GLOBAL_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "mean", "sum", "amax", "amin", "squeeze", "unsqueeze",
    "permute", "transpose", "softmax", "log_softmax",
}
_SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "nelement"}
_SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda"}
_VIEW_METHODS = {
    "view", "view_as", "reshape", "reshape_as", "flatten", "squeeze", "unsqueeze", "transpose", "permute",
    "narrow", "select", "chunk", "split", "unbind", "expand", "expand_as", "t", "unfold", "as_strided",
    "detach", "contiguous", "diagonal", "movedim", "unflatten", "T", "mT",
}
_VIEW_FUNCTIONS = {
    operator.getitem,
    *_existing(torch, "flatten", "reshape", "squeeze", "unsqueeze", "transpose", "permute", "narrow", "select",
               "chunk", "split", "unbind", "t", "movedim", "detach", "unflatten"),
}

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Threshold, nn.Identity,
    nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
)
_DROPOUT_MODULES: tuple[type[nn.Module], ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
_BN_MODULES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.SyncBatchNorm, _NetvisBatchNorm2d)
_GLOBAL_MODULES: tuple[type[nn.Module], ...] = (
    nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.Softmax, nn.LogSoftmax, nn.Unflatten,
)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with netvis's batch-norm layers kept whole (one ``call_module`` node each)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (_NetvisBatchNorm1d, _NetvisBatchNorm2d)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


def _method(name: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, name)(*args, **kwargs)

    call.__name__ = name
    return call


def _get_attr(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


# ----------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------


@dataclass
class Local:
    """A windowed operation along height and width (a convolution, a pooling, a strided subsampling).

    ``run`` maps a crop of the input, already padded on all sides (``pad_before``/``pad_after``,
    filled with ``pad_value``), to the output pixels whose windows lie in the crop.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad_before: tuple[int, int]
    pad_after: tuple[int, int]
    pad_value: float
    run: Callable[[torch.Tensor], torch.Tensor]
    macs_per_pixel: int = 0


@dataclass
class Step:
    """One node of the traced graph, with the out-of-place callable that computes it."""

    node: torch.fx.Node
    op: str
    fn: Callable[..., Any] | None
    args: tuple
    kwargs: dict
    label: str
    kind: str = "const"
    local: Local | None = None
    linear_macs: int = 0
    inputs: list[torch.fx.Node] = field(default_factory=list)
    crop_consts: set[torch.fx.Node] = field(default_factory=set)


@dataclass
class Program:
    """A traced model ready for incremental evaluation.

    Attributes:
        steps: every node in execution order.
        values: each node's output on the clean images (the cache).
        dependent: the nodes whose value depends on the input image.
        regions: the dependent nodes whose value is an ``(N, C, H, W)`` map, with ``(C, H, W)``.
        input_node: the image placeholder.
        output: the graph's output structure (nodes inside).
        clean_output: the graph's output on the clean images.
    """

    steps: list[Step]
    values: dict[torch.fx.Node, Any]
    dependent: set[torch.fx.Node]
    regions: dict[torch.fx.Node, tuple[int, int, int]]
    input_node: torch.fx.Node
    output: Any
    clean_output: Any


def _nodes_in(value: Any) -> list[torch.fx.Node]:
    found: list[torch.fx.Node] = []
    torch.fx.node.map_arg(value, found.append)
    return found


def _bind(names: tuple[str, ...], defaults: dict[str, Any], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    value = tuple(value)
    return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))


def _out_of_place(node: torch.fx.Node, model: nn.Module) -> tuple[Callable[..., Any], tuple, dict, bool, str]:
    """The callable computing ``node`` without modifying its inputs, and whether the original mutates ``args[0]``."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if node.op == "call_module":
        module = model.get_submodule(node.target)
        label = f"{node.target} ({type(module).__name__})"
        if getattr(module, "inplace", False) is True:
            twin = copy.copy(module)  # shares parameters and buffers; only the flag differs
            twin.inplace = False
            return twin, args, kwargs, True, label
        return module, args, kwargs, False, label
    if node.op == "call_method":
        name = node.target
        label = f"Tensor.{name}"
        if name.endswith("_") and not name.startswith("_"):
            if not hasattr(torch.Tensor, name[:-1]):
                raise Unsupported(f"the in-place method Tensor.{name} has no out-of-place form")
            return _method(name[:-1]), args, kwargs, True, label
        return _method(name), args, kwargs, False, label
    fn = node.target
    label = _name(fn)
    if fn in _IN_PLACE_FUNCTIONS:
        return _IN_PLACE_FUNCTIONS[fn], args, kwargs, True, label
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        signature = None
    if signature is not None and "inplace" in signature.parameters:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            bound = None
        if bound is not None and bound.arguments.get("inplace", False) is True:
            bound.arguments["inplace"] = False
            return fn, tuple(bound.args), dict(bound.kwargs), True, label
    return fn, args, kwargs, False, label


def _is_view(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS
    )


def trace(model: nn.Module) -> torch.fx.Graph:
    """``torch.fx`` graph of ``model`` (in its current mode), netvis's BN layers kept as leaves."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: use batched re-inference
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        raise Unsupported(f"torch.fx cannot trace {type(model).__name__} ({type(exc).__name__}: {detail})") from exc


def _check_hooks(model: nn.Module) -> None:
    if _compat.has_global_forward_hooks():
        raise Unsupported("global forward hooks are registered (the engine does not call every module)")
    for name, m in model.named_modules():
        if _compat.has_forward_hooks(m):
            raise Unsupported(f"module {name or '<model>'!r} has forward hooks (the engine does not call every module)")


def build_program(model: nn.Module, x: torch.Tensor) -> Program:
    """Trace ``model``, run the clean images ``x`` through the graph and classify every node.

    The caller provides the context: eval mode, no gradients (:func:`netvis.hooks.eval_session`).

    Raises:
        Unsupported: the model cannot be traced, has forward hooks, or mutates views in place.
    """
    _check_hooks(model)
    graph = trace(model)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        raise Unsupported("the traced graph has no input")
    input_node = placeholders[0]
    for extra in placeholders[1:]:
        if not extra.args:
            raise Unsupported(f"forward takes a second required argument ({extra.target!r})")

    alias: dict[torch.fx.Node, torch.fx.Node] = {}

    def resolve(value: Any) -> Any:
        def one(n: torch.fx.Node) -> torch.fx.Node:
            while n in alias:
                n = alias[n]
            return n

        return torch.fx.node.map_arg(value, one)

    steps: list[Step] = []
    output: Any = None
    for node in graph.nodes:
        if node.op == "placeholder":
            steps.append(Step(node, "placeholder", None, tuple(node.args), {}, f"input {node.target}"))
        elif node.op == "get_attr":
            steps.append(Step(node, "get_attr", None, (), {}, f"attribute {node.target}"))
        elif node.op == "output":
            output = resolve(node.args[0])
        else:
            fn, args, kwargs, mutates, label = _out_of_place(node, model)
            args, kwargs = resolve(args), resolve(kwargs)
            step = Step(node, node.op, fn, args, kwargs, label)
            step.inputs = _nodes_in((args, kwargs))
            if mutates and args and isinstance(args[0], torch.fx.Node):
                target = args[0]
                if target.op == "get_attr" or _is_view(target) or any(_is_view(u) for u in target.users):
                    raise Unsupported(f"{label} modifies a tensor in place that shares memory with another")
                alias[target] = node  # later readers of the mutated tensor read this node's output
            steps.append(step)
            if isinstance(fn, nn.Linear):  # a call_module node
                step.linear_macs = fn.in_features * fn.out_features

    # clean pass
    values: dict[torch.fx.Node, Any] = {}
    dependent: set[torch.fx.Node] = set()

    def lookup(value: Any) -> Any:
        return torch.fx.node.map_arg(value, lambda n: values[n])

    for step in steps:
        node = step.node
        if step.op == "placeholder":
            if node is input_node:
                values[node] = x
                dependent.add(node)
            else:
                values[node] = step.args[0]
        elif step.op == "get_attr":
            values[node] = _get_attr(model, node.target)
        else:
            values[node] = step.fn(*lookup(step.args), **lookup(step.kwargs))
            if any(n in dependent for n in step.inputs):
                dependent.add(node)
    clean_output = lookup(output)

    n = x.shape[0]
    regions = {
        node: tuple(values[node].shape[1:])
        for node in dependent
        if isinstance(values[node], torch.Tensor) and values[node].dim() == 4 and values[node].shape[0] == n
    }
    program = Program(steps, values, dependent, regions, input_node, output, clean_output)
    for step in steps:
        _classify(step, program)
    return program


# ----------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------


def _spatial_const(value: Any) -> bool:
    """A position-independent tensor that varies along height or width (so it must be cropped too)."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return False
    return value.shape[-1] != 1 or (value.dim() >= 2 and value.shape[-2] != 1)


def _classify(step: Step, program: Program) -> None:
    node = step.node
    if step.op == "placeholder":
        step.kind = "input" if node is program.input_node else "const"
        return
    if node not in program.dependent:
        step.kind = "const"
        return
    region_inputs = [n for n in step.inputs if n in program.regions]
    if not region_inputs:
        step.kind = "dense"
        return
    if _shape_query(step):
        step.kind = "shape"
        return
    out_is_region = node in program.regions
    sizes = {program.regions[n][1:] for n in region_inputs}
    if _elementwise(step, program):
        if not out_is_region or len(sizes) != 1 or program.regions[node][1:] != next(iter(sizes)):
            step.kind = "global"  # e.g. a broadcast against a smaller map: run it on whole maps
            return
        for n in step.inputs:
            if n in program.dependent and n not in program.regions:
                if isinstance(program.values[n], torch.Tensor):
                    step.kind = "global"  # a per-position tensor (e.g. a gate): everything changes
                    return
            elif n not in program.dependent and _broadcasts(step) and _spatial_const(program.values[n]):
                value = program.values[n]
                ok = tuple(value.shape[-2:]) == program.regions[node][1:] and value.dim() <= 4 and (
                    value.dim() < 4 or value.shape[0] == 1
                )
                if not ok:
                    step.kind = "unknown"
                    step.label += " (with a constant tensor that varies over the map)"
                    return
                step.crop_consts.add(n)  # read on each position's box, like the maps
        step.kind = "elementwise"
        return
    local = _local(step, program)
    if local is not None:
        if not out_is_region or len(region_inputs) != 1 or step.inputs[0] is not region_inputs[0]:
            step.kind = "unknown"
            return
        step.kind = "local"
        step.local = local
        return
    if _global(step):
        step.kind = "global"
        return
    step.kind = "unknown"


def _broadcasts(step: Step) -> bool:
    """Whether the step's tensor arguments broadcast against each other (not parameters like BN's statistics)."""
    return not (step.op == "call_function" and step.fn in _PARAMETER_FUNCTIONS) and step.op != "call_module"


def _shape_query(step: Step) -> bool:
    if step.op == "call_method":
        return step.node.target in _SHAPE_METHODS
    return step.op == "call_function" and step.fn is builtins.getattr and step.args[1] in _SHAPE_ATTRIBUTES


def _elementwise(step: Step, program: Program) -> bool:
    if step.op == "call_module":
        module = step.fn
        if isinstance(module, _ELEMENTWISE_MODULES):
            return True
        if isinstance(module, _DROPOUT_MODULES):
            return not module.training
        if isinstance(module, _BN_MODULES):
            return (not module.training) and getattr(module, "running_mean", None) is not None
        return False
    if step.op == "call_method":
        name = step.fn.__name__
        return name in _ELEMENTWISE_METHODS
    fn = step.fn
    if fn in _ELEMENTWISE_FUNCTIONS:
        return True
    if fn in _DROPOUT_FUNCTIONS:
        bound = _bind(("input", "p", "training", "inplace"), {"p": 0.5, "training": True}, step.args, step.kwargs)
        return bound["training"] is False or bound["p"] == 0
    if fn is F.batch_norm:
        bound = _bind(
            ("input", "running_mean", "running_var", "weight", "bias", "training"),
            {"training": False},
            step.args,
            step.kwargs,
        )
        return bound["training"] is False and bound["running_mean"] is not None
    if fn in _CAT_FUNCTIONS:
        bound = _bind(("tensors", "dim"), {"dim": 0}, step.args, step.kwargs)
        return bound["dim"] in (1, -3) and all(n in program.regions for n in _nodes_in(bound["tensors"]))
    if fn is F.pad:
        bound = _bind(("input", "pad", "mode", "value"), {"mode": "constant"}, step.args, step.kwargs)
        pad = bound["pad"]
        return (
            bound["mode"] == "constant" and isinstance(pad, (list, tuple)) and len(pad) >= 4
            and all(isinstance(p, int) and p == 0 for p in pad[:4])
        )
    if fn is operator.getitem:
        index = step.args[1]
        if not isinstance(index, tuple) or len(index) > 4 or len(index) < 2 or index[0] != slice(None):
            return False
        channel = index[1]
        spatial = index[2:]
        return isinstance(channel, slice) and all(s == slice(None) for s in spatial)
    return False


def _local(step: Step, program: Program) -> Local | None:
    """The windowed operation ``step`` computes, or ``None`` when it is not one the engine handles exactly."""
    values = program.values
    src = step.inputs[0] if step.inputs else None
    if src is None or src not in program.regions or step.node not in program.regions:
        return None
    _, h_in, w_in = program.regions[src]
    c_out, h_out, w_out = program.regions[step.node]
    if step.op == "call_module":
        module = step.fn
        if type(module).forward is nn.Conv2d.forward and isinstance(module, nn.Conv2d):
            if module.padding_mode != "zeros":
                return None
            conv = {
                "weight": module.weight, "bias": module.bias, "stride": module.stride, "padding": module.padding,
                "dilation": module.dilation, "groups": module.groups,
            }
        elif type(module) is nn.MaxPool2d:
            if module.return_indices:
                return None
            return _pool("max", (module.kernel_size, module.stride, module.padding, module.dilation,
                                 module.ceil_mode), None, (h_in, w_in), (h_out, w_out))
        elif type(module) is nn.AvgPool2d:
            return _pool("avg", (module.kernel_size, module.stride, module.padding, 1, module.ceil_mode),
                         (module.count_include_pad, module.divisor_override), (h_in, w_in), (h_out, w_out))
        else:
            return None
    elif step.op == "call_function" and step.fn in _CONV_FUNCTIONS:
        bound = _bind(("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                      {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}, step.args, step.kwargs)
        if any(n in program.dependent for n in _nodes_in([bound[k] for k in ("weight", "bias")])):
            return None
        conv = {k: torch.fx.node.map_arg(bound[k], lambda n: values[n]) for k in
                ("weight", "bias", "stride", "padding", "dilation", "groups")}
    elif step.op == "call_function" and step.fn in _MAX_POOL_FUNCTIONS:
        bound = _bind(("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                      {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False},
                      step.args, step.kwargs)
        if bound["return_indices"]:
            return None
        stride = bound["stride"] if bound["stride"] not in (None, [], ()) else bound["kernel_size"]
        return _pool("max", (bound["kernel_size"], stride, bound["padding"], bound["dilation"], bound["ceil_mode"]),
                     None, (h_in, w_in), (h_out, w_out))
    elif step.op == "call_function" and step.fn in _AVG_POOL_FUNCTIONS:
        bound = _bind(("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override"),
                      {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                       "divisor_override": None}, step.args, step.kwargs)
        stride = bound["stride"] if bound["stride"] not in (None, [], ()) else bound["kernel_size"]
        return _pool("avg", (bound["kernel_size"], stride, bound["padding"], 1, bound["ceil_mode"]),
                     (bound["count_include_pad"], bound["divisor_override"]), (h_in, w_in), (h_out, w_out))
    elif step.op == "call_function" and step.fn is operator.getitem:
        index = step.args[1]
        if not isinstance(index, tuple) or len(index) != 4 or index[0] != slice(None) or index[1] != slice(None):
            return None
        steps_hw = []
        for s in index[2:]:
            if not isinstance(s, slice) or s.start not in (None, 0) or s.stop is not None:
                return None
            steps_hw.append(1 if s.step is None else int(s.step))
        stride = (steps_hw[0], steps_hw[1])

        def subsample(crop: torch.Tensor, stride: tuple[int, int] = stride) -> torch.Tensor:
            return crop[:, :, :: stride[0], :: stride[1]]

        return Local((1, 1), stride, (1, 1), (0, 0), (0, 0), 0.0, subsample)
    else:
        return None

    weight = conv["weight"]
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        return None
    kernel = (int(weight.shape[2]), int(weight.shape[3]))
    stride, dilation = _pair(conv["stride"]), _pair(conv["dilation"])
    padding = conv["padding"]
    if isinstance(padding, str):
        if padding == "valid":
            before = after = (0, 0)
        elif padding == "same":
            total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
            before = (total[0] // 2, total[1] // 2)
            after = (total[0] - before[0], total[1] - before[1])
        else:
            return None
    else:
        before = after = _pair(padding)
    bias, groups = conv["bias"], int(conv["groups"])

    def run(crop: torch.Tensor) -> torch.Tensor:
        return F.conv2d(crop, weight, bias, stride, 0, dilation, groups)

    macs = int(weight.shape[0]) * int(weight.shape[1]) * kernel[0] * kernel[1]
    local = Local(kernel, stride, dilation, before, after, 0.0, run, macs)
    return local if _consistent(local, (h_in, w_in), (h_out, w_out), ceil_mode=False) else None


def _pool(kind: str, geometry: tuple, avg_options: tuple | None, size_in: tuple[int, int],
          size_out: tuple[int, int]) -> Local | None:
    kernel_size, stride, padding, dilation, ceil_mode = geometry
    kernel, padding, dilation = _pair(kernel_size), _pair(padding), _pair(dilation)
    stride = _pair(stride) if stride not in (None, [], ()) else kernel
    local = Local(kernel, stride, dilation, padding, padding, -math.inf if kind == "max" else 0.0, lambda t: t)
    if not _consistent(local, size_in, size_out, ceil_mode=bool(ceil_mode)):
        return None
    if kind == "max":
        def run_max(crop: torch.Tensor) -> torch.Tensor:
            return F.max_pool2d(crop, kernel, stride, 0, dilation)

        local.run = run_max
        return local
    count_include_pad, divisor_override = avg_options
    floor_sizes = tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size_in, padding, dilation, kernel, stride, strict=True)
    )
    if floor_sizes != tuple(size_out):
        return None  # ceil_mode adds clipped windows whose divisor the crop would not reproduce
    if not count_include_pad and any(padding):
        return None

    def run_avg(crop: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(crop, kernel, stride, 0, False, True, divisor_override)

    local.run = run_avg
    return local


def _consistent(local: Local, size_in: tuple[int, int], size_out: tuple[int, int], *, ceil_mode: bool) -> bool:
    """Whether the output size the clean pass produced is the one the geometry predicts (else: do not touch)."""
    for dim in (0, 1):
        span = local.dilation[dim] * (local.kernel[dim] - 1)
        total = size_in[dim] + local.pad_before[dim] + local.pad_after[dim] - span - 1
        if total < 0:
            return False
        expected = total // local.stride[dim] + 1
        if ceil_mode:
            expected = -(-total // local.stride[dim]) + 1
            if (expected - 1) * local.stride[dim] >= size_in[dim] + local.pad_before[dim]:
                expected -= 1
        if expected != size_out[dim]:
            return False
    return True


def _global(step: Step) -> bool:
    if step.op == "call_module":
        return isinstance(step.fn, _GLOBAL_MODULES)
    if step.op == "call_method":
        return step.fn.__name__ in _GLOBAL_METHODS
    return step.fn in _GLOBAL_FUNCTIONS


# ----------------------------------------------------------------------------------------------------
# Regions
# ----------------------------------------------------------------------------------------------------


@dataclass
class Box:
    """For each of ``P`` window positions, the box ``[top, top + h) x [left, left + w)`` of an ``H x W`` map
    outside which the map equals the clean image's; one size ``h x w`` for all positions."""

    top: torch.Tensor
    left: torch.Tensor
    h: int
    w: int
    H: int
    W: int

    @property
    def full(self) -> bool:
        return self.h == self.H and self.w == self.W

    @staticmethod
    def whole(p: int, height: int, width: int) -> Box:
        zeros = torch.zeros(p, dtype=torch.long)
        return Box(zeros, zeros, height, width, height, width)

    def same_as(self, other: Box) -> bool:
        return self is other or (
            self.h == other.h and self.w == other.w and torch.equal(self.top, other.top)
            and torch.equal(self.left, other.left)
        )


@dataclass
class Crop:
    """Where a windowed operation reads its input, in the coordinates of the input padded by ``pads``."""

    top: torch.Tensor
    left: torch.Tensor
    h: int
    w: int
    pads: tuple[int, int, int, int]  # top, bottom, left, right
    value: float
    contains_input: bool


@dataclass
class Plan:
    """The boxes of every map for every window position, and the multiply-accumulate counts they imply."""

    boxes: dict[torch.fx.Node, Box]
    crops: dict[torch.fx.Node, Crop]
    same_box: dict[tuple[torch.fx.Node, torch.fx.Node], bool]
    macs_incremental: float
    macs_full: float

    @property
    def macs_fraction(self) -> float:
        return self.macs_incremental / self.macs_full if self.macs_full else 1.0


def _grow(a: torch.Tensor, h: int, n_out: int, k: int, s: int, d: int, pad: int,
          tau: float | None) -> tuple[torch.Tensor, int]:
    """Output box (start per position, size) of a windowed op whose changed input rows are ``[a, a + h)``."""
    span = (k - 1) * d
    lo = -torch.div(-(a + pad - span), s, rounding_mode="floor")  # ceil
    size = min(n_out, (h - 1 + span) // s + 1)
    if tau is not None:
        cap = max(1, math.ceil(tau * n_out))
        if size > cap:
            hi = torch.div(a + pad + h - 1, s, rounding_mode="floor")
            middle2 = lo.clamp(min=0) + hi.clamp(max=n_out - 1)
            start = torch.div(middle2 - (cap - 1), 2, rounding_mode="floor")
            return start.clamp(0, n_out - cap), cap
    return lo.clamp(0, n_out - size), size


def _union(boxes: list[Box], height: int, width: int) -> Box:
    if any(b.full for b in boxes):
        return Box.whole(len(boxes[0].top), height, width)
    first = boxes[0]
    if all(b.same_as(first) for b in boxes[1:]):
        return first
    top = torch.stack([b.top for b in boxes]).amin(0)
    left = torch.stack([b.left for b in boxes]).amin(0)
    bottom = torch.stack([b.top + b.h for b in boxes]).amax(0)
    right = torch.stack([b.left + b.w for b in boxes]).amax(0)
    h = min(height, int((bottom - top).max()))
    w = min(width, int((right - left).max()))
    return Box(top.clamp(max=height - h), left.clamp(max=width - w), h, w, height, width)


def plan_regions(program: Program, tops: torch.Tensor, lefts: torch.Tensor, window: tuple[int, int],
                 tau: float | None = None) -> Plan:
    """Boxes of every map for windows ``window`` at ``(tops[p], lefts[p])`` (CPU ``long`` tensors).

    With ``tau`` (projective-field thresholding), a windowed layer's box is cut to at most
    ``ceil(tau * size)`` rows and columns around the middle of the exact one; outside it the layer's
    output is taken from the clean image although it may have changed.

    Raises:
        Unsupported: an operation of kind ``unknown`` reads a partly changed map.
    """
    boxes: dict[torch.fx.Node, Box] = {}
    crops: dict[torch.fx.Node, Crop] = {}
    same: dict[tuple[torch.fx.Node, torch.fx.Node], bool] = {}
    p = len(tops)
    macs_inc = macs_full = 0.0
    for step in program.steps:
        node = step.node
        if step.kind == "const":
            continue
        shape = program.regions.get(node)
        if step.kind == "input":
            _, height, width = shape
            boxes[node] = Box(tops, lefts, window[0], window[1], height, width)
            continue
        macs_inc += step.linear_macs
        macs_full += step.linear_macs
        if step.kind == "unknown":
            partial = [n for n in step.inputs if n in boxes and not boxes[n].full]
            if partial:
                raise Unsupported(f"the engine does not know how {step.label} acts on a part of a feature map")
        if shape is None:
            continue
        _, height, width = shape
        if step.kind == "elementwise":
            ins = [boxes[n] for n in step.inputs if n in program.regions]
            box = _union(ins, height, width)
            boxes[node] = box
            for n in step.inputs:
                if n in program.regions:
                    same[(node, n)] = boxes[n].same_as(box)
        elif step.kind == "local":
            local = step.local
            src = boxes[step.inputs[0]]
            _, h_in, w_in = program.regions[step.inputs[0]]
            top, h = _grow(src.top, src.h, height, local.kernel[0], local.stride[0], local.dilation[0],
                           local.pad_before[0], tau)
            left, w = _grow(src.left, src.w, width, local.kernel[1], local.stride[1], local.dilation[1],
                            local.pad_before[1], tau)
            box = Box.whole(p, height, width) if (h == height and w == width) else Box(top, left, h, w, height, width)
            boxes[node] = box
            span_h = local.dilation[0] * (local.kernel[0] - 1)
            span_w = local.dilation[1] * (local.kernel[1] - 1)
            crop_h = (box.h - 1) * local.stride[0] + span_h + 1
            crop_w = (box.w - 1) * local.stride[1] + span_w + 1
            after_h = max(local.pad_after[0], (height - 1) * local.stride[0] + span_h + 1 - h_in - local.pad_before[0])
            after_w = max(local.pad_after[1], (width - 1) * local.stride[1] + span_w + 1 - w_in - local.pad_before[1])
            crop_top, crop_left = box.top * local.stride[0], box.left * local.stride[1]
            in_top, in_left = src.top + local.pad_before[0], src.left + local.pad_before[1]
            contains = bool(
                ((in_top >= crop_top) & (in_top + src.h <= crop_top + crop_h)
                 & (in_left >= crop_left) & (in_left + src.w <= crop_left + crop_w)).all()
            )
            crops[node] = Crop(crop_top, crop_left, crop_h, crop_w,
                               (local.pad_before[0], after_h, local.pad_before[1], after_w), local.pad_value,
                               contains)
            macs_inc += local.macs_per_pixel * box.h * box.w
            macs_full += local.macs_per_pixel * height * width
        else:  # global, dense, unknown on whole maps: a whole new map per position
            boxes[node] = Box.whole(p, height, width)
    return Plan(boxes, crops, same, macs_inc, macs_full)
