"""Model registry: ``create(name, **options)`` and ``list_models()``.

The table below is explicit (no import-time registration side effects): each name maps to the module
and builder that make it. Builders take keyword-only options; :func:`create` checks the options
against the builder's signature and the model class it returns so that a typo gets a clear error.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable

from torch import nn

_RESNET = "netvis.models.resnet"
_PLAIN = "netvis.models.plain"
_DENSENET = "netvis.models.densenet"

_TABLE: dict[str, tuple[str, str]] = {
    # ImageNet-style ResNets (torchvision-compatible state dicts)
    "resnet18": (_RESNET, "resnet18"),
    "resnet34": (_RESNET, "resnet34"),
    "resnet50": (_RESNET, "resnet50"),
    "resnet101": (_RESNET, "resnet101"),
    "resnet152": (_RESNET, "resnet152"),
    # CIFAR-style ResNets (6n+2 layers) and their plain twins
    "resnet20_cifar": (_RESNET, "resnet20_cifar"),
    "resnet32_cifar": (_RESNET, "resnet32_cifar"),
    "resnet44_cifar": (_RESNET, "resnet44_cifar"),
    "resnet56_cifar": (_RESNET, "resnet56_cifar"),
    "resnet110_cifar": (_RESNET, "resnet110_cifar"),
    "plain18": (_PLAIN, "plain18"),
    "plain34": (_PLAIN, "plain34"),
    "plain20_cifar": (_PLAIN, "plain20_cifar"),
    "plain32_cifar": (_PLAIN, "plain32_cifar"),
    "plain44_cifar": (_PLAIN, "plain44_cifar"),
    "plain56_cifar": (_PLAIN, "plain56_cifar"),
    # DenseNets
    "densenet121": (_DENSENET, "densenet121"),
    "densenet169": (_DENSENET, "densenet169"),
    "densenet201": (_DENSENET, "densenet201"),
    "densenet264": (_DENSENET, "densenet264"),
    "densenet_bc_100": (_DENSENET, "densenet_bc_100"),
}


# Constructor parameters that a named builder fixes itself: not options of ``create``.
_FIXED_BY_BUILDER = frozenset({"block", "layers", "growth_rate", "block_config"})


def list_models() -> list[str]:
    """Return the names :func:`create` accepts, sorted."""
    return sorted(_TABLE)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """Return the builder function registered under ``name``.

    Raises:
        ValueError: ``name`` is not a known model; the message lists close matches.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    if key not in _TABLE:
        close = difflib.get_close_matches(key, _TABLE, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}"
        )
    module_name, attr = _TABLE[key]
    return getattr(importlib.import_module(module_name), attr)


def _accepted_options(builder: Callable[..., nn.Module]) -> set[str] | None:
    """Option names ``builder`` accepts, or ``None`` when they cannot be known.

    A builder that forwards ``**options`` to its model class (read from its return annotation)
    accepts the class constructor's keyword parameters too.
    """
    params = list(inspect.signature(builder).parameters.values())
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names
    try:
        cls = typing.get_type_hints(builder).get("return")
    except Exception:  # unresolvable annotation: accept what the builder accepts
        return None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None
    init = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in init):
        return None
    init_names = {p.name for p in init if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names | (init_names - _FIXED_BY_BUILDER)


def create(name: str, **options) -> nn.Module:
    """Build a netvis model by name.

    Args:
        name: a name from :func:`list_models` (``"resnet18"``, ``"densenet121"``, ``"resnet20_cifar"``, ...).
        **options: the builder's keyword-only options, e.g. ``num_classes``, ``in_channels``,
            ``norm_layer`` (``"torch"``, ``"netvis"`` or ``"none"``), and per family ``variant``,
            ``preact``, ``stem``, ``memory_efficient``.

    Returns:
        The model, freshly initialised, in training mode. Defaults equal torchvision's (1000 classes,
        3 input channels, ImageNet stem, ResNet v1.5), so torchvision's state dicts load as they are.

    Raises:
        ValueError: unknown model name (with close matches) or an option the model does not support.

    Example:
        >>> from netvis.models import create
        >>> model = create("resnet18", num_classes=10, in_channels=1, stem="cifar")
        >>> model.num_classes
        10
    """
    builder = get_builder(name)
    accepted = _accepted_options(builder)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"model {name!r} does not support option(s) {', '.join(map(repr, unknown))}; "
                f"supported options: {', '.join(sorted(accepted))}"
            )
    return builder(**options)
