r"""Measures behind the experiments: do saliency maps really explain the model?

* :func:`saliency_maps` -- every method of the registry (:mod:`netvis.saliency.methods`) (and a random map) with one
  set of options, reduced to one ``(N, H, W)`` map per image by :func:`to_2d`;
* :func:`spearman` and :func:`map_ssim` -- how similar two maps are (Adebayo et al. 2018);
* :func:`layer_units`, :func:`randomized_copy` -- cascading and independent parameter randomisation;
* :func:`perturbation_curves`, :func:`curve_area` -- deletion and insertion curves (Petsiuk et al. 2018);
* :func:`marker_mask`, :func:`add_marker`, :func:`region_hits` -- a planted cue and whether maps find it.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netvis._checks import check_positive_int
from netvis.bn import is_batchnorm
from netvis.hooks import call_order, eval_session
from netvis.saliency import default_layer
from netvis.saliency import methods as registry
from netvis.saliency.incremental import ssim
from netvis.saliency.localization import fill_uncovered

__all__ = [
    "MARKER_PATTERNS",
    "add_marker",
    "curve_area",
    "gaussian_blur",
    "layer_units",
    "map_ssim",
    "marker_mask",
    "perturbation_curves",
    "randomized_copy",
    "ranks",
    "region_hits",
    "saliency_maps",
    "spearman",
    "to_2d",
]

RANDOM = "random"
"""The name of the random map, the baseline every method must beat."""


# --------------------------------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------------------------------


def to_2d(saliency: Tensor, *, absolute: bool = True) -> Tensor:
    """One ``(N, H, W)`` map per image.

    Channel maps ``(N, C, H, W)`` become :math:`\\max_c |M_c|` (Simonyan et al.); maps that already are
    ``(N, H, W)`` (occlusion, Grad-CAM) keep their sign unless ``absolute``. NaN (pixels an occlusion
    window never covered) becomes the map's minimum: no evidence, least important.

    Args:
        saliency: ``(N, C, H, W)`` or ``(N, H, W)``.
        absolute: take the absolute value of ``(N, H, W)`` maps too.

    Returns:
        ``(N, H, W)`` float maps.
    """
    if saliency.dim() == 4:
        m = saliency.abs().amax(dim=1)
    elif saliency.dim() == 3:
        m = saliency.abs() if absolute else saliency
    else:
        raise ValueError(f"a saliency map is (N, C, H, W) or (N, H, W); got {tuple(saliency.shape)}")
    return fill_uncovered(m.float())


def method_options(model: nn.Module, image_size: tuple[int, int], params: Mapping[str, Any], seed: int) -> dict:
    """Per-method keyword options from an experiment's parameters, for every method of the registry.

    Each method gets its figure options (occlusion: output ``"drop"``, upsampled to the image) and those of
    these settings that are its options: ``window``/``stride`` from ``occlusion_window``/``occlusion_stride``,
    ``n_samples`` from ``smoothgrad_samples``, ``steps`` from ``ig_steps``, ``layer``
    (:func:`netvis.saliency.default_layer`) and ``generator`` (``seed``).
    """
    window = min(int(params.get("occlusion_window", 4)), *image_size)
    settings = {
        "window": window,
        "stride": int(params.get("occlusion_stride", max(window // 2, 1))),
        "n_samples": int(params.get("smoothgrad_samples", 25)),
        "steps": int(params.get("ig_steps", 32)),
        "generator": seed,
        "layer": default_layer(model),
    }
    return {method.name: {**method.figure_options, **method.select(settings)} for method in registry.methods()}


def saliency_maps(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    methods: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    generator: torch.Generator | None = None,
    absolute: bool = True,
) -> dict[str, Tensor]:
    """Maps of ``x`` by every named method, each reduced to ``(N, H, W)`` by :func:`to_2d`.

    Args:
        model: a classifier.
        x: images ``(N, C, H, W)``.
        target: ``(N,)`` classes to explain.
        methods: names of the registry (:mod:`netvis.saliency.methods`), or ``"random"`` (uniform noise from
            ``generator``).
        options: method name -> keyword options (see :func:`method_options`).
        generator: for the random map.
        absolute: passed to :func:`to_2d`.

    Returns:
        ``{method: (N, H, W) map}`` on the CPU.
    """
    out: dict[str, Tensor] = {}
    for name in methods:
        if name == RANDOM:
            g = generator if generator is not None else torch.Generator().manual_seed(0)
            out[name] = torch.rand(x.shape[0], *x.shape[-2:], generator=g)
            continue
        if name not in registry.names():
            raise ValueError(f"unknown saliency method {name!r}; choose from {', '.join(registry.names())} or 'random'")
        m = registry.get(name)(model, x, target, **dict((options or {}).get(name, {})))
        out[name] = to_2d(m.detach(), absolute=absolute).cpu()
    return out


# --------------------------------------------------------------------------------------------------
# similarity of maps
# --------------------------------------------------------------------------------------------------


def ranks(values: Tensor) -> Tensor:
    """Ranks ``1..M`` along the last dimension, ties getting their average rank (as ``scipy.stats.rankdata``).

    Args:
        values: ``(..., M)``.

    Returns:
        float64 ranks, same shape.
    """
    flat = values.reshape(-1, values.shape[-1]).to(torch.float64)
    out = torch.empty_like(flat)
    for i, row in enumerate(flat):
        sorted_values, order = row.sort(stable=True)
        _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).to(torch.float64)  # 1-based rank of each group's last member
        average = ends - (counts.to(torch.float64) - 1) / 2
        out[i, order] = average[inverse]
    return out.reshape(values.shape)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of each pair of maps: the Pearson correlation of their ranks.

    .. math:: \\rho(a, b) = \\operatorname{corr}(\\operatorname{rank}(a), \\operatorname{rank}(b))

    Ties get average ranks. A constant map carries no ranking: its correlation is 0.

    Args:
        a, b: ``(N, ...)`` maps of one shape (each sample flattened).

    Returns:
        ``(N,)`` float64 correlations in ``[-1, 1]``.

    Example:
        >>> import torch
        >>> round(float(spearman(torch.tensor([[1., 2., 3., 4.]]), torch.tensor([[10., 20., 40., 30.]]))[0]), 6)
        0.8
    """
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes: {tuple(a.shape)} and {tuple(b.shape)}")
    ra = ranks(a.detach().cpu().flatten(1))
    rb = ranks(b.detach().cpu().flatten(1))
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1))
    rho = (ra * rb).sum(1) / denominator
    return torch.where(denominator > 0, rho, torch.zeros_like(rho))


def _unit_range(m: Tensor) -> Tensor:
    flat = m.flatten(1)
    low, high = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    return (m - low) / (high - low).clamp_min(1e-12)


def map_ssim(a: Tensor, b: Tensor, *, window: int = 7) -> Tensor:
    """SSIM of each pair of maps after scaling each map to ``[0, 1]`` (as Adebayo et al. compare maps).

    Uses :func:`netvis.saliency.incremental.ssim` with ``data_range=1``.

    Args:
        a, b: ``(N, H, W)`` maps.

    Returns:
        ``(N,)`` SSIM values (1: identical up to an affine scaling).
    """
    a = _unit_range(a.detach().cpu().to(torch.float64))
    b = _unit_range(b.detach().cpu().to(torch.float64))
    return ssim(a, b, window=window, data_range=1.0).to(torch.float64)


# --------------------------------------------------------------------------------------------------
# parameter randomisation
# --------------------------------------------------------------------------------------------------


def layer_units(model: nn.Module, x: Tensor, granularity: str = "blocks") -> list[str]:
    """The model's parameterised units in the order the forward pass first calls them.

    ``"stages"``: the model's direct children that hold parameters (a ResNet's ``conv1``, ``bn1``,
    ``layer1``... ``fc``); ``"blocks"``: the same, with ``nn.Sequential``/``nn.ModuleList`` children
    expanded into their members (a ResNet's residual blocks); ``"layers"``: every module that holds
    parameters itself (each convolution, BN layer and linear layer).

    Args:
        model: the network.
        x: one batch to run the model on (its output is not used).
        granularity: ``"stages"``, ``"blocks"`` or ``"layers"``.

    Returns:
        Dotted names for ``model.get_submodule``, input side first.
    """
    def has_params(m: nn.Module) -> bool:
        return any(True for _ in m.parameters())

    if granularity == "layers":
        candidates = [(n, m) for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    elif granularity in ("stages", "blocks"):
        candidates = []

        def expand(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                full = f"{prefix}.{name}" if prefix else name
                if not has_params(child):
                    continue
                if granularity == "blocks" and isinstance(child, (nn.Sequential, nn.ModuleList)):
                    expand(full, child)
                else:
                    candidates.append((full, child))

        expand("", model)
    else:
        raise ValueError(f"granularity must be 'stages', 'blocks' or 'layers', got {granularity!r}")
    with eval_session(model, grad=False):
        called = call_order(model, [module for _, module in candidates], x[:1])
    return [candidates[i][0] for i in called]


def randomized_copy(model: nn.Module, units: Sequence[str], seed: int) -> nn.Module:
    """A copy of ``model`` whose ``units`` are re-initialised; ``model`` itself is not touched.

    In each unit, every submodule with a ``reset_parameters`` method (convolutions, linear layers)
    draws fresh weights with PyTorch's default initialisation, seeded from ``seed`` and the unit's name
    (so a unit gets the same weights in the cascading and the independent test; the global random
    state is forked, so it is the same before and after); batch normalization layers
    get back their initial :math:`\\gamma = 1, \\beta = 0` and keep their running statistics.

    Args:
        model: the trained network.
        units: dotted names (see :func:`layer_units`).
        seed: seed of the new weights.

    Returns:
        The randomised copy, in eval mode, on ``model``'s device.
    """
    clone = copy.deepcopy(model)
    devices = sorted({p.device.index or 0 for p in clone.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for name in units:
            # one seed per unit: a unit gets the same new weights whichever other units are randomised
            torch.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
            unit = clone.get_submodule(name)
            for module in unit.modules():
                if is_batchnorm(module):
                    if getattr(module, "weight", None) is not None:
                        module.weight.fill_(1.0)
                    if getattr(module, "bias", None) is not None:
                        module.bias.zero_()
                elif hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False)):
                    module.reset_parameters()
    return clone.eval()


# --------------------------------------------------------------------------------------------------
# deletion and insertion
# --------------------------------------------------------------------------------------------------


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """``x`` ``(N, C, H, W)`` blurred by a Gaussian of standard deviation ``sigma`` pixels, channel by channel.

    A separable kernel of ``2 ceil(2 sigma) + 1`` taps (at most ``2 min(H, W) - 1``), normalised to sum
    1, with reflected borders (as ``torchvision.transforms.functional.gaussian_blur``).
    """
    h, w = x.shape[-2:]
    radius = min(math.ceil(2 * sigma), min(h, w) - 1)
    if sigma <= 0 or radius < 1:
        return x.clone()
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _baseline(x: Tensor, baseline: str | float | Tensor, blur_sigma: float = 5.0) -> Tensor:
    if isinstance(baseline, Tensor):
        return baseline.to(device=x.device, dtype=x.dtype).expand_as(x)
    if baseline == "mean":
        return x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "blur":
        return gaussian_blur(x, blur_sigma)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    raise ValueError(f"baseline must be 'mean', 'zero', 'blur', a number or a tensor, got {baseline!r}")


def perturbation_curves(
    model: nn.Module,
    x: Tensor,
    saliency: Tensor,
    target: Tensor,
    *,
    mode: str = "deletion",
    steps: int = 28,
    baseline: str | float | Tensor = "blur",
    blur_sigma: float = 5.0,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Deletion or insertion curves: the target's probability as pixels go in saliency order.

    Pixels are ordered by decreasing saliency (ties in random order from ``generator``). At step
    :math:`k = 0..S` the first :math:`n_k = \\operatorname{round}(k HW / S)` of them are *deleted*
    (set to the baseline, in every channel) or, for insertion, the image starts as the baseline and
    those pixels are *inserted* (copied from the image). The curve holds
    :math:`p_c(x_k) = \\operatorname{softmax}(f(x_k))_c`. A faithful map makes the deletion curve fall
    fast (small area) and the insertion curve rise fast (large area).

    From Petsiuk, Das & Saenko, "RISE: Randomized Input Sampling for Explanation of Black-box Models",
    BMVC 2018.

    Args:
        model: a classifier (run in eval mode; its state is left as it was).
        x: images ``(N, C, H, W)`` (the model's input).
        saliency: ``(N, H, W)`` maps (high = important).
        target: ``(N,)`` classes.
        mode: ``"deletion"`` or ``"insertion"``.
        steps: :math:`S`.
        baseline: what a deleted pixel becomes: ``"blur"`` (the pixel of a Gaussian-blurred copy of
            the image, as Petsiuk et al. start insertion: the information goes, the image stays an
            image), ``"mean"`` (each image's mean over pixels and channels, like occlusion's fill),
            ``"zero"`` (for normalised inputs: the data set's mean), a number, or a tensor broadcastable
            to ``x`` (e.g. a black image through the preprocessing: Petsiuk et al. delete to black).
            Gray or black pixels scattered over an image are themselves a strong signal to a network
            (out of the training distribution), so the curves depend on this choice.
        blur_sigma: standard deviation in pixels of the ``"blur"`` baseline.
        generator: breaks ties between equal saliency values.
        batch_size: the most images per forward pass.

    Returns:
        ``(N, S + 1)`` probabilities (CPU, float64).
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    check_positive_int(steps, "steps")
    n, _, h, w = x.shape
    if saliency.shape != (n, h, w):
        raise ValueError(f"saliency must be (N, H, W) = {(n, h, w)}, got {tuple(saliency.shape)}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = x.detach()
    base = _baseline(x, baseline, blur_sigma)
    hw = h * w
    counts = torch.tensor([round(k * hw / steps) for k in range(steps + 1)], device=x.device)
    # position of each pixel in the order: ties broken by a random permutation, then stable sort
    position = torch.empty(n, hw, dtype=torch.long)
    for i in range(n):
        perm = torch.randperm(hw, generator=g)
        order = perm[saliency[i].detach().cpu().flatten()[perm].double().argsort(descending=True, stable=True)]
        position[i, order] = torch.arange(hw)
    position = position.to(x.device)
    target = target.to(x.device)
    probs = torch.empty(n, steps + 1, dtype=torch.float64)
    jobs = [(i, k) for i in range(n) for k in range(steps + 1)]
    with eval_session(model, grad=False):
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            rows = torch.tensor([i for i, _ in chunk], device=x.device)
            ks = torch.tensor([k for _, k in chunk], device=x.device)
            changed = (position[rows] < counts[ks].view(-1, 1)).view(-1, 1, h, w)
            if mode == "deletion":
                batch = torch.where(changed, base[rows], x[rows])
            else:
                batch = torch.where(changed, x[rows], base[rows])
            p = F.softmax(model(batch).float(), dim=1).gather(1, target[rows].view(-1, 1))[:, 0]
            probs[rows.cpu(), ks.cpu()] = p.double().cpu()
    return probs


def curve_area(curves: Tensor) -> Tensor:
    """Area under each curve over ``[0, 1]`` (trapezoids over equally spaced steps).

    Args:
        curves: ``(N, S + 1)``.

    Returns:
        ``(N,)`` areas.
    """
    s = curves.shape[-1] - 1
    if s < 1:
        raise ValueError("a curve needs at least two points")
    return (curves[..., 1:] + curves[..., :-1]).sum(-1) / (2 * s)


# --------------------------------------------------------------------------------------------------
# a planted cue
# --------------------------------------------------------------------------------------------------


def marker_mask(image_size: tuple[int, int], size: int, corner: str = "top-left", margin: int = 1) -> Tensor:
    """A boolean ``(H, W)`` mask of a ``size x size`` square ``margin`` pixels from a corner, or in the centre.

    Args:
        image_size: ``(H, W)``.
        size: side of the square in pixels.
        corner: ``"top-left"``, ``"top-right"``, ``"bottom-left"``, ``"bottom-right"`` or ``"center"``
            (``margin`` does not apply).
        margin: distance from the image border.
    """
    h, w = image_size
    if size < 1 or size + margin > min(h, w):
        raise ValueError(f"a {size}x{size} marker {margin} px from the border does not fit a {h}x{w} image")
    corners = {"top-left": (margin, margin), "top-right": (margin, w - margin - size),
               "bottom-left": (h - margin - size, margin), "bottom-right": (h - margin - size, w - margin - size),
               "center": ((h - size) // 2, (w - size) // 2)}
    if corner not in corners:
        raise ValueError(f"corner must be one of {', '.join(corners)}, got {corner!r}")
    top, left = corners[corner]
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


MARKER_PATTERNS = ("checker", "square")


def add_marker(images: Tensor, mask: Tensor, value: int = 255, pattern: str = "square") -> Tensor:
    """``uint8`` images ``(N, C, H, W)`` with the marker painted into every channel (a copy).

    Args:
        images: ``uint8`` images.
        mask: ``(H, W)`` boolean region, e.g. from :func:`marker_mask`.
        value: the marker's intensity.
        pattern: ``"square"`` paints the whole region in ``value``; ``"checker"`` paints a checkerboard
            of ``value`` and ``255 - value`` starting with ``value`` in the region's top-left pixel (a
            textured tag rather than a flat blob).
    """
    if pattern not in MARKER_PATTERNS:
        raise ValueError(f"marker pattern must be one of {', '.join(MARKER_PATTERNS)}, got {pattern!r}")
    if not 0 <= int(value) <= 255:
        raise ValueError(f"marker value must be in 0..255, got {value}")
    out = images.clone()
    mask = mask.to(images.device)
    if pattern == "square":
        out[:, :, mask] = value
        return out
    rows, cols = torch.nonzero(mask, as_tuple=True)
    even = ((rows - rows.min()) + (cols - cols.min())) % 2 == 0
    out[:, :, rows[even], cols[even]] = int(value)
    out[:, :, rows[~even], cols[~even]] = 255 - int(value)
    return out


def region_hits(maps: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """How much of each map's top saliency falls on a region.

    * ``peak``: the most salient window the size of the region's bounding box (the largest sum of the
      map over such a window) covers at least half of the region;
    * ``argmax``: the single most salient pixel lies in the region;
    * ``top``: the fraction of the top-``|region|`` pixels that lie in the region;
    * ``mass``: the fraction of the map's total (non-negative) mass on the region; compare with the
      region's share of the image, ``mask.float().mean()``.

    Args:
        maps: ``(N, H, W)`` non-negative maps.
        mask: ``(H, W)`` boolean region.

    Returns:
        ``{"peak", "argmax", "top", "mass"}``, each ``(N,)`` (booleans as 0/1 floats).
    """
    n, h, w = maps.shape
    maps = maps.detach().cpu().float().clamp_min(0)
    mask = mask.cpu()
    flat_mask = mask.flatten()
    rows, cols = torch.nonzero(mask, as_tuple=True)
    kh, kw = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    sums = F.avg_pool2d(maps[:, None], (kh, kw), stride=1)[:, 0]  # (N, H-kh+1, W-kw+1), anchored top-left
    best = sums.flatten(1).argmax(1)
    cover = F.avg_pool2d(mask[None, None].float(), (kh, kw), stride=1)[0, 0].flatten() * (kh * kw)
    peak = cover[best] >= 0.5 * float(flat_mask.sum())
    argmax = flat_mask[maps.flatten(1).argmax(1)]
    k = int(flat_mask.sum())
    top = flat_mask[maps.flatten(1).topk(k, dim=1).indices].float().mean(1)
    total = maps.flatten(1).sum(1)
    mass = (maps.flatten(1)[:, flat_mask].sum(1) / total.clamp_min(1e-30)).where(total > 0, torch.zeros_like(total))
    return {"peak": peak.float(), "argmax": argmax.float(), "top": top, "mass": mass}
