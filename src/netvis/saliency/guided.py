"""Guided backpropagation and the deconvnet: the gradient with a modified backward pass at every ReLU."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from netvis.hooks import Rule, eval_session, guided_relus
from netvis.saliency._common import (
    Select,
    TargetLike,
    check_images,
    check_model,
    check_precision,
    gradient_of_scores,
)

__all__ = ["deconvnet", "guided_backprop"]


def _rule_gradient(model: nn.Module, x: torch.Tensor, target: TargetLike, rule: Rule,
                   precision: str = "fp32", select: Select = None) -> torch.Tensor:
    check_model(model)
    check_images(x)
    check_precision(precision)
    with eval_session(model, grad=True):
        grad, _ = gradient_of_scores(model, x, target, forward_context=partial(guided_relus, model, rule),
                                     precision=precision, select=select)
    return grad


def guided_backprop(model: nn.Module, x: torch.Tensor, target: TargetLike = None, *,
                    precision: str = "fp32", select: Select = None) -> torch.Tensor:
    r"""Guided backpropagation: back-propagate only positive gradients through positive ReLU inputs.

    The backward pass is the ordinary one except at every ReLU :math:`y = \max(x, 0)`, where the gradient
    :math:`g = \partial f_c / \partial y` arriving from above is passed on as

    .. math::
        \frac{\partial f_c}{\partial x} \leftarrow g \cdot [x > 0] \cdot [g > 0]

    (the plain gradient keeps the first indicator only, the deconvnet the second only; see
    :func:`deconvnet`). Max-pooling routes the gradient as usual.

    From Springenberg, Dosovitskiy, Brox & Riedmiller, "Striving for Simplicity: The All Convolutional
    Net", ICLR workshop 2015.

    Every ReLU is routed, whatever its form: ``nn.ReLU`` modules (also one module used several times),
    in-place ReLUs, ``F.relu``, ``torch.relu``, ``Tensor.relu`` (see :func:`netvis.hooks.guided_relus`).
    A model with a rectifier-like activation that has no guided rule (``ReLU6``, ``LeakyReLU``, ``GELU``,
    ``SiLU``, ``ELU``, ``PReLU``, ``Hardtanh``...) raises :class:`netvis.hooks.GuidedReLUError` rather
    than silently returning the plain gradient.

    Args:
        model: a classifier whose rectifiers are ReLUs.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class), an int, ``N`` ints or a callable ``outputs -> (N,) scores``.
        precision: ``"fp32"`` or ``"bf16"`` (forward pass under bfloat16 autocast), as in
            :func:`netvis.saliency.gradient`.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, C, H, W)`` on ``x``'s device (signed; take ``.abs()`` or normalise to display).

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
        >>> guided_backprop(model, torch.rand(2, 3, 8, 8), target=[0, 4]).shape
        torch.Size([2, 3, 8, 8])
    """
    return _rule_gradient(model, x, target, "guided", precision, select)


def deconvnet(model: nn.Module, x: torch.Tensor, target: TargetLike = None, *,
              precision: str = "fp32", select: Select = None) -> torch.Tensor:
    r"""The deconvnet: back-propagate only positive gradients through every ReLU, whatever its input.

    At every ReLU the gradient :math:`g` arriving from above is passed on as

    .. math::
        \frac{\partial f_c}{\partial x} \leftarrow g \cdot [g > 0],

    i.e. the reconstruction passes through a ReLU applied to the signal going down, ignoring which units
    were active in the forward pass; everything else (convolutions transposed, max-pooling switches)
    is the ordinary backward pass.

    From Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014.

    The ReLU handling and refusals are those of :func:`guided_backprop`.

    Args:
        model: a classifier whose rectifiers are ReLUs.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class), an int, ``N`` ints or a callable ``outputs -> (N,) scores``.
        precision: ``"fp32"`` or ``"bf16"`` (forward pass under bfloat16 autocast), as in
            :func:`netvis.saliency.gradient`.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, C, H, W)`` on ``x``'s device.
    """
    return _rule_gradient(model, x, target, "deconv", precision, select)
