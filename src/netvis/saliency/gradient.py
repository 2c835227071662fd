"""Gradient saliency and the methods that average gradients: SmoothGrad and integrated gradients."""

from __future__ import annotations

import numbers
from typing import Literal

import numpy as np
import torch
from torch import nn

from netvis._checks import check_positive_int
from netvis.hooks import eval_session
from netvis.saliency._common import (
    Select,
    TargetLike,
    check_images,
    check_model,
    check_precision,
    clean_target,
    gradient_of_scores,
    row_chunks,
)

__all__ = ["gradient", "integrated_gradients", "smoothgrad", "quadrature"]

Reduce = Literal["max", "sum"] | None


def _reduce_channels(grad: torch.Tensor, abs: bool, reduce: Reduce) -> torch.Tensor:
    if abs:
        grad = grad.abs()
    if reduce is None:
        return grad
    if reduce == "max":
        return grad.amax(dim=1)
    if reduce == "sum":
        return grad.sum(dim=1)
    raise ValueError(f"reduce must be None, 'max' or 'sum', got {reduce!r}")


def _check_reduce(reduce: Reduce) -> None:
    if reduce not in (None, "max", "sum"):
        raise ValueError(f"reduce must be None, 'max' or 'sum', got {reduce!r}")


def gradient(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    abs: bool = True,
    reduce: Reduce = None,
    precision: str = "fp32",
    select: Select = None,
) -> torch.Tensor:
    r"""Gradient saliency: how much each pixel changes the class score, to first order.

    .. math::
        M = \left| \frac{\partial f_c(x)}{\partial x} \right|, \qquad
        \texttt{reduce="max"}: \; M_{ij} = \max_k \left| \frac{\partial f_c(x)}{\partial x_{kij}} \right|.

    From Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image
    Classification Models and Saliency Maps", ICLR workshop 2014 (who take the maximum over channels).

    The gradient is taken with ``torch.autograd.grad`` with respect to a detached copy of ``x``, with
    the model in eval mode; no parameter's ``.grad`` is touched.

    Args:
        model: a classifier ``(N, C, H, W) -> (N, num_classes)``.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class), an int, ``N`` ints or a callable ``outputs -> (N,) scores``.
        abs: take the absolute value of the gradient.
        reduce: ``None`` keeps the channels; ``"max"`` or ``"sum"`` reduces over them.
        precision: ``"fp32"``, or ``"bf16"``: the forward pass under bfloat16 autocast (channels-last
            input on CUDA), faster on GPUs with bfloat16 units; the map stays in ``x``'s dtype and differs
            from the fp32 map by bfloat16's rounding (benchmarks/saliency.py reports by how much).
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, C, H, W)``, or ``(N, H, W)`` when ``reduce`` is given, on ``x``'s device.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> gradient(model, torch.rand(2, 3, 2, 2), target=1, reduce="max").shape
        torch.Size([2, 2, 2])
    """
    check_model(model)
    check_images(x)
    _check_reduce(reduce)
    check_precision(precision)
    with eval_session(model, grad=True):
        grad, _ = gradient_of_scores(model, x, target, precision=precision, select=select)
    return _reduce_channels(grad, abs, reduce)


def _make_generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    if generator is None:
        g.seed()  # fresh entropy; the global generator is not touched
    elif isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        g.manual_seed(int(generator))
    else:
        raise TypeError(
            f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}"
        )
    return g


def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    n_samples: int = 25,
    noise_level: float = 0.15,
    abs: bool = False,
    squared: bool = False,
    reduce: Reduce = None,
    generator: torch.Generator | int | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    select: Select = None,
) -> torch.Tensor:
    r"""SmoothGrad: the gradient averaged over noisy copies of the image.

    .. math::
        M = \frac{1}{n} \sum_{k=1}^{n} \frac{\partial f_c}{\partial x}(x + \varepsilon_k), \qquad
        \varepsilon_k \sim \mathcal{N}(0, \sigma^2), \quad
        \sigma = \text{noise\_level} \cdot (\max x - \min x),

    with :math:`\max x - \min x` taken per image. ``abs=True`` averages :math:`|\partial f_c / \partial x|`,
    ``squared=True`` averages its square (SmoothGrad-Squared).

    From Smilkov, Thorat, Kim, Viégas & Wattenberg, "SmoothGrad: removing noise by adding noise", 2017.

    Randomness is explicit: the noise comes from ``generator`` only (the global generator is never used).
    Each image's ``n_samples`` noise tensors are drawn in one call, image after image, so the result for a
    batch equals the results for its images one by one drawn from the same generator, and does not
    depend on ``batch_size``. An int seed makes a CPU generator (noise is drawn on the CPU and moved to
    ``x``'s device, so a seed gives the same noise on every device); a CUDA generator draws on the GPU.

    Args:
        model: a classifier.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class on the clean image), an int, ``N`` ints or a callable.
        n_samples: noisy copies per image.
        noise_level: noise standard deviation as a fraction of each image's value range.
        abs: average absolute gradients.
        squared: average squared gradients.
        reduce: ``None``, ``"max"`` or ``"sum"`` over channels, applied to the average.
        generator: a ``torch.Generator``, an int seed, or ``None`` (fresh, non-reproducible seed).
        batch_size: the most noisy images per forward pass.
        precision: ``"fp32"`` or ``"bf16"`` (the noisy forward passes under bfloat16 autocast), as in
            :func:`gradient`.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        ``(N, C, H, W)`` (or ``(N, H, W)`` with ``reduce``) on ``x``'s device.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> smoothgrad(model, torch.rand(1, 3, 2, 2), target=0, n_samples=4, generator=0).shape
        torch.Size([1, 3, 2, 2])
    """
    check_model(model)
    check_images(x)
    _check_reduce(reduce)
    if abs and squared:
        raise ValueError("choose at most one of abs=True and squared=True")
    check_positive_int(n_samples, "n_samples")
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    check_precision(precision)
    gen = _make_generator(generator)
    x = x.detach()
    n, c, h, w = x.shape
    sigma = noise_level * (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))
    total = torch.zeros_like(x)
    noise: dict[int, torch.Tensor] = {}
    with eval_session(model, grad=True):
        resolved, _ = clean_target(model, x, target, batch_size, select)
        for segments in row_chunks(n, n_samples, batch_size):
            pieces, rows = [], []
            for image, start, stop in segments:
                if image not in noise:
                    eps = torch.randn((n_samples, c, h, w), generator=gen, device=gen.device)
                    noise[image] = eps.to(device=x.device, dtype=x.dtype) * sigma[image]
                pieces.append(x[image] + noise[image][start:stop])
                rows.append(torch.full((stop - start,), image, device=x.device, dtype=torch.long))
                if stop == n_samples:
                    del noise[image]
            rows_t = torch.cat(rows)
            grad, _ = gradient_of_scores(model, torch.cat(pieces), resolved, rows_t, precision=precision)
            if squared:
                grad = grad.square()
            elif abs:
                grad = grad.abs()
            total.index_add_(0, rows_t, grad)
    return _reduce_channels(total / n_samples, False, reduce)


Quadrature = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


def quadrature(method: Quadrature, steps: int) -> tuple[np.ndarray, np.ndarray]:
    r"""Quadrature points :math:`\alpha_k \in [0, 1]` and weights :math:`w_k` for integrated gradients.

    .. math::
        \int_0^1 g(\alpha)\, d\alpha \approx \sum_k w_k\, g(\alpha_k).

    Args:
        method: ``"riemann_left"``, ``"riemann_right"``, ``"riemann_middle"`` (rectangles),
            ``"riemann_trapezoid"`` (the trapezoidal rule on ``steps`` evenly spaced points including both
            ends) or ``"gausslegendre"`` (Gauss-Legendre quadrature, exact for polynomials of degree
            ``2 steps - 1``).
        steps: the number of points.

    Returns:
        ``(alphas, weights)``, two float64 arrays of length ``steps``.
    """
    check_positive_int(steps, "steps")
    if method == "riemann_left":
        return np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_right":
        return np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_middle":
        return (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs steps >= 2")
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, steps), weights
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    raise ValueError(
        "method must be one of 'riemann_left', 'riemann_right', 'riemann_middle', 'riemann_trapezoid', "
        f"'gausslegendre'; got {method!r}"
    )


def _baseline(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, numbers.Real) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if not isinstance(baseline, torch.Tensor):
        raise TypeError(f"baseline must be a number or a tensor, got {type(baseline).__name__}")
    b = baseline.detach().to(device=x.device, dtype=x.dtype)
    try:
        return b.expand_as(x).clone()
    except RuntimeError:
        raise ValueError(
            f"a baseline tensor must broadcast to the inputs' shape {tuple(x.shape)}, got {tuple(b.shape)}"
        ) from None


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    baseline: float | torch.Tensor = 0.0,
    steps: int = 50,
    method: Quadrature = "riemann_trapezoid",
    batch_size: int = 64,
    precision: str = "fp32",
    select: Select = None,
) -> torch.Tensor:
    r"""Integrated gradients: the gradient integrated along the straight path from a baseline to the image.

    .. math::
        \mathrm{IG}(x) = (x - x') \odot \int_0^1 \frac{\partial f_c}{\partial x}\big(x' + \alpha (x - x')\big)
        \, d\alpha
        \approx (x - x') \odot \sum_{k} w_k \frac{\partial f_c}{\partial x}\big(x' + \alpha_k (x - x')\big),

    with :math:`(\alpha_k, w_k)` from :func:`quadrature`. Completeness: :math:`\sum \mathrm{IG}(x) \approx
    f_c(x) - f_c(x')`, the better the more ``steps``.

    From Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.

    Args:
        model: a classifier.
        x: images ``(N, C, H, W)``.
        target: ``None`` (predicted class on the clean image), an int, ``N`` ints or a callable.
        baseline: :math:`x'`, a number (``0``: black for unnormalised images) or a tensor broadcastable
            to ``x``.
        steps: the number of points on the path.
        method: the quadrature rule, see :func:`quadrature`.
        batch_size: the most path points per forward pass.
        precision: ``"fp32"`` or ``"bf16"`` (the forward passes along the path under bfloat16 autocast), as
            in :func:`gradient`.
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        Attributions ``(N, C, H, W)`` on ``x``'s device.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x = torch.rand(1, 3, 2, 2)
        >>> ig = integrated_gradients(model, x, target=2, steps=8)
        >>> bool(torch.isclose(ig.sum(), model(x)[0, 2] - model(torch.zeros_like(x))[0, 2], atol=1e-5))
        True
    """
    check_model(model)
    check_images(x)
    check_precision(precision)
    alphas_np, weights_np = quadrature(method, steps)
    x = x.detach()
    base = _baseline(baseline, x)
    delta = x - base
    alphas = torch.as_tensor(alphas_np, dtype=x.dtype, device=x.device)
    weights = torch.as_tensor(weights_np, dtype=x.dtype, device=x.device)
    total = torch.zeros_like(x)
    with eval_session(model, grad=True):
        resolved, _ = clean_target(model, x, target, batch_size, select)
        for segments in row_chunks(x.shape[0], steps, batch_size):
            pieces, rows, step_weights = [], [], []
            for image, start, stop in segments:
                a = alphas[start:stop].view(-1, 1, 1, 1)
                pieces.append(base[image] + a * delta[image])
                rows.append(torch.full((stop - start,), image, device=x.device, dtype=torch.long))
                step_weights.append(weights[start:stop])
            rows_t = torch.cat(rows)
            grad, _ = gradient_of_scores(model, torch.cat(pieces), resolved, rows_t, precision=precision)
            total.index_add_(0, rows_t, grad * torch.cat(step_weights).view(-1, 1, 1, 1))
    return delta * total
