r"""The saliency methods as a typed registry: one entry per method, the single table the applications read.

A :class:`Method` holds everything a program needs to offer a method without knowing it:

* ``name`` (the command-line name, e.g. ``"grad-cam"``), ``title`` and ``paper``;
* ``function`` -- ``function(model, x, target=None, **options) -> Tensor``;
* ``output`` -- what the map is (:data:`OutputKind`): ``"per-channel"`` ``(N, C, H, W)`` like the image,
  ``"per-pixel"`` ``(N, H, W)``, or ``"score-grid"`` ``(N, H', W')`` (one value per window position or
  feature-map cell, coarser than the image); a callable of the options where an option changes it;
* ``options`` -- the keyword options as :class:`Option`\ s (type, default, range, help), and ``typed`` --
  the same options as a ``TypedDict`` for type checkers;
* what it supports: ``precisions`` (``"fp32"``, ``"bf16"``), ``batch_size`` (``"native"``: the function
  batches its own forward passes; ``"chunked"``: the registry splits the images into chunks of
  ``batch_size``), ``devices``;
* ``figure_options`` -- the options the applications use for figures (occlusion as a score *drop*
  upsampled to the image), and ``lecture`` -- whether the lecture's report shows it;
* :meth:`Method.display` -- the one reduction of a map to a 2-D ``(N, H, W)`` image for figures.

Calling a :class:`Method` checks every option first (a ``ValueError`` that names the method and the option),
accepts ``batch_size=`` and ``precision=`` for every method (a method that cannot run in a precision says
so), and checks that the map has the declared shape.

The command line's ``--method`` choices and option flags, the viewer's method list, the report's saliency
figure and the experiments' method lists are generated from :func:`methods`; adding a method is one call:

>>> import torch
>>> from netvis.saliency import methods as registry
>>> def input_times_gradient(model, x, target=None, *, precision="fp32"):
...     from netvis.saliency import gradient
...     return x * gradient(model, x, target, abs=False, precision=precision)
>>> toy = registry.Method(name="input-x-gradient", function=input_times_gradient, output="per-channel",
...                       title="input x gradient", paper="Shrikumar et al. 2016", precisions=("fp32", "bf16"))
>>> with registry.registered(toy):
...     "input-x-gradient" in registry.names()
True
>>> "input-x-gradient" in registry.names()
False
"""

from __future__ import annotations

import builtins
import numbers
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypedDict, cast

import torch
from torch import nn

from netvis._checks import is_int
from netvis.saliency._common import PRECISIONS, TargetLike
from netvis.saliency.cam import grad_cam, guided_grad_cam
from netvis.saliency.gradient import gradient, integrated_gradients, smoothgrad
from netvis.saliency.guided import deconvnet, guided_backprop
from netvis.saliency.occlusion import occlusion

__all__ = [
    "METHODS",
    "BatchSizeSupport",
    "Method",
    "Option",
    "OutputKind",
    "get",
    "methods",
    "names",
    "register",
    "registered",
    "unregister",
]

OutputKind = Literal["per-pixel", "per-channel", "score-grid"]
"""``"per-channel"``: ``(N, C, H, W)``, one value per pixel and input channel; ``"per-pixel"``: ``(N, H, W)``;
``"score-grid"``: ``(N, H', W')``, one value per window position or feature-map cell."""

OUTPUT_KINDS: tuple[str, ...] = ("per-pixel", "per-channel", "score-grid")

BatchSizeSupport = Literal["native", "chunked"]
"""``"native"``: ``batch_size`` is the function's own option (forward passes of at most that many rows);
``"chunked"``: the registry runs the function on chunks of ``batch_size`` images and concatenates."""

_OPTION_TYPES = (bool, int, float, str)


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One keyword option of a method.

    Attributes:
        name: the keyword (``window``); the command-line flag is ``--`` + ``flag`` or the name with dashes.
        type: ``bool``, ``int``, ``float`` or ``str``; ``float`` accepts ints too, ``int`` never ``bool``.
        default: the function's default.
        help: one line for ``--help`` and the viewer's forms.
        choices: the allowed values (for ``str`` options).
        minimum: the smallest allowed value (numbers).
        nullable: ``None`` is allowed (it means what the function documents, e.g. "the default layer").
        pair: a pair of values ``(a, b)`` is allowed besides one value (window and stride sizes).
        extra: further accepted Python types, passed on unchecked (a ``torch.Tensor`` fill, an
            ``nn.Module`` layer, a ``torch.Generator``); never offered on the command line.
        cli: offered as a command-line flag (scalar options only).
        flag: the flag's name when it is not the option's (``generator`` -> ``seed``).
    """

    name: str
    type: builtins.type
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    nullable: bool = False
    pair: bool = False
    extra: tuple[builtins.type, ...] = ()
    cli: bool = True
    flag: str | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} is not a Python identifier")
        if self.type not in _OPTION_TYPES:
            raise ValueError(f"option {self.name!r}: type must be one of bool, int, float, str; got {self.type!r}")

    @property
    def cli_flag(self) -> str:
        """The command-line flag without dashes, e.g. ``batch-size``."""
        return (self.flag or self.name).replace("_", "-")

    def describe(self) -> str:
        """What values are allowed, in words (used in error messages)."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {bool: "a bool", int: "an int", float: "a number", str: "a string"}[self.type]
            if self.minimum is not None:
                text += f" >= {self.minimum:g}"
            if self.pair:
                text += " or a pair of them"
        if self.extra:
            text += " or a " + " or a ".join(t.__name__ for t in self.extra)
        if self.nullable:
            text += " or None"
        return text

    def check(self, value: Any, method: str) -> Any:
        """``value`` if it is allowed, else a ``ValueError`` naming the method, the option and the values allowed."""
        if value is None:
            if self.nullable:
                return None
        elif self.extra and isinstance(value, self.extra):
            return value
        elif self.pair and isinstance(value, (tuple, list)):
            if len(value) == 2 and all(self._scalar_ok(v) for v in value):
                return tuple(value)
        elif self._scalar_ok(value):
            return value
        raise ValueError(f"{method}: option {self.name!r} must be {self.describe()}, got {value!r}")

    def _scalar_ok(self, value: Any) -> bool:
        if self.type is bool:
            ok = isinstance(value, bool)
        elif self.type is int:
            ok = is_int(value)
        elif self.type is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.minimum is not None and self.type in (int, float):
            ok = value >= self.minimum
        return ok


def _batch_size_option(default: int | None, native: bool) -> Option:
    return Option("batch_size", int, default, "the most images (occluded images, noisy copies, path points) per "
                  "forward pass", minimum=1, nullable=not native)


_PRECISION = Option("precision", str, "fp32", "fp32, or bf16: the forward passes under bfloat16 autocast",
                    choices=PRECISIONS)


# --------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """A saliency method and everything an application needs to offer it (see the module docstring).

    Attributes:
        name: the command-line name (lowercase, dashes).
        function: ``function(model, x, target=None, **options) -> Tensor``.
        output: the :data:`OutputKind` of the map, or a callable ``options -> OutputKind`` where an option
            changes it (``gradient(reduce="max")`` is per-pixel, ``occlusion(upsample=True)`` too).
        title: the name shown in figures.
        paper: the reference.
        options: the keyword options, without ``batch_size`` and ``precision`` (see :attr:`all_options`).
        typed: a ``TypedDict`` of all options (for type checkers); ``None`` for none.
        precisions: the precisions the function runs in; ``"fp32"`` only means the function has no
            ``precision`` option and the registry refuses any other.
        batch_size: ``"native"`` or ``"chunked"`` (:data:`BatchSizeSupport`).
        batch_size_default: the default of a native ``batch_size``.
        devices: the device types the method is tested on; others are refused.
        figure_options: the options the applications use for figures and overlays.
        lecture: shown in the lecture's report (``netvis report``, ``netvis demo``).
        reduce: a custom 2-D reduction for :meth:`display` (default: by the output kind).
    """

    name: str
    function: Callable[..., torch.Tensor]
    output: OutputKind | Callable[[Mapping[str, Any]], OutputKind]
    title: str = ""
    paper: str = ""
    options: tuple[Option, ...] = ()
    typed: builtins.type | None = None
    precisions: tuple[str, ...] = ("fp32",)
    batch_size: BatchSizeSupport = "chunked"
    batch_size_default: int | None = None
    devices: tuple[str, ...] = ("cpu", "cuda")
    figure_options: Mapping[str, Any] = field(default_factory=dict)
    lecture: bool = False
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise ValueError(f"a method name is lowercase without spaces (use dashes), got {self.name!r}")
        if not callable(self.function):
            raise TypeError(f"method {self.name!r}: function must be callable, got {type(self.function).__name__}")
        if not callable(self.output) and self.output not in OUTPUT_KINDS:
            raise ValueError(f"method {self.name!r}: output must be one of {', '.join(OUTPUT_KINDS)}, "
                             f"got {self.output!r}")
        if "fp32" not in self.precisions or any(p not in PRECISIONS for p in self.precisions):
            raise ValueError(f"method {self.name!r}: precisions must include 'fp32' and come from {PRECISIONS}")
        if self.batch_size not in ("native", "chunked"):
            raise ValueError(f"method {self.name!r}: batch_size must be 'native' or 'chunked', got {self.batch_size!r}")
        seen = set()
        for option in self.options:
            if option.name in seen or option.name in ("batch_size", "precision"):
                raise ValueError(f"method {self.name!r}: option {option.name!r} is declared twice "
                                 "(batch_size and precision come from the support fields)")
            seen.add(option.name)
        for key in self.figure_options:
            if key not in seen:
                raise ValueError(f"method {self.name!r}: figure option {key!r} is not one of its options")
        object.__setattr__(self, "figure_options", MappingProxyType(dict(self.figure_options)))
        if not self.title:
            object.__setattr__(self, "title", self.name)

    # -- options ---------------------------------------------------------------------------------------

    @property
    def all_options(self) -> tuple[Option, ...]:
        """:attr:`options` plus ``batch_size`` and ``precision``, which every method accepts."""
        return (*self.options, _batch_size_option(self.batch_size_default, self.batch_size == "native"),
                _PRECISION)

    def option(self, name: str) -> Option:
        """The option ``name``; ``KeyError`` naming the method's options when there is none."""
        for option in self.all_options:
            if option.name == name:
                return option
        raise KeyError(f"{self.name} has no option {name!r}; its options: {', '.join(self.option_names())}")

    def option_names(self) -> list[str]:
        return [option.name for option in self.all_options]

    def defaults(self) -> dict[str, Any]:
        """Every option's default."""
        return {option.name: option.default for option in self.all_options}

    def select(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``values`` that are options of this method and not ``None`` (an application's
        settings, shared by all methods, narrowed to one)."""
        names = set(self.option_names())
        return {key: value for key, value in values.items() if key in names and value is not None}

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` checked: unknown names, wrong types, values out of range, an unsupported precision.

        Raises:
            ValueError: naming the method and the option.
        """
        known = {option.name: option for option in self.all_options}
        checked: dict[str, Any] = {}
        for key, value in options.items():
            if key not in known:
                raise ValueError(f"{self.name} has no option {key!r}; its options: {', '.join(known)}")
            checked[key] = known[key].check(value, self.name)
        precision = checked.get("precision", "fp32")
        if precision not in self.precisions:
            raise ValueError(f"{self.name} supports precision {' or '.join(map(repr, self.precisions))} only, "
                             f"got precision={precision!r}")
        return checked

    def output_kind(self, options: Mapping[str, Any] | None = None) -> OutputKind:
        """The kind of map a call with ``options`` returns (defaults filled in)."""
        if callable(self.output):
            return self.output({**self.defaults(), **(options or {})})
        return self.output

    # -- running ---------------------------------------------------------------------------------------

    def __call__(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None, **options: Any) -> torch.Tensor:
        """Run the method: ``function(model, x, target, **options)`` after checking the options.

        ``batch_size`` and ``precision`` are accepted for every method: a native option is passed on; a
        ``"chunked"`` batch size splits the images; ``precision="fp32"`` is dropped for a method without the
        option, any other precision refused.

        Returns:
            The map, shaped as :meth:`output_kind` says.

        Raises:
            ValueError: a bad option (naming it), an unsupported precision or device.
            RuntimeError: the function returned a map of another shape than declared.
        """
        checked = self.check_options(options)
        if isinstance(x, torch.Tensor) and x.device.type not in self.devices:
            raise ValueError(f"{self.name} runs on {', '.join(self.devices)} devices; the images are on {x.device}")
        if "precision" not in self._function_parameters():
            checked.pop("precision", None)
        batch_size = checked.pop("batch_size", None) if self.batch_size == "chunked" else None
        if batch_size is None or not isinstance(x, torch.Tensor) or batch_size >= x.shape[0]:
            result = self.function(model, x, target, **checked)
        else:
            n = x.shape[0]
            parts = [self.function(model, x[start:start + batch_size],
                                   _target_rows(target, start, min(start + batch_size, n), n), **checked)
                     for start in range(0, n, batch_size)]
            result = torch.cat(parts)
        if isinstance(x, torch.Tensor):
            self._check_shape(result, x, checked)
        return result

    def _function_parameters(self) -> set[str]:
        return {option.name for option in self.options} | (
            {"precision"} if len(self.precisions) > 1 else set()) | (
            {"batch_size"} if self.batch_size == "native" else set())

    def _check_shape(self, result: torch.Tensor, x: torch.Tensor, options: Mapping[str, Any]) -> None:
        kind = self.output_kind(options)
        n, c, h, w = x.shape
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        ok = shape is not None and (
            (kind == "per-channel" and shape == (n, c, h, w))
            or (kind == "per-pixel" and shape == (n, h, w))
            or (kind == "score-grid" and len(shape) == 3 and shape[0] == n)
        )
        if not ok:
            raise RuntimeError(f"{self.name} declares {kind} maps but returned "
                               f"{'shape ' + str(shape) if shape is not None else type(result).__name__} "
                               f"for images {tuple(x.shape)}")

    def display(self, result: torch.Tensor) -> torch.Tensor:
        """The map as a 2-D image per input, ``(N, H, W)`` (or ``(H, W)`` for one map without the batch).

        Per-channel maps are reduced by the largest absolute value over the channels (as Simonyan et al.
        do for gradients); per-pixel maps and score grids are returned as they are (signed, NaN kept where
        a method has no evidence). A method's own ``reduce`` replaces this.
        """
        if self.reduce is not None:
            return self.reduce(result)
        if result.dim() == 4:
            return result.abs().amax(dim=1)
        if result.dim() in (2, 3):
            return result
        raise ValueError(f"{self.name}: a map is (N, C, H, W), (N, H, W) or (H, W); got shape {tuple(result.shape)}")


def _target_rows(target: TargetLike, start: int, stop: int, n: int) -> TargetLike:
    """The part of ``target`` for images ``start:stop`` of ``n``: one class or a callable for all, else a slice."""
    if target is None or isinstance(target, numbers.Integral) or callable(target):
        return target
    if getattr(target, "ndim", 1) == 0:  # a 0-d tensor or array: one class
        return target
    if not isinstance(target, Sequence) and not hasattr(target, "__getitem__"):
        return target  # not a per-image target; the function explains what is wrong with it
    rows = cast(Any, target)
    if len(rows) != n:
        raise ValueError(f"target has {len(rows)} entries for {n} images")
    return rows[start:stop] if hasattr(rows, "shape") else list(rows)[start:stop]


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


class _Registry:
    """Name -> :class:`Method`, in registration order (the order the applications show them in)."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def register(self, method: Method, *, replace: bool = False) -> Method:
        if not isinstance(method, Method):
            raise TypeError(f"register takes a netvis.saliency.methods.Method, got {type(method).__name__}")
        if method.name in self._methods and not replace:
            raise ValueError(f"a saliency method {method.name!r} is registered already (pass replace=True)")
        for other in self._methods.values():
            if other.name == method.name:
                continue
            for option in method.all_options:
                mine = next((o for o in other.all_options if o.name == option.name), None)
                if mine is not None and (mine.type, mine.choices, mine.flag) != (option.type, option.choices,
                                                                                  option.flag):
                    raise ValueError(
                        f"option {option.name!r} of {method.name!r} differs from {other.name!r}'s in type, choices "
                        "or flag; the applications give one setting per option name, so use another name")
        self._methods[method.name] = method
        return method

    def unregister(self, name: str) -> Method:
        try:
            return self._methods.pop(name)
        except KeyError:
            raise KeyError(f"no saliency method {name!r} is registered") from None

    def get(self, name: str) -> Method:
        try:
            return self._methods[name]
        except KeyError:
            raise ValueError(f"unknown saliency method {name!r}; choose from {', '.join(self._methods)}") from None

    def names(self) -> list[str]:
        return list(self._methods)

    def methods(self) -> list[Method]:
        return list(self._methods.values())


_registry = _Registry()


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (after the others); returns it.

    Raises:
        ValueError: the name is taken (unless ``replace``), or an option shares its name with another
            method's option of another type, choices or flag.
    """
    return _registry.register(method, replace=replace)


def unregister(name: str) -> Method:
    """Remove the method ``name``; returns it. ``KeyError`` when there is none."""
    return _registry.unregister(name)


@contextmanager
def registered(*methods: Method) -> Iterator[None]:
    """Register ``methods`` for the ``with`` block, then restore the registry as it was (also on error)."""
    before = dict(_registry._methods)
    try:
        for method in methods:
            register(method, replace=True)
        yield
    finally:
        _registry._methods.clear()
        _registry._methods.update(before)


def get(name: str) -> Method:
    """The method ``name``; ``ValueError`` naming the registered ones when there is none."""
    return _registry.get(name)


def names() -> list[str]:
    """The registered names, in order."""
    return _registry.names()


def methods() -> list[Method]:
    """The registered methods, in order."""
    return _registry.methods()


class _Functions(MutableMapping):
    """:data:`METHODS`: a live ``name -> function`` view of the registry.

    Setting an entry replaces the function of that method (or registers a per-channel method with no
    declared options); deleting one unregisters it.
    """

    def __getitem__(self, name: str) -> Callable[..., torch.Tensor]:
        if name not in _registry._methods:
            raise KeyError(name)
        return _registry._methods[name].function

    def __setitem__(self, name: str, function: Callable[..., torch.Tensor]) -> None:
        current = _registry._methods.get(name)
        if current is not None:
            _registry._methods[name] = _replace_function(current, function)
        else:
            register(Method(name=name, function=function, output="per-channel"))

    def __delitem__(self, name: str) -> None:
        if name not in _registry._methods:
            raise KeyError(name)
        unregister(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(_registry._methods))

    def __len__(self) -> int:
        return len(_registry._methods)

    def __repr__(self) -> str:
        return f"METHODS({', '.join(_registry._methods)})"


def _replace_function(method: Method, function: Callable[..., torch.Tensor]) -> Method:
    fields = {name: getattr(method, name) for name in Method.__dataclass_fields__}
    fields["function"] = function
    fields["figure_options"] = dict(method.figure_options)
    return Method(**fields)


METHODS: MutableMapping[str, Callable[..., torch.Tensor]] = _Functions()
"""Command-line method names -> functions, all ``(model, x, target=None, **options)``: a live view of the registry."""


# --------------------------------------------------------------------------------------------------
# netvis's methods
# --------------------------------------------------------------------------------------------------

Precision = Literal["fp32", "bf16"]


class OcclusionOptions(TypedDict, total=False):
    window: int | tuple[int, int]
    stride: int | tuple[int, int] | None
    fill: str | float | torch.Tensor
    output: Literal["score", "drop"]
    upsample: bool
    progress: bool
    engine: Literal["auto", "batched", "incremental"]
    batch_size: int
    precision: Precision
    select: str | int | Callable[[Any], torch.Tensor] | None


class GradientOptions(TypedDict, total=False):
    abs: bool
    reduce: Literal["max", "sum"] | None
    batch_size: int | None
    precision: Precision
    select: str | int | Callable[[Any], torch.Tensor] | None


class GuidedOptions(TypedDict, total=False):
    batch_size: int | None
    precision: Precision
    select: str | int | Callable[[Any], torch.Tensor] | None


class SmoothGradOptions(TypedDict, total=False):
    n_samples: int
    noise_level: float
    abs: bool
    squared: bool
    reduce: Literal["max", "sum"] | None
    generator: int | torch.Generator | None
    batch_size: int
    precision: Precision
    select: str | int | Callable[[Any], torch.Tensor] | None


class IntegratedGradientsOptions(TypedDict, total=False):
    baseline: float | torch.Tensor
    steps: int
    method: Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
    batch_size: int
    precision: Precision
    select: str | int | Callable[[Any], torch.Tensor] | None


class GradCamOptions(TypedDict, total=False):
    layer: str | nn.Module | None
    relu: bool
    upsample: bool
    interpolation: Literal["bilinear", "nearest", "bicubic", "area"]
    batch_size: int | None
    precision: Literal["fp32"]
    select: str | int | Callable[[Any], torch.Tensor] | None
    reshape: str | Callable[[torch.Tensor], torch.Tensor]


class GuidedGradCamOptions(TypedDict, total=False):
    layer: str | nn.Module | None
    interpolation: Literal["bilinear", "nearest", "bicubic", "area"]
    batch_size: int | None
    precision: Literal["fp32"]
    select: str | int | Callable[[Any], torch.Tensor] | None
    reshape: str | Callable[[torch.Tensor], torch.Tensor]


_REDUCE = Option("reduce", str, None, "reduce the channels: max or sum (default: keep them)",
                 choices=("max", "sum"), nullable=True)
_LAYER = Option("layer", str, None, "the layer (dotted name; default the last convolutional stage)", nullable=True,
                extra=(nn.Module,))
_CALLABLE = cast(builtins.type, Callable)  # isinstance(f, Callable): any callable
_SELECT = Option("select", str, None, "which part of the model's output holds the scores: a key or attribute name, "
                 "a position or a callable (default: a tensor, or its logits/out entry)", nullable=True,
                 extra=(numbers.Integral, _CALLABLE), cli=False)
_RESHAPE = Option("reshape", str, "auto", "the layer output's layout: auto, nchw, nhwc, tokens or a callable",
                  choices=("auto", "nchw", "nhwc", "tokens"), extra=(_CALLABLE,), cli=False)
_INTERPOLATION = Option("interpolation", str, "bilinear", "how the Grad-CAM map is upsampled",
                        choices=("bilinear", "nearest", "bicubic", "area"))


def _reduced_or_channels(options: Mapping[str, Any]) -> OutputKind:
    return "per-pixel" if options.get("reduce") is not None else "per-channel"


register(Method(
    name="occlusion", function=occlusion, title="occlusion", typed=OcclusionOptions, lecture=True,
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    output=lambda o: "per-pixel" if o.get("upsample") else "score-grid",
    options=(
        Option("window", int, 8, "the occluding patch's size", minimum=1, pair=True),
        Option("stride", int, None, "the patch's step (default window // 2)", minimum=1, pair=True, nullable=True),
        Option("fill", str, "mean", "the patch's content: mean, channel_mean, a number or a tensor",
               choices=("mean", "channel_mean"), extra=(numbers.Real, torch.Tensor), cli=False),
        Option("output", str, "score", "score (the occluded score) or drop (clean minus occluded)",
               choices=("score", "drop"), cli=False),
        Option("upsample", bool, False, "average the windows covering each pixel into an image-sized map", cli=False),
        Option("progress", bool, False, "a progress bar over the forward passes", cli=False),
        Option("engine", str, "auto", "batched re-inference, the incremental engine, or auto",
               choices=("auto", "batched", "incremental")),
        _SELECT,
    ),
    precisions=("fp32", "bf16"), batch_size="native", batch_size_default=256,
    figure_options={"output": "drop", "upsample": True},
))
register(Method(
    name="gradient", function=gradient, title="gradient", typed=GradientOptions, lecture=True,
    paper="Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR workshop 2014",
    output=_reduced_or_channels,
    options=(Option("abs", bool, True, "take the absolute value of the gradient"), _REDUCE, _SELECT),
    precisions=("fp32", "bf16"),
))
register(Method(
    name="guided-backprop", function=guided_backprop, title="guided backprop", typed=GuidedOptions, lecture=True,
    paper="Springenberg et al., Striving for Simplicity: The All Convolutional Net, ICLR workshop 2015",
    output="per-channel", options=(_SELECT,), precisions=("fp32", "bf16"),
))
register(Method(
    name="deconvnet", function=deconvnet, title="deconvnet", typed=GuidedOptions,
    paper="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014",
    output="per-channel", options=(_SELECT,), precisions=("fp32", "bf16"),
))
register(Method(
    name="smoothgrad", function=smoothgrad, title="SmoothGrad", typed=SmoothGradOptions,
    paper="Smilkov et al., SmoothGrad: removing noise by adding noise, 2017",
    output=_reduced_or_channels,
    options=(
        Option("n_samples", int, 25, "noisy copies per image", minimum=1),
        Option("noise_level", float, 0.15, "noise standard deviation as a fraction of the image's range", minimum=0),
        Option("abs", bool, False, "average absolute gradients"),
        Option("squared", bool, False, "average squared gradients (SmoothGrad-Squared)"),
        _REDUCE,
        Option("generator", int, None, "seed of the noise (default: a fresh one)", nullable=True,
               extra=(torch.Generator,), flag="seed"),
        _SELECT,
    ),
    precisions=("fp32", "bf16"), batch_size="native", batch_size_default=64,
))
register(Method(
    name="integrated-gradients", function=integrated_gradients, title="integrated gradients",
    typed=IntegratedGradientsOptions,
    paper="Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017",
    output="per-channel",
    options=(
        Option("baseline", float, 0.0, "the path's start: a number or a tensor", extra=(torch.Tensor,)),
        Option("steps", int, 50, "points on the path", minimum=1),
        Option("method", str, "riemann_trapezoid", "the quadrature rule", flag="quadrature",
               choices=("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")),
        _SELECT,
    ),
    precisions=("fp32", "bf16"), batch_size="native", batch_size_default=64,
))
register(Method(
    name="grad-cam", function=grad_cam, title="Grad-CAM", typed=GradCamOptions, lecture=True,
    paper="Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks, ICCV 2017",
    output=lambda o: "per-pixel" if o.get("upsample", True) else "score-grid",
    options=(
        _LAYER,
        Option("relu", bool, True, "keep only the positive evidence (the paper's ReLU)"),
        Option("upsample", bool, True, "upsample the map to the image", cli=False),
        _INTERPOLATION,
        _RESHAPE,
        _SELECT,
    ),
))
register(Method(
    name="guided-grad-cam", function=guided_grad_cam, title="guided Grad-CAM", typed=GuidedGradCamOptions,
    paper="Selvaraju et al., Grad-CAM: Visual Explanations from Deep Networks, ICCV 2017",
    output="per-channel", options=(_LAYER, _INTERPOLATION, _RESHAPE, _SELECT),
))
