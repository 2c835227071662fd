"""Grad-CAM and guided Grad-CAM: class activation maps from a layer's gradients, for CNNs and transformers.

The layer may output a convolutional map ``(N, K, h, w)``, a channels-last map ``(N, h, w, K)`` (Swin
stages, the blocks of timm's ConvNeXt) or a token sequence ``(N, L, D)`` (ViT, DeiT: ``L`` = a few
class/register/distillation tokens followed by ``h * w`` patch tokens); :func:`layout` tells which from
the shape and the input size, and :func:`grad_cam` reshapes the last two to ``(N, K, h, w)``.
:func:`default_layer` finds the last such layer that the output depends on, position by position, by
tracing one forward and backward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from netvis.hooks import capture_activation, eval_session, record_calls, resolve_layer
from netvis.saliency._common import (
    Select,
    TargetLike,
    check_images,
    check_model,
    resolve_target,
    select_output,
)
from netvis.saliency.guided import guided_backprop

__all__ = ["Layout", "default_layer", "grad_cam", "guided_grad_cam", "layout", "to_grid"]

Interpolation = Literal["bilinear", "nearest", "bicubic", "area"]
Reshape = Literal["auto", "nchw", "nhwc", "tokens"] | Callable[[torch.Tensor], torch.Tensor]

MAX_PREFIX_TOKENS = 16
"""The most non-patch tokens (class, distillation, register tokens) a token sequence may start with."""

_PROBE_SIZES = (224, 64, 32)


@dataclass(frozen=True)
class Layout:
    """How a layer's output holds a spatial grid.

    Attributes:
        kind: ``"nchw"`` ``(N, K, h, w)``, ``"nhwc"`` ``(N, h, w, K)`` or ``"tokens"`` ``(N, prefix + h w, K)``.
        grid: ``(h, w)``.
        prefix: the tokens before the patch tokens (``"tokens"`` only; 0 otherwise).
    """

    kind: Literal["nchw", "nhwc", "tokens"]
    grid: tuple[int, int]
    prefix: int = 0


def _grid_fits(h: int, w: int, size: tuple[int, int], slack: float) -> bool:
    """Whether an ``h x w`` grid can be the input of size ``size`` downsampled by one common stride."""
    height, width = size
    if h < 1 or w < 1 or h > height or w > width or h * w < 2:
        return False
    stride = math.sqrt(height * width / (h * w))
    return abs(h - height / stride) <= slack and abs(w - width / stride) <= slack


def layout(t: Any, size: tuple[int, int], prefix: int | None = None) -> Layout | None:
    """Whether the tensor ``t`` is a spatial map of an input of size ``size = (H, W)``, and how.

    A 4-D ``(N, a, b, c)`` tensor is ``"nchw"`` when ``(b, c)`` is a grid of the input (at most ``H x W``,
    both sides downsampled by about the same stride, more than one position), else ``"nhwc"`` when
    ``(a, b)`` is. A 3-D ``(N, L, D)`` tensor is a ``"tokens"`` sequence when, for the smallest ``p`` in
    ``0..16`` (or the given ``prefix``), ``L - p = h w`` for a grid ``(h, w)`` of the input with
    ``H / h = W / w`` (the patch grid of a ViT: ``p = 1`` class token, ``2`` for DeiT's distillation
    token, ``1 + r`` with ``r`` register tokens).

    Args:
        t: a layer's output.
        size: the input's ``(H, W)``.
        prefix: the number of leading non-patch tokens when known (timm models: ``num_prefix_tokens``).

    Returns:
        A :class:`Layout`, or ``None`` when ``t`` is not a spatial map (e.g. pooled features, logits).
    """
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return None
    if t.dim() == 4:
        _, a, b, c = t.shape
        if _grid_fits(b, c, size, 1.5):
            return Layout("nchw", (b, c))
        if _grid_fits(a, b, size, 1.5):
            return Layout("nhwc", (a, b))
        return None
    if t.dim() == 3:
        length = t.shape[1]
        prefixes = [prefix] if prefix is not None else range(min(MAX_PREFIX_TOKENS, length - 2) + 1)
        for p in prefixes:
            cells = length - p
            if cells < 2:
                continue
            for h in range(1, cells + 1):
                if cells % h == 0 and _grid_fits(h, cells // h, size, 0.75):
                    return Layout("tokens", (h, cells // h), p)
    return None


def to_grid(t: torch.Tensor, where: Layout) -> torch.Tensor:
    """Reshape a layer's output (or its gradient) laid out as ``where`` to ``(N, K, h, w)``.

    Prefix tokens are dropped; patch tokens are read row by row (the order of ViT's patch embedding).
    """
    if where.kind == "nchw":
        return t
    if where.kind == "nhwc":
        return t.permute(0, 3, 1, 2)
    h, w = where.grid
    return t[:, where.prefix :].reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)


def _channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else 3


def _declared_size(model: nn.Module) -> tuple[int, int] | None:
    """The input size a model declares: torchvision ViT's ``image_size``, timm's ``pretrained_cfg``."""
    size = getattr(model, "image_size", None)
    if isinstance(size, int):
        return size, size
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and isinstance(cfg.get("input_size"), (tuple, list)):
            return int(cfg["input_size"][-2]), int(cfg["input_size"][-1])
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[0]), int(size[1])
    return None


class _ProbeFailed(Exception):
    """The model's forward pass raised on the probe input."""


@dataclass
class _Candidate:
    name: str
    module: nn.Module
    output: torch.Tensor
    where: Layout


def _resamples(module: nn.Module) -> bool:
    """Adaptive pooling to a fixed size (VGG's 7 x 7) resamples a map; it is not a feature map of its own."""
    kinds = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
    return isinstance(module, kinds) or "AdaptivePool" in type(module).__name__


def _spatial_candidates(
    model: nn.Module, x: torch.Tensor, select: Select
) -> tuple[list[_Candidate], list[torch.Tensor]]:
    """Trace ``model(x)``: every module called once whose output is a spatial map, and two scores.

    The first score is the sum of the (selected) outputs; the second, for models whose outputs depend on
    nothing (a zero-initialised head, as torchvision's ViT has before training), a fixed random projection
    of the input of the last leaf module that ran (the head's input).
    """
    prefix = getattr(model, "num_prefix_tokens", None)
    prefix = prefix if isinstance(prefix, int) else None
    xi = x.detach().clone().requires_grad_(True)
    with record_calls(model) as calls:
        try:
            outputs = model(xi.clone())
        except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as exc:
            raise _ProbeFailed(str(exc)) from exc
    scores = select_output(outputs, select, classes=True)
    if not isinstance(scores, torch.Tensor) or not scores.requires_grad:
        raise ValueError(
            f"{type(model).__name__}'s output does not depend on its input through autograd; pass layer="
        )
    counts: dict[int, int] = {}
    for _, module, _, _ in calls:
        counts[id(module)] = counts.get(id(module), 0) + 1
    # token sequences: only the residual stream (the shape of some block's output), not e.g. a fused qkv
    stream = {tuple(out.shape) for _, module, _, out in calls
              if isinstance(out, torch.Tensor) and any(True for _ in module.children())}
    found: list[_Candidate] = []
    size = (x.shape[2], x.shape[3])
    for name, module, _, output in calls:
        if counts[id(module)] != 1 or not isinstance(output, torch.Tensor) or output.shape[:1] != x.shape[:1]:
            continue
        where = layout(output, size, prefix)
        if where is None or not output.requires_grad or _resamples(module):
            continue
        if where.kind == "tokens" and tuple(output.shape) not in stream:
            continue
        found.append(_Candidate(name, module, output, where))
    found_scores = [scores.float().sum()]
    leaves = [inputs for _, module, inputs, _ in calls if not any(True for _ in module.children())]
    head_inputs = [t for t in (leaves[-1] if leaves else ()) if isinstance(t, torch.Tensor) and t.requires_grad]
    if head_inputs:
        gen = torch.Generator().manual_seed(0)
        found_scores.append(sum(
            (t.float() * torch.randn(t.shape, generator=gen).to(t.device)).sum() for t in head_inputs
        ))
    return found, found_scores


def _pick(candidates: list[_Candidate], score: torch.Tensor) -> _Candidate | None:
    """The last candidate whose patch positions the score depends on; among the modules returning that
    same tensor, the first to return it of those no other one encloses."""
    unique = list({id(c.output): c.output for c in candidates}.values())
    if not unique:
        return None
    grads = torch.autograd.grad(score, unique, allow_unused=True, retain_graph=True)
    by_tensor = {id(t): g for t, g in zip(unique, grads, strict=True)}
    for i in range(len(candidates) - 1, -1, -1):
        chosen = candidates[i]
        g = by_tensor[id(chosen.output)]
        if g is None or not bool(to_grid(g, chosen.where).ne(0).any()):
            continue
        same = [c for c in candidates if c.output is chosen.output]
        tops = [c for c in same if not any(o is not c and (o.name == "" or c.name.startswith(o.name + "."))
                                           for o in same)]
        return tops[0]
    return None


def default_layer(model: nn.Module, x: torch.Tensor | None = None, *, select: Select = None) -> str:
    """The dotted name of the Grad-CAM layer: the last spatial feature map the output depends on.

    One forward pass of ``x`` (or of a probe image, see below) with a hook on every module records each
    module's output, in the order the calls return; one backward pass of the sum of the (selected)
    outputs tells which of them the outputs depend on. The answer is the last module, called once, whose
    output is a spatial map of the input (:func:`layout`: ``(N, K, h, w)``, channels-last
    ``(N, h, w, K)`` or tokens ``(N, prefix + h w, D)`` shaped like some block's output, more than one
    position, not an adaptive pooling that resamples to a fixed size like VGG's) and whose patch
    positions carry a non-zero gradient. So modules the output does not use (auxiliary classifiers in
    train mode, segmentation models' ``aux_classifier``) are never chosen, nor is a ViT's final norm,
    whose patch tokens the class-token head ignores: for torchvision's ``vit_b_16`` the answer is
    ``"encoder.layers.encoder_layer_11.ln_1"``, the input of the last attention, the last place where
    patch tokens reach the class token. When several modules return the same tensor, enclosing
    containers win (``"layer4"`` rather than ``"layer4.1"`` for a ResNet), and of those the first to
    return it (a convolution rather than the in-place ReLU or ``nn.Identity`` after it). If the outputs
    depend on nothing (an all-zero head, as torchvision's ViT has before training), the input of the
    last module that ran (the head's input) is differentiated instead.

    The probe, when ``x`` is not given, is one image of normal noise from a fixed-seed generator (the
    global generator is untouched) with the channels of the model's first convolution and the size the
    model declares (``image_size`` of torchvision's ViT, ``pretrained_cfg["input_size"]`` of timm), else
    224 x 224 (then 64, then 32, if the model refuses it). The model runs in eval mode and is left
    exactly as it was.

    Args:
        model: the network.
        x: example inputs ``(N, C, H, W)`` (the first image is used), or ``None`` for the probe.
        select: which part of the model's output is scored (see :func:`netvis.saliency.grad_cam`).

    Returns:
        A name for ``model.get_submodule`` (``""`` only when the model's own output is the map).

    Raises:
        ValueError: no module outputs a spatial map the output depends on (the message says to pass
            ``layer=``, and ``reshape=`` for other layouts), or the probe does not run (pass ``x=``).

    Example:
        >>> import torchvision
        >>> default_layer(torchvision.models.resnet18(weights=None))
        'layer4'
    """
    check_model(model)
    if x is not None:
        check_images(x)
        probes = [x[:1]]
    else:
        declared = _declared_size(model)
        sizes = [declared] if declared is not None else [(s, s) for s in _PROBE_SIZES]
        gen = torch.Generator().manual_seed(0)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        probes = [torch.randn((1, _channels(model), *s), generator=gen).to(device, dtype) for s in sizes]
    name = type(model).__name__
    with eval_session(model, grad=True):
        for probe in probes:
            try:
                candidates, score = _spatial_candidates(model, probe, select)
            except _ProbeFailed as exc:
                if x is not None or probe is probes[-1]:
                    raise ValueError(
                        f"cannot find a Grad-CAM layer of {name}: the forward pass on "
                        f"{'the inputs' if x is not None else 'a probe of shape ' + str(tuple(probe.shape))} "
                        f"failed ({exc}); pass x= (an example input) or layer="
                    ) from exc
                continue
            chosen = None
            for one in score:
                chosen = chosen or _pick(candidates, one)
            if chosen is None:
                raise ValueError(
                    f"{name} has no layer whose output is a spatial map (N, K, h, w), a channels-last map "
                    f"(N, h, w, K) or a token sequence (N, L, D) that its output depends on, at input size "
                    f"{tuple(probe.shape[2:])}; pass layer= (a module or dotted name) and, for another "
                    "layout, reshape= (a callable activation -> (N, K, h, w))"
                )
            return chosen.name
    raise AssertionError("unreachable")  # pragma: no cover


def _as_grid(activation: torch.Tensor, reshape: Reshape, size: tuple[int, int], name: str, n: int,
             prefix: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The function that maps the layer's output (and its gradient) to ``(N, K, h, w)``."""
    if callable(reshape):
        return reshape
    if reshape not in ("auto", "nchw", "nhwc", "tokens"):
        raise ValueError(f"reshape must be 'auto', 'nchw', 'nhwc', 'tokens' or a callable, got {reshape!r}")
    shape = tuple(activation.shape)
    if activation.shape[:1] != (n,):
        raise ValueError(f"Grad-CAM needs a layer whose output has N = {n} rows; layer {name!r} returned {shape}")
    if reshape == "nchw" and activation.dim() == 4:
        return lambda t: t
    if reshape == "nhwc" and activation.dim() == 4:
        return lambda t: t.permute(0, 3, 1, 2)
    where = layout(activation, size, prefix)
    if where is not None and reshape in ("auto", where.kind):
        return lambda t: to_grid(t, where)
    expected = {"nchw": "(N, K, h, w)", "nhwc": "(N, h, w, K)", "tokens": "(N, prefix + h * w, D)"}
    what = expected.get(reshape, "(N, K, h, w), (N, h, w, K) or tokens (N, prefix + h * w, D)")
    raise ValueError(
        f"Grad-CAM needs a layer whose output is {what} for an input of size {size}; layer {name!r} "
        f"returned shape {shape}; pass reshape= (a callable activation -> (N, K, h, w)) or another layer="
    )


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    layer: nn.Module | str | None = None,
    relu: bool = True,
    upsample: bool = True,
    interpolation: Interpolation = "bilinear",
    reshape: Reshape = "auto",
    select: Select = None,
) -> torch.Tensor:
    r"""Grad-CAM: the layer's feature maps weighted by their average gradient.

    For the activations :math:`A^k` (channel :math:`k`, size :math:`h \times w`) of ``layer``,

    .. math::
        \alpha_k = \frac{1}{hw} \sum_{i,j} \frac{\partial f_c}{\partial A^k_{ij}}, \qquad
        L = \mathrm{ReLU}\Big(\sum_k \alpha_k A^k\Big),

    upsampled to the input size with ``interpolation`` (bilinear, ``align_corners=False``) when
    ``upsample``. The values are not normalised.

    From Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations from Deep
    Networks via Gradient-based Localization", ICCV 2017.

    Transformers: a layer that outputs channels-last maps ``(N, h, w, K)`` (Swin stages, timm's ConvNeXt
    blocks) or token sequences ``(N, p + h w, D)`` (ViT, DeiT; ``p`` class, distillation or register
    tokens first) is reshaped to ``(N, K, h, w)`` -- activations and gradients alike, prefix tokens
    dropped -- before the formula above (``reshape="auto"`` infers the layout from the shape and the input
    size, see :func:`layout`). The default layer of a ViT is the last block's first norm (see
    :func:`default_layer`): after the last attention only the class token reaches the head, so later
    layers have zero gradient at every patch token.

    The activation is recorded with a forward hook that is removed before returning; the layer must run
    once per forward pass. If a later in-place operation (e.g. an in-place ReLU) modifies the layer's
    output, the map uses the modified values and their gradient.

    Args:
        model: a classifier (or any model, with a callable target and ``select``).
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class), an int, ``N`` ints (a sequence, tensor or numpy array) or a
            callable ``outputs -> (N,) scores`` (e.g. a segmentation class's logits summed over a mask).
        layer: a module of ``model`` or its dotted name; ``None`` uses :func:`default_layer` on ``x[:1]``.
        relu: apply the ReLU (keep positive evidence only).
        upsample: resize to ``(H, W)``.
        interpolation: ``"bilinear"``, ``"nearest"``, ``"bicubic"`` or ``"area"``.
        reshape: the layer output's layout: ``"auto"``, ``"nchw"``, ``"nhwc"``, ``"tokens"``, or a
            callable mapping the layer's output (and, the same way, its gradient) to ``(N, K, h, w)``.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, H, W)`` when ``upsample``, else ``(N, h, w)`` at the layer's resolution, on ``x``'s device.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                       nn.Linear(4, 5))
        >>> grad_cam(model, torch.rand(1, 3, 8, 8), layer="1").shape
        torch.Size([1, 8, 8])
    """
    check_model(model)
    check_images(x)
    if interpolation not in ("bilinear", "nearest", "bicubic", "area"):
        raise ValueError(f"interpolation must be bilinear, nearest, bicubic or area, got {interpolation!r}")
    if not callable(reshape) and reshape not in ("auto", "nchw", "nhwc", "tokens"):
        raise ValueError(f"reshape must be 'auto', 'nchw', 'nhwc', 'tokens' or a callable, got {reshape!r}")
    if layer is None:
        layer = default_layer(model, x, select=select)
    module = resolve_layer(model, layer)
    prefix = getattr(model, "num_prefix_tokens", None)
    n = x.shape[0]
    with eval_session(model, grad=True):
        xi = x.detach().clone().requires_grad_(True)
        with capture_activation(model, module) as capture:
            outputs = model(xi.clone())  # a non-leaf copy: a model may modify its input in place
        activation = capture.output
        to_maps = _as_grid(activation, reshape, (x.shape[2], x.shape[3]), capture.name, n,
                           prefix if isinstance(prefix, int) else None)
        resolved = resolve_target(target, outputs, n, select)
        scores = resolved.scores(outputs, n)
        (grads,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        if grads is None:
            raise ValueError(f"the target scores do not depend on layer {capture.name!r}")
        maps, grads = to_maps(activation), to_maps(grads)
        if maps.dim() != 4 or maps.shape[0] != n or grads.shape != maps.shape:
            raise ValueError(
                f"reshape must map layer {capture.name!r}'s output to (N, K, h, w) with N = {n}; got "
                f"{tuple(maps.shape)}"
            )
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * maps).sum(dim=1, keepdim=True).detach()
    if relu:
        cam = cam.clamp(min=0)
    if upsample:
        align = False if interpolation in ("bilinear", "bicubic") else None
        cam = F.interpolate(cam, size=x.shape[2:], mode=interpolation, align_corners=align)
    return cam[:, 0]


def guided_grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    layer: nn.Module | str | None = None,
    interpolation: Interpolation = "bilinear",
    reshape: Reshape = "auto",
    select: Select = None,
) -> torch.Tensor:
    r"""Guided Grad-CAM: guided backpropagation masked by the upsampled Grad-CAM map.

    .. math::
        M = \mathrm{GuidedBackprop}(x) \odot \mathrm{upsample}(L_{\text{Grad-CAM}}),

    the map broadcast over the channels. High-resolution detail (guided backprop) restricted to the
    class-discriminative region (Grad-CAM), from Selvaraju et al., "Grad-CAM: Visual Explanations from
    Deep Networks via Gradient-based Localization", ICCV 2017.

    Args:
        model: a classifier whose rectifiers are ReLUs (see :func:`netvis.saliency.guided_backprop`).
        x: images ``(N, C, H, W)``.
        target: as in :func:`grad_cam`.
        layer: the Grad-CAM layer (module or dotted name); ``None`` uses :func:`default_layer`.
        interpolation: how the Grad-CAM map is upsampled.
        reshape: the layer output's layout, as in :func:`grad_cam`.
        select: which part of the model's output holds the scores, as in :func:`grad_cam`.

    Returns:
        ``(N, C, H, W)`` on ``x``'s device.
    """
    guided = guided_backprop(model, x, target, select=select)
    cam = grad_cam(model, x, target, layer=layer, relu=True, upsample=True, interpolation=interpolation,
                   reshape=reshape, select=select)
    return guided * cam[:, None]
