"""Grad-CAM and guided Grad-CAM: class activation maps from a convolutional layer's gradients."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from netvis.hooks import capture_activation, eval_session, resolve_layer
from netvis.saliency._common import TargetLike, check_images, check_model, resolve_target
from netvis.saliency.guided import guided_backprop

__all__ = ["default_layer", "grad_cam", "guided_grad_cam"]

Interpolation = Literal["bilinear", "nearest", "bicubic", "area"]


def _contains(module: nn.Module, kinds: tuple[type, ...]) -> bool:
    return any(isinstance(m, kinds) for m in module.modules())


def _is_head(module: nn.Module) -> bool:
    """Whether ``module``'s output has lost its spatial layout (it holds the classifier head)."""
    return _contains(module, (nn.Linear, nn.Flatten)) or any(
        isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) for child in module.children()
    )


def default_layer(model: nn.Module) -> str:
    """The dotted name of a sensible Grad-CAM layer: the last convolutional stage before the head.

    Starting from the model, take the last child that contains an ``nn.Conv2d``; while that child also
    holds the classifier head (an ``nn.Linear`` or ``nn.Flatten`` anywhere inside, or a global adaptive
    pooling as a direct child), descend into it the same way. For torchvision's ResNets this gives
    ``"layer4"``, for VGG and DenseNet ``"features"``, for ``nn.Sequential(conv, relu, ..., flatten,
    linear)`` the last convolution.

    Args:
        model: the network.

    Returns:
        A name for ``model.get_submodule`` (``""`` only when the model itself is a convolution).

    Raises:
        ValueError: the model has no ``nn.Conv2d``.
    """
    if isinstance(model, nn.Conv2d):
        return ""
    if not _contains(model, (nn.Conv2d,)):
        raise ValueError(
            f"{type(model).__name__} has no nn.Conv2d layer, so there is no default Grad-CAM layer; pass "
            "layer= (a module or a dotted name whose output is (N, K, h, w))"
        )
    name, module = "", model
    while True:
        children = [(n, c) for n, c in module.named_children() if _contains(c, (nn.Conv2d,))]
        if not children:
            return name
        child_name, child = children[-1]
        name = f"{name}.{child_name}" if name else child_name
        module = child
        if not _is_head(module):
            return name


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    layer: nn.Module | str | None = None,
    relu: bool = True,
    upsample: bool = True,
    interpolation: Interpolation = "bilinear",
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

    The activation is recorded with a forward hook that is removed before returning; the layer must run
    once per forward pass and return an ``(N, K, h, w)`` tensor. If a later in-place operation (e.g. an
    in-place ReLU) modifies the layer's output, the map uses the modified values and their gradient.

    Args:
        model: a classifier.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class), an int, ``N`` ints or a callable ``outputs -> (N,) scores``.
        layer: a module of ``model`` or its dotted name; ``None`` uses :func:`default_layer`.
        relu: apply the ReLU (keep positive evidence only).
        upsample: resize to ``(H, W)``.
        interpolation: ``"bilinear"``, ``"nearest"``, ``"bicubic"`` or ``"area"``.

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
    if layer is None:
        layer = default_layer(model)
    module = resolve_layer(model, layer)
    n = x.shape[0]
    with eval_session(model, grad=True):
        xi = x.detach().clone().requires_grad_(True)
        with capture_activation(model, module) as capture:
            outputs = model(xi.clone())  # a non-leaf copy: a model may modify its input in place
        activation = capture.output
        if activation.dim() != 4 or activation.shape[0] != n:
            raise ValueError(
                f"Grad-CAM needs a layer whose output is (N, K, h, w) with N = {n}; layer {capture.name!r} "
                f"returned shape {tuple(activation.shape)}"
            )
        resolved = resolve_target(target, outputs, n)
        scores = resolved.scores(outputs, n)
        (grads,) = torch.autograd.grad(scores.sum(), activation, allow_unused=True)
        if grads is None:
            raise ValueError(f"the target scores do not depend on layer {capture.name!r}")
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = (weights * activation).sum(dim=1, keepdim=True).detach()
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
        target: ``None`` (predicted class), an int, ``N`` ints or a callable ``outputs -> (N,) scores``.
        layer: the Grad-CAM layer (module or dotted name); ``None`` uses :func:`default_layer`.
        interpolation: how the Grad-CAM map is upsampled.

    Returns:
        ``(N, C, H, W)`` on ``x``'s device.
    """
    guided = guided_backprop(model, x, target)
    cam = grad_cam(model, x, target, layer=layer, relu=True, upsample=True, interpolation=interpolation)
    return guided * cam[:, None]
