r"""Activation maximization: optimise an image so that a unit, a channel or a class responds strongly.

Starting from faint noise, gradient ascent on the image :math:`x` maximises an objective :math:`f(x)` (a
channel's mean activation, one neuron, a class logit, or a weighted sum of these) minus regularisers:

.. math:: x^\star = \arg\max_x \; \mathbb{E}_{t \sim T}\big[f(t(x))\big]
          - \lambda_{TV}\, \mathrm{TV}(x) - \lambda_2 \, \tfrac{1}{CHW}\lVert x - \tfrac12 \rVert_2^2

where :math:`T` is a distribution of small random jitters, scalings and rotations (transformation
robustness) and :math:`\mathrm{TV}(x) = \frac{1}{CHW} \sum_{c,i,j} |x_{c,i+1,j} - x_{c,i,j}| +
|x_{c,i,j+1} - x_{c,i,j}|`. The image is not optimised pixel by pixel but through a parametrisation: by
default a Fourier spectrum scaled by :math:`1/f` (which decorrelates neighbouring pixels and makes
gradient ascent favour low frequencies) and, for RGB images, a decorrelated colour space, squashed into
:math:`[0, 1]` by a sigmoid. All of this follows Olah, Mordvintsev & Schubert, "Feature Visualization",
Distill 2017.

Objectives are small callables that add and scale::

    objective = channel("layer3", 5) - 0.5 * channel("layer3", 7)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from netvis.devices import device_for
from netvis.features._common import LayerLike, StopForward, capture, resolve_layer
from netvis.hooks import eval_session

__all__ = [
    "ActivationMaximization",
    "Objective",
    "activation_maximization",
    "channel",
    "class_logit",
    "fourier_image",
    "jitter",
    "neuron",
    "pixel_image",
    "random_rotate",
    "random_scale",
    "standard_transforms",
    "total_variation",
]

OUTPUT = None
"""The layer key of the model's output (what :func:`class_logit` reads)."""

Transform = Callable[[Tensor, torch.Generator], Tensor]


# ---------------------------------------------------------------------------------------------------
# Objectives


class Activations:
    """The activations an :class:`Objective` reads: ``acts[layer]`` for a layer name or module, ``acts[None]``
    for the model's output."""

    def __init__(self, by_name: Mapping[str | None, Tensor], names: Mapping[int, str]) -> None:
        self._by_name = by_name
        self._names = names

    def __getitem__(self, layer: LayerLike | None) -> Tensor:
        key = self._names[id(layer)] if isinstance(layer, nn.Module) else layer
        return self._by_name[key]


class Objective:
    """A function of a model's activations with one value per image, to be maximised.

    Objectives add (``a + b``), subtract and scale by numbers (``0.5 * a``), so that
    ``channel("layer3", 5) - 0.5 * channel("layer3", 7)`` is an objective too.

    Args:
        fn: ``fn(acts) -> (N,)`` where ``acts[layer]`` is the output of ``layer`` (a dotted name or a module)
            and ``acts[None]`` the model's output.
        layers: The layers ``fn`` reads (``None`` for the model's output): only these are captured, and the
            forward pass stops after the last of them unless the output is needed.
        name: Shown in ``repr``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU())
        >>> obj = channel("1", 0) - 0.5 * channel("1", 2)
        >>> obj
        Objective(channel('1', 0) - 0.5 * channel('1', 2))
        >>> obj.layers
        ('1',)
    """

    def __init__(
        self, fn: Callable[[Activations], Tensor], layers: Sequence[LayerLike | None], name: str
    ) -> None:
        if not callable(fn):
            raise TypeError(f"an objective needs a callable, got {type(fn).__name__}")
        self.fn = fn
        unique: list[LayerLike | None] = []
        for layer in layers:
            if not any(layer is u or (isinstance(layer, str) and layer == u) for u in unique):
                unique.append(layer)
        self.layers = tuple(unique)
        self.name = name

    def __call__(self, acts: Activations) -> Tensor:
        value = self.fn(acts)
        if not isinstance(value, Tensor) or value.dim() != 1:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"objective {self.name} must give one value per image, shape (N,); got {got}")
        return value

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, numbers.Real):
            if other == 0:
                return self
            return Objective(lambda a: self(a) + float(other), self.layers, f"{self.name} + {other:g}")
        if not isinstance(other, Objective):
            return NotImplemented
        name = f"{self.name} + {other.name}"
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers, name)

    def __radd__(self, other: float) -> Objective:
        return self + other  # sum([...]) starts from 0

    def __mul__(self, weight: float) -> Objective:
        if not isinstance(weight, numbers.Real):
            return NotImplemented
        return Objective(lambda a: float(weight) * self(a), self.layers, f"{weight:g} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, divisor: float) -> Objective:
        if not isinstance(divisor, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(divisor))

    def __neg__(self) -> Objective:
        return Objective(lambda a: -self(a), self.layers, f"-{self.name}")

    def __sub__(self, other: Objective | float) -> Objective:
        if isinstance(other, numbers.Real):
            return self + (-float(other))
        if not isinstance(other, Objective):
            return NotImplemented
        name = f"{self.name} - {other.name}"
        return Objective(lambda a: self(a) - other(a), self.layers + other.layers, name)

    def __rsub__(self, other: float) -> Objective:
        return -self + other


def _layer_label(layer: LayerLike) -> str:
    return repr(layer) if isinstance(layer, str) else type(layer).__name__


def channel(layer: LayerLike, c: int) -> Objective:
    r"""The mean activation of channel ``c`` of ``layer``: :math:`\frac{1}{HW}\sum_{i,j} A_{c,i,j}(x)`.

    For a linear layer (outputs ``(N, C)``) it is unit ``c``'s activation.
    """

    def fn(acts: Activations) -> Tensor:
        a = acts[layer]
        return a[:, c] if a.dim() == 2 else a[:, c].flatten(1).mean(dim=1)

    return Objective(fn, [layer], f"channel({_layer_label(layer)}, {c})")


def neuron(layer: LayerLike, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """The activation :math:`A_{c,y,x}(x)` of one unit of a convolutional layer.

    Args:
        layer: The layer.
        c: Channel.
        y: Row; default: the middle row ``H // 2``.
        x: Column; default: the middle column ``W // 2``.
    """

    def fn(acts: Activations) -> Tensor:
        a = acts[layer]
        if a.dim() != 4:
            raise ValueError(f"neuron() needs a layer with (N, C, H, W) outputs, got {tuple(a.shape)}")
        row = a.shape[2] // 2 if y is None else y
        col = a.shape[3] // 2 if x is None else x
        return a[:, c, row, col]

    where = "" if y is None and x is None else f", {y}, {x}"
    return Objective(fn, [layer], f"neuron({_layer_label(layer)}, {c}{where})")


def class_logit(c: int) -> Objective:
    """The model's output (logit) for class ``c``: ``model(x)[:, c]``."""

    def fn(acts: Activations) -> Tensor:
        out = acts[OUTPUT]
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise ValueError("class_logit() needs a model whose output is a tensor of scores (N, classes)")
        return out[:, c]

    return Objective(fn, [OUTPUT], f"class_logit({c})")


# ---------------------------------------------------------------------------------------------------
# Image parametrisations


_COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
"""Square root of the colour covariance of ImageNet photos (Olah et al. 2017), RGB rows."""


def _color_matrix() -> Tensor:
    m = _COLOR_CORRELATION_SVD_SQRT
    return (m / m.norm(dim=0).max()).to(torch.float32)


def _to_image(raw: Tensor, decorrelate: bool) -> Tensor:
    """Decorrelated colour (3 channels) to RGB, then a sigmoid into ``[0, 1]``."""
    if decorrelate and raw.shape[1] == 3:
        raw = torch.einsum("nchw,dc->ndhw", raw, _color_matrix().to(raw))
    return torch.sigmoid(raw)


def pixel_image(
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    decorrelate: bool = True,
    sd: float = 0.01,
    device: torch.device | str | None = None,
) -> tuple[list[Tensor], Callable[[], Tensor]]:
    """A pixel parametrisation: ``sigmoid(colour(p))`` with ``p`` initialised to noise of std ``sd``.

    Returns:
        ``(parameters, image)``: the tensors to optimise and a function giving the ``[0, 1]`` image.
    """
    param = (torch.randn(tuple(shape), generator=generator) * sd).to(device).requires_grad_(True)
    return [param], lambda: _to_image(param, decorrelate)


def fourier_image(
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    decorrelate: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[list[Tensor], Callable[[], Tensor]]:
    r"""A Fourier parametrisation: the image is the inverse real FFT of a learnt spectrum.

    With ``decorrelate`` the spectrum is scaled by :math:`1 / \max(f, 1/\max(H, W))^{\text{decay}}` for the
    frequency :math:`f = \sqrt{f_y^2 + f_x^2}` (cycles per pixel), so that equal steps on all coefficients
    give images with the :math:`1/f` spectrum of natural images, and 3-channel images use decorrelated
    colours; then a sigmoid maps into ``[0, 1]`` (Olah et al., "Feature Visualization", Distill 2017).

    Returns:
        ``(parameters, image)``: the tensors to optimise and a function giving the ``[0, 1]`` image.
    """
    n, c, h, w = (int(s) for s in shape)
    spectrum = torch.randn(n, c, h, w // 2 + 1, 2, generator=generator) * sd
    spectrum = spectrum.to(device).requires_grad_(True)
    fy = torch.fft.fftfreq(h, device=spectrum.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=spectrum.device)[None, :]
    freqs = (fy * fy + fx * fx).sqrt()
    if decorrelate:
        scale = 1.0 / freqs.clamp_min(1.0 / max(h, w)) ** decay_power
    else:
        scale = torch.ones_like(freqs)
    scale = scale[None, None, :, :, None].to(spectrum.dtype)

    def image() -> Tensor:
        raw = torch.fft.irfftn(torch.view_as_complex(scale * spectrum), s=(h, w), norm="ortho") / 4.0
        return _to_image(raw, decorrelate)

    return [spectrum], image


# ---------------------------------------------------------------------------------------------------
# Transformations (all size-preserving, all drawing from the given generator)


def _pick(options: Sequence[float], generator: torch.Generator) -> float:
    return float(options[int(torch.randint(len(options), (1,), generator=generator))])


def jitter(d: int) -> Transform:
    """Translate by up to ``d`` pixels in each direction (reflect-pad by ``d``, then a random crop)."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        if d <= 0:
            return x
        dy, dx = (int(v) for v in torch.randint(0, 2 * d + 1, (2,), generator=generator))
        padded = F.pad(x, (d, d, d, d), mode="reflect")
        return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]

    return apply


def _affine(x: Tensor, scale: float, degrees: float) -> Tensor:
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_scale(scales: Sequence[float]) -> Transform:
    """Zoom about the centre by a factor drawn from ``scales`` (bilinear; the size is kept)."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        s = _pick(scales, generator)
        return x if s == 1 else _affine(x, s, 0.0)

    return apply


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate about the centre by an angle in degrees drawn from ``degrees`` (bilinear; the size is kept)."""

    def apply(x: Tensor, generator: torch.Generator) -> Tensor:
        a = _pick(degrees, generator)
        return x if a == 0 else _affine(x, 1.0, a)

    return apply


def standard_transforms(size: int) -> list[Transform]:
    """Olah et al.'s transformation robustness, scaled to an image side of ``size`` pixels.

    A jitter of ``size / 14`` pixels (16 for 224), a scale in ``0.95 .. 1.05``, a rotation in ``-10 .. 10``
    degrees, and a jitter of ``size / 28`` pixels.
    """
    return [
        jitter(max(1, round(size / 14))),
        random_scale([1 + (i - 5) / 100 for i in range(11)]),
        random_rotate(list(range(-10, 11))),
        jitter(max(1, round(size / 28))),
    ]


def total_variation(x: Tensor) -> Tensor:
    r"""Mean absolute difference between neighbouring pixels, one value per image (see the module doc)."""
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return (dy + dx) / x[0].numel()


# ---------------------------------------------------------------------------------------------------
# The method


@dataclass
class ActivationMaximization:
    """What :func:`activation_maximization` returns.

    Attributes:
        image: ``(N, C, H, W)`` in ``[0, 1]``: the optimised images (detached).
        input: ``preprocess(image)``: what the model saw (without the random transformations).
        history: ``(steps, N)``: the objective at each step (on the transformed images).
        initial: ``(N,)``: the objective of the starting images (untransformed).
        final: ``(N,)``: the objective of the optimised images (untransformed).
    """

    image: Tensor
    input: Tensor
    history: Tensor
    initial: Tensor
    final: Tensor


def _evaluate(model, objective, layers, names, x, stop_early):
    store: dict[str, Tensor] = {}
    output = None
    with capture(layers, store, stop_early=stop_early):
        try:
            output = model(x)
        except StopForward:
            pass
    missing = [n for n in layers if n not in store]
    if missing:
        raise RuntimeError(f"layer(s) {', '.join(map(repr, missing))} did not run in the forward pass")
    by_name: dict[str | None, Tensor] = dict(store)
    if output is not None:
        by_name[OUTPUT] = output
    return objective(Activations(by_name, names))


def activation_maximization(
    model: nn.Module,
    objective: Objective,
    *,
    shape: Sequence[int],
    steps: int = 256,
    lr: float = 0.05,
    param: str = "fourier",
    decorrelate: bool = True,
    transforms: Sequence[Transform] | str | None = "standard",
    tv_weight: float = 0.0,
    l2_weight: float = 0.0,
    seed: int = 0,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ActivationMaximization:
    r"""Optimise images that maximise ``objective`` (Olah et al., "Feature Visualization", Distill 2017).

    Each step draws the random transformations, runs ``model(preprocess(t(image)))`` (stopping after the
    last layer the objective reads), and takes an Adam step on the image parameters along
    :math:`\nabla \big[\sum_n f(t(x_n)) - \lambda_{TV} \mathrm{TV}(x_n) - \lambda_2 \lVert x_n - \frac12
    \rVert^2 / CHW \big]` computed with ``torch.autograd.grad`` (see the module docstring for the terms).
    The model runs in eval mode; its modes, ``requires_grad`` flags, ``.grad`` tensors, buffers and hooks
    are as before after the call, also when it raises. All randomness (the starting noise and the
    transformations) comes from a ``torch.Generator`` seeded with ``seed``: the same seed gives the same
    images (on the CPU; some GPU kernels are not bitwise deterministic), and the global random state is
    not used.

    Args:
        model: Any ``nn.Module`` taking images ``(N, C, H, W)``.
        objective: An :class:`Objective` (e.g. ``channel("layer3", 5)``, ``neuron(...)``, ``class_logit(3)``,
            or a weighted sum of them).
        shape: ``(N, C, H, W)`` of the images (``N`` images optimised independently from different noise).
        steps: Optimisation steps.
        lr: Adam's learning rate.
        param: ``"fourier"`` (:func:`fourier_image`) or ``"pixel"`` (:func:`pixel_image`).
        decorrelate: The :math:`1/f` spectrum scaling (Fourier) and decorrelated colours (3 channels).
        transforms: ``"standard"`` (:func:`standard_transforms` for the image size), ``None`` (none) or a
            list of transforms ``(images, generator) -> images`` such as :func:`jitter`,
            :func:`random_scale`, :func:`random_rotate`.
        tv_weight: Weight :math:`\lambda_{TV}` of the total-variation penalty.
        l2_weight: Weight :math:`\lambda_2` of the L2 penalty towards mid-grey.
        seed: Seed of the generator.
        preprocess: Maps ``[0, 1]`` images to the model's input (e.g. a checkpoint's ``preprocess`` or
            :class:`netvis.data.transforms.Preprocess`); default: the identity.
        device: Default: the model's device.
        progress: Show a ``tqdm`` progress bar.

    Returns:
        An :class:`ActivationMaximization` (``image`` in ``[0, 1]``, ``history``, ``initial``/``final``).

    Raises:
        ValueError: an unknown layer in the objective, a bad ``shape``, ``param`` or ``steps``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> result = activation_maximization(net, channel("2", 1), shape=(1, 1, 16, 16), steps=20, lr=0.1)
        >>> bool(result.final > result.initial)
        True
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"objective must be an Objective (channel(), neuron(), class_logit()...), "
                        f"got {type(objective).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"shape must be (N, C, H, W), got {shape}")
    if param not in ("fourier", "pixel"):
        raise ValueError(f"param must be 'fourier' or 'pixel', got {param!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    layers: dict[str, nn.Module] = {}
    names: dict[int, str] = {}
    for layer in objective.layers:
        if layer is OUTPUT:
            continue
        name, module = resolve_layer(model, layer)
        layers[name] = module
        if isinstance(layer, nn.Module):
            names[id(layer)] = name
    stop_early = OUTPUT not in objective.layers
    if transforms == "standard":
        transforms = standard_transforms(min(shape[2], shape[3]))
    elif isinstance(transforms, str):
        raise ValueError(f"transforms must be 'standard', None or a list of transforms, got {transforms!r}")
    transforms = list(transforms or [])
    device = device_for(model, device)
    generator = torch.Generator().manual_seed(seed)
    make = fourier_image if param == "fourier" else pixel_image
    params, image = make(shape, generator=generator, decorrelate=decorrelate, device=device)
    prep = preprocess if preprocess is not None else (lambda t: t)
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []

    with eval_session(model, grad=True):
        with torch.no_grad():
            initial = _evaluate(model, objective, layers, names, prep(image()), stop_early).detach()
        for _ in tqdm(range(steps), disable=not progress, desc="activation maximization"):
            img = image()
            t = img
            for transform in transforms:
                t = transform(t, generator)
            value = _evaluate(model, objective, layers, names, prep(t), stop_early)
            loss = -value.sum()
            if tv_weight:
                loss = loss + tv_weight * total_variation(img).sum()
            if l2_weight:
                loss = loss + l2_weight * (img - 0.5).pow(2).flatten(1).mean(1).sum()
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(value.detach())
        with torch.no_grad():
            final_image = image().detach()
            model_input = prep(final_image)
            final = _evaluate(model, objective, layers, names, model_input, stop_early).detach()
    hist = torch.stack(history) if history else torch.zeros(0, shape[0], device=device)
    return ActivationMaximization(image=final_image, input=model_input.detach(), history=hist,
                                  initial=initial, final=final)
