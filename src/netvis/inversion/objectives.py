r"""Inversion objectives: feature reconstruction, total variation, the alpha-norm, and how they compose.

An :class:`Objective` is a small callable ``(x, features) -> Tensor`` returning one value per image
(shape ``(N,)``) for the image batch ``x`` (``(N, C, H, W)``) and the features the model produced for it
at the layer being inverted. Objectives add, subtract and scale::

    objective = feature_loss(phi0) + 0.05 * tv_loss(beta=2.0) + 1e-3 * alpha_loss(alpha=6)

The raw measures (:func:`total_variation`, :func:`alpha_norm`, :func:`feature_error`) are plain functions;
the ``*_loss`` objectives normalise them so that their weights do not depend on image size or pixel range,
as in Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "Objective",
    "as_objective",
    "feature_error",
    "feature_loss",
    "total_variation",
    "tv_loss",
    "alpha_norm",
    "alpha_loss",
    "box_loss",
]

ObjectiveFn = Callable[[Tensor, Tensor], Tensor]


def _per_sample(value: Tensor, n: int, name: str) -> Tensor:
    if value.dim() == 0:
        return value.expand(n) / n  # a batch total, spread so that the batch sum is unchanged
    if value.shape != (n,):
        raise ValueError(f"objective {name!r} must return a scalar or one value per image ({n},), got "
                         f"shape {tuple(value.shape)}")
    return value


class Objective:
    """A per-image scalar function of an image batch and its features; objectives add and scale.

    Args:
        fn: ``fn(x, features) -> Tensor`` of shape ``(N,)`` (one value per image) or a scalar (a batch
            total). ``x`` is ``(N, C, H, W)``; ``features`` is the inverted layer's output for ``x``.
        name: Shown in ``repr`` and error messages.

    Example:
        >>> import torch
        >>> smooth = 2.0 * tv_loss() + alpha_loss(alpha=2)
        >>> smooth(torch.zeros(3, 1, 4, 4), None).shape
        torch.Size([3])
    """

    def __init__(self, fn: ObjectiveFn, name: str = "objective") -> None:
        if not callable(fn):
            raise TypeError(f"an objective needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

    def __call__(self, x: Tensor, features: Tensor | None) -> Tensor:
        return _per_sample(self.fn(x, features), x.shape[0], self.name)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: Objective | ObjectiveFn | float) -> Objective:
        if isinstance(other, numbers.Real):
            if other == 0:
                return self
            return Objective(lambda x, f: self(x, f) + other, f"{self.name} + {other:g}")
        other = as_objective(other)
        return Objective(lambda x, f: self(x, f) + other(x, f), f"{self.name} + {other.name}")

    def __radd__(self, other: Objective | ObjectiveFn | float) -> Objective:
        if isinstance(other, numbers.Real):  # sum([...]) starts from 0
            return self + other
        return as_objective(other) + self

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, numbers.Real):
            return NotImplemented
        return Objective(lambda x, f: weight * self(x, f), f"{weight:g} * {self.name}")

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return -1.0 * self

    def __sub__(self, other: Objective | ObjectiveFn | float) -> Objective:
        return self + (-other if isinstance(other, numbers.Real) else -as_objective(other))

    def __rsub__(self, other: Objective | ObjectiveFn | float) -> Objective:
        return -self + other


def as_objective(obj: Objective | ObjectiveFn) -> Objective:
    """Wrap a callable ``(x, features) -> Tensor`` as an :class:`Objective` (objectives pass through)."""
    if isinstance(obj, Objective):
        return obj
    if callable(obj):
        return Objective(obj, getattr(obj, "__name__", "objective"))
    raise TypeError(f"expected an Objective or a callable (x, features) -> Tensor, got {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------------
# Raw measures


def feature_error(features: Tensor, target: Tensor) -> Tensor:
    r"""Normalised feature reconstruction error, one value per image.

    .. math:: e(x) = \frac{\lVert \Phi(x) - \Phi_0 \rVert_2^2}{\lVert \Phi_0 \rVert_2^2}

    Args:
        features: ``Phi(x)``, shape ``(N, ...)``.
        target: ``Phi_0``, the same shape (or broadcastable to it).

    Returns:
        ``(N,)`` tensor. 0 means a perfect match; the all-zero image scores 1 for a layer without bias.

    Raises:
        ValueError: a target is all zeros (the normalised error is undefined).
    """
    target = target.expand_as(features)
    num = (features - target).flatten(1).pow(2).sum(1)
    den = target.flatten(1).pow(2).sum(1)
    if bool((den == 0).any()):
        raise ValueError("target features are all zero for some image; the normalised error is undefined")
    return num / den


def total_variation(x: Tensor, beta: float = 2.0) -> Tensor:
    r"""The total-variation norm of Mahendran & Vedaldi (2015), one value per image.

    .. math::
        R_{V^\beta}(x) = \sum_{k,i,j} \Big( (x_{k,i,j+1} - x_{k,i,j})^2 + (x_{k,i+1,j} - x_{k,i,j})^2
        \Big)^{\beta/2}

    summed over channels ``k`` and the ``(H-1) x (W-1)`` pixels that have a right and a lower neighbour.
    ``beta = 2`` is the squared-gradient (smooth) version; ``beta = 1`` the classic isotropic TV, whose
    gradient at a flat patch is taken as 0.

    Args:
        x: ``(N, C, H, W)`` images.
        beta: Exponent ``beta > 0``.

    Returns:
        ``(N,)`` tensor.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
        >>> total_variation(x, beta=2.0)  # (1 - 0)^2 + (2 - 0)^2
        tensor([5.])
    """
    if x.dim() != 4:
        raise ValueError(f"total_variation expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    sq = dx.pow(2) + dy.pow(2)
    if beta == 2:
        terms = sq
    else:  # (sq)^(beta/2) with a zero (sub)gradient where sq == 0 instead of inf or nan
        nonzero = sq > 0
        terms = torch.where(nonzero, torch.where(nonzero, sq, torch.ones_like(sq)).pow(beta / 2), 0.0)
    return terms.flatten(1).sum(1)


def alpha_norm(x: Tensor, alpha: float = 6.0) -> Tensor:
    r"""The alpha-norm :math:`N_\alpha(x) = \sum_{k,i,j} |x_{k,i,j}|^\alpha`, one value per image.

    Args:
        x: ``(N, C, H, W)`` images (centre them first; see :func:`alpha_loss`).
        alpha: Exponent (Mahendran & Vedaldi use 6).

    Returns:
        ``(N,)`` tensor.
    """
    return x.abs().pow(alpha).flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------------
# Normalised objectives


def feature_loss(target: Tensor) -> Objective:
    r"""Objective :math:`\lVert\Phi(x) - \Phi_0\rVert^2 / \lVert\Phi_0\rVert^2` (see :func:`feature_error`).

    Args:
        target: ``Phi_0``, the target features ``(N, ...)``.
    """
    target = target.detach()
    return Objective(lambda x, features: feature_error(features, target), "feature_loss")


def tv_loss(beta: float = 2.0, scale: float | Tensor = 1.0) -> Objective:
    r"""Normalised total variation: the mean over pixels of the TV terms of ``x / scale``.

    .. math:: \frac{R_{V^\beta}(x / B)}{C (H-1)(W-1)}

    With ``scale = B`` the pixel range (``hi - lo``), the value does not depend on image size or on the
    units of the pixels; a random image uniform in the range scores about :math:`(1/3)^{\beta/2}`.

    Args:
        beta: TV exponent (see :func:`total_variation`).
        scale: ``B``, a number or a tensor broadcastable to ``(N, C, H, W)`` (per-channel ranges).
    """

    def fn(x: Tensor, features: Tensor | None) -> Tensor:
        c, h, w = x.shape[1:]
        return total_variation(x / scale, beta) / (c * max(h - 1, 1) * max(w - 1, 1))

    return Objective(fn, f"tv_loss(beta={beta:g})")


def alpha_loss(alpha: float = 6.0, center: float | Tensor = 0.0, scale: float | Tensor = 1.0) -> Objective:
    r"""Normalised alpha-norm: the mean over pixels of :math:`|(x - c) / B|^\alpha`.

    It keeps pixel values from drifting far from ``center`` (large ``alpha`` acts like a soft box).

    Args:
        alpha: Exponent.
        center: ``c``, a number or a tensor broadcastable to the images (for example the midpoint of
            the valid pixel range).
        scale: ``B``, the pixel range.
    """

    def fn(x: Tensor, features: Tensor | None) -> Tensor:
        return alpha_norm((x - center) / scale, alpha) / x[0].numel()

    return Objective(fn, f"alpha_loss(alpha={alpha:g})")


def box_loss(lo: float | Tensor, hi: float | Tensor, scale: float | Tensor = 1.0) -> Objective:
    r"""Penalty on pixels outside ``[lo, hi]``: the mean over pixels of the squared distance to the box.

    .. math:: \frac{1}{C H W} \sum_{k,i,j} \Big(\frac{\max(lo - x_{k,i,j},\; x_{k,i,j} - hi,\; 0)}{B}\Big)^2

    Zero inside the box and smooth at its faces, so L-BFGS's curvature model stays valid where a hard
    projection would break it.

    Args:
        lo: Lower bound, a number or a tensor broadcastable to the images (may be ``-inf``).
        hi: Upper bound (may be ``inf``).
        scale: ``B``, the pixel range.
    """

    def fn(x: Tensor, features: Tensor | None) -> Tensor:
        outside = torch.relu(lo - x) + torch.relu(x - hi)
        return (outside / scale).pow(2).flatten(1).mean(1)

    return Objective(fn, "box_loss")
