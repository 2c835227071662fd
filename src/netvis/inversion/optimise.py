r"""Model inversion by optimisation (Mahendran & Vedaldi, CVPR 2015).

Given the representation :math:`\Phi_0 = \Phi(x_0)` of an image at some layer, find an image whose
representation matches it while looking like a natural image:

.. math::
    x^* = \operatorname*{arg\,min}_{x \in [lo, hi]} \;
    \frac{\lVert \Phi(x) - \Phi_0 \rVert_2^2}{\lVert \Phi_0 \rVert_2^2}
    + \lambda_{V}\, \mathrm{TV}_\beta(x) + \lambda_\alpha\, N_\alpha(x)

A. Mahendran and A. Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from netvis.inversion._context import LayerLike, frozen, layer_outputs, resolve_layer
from netvis.inversion.objectives import (
    Objective,
    ObjectiveFn,
    alpha_loss,
    as_objective,
    box_loss,
    feature_error,
    feature_loss,
    tv_loss,
)

__all__ = ["InversionResult", "invert", "pixel_bounds", "DEFAULT_STEPS", "DEFAULT_LR"]

DEFAULT_STEPS = {"lbfgs": 100, "adam": 300, "sgd": 300}
"""Default number of iterations per optimiser (an L-BFGS iteration may evaluate the model several times)."""

DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.05, "sgd": 20.0}
"""Default learning rates. Adam's and SGD's are in units of the pixel range ``hi - lo`` (they are
multiplied by it); L-BFGS's is the initial step of its strong-Wolfe line search."""

BOX_WEIGHT = 30.0
"""Weight of :func:`~netvis.inversion.objectives.box_loss`, the penalty on pixels outside the bounds."""

_NOISE_STD = 0.1  # the "noise" start: mean image + 0.1 * range * N(0, 1)
_LBFGS_MAX_LS = 20  # function evaluations allowed to one line search


@dataclass
class InversionResult:
    """What :func:`invert` returns for one layer.

    Attributes:
        image: Reconstruction, detached, shaped, typed and placed like the target image ``(N, C, H, W)``.
        losses: Total objective (mean over the batch) at every function evaluation, in order.
        feature_errors: Normalised feature error (mean over the batch) at every function evaluation.
        error: Normalised feature error :math:`\\lVert\\Phi(x)-\\Phi_0\\rVert^2/\\lVert\\Phi_0\\rVert^2` of
            ``image`` (after the final clamp), mean over the batch.
        errors: The same per image, ``(N,)`` on the CPU.
        initial_error: The normalised feature error of the starting image (mean over the batch).
        n_evals: Function evaluations (forward + backward passes) used.
        steps: Optimiser iterations done (fewer than asked when L-BFGS converged).
        layer: Dotted name of the inverted layer.
    """

    image: Tensor
    losses: list[float]
    feature_errors: list[float]
    error: float
    errors: Tensor
    initial_error: float
    n_evals: int
    steps: int
    layer: str
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (everything but the image)."""
        return {
            "layer": self.layer,
            "error": self.error,
            "errors": [float(e) for e in self.errors],
            "initial_error": self.initial_error,
            "n_evals": self.n_evals,
            "steps": self.steps,
            "losses": self.losses,
            "feature_errors": self.feature_errors,
            "options": self.options,
        }


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    if seed is None:
        gen.seed()  # fresh entropy for this generator only; the global random state is untouched
    elif isinstance(seed, int) and not isinstance(seed, bool):
        gen.manual_seed(seed)
    else:
        raise TypeError(f"seed must be None, an int or a torch.Generator, got {type(seed).__name__}")
    return gen


def pixel_bounds(preprocess: Any, channels: int | None = None) -> tuple[Tensor, Tensor]:
    """The valid input range ``(lo, hi)`` of a model whose inputs are made by ``preprocess``.

    For a per-channel normalisation ``(u - mean) / std`` of pixels ``u`` in ``[0, 1]`` (such as
    :class:`netvis.data.transforms.Preprocess`, which has ``mean`` and ``std`` attributes) this is
    ``lo = -mean / std`` and ``hi = (1 - mean) / std``. Any other callable is applied to an all-0 and an
    all-255 ``uint8`` image of ``channels`` channels and the per-channel results are taken.

    Args:
        preprocess: The preprocess of a checkpoint (``uint8`` images to model inputs).
        channels: Number of image channels; needed only for a callable without ``mean``/``std``.

    Returns:
        Two float tensors of shape ``(1, C, 1, 1)`` (``C`` is 1 when one value serves every channel).
    """
    mean, std = getattr(preprocess, "mean", None), getattr(preprocess, "std", None)
    if mean is not None and std is not None:
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        return -mean_t / std_t, (1 - mean_t) / std_t
    if not callable(preprocess):
        raise TypeError(f"preprocess must be callable, got {type(preprocess).__name__}")
    c = channels or 1
    lo = preprocess(torch.zeros(1, c, 8, 8, dtype=torch.uint8))
    hi = preprocess(torch.full((1, c, 8, 8), 255, dtype=torch.uint8))
    lo, hi = lo.float().amin(dim=(0, 2, 3), keepdim=True), hi.float().amax(dim=(0, 2, 3), keepdim=True)
    return torch.minimum(lo, hi), torch.maximum(lo, hi)


def _resolve_bounds(bounds, image: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    """``(lo, hi)`` as tensors broadcastable to the images, on ``like``'s device and dtype."""
    if bounds is None:
        if image is None:  # features only: unbounded
            inf = torch.tensor(math.inf, dtype=like.dtype, device=like.device)
            return -inf, inf
        lo = image.detach().amin(dim=(0, 2, 3), keepdim=True)
        hi = image.detach().amax(dim=(0, 2, 3), keepdim=True)
        return lo.to(like), torch.maximum(hi, lo + 1e-6).to(like)
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be None or a (lo, hi) pair, got {bounds!r}") from None
    lo = torch.as_tensor(lo, dtype=like.dtype).to(like.device)
    hi = torch.as_tensor(hi, dtype=like.dtype).to(like.device)
    if lo.dim() == 1:  # per-channel values
        lo, hi = lo.view(1, -1, 1, 1), hi.view(1, -1, 1, 1)
    if not bool((lo < hi).all()):
        raise ValueError(f"bounds need lo < hi, got {bounds!r}")
    return lo, hi


def _range_and_mid(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    finite = torch.isfinite(lo) & torch.isfinite(hi)
    scale = torch.where(finite, hi - lo, torch.ones_like(hi - lo))
    mid = torch.where(finite, (lo + hi) / 2, torch.zeros_like(lo))
    return scale, mid


def _initial_image(init, shape, image, lo, hi, gen, like: Tensor) -> Tensor:
    scale, _ = _range_and_mid(lo, hi)
    if image is not None:
        center = image.detach().mean(dim=(0, 2, 3), keepdim=True).to(like)
    else:
        center = torch.zeros((), dtype=like.dtype, device=like.device)
    if isinstance(init, Tensor):
        if tuple(init.shape) != tuple(shape):
            raise ValueError(f"init tensor has shape {tuple(init.shape)}, expected {tuple(shape)}")
        x = init.detach().to(like)
    elif init == "noise":
        noise = torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)
        x = center + _NOISE_STD * scale * noise
    elif init == "mean":
        x = center.expand(shape)
    else:
        raise ValueError(f"init must be 'noise', 'mean' or a tensor, got {init!r}")
    return torch.clamp(x.clone(), lo, hi).contiguous()


def _make_optimizer(name: str, x: Tensor, lr: float, scale: Tensor) -> torch.optim.Optimizer:
    if name == "lbfgs":
        return torch.optim.LBFGS(
            [x], lr=lr, max_iter=1, max_eval=1 + _LBFGS_MAX_LS, tolerance_grad=0.0, tolerance_change=0.0,
            history_size=100, line_search_fn="strong_wolfe",
        )
    pixel_lr = lr * float(scale.mean())
    if name == "adam":
        return torch.optim.Adam([x], lr=pixel_lr)
    if name == "sgd":
        return torch.optim.SGD([x], lr=pixel_lr, momentum=0.9)
    raise ValueError(f"optimizer must be 'lbfgs', 'adam' or 'sgd', got {name!r}")


def _optimise(
    model: nn.Module,
    name: str,
    module: nn.Module,
    target: Tensor,
    x0: Tensor,
    lo: Tensor,
    hi: Tensor,
    regularizer: Objective | None,
    optimizer: str,
    steps: int,
    lr: float,
    progress: bool,
) -> InversionResult:
    modules = {name: module}
    scale, _ = _range_and_mid(lo, hi)
    objective = feature_loss(target)
    if regularizer is not None:
        objective = objective + regularizer
    if bool((torch.isfinite(lo) | torch.isfinite(hi)).any()):
        objective = objective + BOX_WEIGHT * box_loss(lo, hi, scale)
    x = x0.clone().requires_grad_(True)
    opt = _make_optimizer(optimizer, x, lr, scale)
    losses: list[float] = []
    errors: list[float] = []
    cache: dict[str, Tensor] = {}

    def closure() -> Tensor:
        # Each L-BFGS step starts by evaluating the point the previous line search ended on: reuse it.
        if cache and torch.equal(cache["x"], x.detach()):
            x.grad = cache["grad"].clone()
            return cache["loss"]
        features = layer_outputs(model, x, modules)[name]
        if features.shape != target.shape:
            raise ValueError(f"layer {name!r} outputs shape {tuple(features.shape)} for images of shape "
                             f"{tuple(x.shape)}, but the target features have shape {tuple(target.shape)}")
        loss = objective(x, features).sum()  # images are independent problems: sum, not mean
        (grad,) = torch.autograd.grad(loss, x)
        value = float(loss.detach()) / x.shape[0]
        if not math.isfinite(value):
            raise FloatingPointError(
                f"inverting {name!r}: the objective became {value} after {len(losses)} evaluations; "
                "lower lr or the regulariser weights"
            )
        with torch.no_grad():
            errors.append(float(feature_error(features, target).mean()))
        losses.append(value)
        cache.update(x=x.detach().clone(), grad=grad, loss=loss.detach())
        x.grad = grad.clone()
        return loss.detach()

    done = 0
    bar = tqdm(total=steps, desc=f"invert {name or 'output'}", disable=not progress, leave=False)
    try:
        for _ in range(steps):
            before = x.detach().clone()
            if optimizer == "lbfgs":
                opt.step(closure)
            else:
                opt.zero_grad(set_to_none=True)
                closure()
                opt.step()
                with torch.no_grad():
                    x.clamp_(lo, hi)  # projection
            done += 1
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3g}", error=f"{errors[-1]:.3g}", evals=len(losses))
            if torch.equal(before, x.detach()):
                break  # no progress: converged
    finally:
        bar.close()
    with torch.no_grad():
        x.clamp_(lo, hi)
        final = layer_outputs(model, x.detach(), modules)[name]
        per_image = feature_error(final, target).cpu()
    return InversionResult(
        image=x.detach(),
        losses=losses,
        feature_errors=errors,
        error=float(per_image.mean()),
        errors=per_image,
        initial_error=errors[0],
        n_evals=len(losses),
        steps=done,
        layer=name,
    )


def invert(
    model: nn.Module,
    image: Tensor | None = None,
    layer: LayerLike | None = None,
    *,
    layers: Sequence[LayerLike] | None = None,
    features: Tensor | None = None,
    shape: Sequence[int] | None = None,
    tv_weight: float = 0.05,
    tv_beta: float = 2.0,
    alpha_norm: tuple[float, float] | None = None,
    regularizer: Objective | ObjectiveFn | None = None,
    optimizer: str = "lbfgs",
    steps: int | None = None,
    lr: float | None = None,
    init: str | Tensor = "noise",
    seed: int | torch.Generator | None = None,
    bounds: tuple[float | Tensor, float | Tensor] | None = None,
    progress: bool = False,
) -> InversionResult | dict[str, InversionResult]:
    r"""Reconstruct an image from its representation at a layer (Mahendran & Vedaldi, CVPR 2015).

    Minimises, over images :math:`x` in the valid pixel box :math:`[lo, hi]`,

    .. math::
        \frac{\lVert \Phi(x) - \Phi_0 \rVert_2^2}{\lVert \Phi_0 \rVert_2^2}
        + \lambda_V \, \frac{R_{V^\beta}(x / B)}{C (H-1)(W-1)}
        + \lambda_\alpha \, \frac{N_\alpha((x - m) / B)}{C H W}

    where :math:`\Phi` is the layer's output, :math:`B = hi - lo` the pixel range, :math:`m` its midpoint,
    :math:`R_{V^\beta}` the total variation (:func:`~netvis.inversion.objectives.total_variation`) and
    :math:`N_\alpha` the alpha-norm. The normalisations make the weights independent of image size and
    pixel units. From "Understanding Deep Image Representations by Inverting Them" (CVPR 2015).

    The target is given one of two ways, never both:

    * ``invert(model, image, layer)``: ``image`` is an ``(N, C, H, W)`` batch and its features at
      ``layer`` are the goal (one forward pass computes them);
    * ``invert(model, layer=..., features=phi0, shape=(C, H, W))``: the features themselves, with the
      shape of the images to reconstruct (``(C, H, W)`` or ``(N, C, H, W)``).

    Pixels are kept in range by projection: after every optimiser iteration the image is clamped to
    ``[lo, hi]`` (L-BFGS then continues from the clamped point with its curvature memory). The images of
    a batch are independent problems solved jointly (the model runs in eval mode). The forward pass stops
    right after ``layer`` (a hook raises a private exception that is caught), so deeper layers cost nothing.

    During the call the model is in eval mode with ``requires_grad`` off on every parameter; gradients
    come from ``torch.autograd.grad`` with respect to the image only. Modes, flags, hooks, parameter
    ``.grad`` and BN buffers are exactly as before afterwards, also when the call raises.

    Args:
        model: Any ``nn.Module`` taking ``(N, C, H, W)`` images.
        image: Target images ``(N, C, H, W)``; their features at ``layer`` are matched.
        layer: The layer, an ``nn.Module`` inside ``model`` or its dotted name (``"layer1.0.conv1"``;
            ``""`` is the model's output). A module used twice in the forward pass is read at its first use.
        layers: Several layers instead of ``layer``: each is inverted separately (same start image) and a
            dict ``name -> InversionResult`` is returned. Needs ``image``.
        features: Target features ``Phi_0`` (instead of ``image``); needs ``shape``.
        shape: Image shape to reconstruct when ``features`` is given.
        tv_weight: :math:`\lambda_V`, the weight of the normalised total variation (0 turns it off). The
            default suits early layers; deep layers read better with about 1 and more steps.
        tv_beta: :math:`\beta` of the total variation (2: smooth, 1: classic TV, edges kept sharper).
        alpha_norm: ``(alpha, weight)`` to add :math:`\lambda_\alpha N_\alpha` (e.g. ``(6, 1e-3)``), or None.
        regularizer: Any extra :class:`~netvis.inversion.objectives.Objective` (or callable
            ``(x, features) -> (N,)``) added to the objective.
        optimizer: ``"lbfgs"`` (``torch.optim.LBFGS`` with a strong-Wolfe line search, the default),
            ``"adam"`` or ``"sgd"`` (with momentum 0.9).
        steps: Optimiser iterations (default :data:`DEFAULT_STEPS`). An L-BFGS iteration may use several
            function evaluations; ``result.n_evals`` counts them.
        lr: Learning rate (default :data:`DEFAULT_LR`); Adam's and SGD's are multiplied by the mean range.
        init: Start image: ``"mean"``, a constant image at the target images' per-channel mean (in the
            features form 0, the data mean of normalised inputs, clipped to the bounds); ``"noise"`` (the
            default), that plus Gaussian noise of 0.1 times the range; or a tensor of the image shape.
        seed: ``None`` (fresh randomness), an int or a ``torch.Generator`` for the ``"noise"`` start. The
            global random state is never used.
        bounds: Valid pixel range ``(lo, hi)``: numbers, per-channel sequences or tensors broadcastable to
            the images. ``None`` takes the target images' per-channel min and max (the features form is
            then unbounded; pass :func:`pixel_bounds` of the model's preprocess instead).
        progress: Show a tqdm progress bar.

    Returns:
        An :class:`InversionResult` (``.image``, ``.losses``, ``.error``, ``.n_evals``, ...); with
        ``layers``, a dict from each layer's dotted name to its result.

    Raises:
        ValueError: a missing layer (the message lists close names), both or neither of ``image`` and
            ``features``, bad shapes, bounds or options.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
        >>> x0 = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(0))
        >>> result = invert(model, x0, "1", steps=30, tv_weight=0.0, seed=0)
        >>> result.error < 0.01 * result.initial_error
        True
    """
    if (image is None) == (features is None):
        raise ValueError("give exactly one of image= (its features are the target) or features= and shape=")
    if (layer is None) == (layers is None):
        raise ValueError("give exactly one of layer= (one result) or layers= (a dict of results)")
    if layer is not None and isinstance(layer, (list, tuple)):
        raise TypeError("layer is one layer; pass several as layers=[...]")
    optimizer = optimizer.lower() if isinstance(optimizer, str) else optimizer
    if optimizer not in DEFAULT_STEPS:
        raise ValueError(f"optimizer must be 'lbfgs', 'adam' or 'sgd', got {optimizer!r}")
    steps = DEFAULT_STEPS[optimizer] if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    if tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {tv_weight}")
    # Gradients are needed even when called under torch.no_grad() or inference mode; tensors made in
    # inference mode cannot enter autograd, so they are copied first.
    with torch.inference_mode(False), torch.enable_grad():
        image, features, init = (t.clone() if isinstance(t, Tensor) and t.is_inference() else t
                                 for t in (image, features, init))
        if bounds is not None and not isinstance(bounds, str):
            bounds = tuple(b.clone() if isinstance(b, Tensor) and b.is_inference() else b for b in bounds)

        if image is not None:
            if not isinstance(image, Tensor) or image.dim() != 4:
                raise ValueError(f"image must be an (N, C, H, W) tensor, got {getattr(image, 'shape', image)}")
            like = image if image.is_floating_point() else image.float()
            img_shape = tuple(image.shape)
        else:
            if layers is not None:
                raise ValueError("features= inverts one layer; use layer=, not layers=")
            if shape is None:
                raise ValueError("features= needs shape=(C, H, W) or (N, C, H, W), the shape to reconstruct")
            shape = tuple(int(s) for s in shape)
            if len(shape) == 3:
                shape = (features.shape[0], *shape)
            if len(shape) != 4 or shape[0] != features.shape[0]:
                raise ValueError(f"shape must be (C, H, W) or (N, C, H, W) with N = {features.shape[0]}, "
                                 f"got {shape}")
            like = features if features.is_floating_point() else features.float()
            img_shape = shape

        named = [resolve_layer(model, item) for item in ([layer] if layers is None else layers)]
        modules = dict(named)
        gen = _generator(seed)
        lo, hi = _resolve_bounds(bounds, image, like)
        scale, mid = _range_and_mid(lo, hi)
        regs = [tv_weight * tv_loss(tv_beta, scale)] if tv_weight > 0 else []
        if alpha_norm is not None:
            alpha, weight = alpha_norm
            regs.append(float(weight) * alpha_loss(float(alpha), mid, scale))
        if regularizer is not None:
            regs.append(as_objective(regularizer))
        reg = sum(regs[1:], regs[0]) if regs else None
        options = {
            "tv_weight": tv_weight, "tv_beta": tv_beta, "alpha_norm": alpha_norm, "optimizer": optimizer,
            "steps": steps, "lr": lr, "init": init if isinstance(init, str) else "tensor",
        }

        with frozen(model):
            if image is not None:
                with torch.no_grad():
                    targets = layer_outputs(model, like.detach(), modules)
            else:
                targets = {named[0][0]: features.detach()}
            x_start = _initial_image(init, img_shape, image, lo, hi, gen, like)
            results = {}
            for name, module in named:
                result = _optimise(model, name, module, targets[name], x_start, lo, hi, reg, optimizer,
                                   steps, lr, progress)
                result.options = dict(options)
                results[name] = result
        return results[named[0][0]] if layers is None else results
