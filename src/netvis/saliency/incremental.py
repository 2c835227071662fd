r"""Occlusion maps without re-running the whole network for every window position.

An occluded window changes only a small box of the image, and each convolution or pooling layer spreads a
changed box by its kernel and shrinks it by its stride. :func:`incremental_occlusion` runs the clean
image through the network once, keeps every layer's output, and for each batch of window positions
recomputes in every layer only the box its changed input can reach, reading everything else from the
cache. Layers that mix the whole map (adaptive or global pooling, flatten, linear layers) get the
patched whole maps. The result equals batched re-inference (:func:`netvis.saliency.occlusion` with
``engine="batched"``) up to floating-point rounding.

The engine follows the model's own ``forward``, traced with ``torch.fx``: convolutions (any stride,
padding, dilation and groups), max and average pooling, batch normalization and dropout in eval mode,
ReLU and the other pointwise activations (modules, ``F.relu``, ``torch.relu``, in-place forms), residual
additions and channel concatenations, netvis's input checks. A model it cannot trace, or an operation it
does not know acting on a partly changed map, makes it fall back to batched re-inference with an
:class:`IncrementalFallbackWarning` naming the reason.

Two approximations, both opt-in, trade exactness for speed (Nakandala et al. 2019):

* projective-field thresholding (``tau``): no windowed layer recomputes more than a fraction ``tau`` of
  its map's height and width, around the middle of the exact box;
* adaptive drill-down (``drilldown``): a coarse grid (a multiple of ``stride``) everywhere, the fine
  grid only at the ``drilldown_fraction`` of positions the interpolated coarse map marks as most
  important; the other positions hold the interpolated coarse map.

``report=True`` returns an :class:`OcclusionReport` with the engine used, the share of
multiply-accumulates the incremental plan needs, the time, and for the approximate modes the
:func:`ssim` of the map against the exact one.

From Nakandala, Kumar and Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019 (Krypton).
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from netvis.hooks import eval_session
from netvis.saliency._common import Select, TargetLike, check_images, check_model, clean_target
from netvis.saliency._fx_regions import Plan, Program, Unsupported, _nodes_in, build_program, plan_regions
from netvis.saliency._occlusion_grid import Fill, batched_occlusion, check_arguments, fill_values, upsample_map

__all__ = [
    "AUTO_MAX_MACS_FRACTION",
    "AUTO_MIN_MACS",
    "Approximation",
    "Calibration",
    "IncrementalFallbackWarning",
    "OcclusionReport",
    "approximate_occlusion",
    "calibrate_occlusion",
    "incremental_occlusion",
    "ssim",
]

AUTO_MAX_MACS_FRACTION = 0.6
"""``engine="auto"`` picks the incremental engine only when its plan needs at most this share of the
multiply-accumulates of batched re-inference ..."""

AUTO_MIN_MACS = 2e9
"""... and only when batched re-inference would need at least this many multiply-accumulates in all
(below that, tracing and bookkeeping cost more than they save)."""


class IncrementalFallbackWarning(UserWarning):
    """The incremental occlusion engine could not run a model and used batched re-inference instead."""


_WARNED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()
"""The fallback reasons already reported for each model (so that each is reported once per model); weak
references only, nothing is stored on the model."""


@dataclass
class OcclusionReport:
    """How an occlusion map was computed.

    Attributes:
        engine: ``"incremental"`` or ``"batched"``.
        mode: ``"exact"``, ``"threshold"`` (projective-field thresholding), ``"drilldown"`` or both
            (``"threshold+drilldown"``: the drill-down's passes run on the thresholded plan).
        reason: why batched re-inference was used (``None`` when the incremental engine ran).
        positions: occluded images evaluated (over all images).
        total_positions: ``N * H' * W'``, the positions of the full grid.
        macs_fraction: multiply-accumulates of the incremental plan (convolutions and linear layers) as a
            share of those of batched re-inference; ``None`` for the batched engine.
        seconds: wall time of the map (without the exact reference of ``ssim``).
        ssim: for the approximate modes with ``report=True``, the :func:`ssim` of each image's map (scores or
            drops, as returned, before upsampling) against the exact map; ``None`` for maps under 3 x 3.
        max_abs_diff: for the approximate modes, the largest absolute difference to the exact map.
    """

    engine: str
    mode: str = "exact"
    reason: str | None = None
    positions: int = 0
    total_positions: int = 0
    macs_fraction: float | None = None
    seconds: float = 0.0
    ssim: list[float] | None = None
    max_abs_diff: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------------


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 7, data_range: float | None = None) -> torch.Tensor:
    r"""Structural similarity of two maps (Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004).

    .. math::
        \mathrm{SSIM}(a, b) = \frac{1}{|\Omega|} \sum_{\omega \in \Omega}
        \frac{(2 \mu_a \mu_b + C_1)(2 \sigma_{ab} + C_2)}{(\mu_a^2 + \mu_b^2 + C_1)(\sigma_a^2 + \sigma_b^2 + C_2)},
        \qquad C_1 = (0.01 L)^2,\ C_2 = (0.03 L)^2,

    over all ``window x window`` windows :math:`\omega` that fit inside the map, with the means, the
    (sample, :math:`n - 1`) variances and the covariance taken over each window, as scikit-image's
    ``structural_similarity`` does by default. :math:`L` is ``data_range``, by default the range of
    both maps together. Windows larger than a map shrink to its smaller side (odd, at least 3).

    Args:
        a, b: maps ``(H, W)`` or ``(N, H, W)`` (finite values).
        window: side of the square window (odd).
        data_range: :math:`L`; ``None``: ``max(a, b) - min(a, b)`` per map.

    Returns:
        A 0-D tensor for ``(H, W)`` maps, else ``(N,)``; 1 for identical maps.

    Raises:
        ValueError: different shapes, maps smaller than 3 x 3, or an even window.

    Example:
        >>> a = torch.rand(8, 8)
        >>> float(ssim(a, a))
        1.0
    """
    if a.shape != b.shape or a.dim() not in (2, 3):
        raise ValueError(
            f"ssim needs two maps of one shape (H, W) or (N, H, W); got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if window < 3 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 3, got {window}")
    single = a.dim() == 2
    a3, b3 = (a[None], b[None]) if single else (a, b)
    h, w = a3.shape[1:]
    if min(h, w) < 3:
        raise ValueError(f"ssim needs maps of at least 3 x 3, got {h} x {w}")
    side = min(window, h if h % 2 else h - 1, w if w % 2 else w - 1)
    dtype = torch.promote_types(a.dtype, torch.float64)
    a4, b4 = a3.to(dtype)[:, None], b3.to(dtype)[:, None]
    if data_range is None:
        flat = torch.cat([a4.flatten(1), b4.flatten(1)], 1)
        rng = (flat.amax(1) - flat.amin(1)).view(-1, 1, 1, 1)
    else:
        rng = torch.as_tensor(float(data_range), dtype=dtype, device=a.device)
    n = side * side
    cov = n / (n - 1)

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, side, stride=1)

    mu_a, mu_b = mean(a4), mean(b4)
    var_a = cov * (mean(a4 * a4) - mu_a * mu_a)
    var_b = cov * (mean(b4 * b4) - mu_b * mu_b)
    cov_ab = cov * (mean(a4 * b4) - mu_a * mu_b)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    # identical constant maps: 0/0 -> 1
    s = torch.where(torch.isnan(s), torch.ones_like(s), s)
    out = s.mean(dim=(1, 2, 3)).to(torch.promote_types(a.dtype, torch.float32))
    return out[0] if single else out


# ----------------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------------


def _gather(base: torch.Tensor, first: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int,
            w: int) -> torch.Tensor:
    """``base[first[b], top[b] + i, left[b] + j, :]`` for ``i < h, j < w``: ``(B, h, w, C)`` from ``(M, H, W, C)``."""
    _, height, width, c = base.shape
    rows = top[:, None] + torch.arange(h, device=top.device)
    cols = left[:, None] + torch.arange(w, device=top.device)
    flat = ((first[:, None] * height + rows)[:, :, None] * width + cols[:, None, :]).reshape(-1)
    return base.reshape(-1, c).index_select(0, flat).view(len(top), h, w, c)


class _Engine:
    """Runs a :class:`Program` for batches of window positions along a :class:`Plan`."""

    def __init__(self, program: Program, plan: Plan, fills: torch.Tensor, window: tuple[int, int],
                 device: torch.device) -> None:
        self.program = program
        self.plan = plan
        self.fills = fills
        self.window = window
        self.device = device
        self.steps = [s for s in program.steps if s.node in program.dependent]
        self.last_use: dict[torch.fx.Node, int] = {}
        for i, step in enumerate(self.steps):
            for n in step.inputs:
                self.last_use[n] = i
        for n in _nodes_in(program.output):
            self.last_use[n] = len(self.steps)
        self.offsets = {
            node: (box.top.to(device), box.left.to(device)) for node, box in plan.boxes.items() if not box.full
        }
        self.crop_offsets = {node: (c.top.to(device), c.left.to(device)) for node, c in plan.crops.items()}
        self.cache: dict[tuple, torch.Tensor] = {}

    # -- reading maps -------------------------------------------------------------------------------

    def _padded(self, node: torch.fx.Node, pads: tuple[int, int, int, int], value: float) -> torch.Tensor:
        key = (node, pads, value)
        if key not in self.cache:
            clean = self.program.values[node]
            if any(pads):
                clean = F.pad(clean, (pads[2], pads[3], pads[0], pads[1]), value=value)
            self.cache[key] = clean.permute(0, 2, 3, 1).contiguous()
        return self.cache[key]

    def read(self, node: torch.fx.Node, v: torch.Tensor, state: dict, top: torch.Tensor, left: torch.Tensor,
             h: int, w: int, pads: tuple[int, int, int, int] = (0, 0, 0, 0), value: float = 0.0,
             contained: bool = True) -> torch.Tensor:
        """The patched map of ``node`` (padded by ``pads``) on the boxes ``(top, left, h, w)``: ``(B, C, h, w)``."""
        box = self.plan.boxes[node]
        b = len(top)
        if box.full:
            whole = F.pad(v, (pads[2], pads[3], pads[0], pads[1]), value=value) if any(pads) else v
            if h == whole.shape[2] and w == whole.shape[3]:
                return whole
            base = whole.permute(0, 2, 3, 1)
            return _gather(base, torch.arange(b, device=top.device), top, left, h, w).permute(0, 3, 1, 2)
        out = _gather(self._padded(node, pads, value), state["image"], top, left, h, w)
        node_top, node_left = state["offsets"](node)
        dr = node_top + pads[0] - top
        dc = node_left + pads[2] - left
        patch = v.permute(0, 2, 3, 1)
        c = out.shape[3]
        arange_b = torch.arange(b, device=top.device)
        if contained:
            rows = dr[:, None] + torch.arange(box.h, device=top.device)
            cols = dc[:, None] + torch.arange(box.w, device=top.device)
            dst = ((arange_b[:, None] * h + rows)[:, :, None] * w + cols[:, None, :]).reshape(-1)
            out.view(-1, c).index_copy_(0, dst, patch.reshape(-1, c))
        else:
            rr = torch.arange(h, device=top.device)[None, :] - dr[:, None]
            cc = torch.arange(w, device=top.device)[None, :] - dc[:, None]
            valid = ((rr >= 0) & (rr < box.h))[:, :, None] & ((cc >= 0) & (cc < box.w))[:, None, :]
            flat = (
                (arange_b[:, None] * box.h + rr.clamp(0, box.h - 1))[:, :, None] * box.w
                + cc.clamp(0, box.w - 1)[:, None, :]
            ).reshape(-1)
            got = patch.reshape(-1, c).index_select(0, flat).view(b, h, w, c)
            out = torch.where(valid[..., None], got, out)
        return out.permute(0, 3, 1, 2)

    def materialize(self, node: torch.fx.Node, v: torch.Tensor, state: dict) -> torch.Tensor:
        """The whole patched map ``(B, C, H, W)``, contiguous as eager execution would give it to the next op."""
        box = self.plan.boxes[node]
        if not box.full:
            zeros = torch.zeros(len(state["image"]), dtype=torch.long, device=self.device)
            v = self.read(node, v, state, zeros, zeros, box.H, box.W)
        return v.contiguous()

    def _const_on_box(self, node: torch.fx.Node, state: dict, top: torch.Tensor, left: torch.Tensor, h: int,
                      w: int) -> torch.Tensor:
        value = self.program.values[node]
        key = ("const", node)
        if key not in self.cache:
            c = value.reshape(1, -1, *value.shape[-2:]) if value.dim() != 2 else value[None, None]
            self.cache[key] = c.permute(0, 2, 3, 1).contiguous()
        zeros = torch.zeros_like(top)
        got = _gather(self.cache[key], zeros, top, left, h, w).permute(0, 3, 1, 2)
        if value.dim() == 2:
            return got[:, 0][:, None]
        return got

    # -- one batch ----------------------------------------------------------------------------------

    def run(self, image: torch.Tensor, position: torch.Tensor) -> Any:
        """The model's outputs for the occluded images ``(image[b], position[b])``."""
        program, plan = self.program, self.plan
        values: dict[torch.fx.Node, Any] = {}
        offsets: dict[torch.fx.Node, tuple[torch.Tensor, torch.Tensor]] = {}

        def box_offsets(node: torch.fx.Node) -> tuple[torch.Tensor, torch.Tensor]:
            if node not in offsets:
                top, left = self.offsets[node]
                offsets[node] = (top[position], left[position])
            return offsets[node]

        state = {"image": image, "offsets": box_offsets}
        b = len(position)
        for i, step in enumerate(self.steps):
            node, kind = step.node, step.kind
            if kind == "input":
                c = program.regions[node][0]
                values[node] = self.fills[image].expand(b, c, *self.window)
            elif kind == "elementwise":
                box = plan.boxes[node]

                def arg(n: torch.fx.Node, node: torch.fx.Node = node, box: Any = box, step: Any = step) -> Any:
                    if n in program.regions:
                        if plan.same_box[(node, n)]:
                            return values[n]
                        if box.full:
                            return self.materialize(n, values[n], state)
                        top, left = box_offsets(node)
                        return self.read(n, values[n], state, top, left, box.h, box.w)
                    if n in program.dependent:
                        return values[n]
                    if n in step.crop_consts and not box.full:
                        top, left = box_offsets(node)
                        return self._const_on_box(n, state, top, left, box.h, box.w)
                    return program.values[n]

                values[node] = step.fn(*_map(step.args, arg), **_map(step.kwargs, arg))
            elif kind == "local":
                crop = plan.crops[node]
                src = step.inputs[0]
                top, left = self.crop_offsets[node]
                x = self.read(src, values[src], state, top[position], left[position], crop.h, crop.w, crop.pads,
                              crop.value, crop.contains_input)
                values[node] = step.local.run(x)
            elif kind == "shape":  # sizes from the shape alone; the device from the tensor itself
                real = step.op == "call_function" and step.args[1] in ("device", "is_cuda")

                def shape_arg(n: torch.fx.Node, real: bool = real) -> Any:
                    if n in program.regions:
                        v = values[n]
                        c, height, width = program.regions[n]
                        return v if real else torch.empty((b, c, height, width), dtype=v.dtype, device="meta")
                    return values[n] if n in program.dependent else program.values[n]

                values[node] = step.fn(*_map(step.args, shape_arg), **_map(step.kwargs, shape_arg))
            else:  # global, dense, unknown on whole maps

                def whole(n: torch.fx.Node) -> Any:
                    if n in program.regions:
                        return self.materialize(n, values[n], state)
                    return values[n] if n in program.dependent else program.values[n]

                values[node] = step.fn(*_map(step.args, whole), **_map(step.kwargs, whole))
            for n in step.inputs:
                if self.last_use.get(n) == i:
                    values.pop(n, None)

        def result(n: torch.fx.Node) -> Any:
            if n in program.regions:
                return self.materialize(n, values[n], state)
            return values[n] if n in program.dependent else program.values[n]

        return _map(program.output, result)


def _map(value: Any, fn: Any) -> Any:
    return torch.fx.node.map_arg(value, fn)


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def _grid_offsets(hp: int, wp: int, stride: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.arange(hp * wp)
    return (p // wp) * stride[0], (p % wp) * stride[1]


def _interpolation(n_fine: int, step: int) -> torch.Tensor:
    """``(n_fine, n_coarse)`` linear interpolation from coarse samples at fine indices ``0, step, 2 step, ...``."""
    n_coarse = (n_fine - 1) // step + 1
    u = torch.arange(n_fine, dtype=torch.float64) / step
    lo = u.floor().long().clamp(max=n_coarse - 1)
    hi = (lo + 1).clamp(max=n_coarse - 1)
    t = (u - lo).clamp(0, 1)
    t = torch.where(hi == lo, torch.zeros_like(t), t)
    m = torch.zeros(n_fine, n_coarse, dtype=torch.float64)
    m[torch.arange(n_fine), lo] += 1 - t
    m[torch.arange(n_fine), hi] += t
    return m


def _check_options(tau: Any, drilldown: Any, fraction: Any, stride: tuple[int, int]) -> tuple[int, int] | None:
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not 0 < tau <= 1):
        raise ValueError(f"tau must be a number in (0, 1] or None, got {tau!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"drilldown_fraction must be in (0, 1], got {fraction!r}")
    if drilldown is None:
        return None
    coarse = (drilldown, drilldown) if isinstance(drilldown, numbers.Integral) else tuple(drilldown)
    if len(coarse) != 2 or not all(isinstance(c, numbers.Integral) and not isinstance(c, bool) for c in coarse):
        raise TypeError(f"drilldown must be an int or a pair of ints (a coarse stride), got {drilldown!r}")
    factors = []
    for c, s in zip(coarse, stride, strict=True):
        if c < s or c % s:
            raise ValueError(f"the drill-down stride {tuple(coarse)} must be a multiple of the stride {stride}")
        factors.append(c // s)
    return factors[0], factors[1]


def incremental_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    fill: Fill = "mean",
    output: Literal["score", "drop"] = "score",
    upsample: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    tau: float | None = None,
    drilldown: int | tuple[int, int] | None = None,
    drilldown_fraction: float = 0.25,
    report: bool = False,
    select: Select = None,
) -> torch.Tensor | tuple[torch.Tensor, OcclusionReport]:
    r"""Occlusion map by incremental inference: each layer recomputes only what the window can change.

    Same map as :func:`netvis.saliency.occlusion` (same arguments, same :math:`M_{ij}`), computed by
    running the clean images once, caching every layer's output, and, for each batch of window positions,
    recomputing in each layer only the box that the occluded window can reach. For a window
    :math:`[a, a + k)` and a layer with kernel :math:`k_\ell`, stride :math:`s_\ell`, padding
    :math:`p_\ell` and dilation :math:`d_\ell`, the changed rows of its output are

    .. math::
        \Big\lceil \tfrac{a + p_\ell - (k_\ell - 1) d_\ell}{s_\ell} \Big\rceil \le o \le
        \Big\lfloor \tfrac{a + h - 1 + p_\ell}{s_\ell} \Big\rfloor,

    for a changed input box of height :math:`h`, and the same for columns; additions and concatenations
    take the union of their inputs' boxes. Layers that see the whole map (global pooling, flatten,
    linear) get the patched whole maps. The map equals batched re-inference up to rounding (about
    1e-6 relative); the speed-up is the share of multiply-accumulates saved, large for early
    high-resolution layers (VGG) and small windows.

    From Nakandala, Kumar and Papakonstantinou, "Incremental and Approximate Inference for Faster
    Occlusion-based Deep CNN Explanations", SIGMOD 2019.

    When the model cannot be traced by ``torch.fx``, has forward hooks, or applies an operation the
    engine does not know to a partly changed map, the map is computed by batched re-inference and an
    :class:`IncrementalFallbackWarning` says why (once per model and reason).

    Args:
        model: a classifier mapping ``(N, C, H, W)`` images to ``(N, num_classes)`` scores.
        x: images ``(N, C, H, W)``.
        target: ``None``, an int, ``N`` ints or a callable ``outputs -> (M,) scores``.
        window: patch size ``k`` or ``(k_h, k_w)``.
        stride: step ``s`` or ``(s_h, s_w)``; ``None`` means ``max(k // 2, 1)``.
        fill: ``"mean"``, ``"channel_mean"``, a number or a tensor, as in :func:`netvis.saliency.occlusion`.
        output: ``"score"`` or ``"drop"`` (clean score minus occluded score).
        upsample: return ``(N, H, W)`` maps (see :func:`netvis.saliency.occlusion`).
        batch_size: window positions per incremental pass.
        progress: show a progress bar over the positions.
        tau: projective-field threshold in ``(0, 1]`` (approximate): no windowed layer recomputes more
            than ``ceil(tau * size)`` rows or columns of its map. ``None``: exact.
        drilldown: coarse stride (a multiple of ``stride``) for adaptive drill-down (approximate).
        drilldown_fraction: share of the fine grid evaluated after the coarse pass (the positions whose
            interpolated coarse drop is largest).
        report: also return an :class:`OcclusionReport`; with ``tau`` or ``drilldown`` it also computes
            the exact map to report the SSIM between the two (which costs an exact run).
        select: which part of the model's output holds the scores: ``None`` (a tensor, or the
            ``logits``/``out`` entry of a dict, dataclass or Hugging Face output), a key or attribute
            name, a tuple position or a callable (see :func:`netvis.saliency._common.select_output`).

    Returns:
        The map ``(N, H', W')`` (or ``(N, H, W)`` with ``upsample``), or ``(map, report)``.

    Raises:
        ValueError: as :func:`netvis.saliency.occlusion`, and for invalid ``tau`` / ``drilldown``.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                       nn.Flatten(), nn.Linear(4, 10))
        >>> x = torch.rand(1, 3, 32, 32)
        >>> fast = incremental_occlusion(model, x, 3, window=8, stride=4)
        >>> from netvis.saliency import occlusion
        >>> torch.allclose(fast, occlusion(model, x, 3, window=8, stride=4, engine="batched"), atol=1e-6)
        True
    """
    return run_occlusion(
        model, x, target, window=window, stride=stride, fill=fill, output=output, upsample=upsample,
        batch_size=batch_size, progress=progress, engine="incremental", tau=tau, drilldown=drilldown,
        drilldown_fraction=drilldown_fraction, report=report, select=select,
    )


def run_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    fill: Fill = "mean",
    output: Literal["score", "drop"] = "score",
    upsample: bool = False,
    batch_size: int = 256,
    progress: bool = False,
    precision: Literal["fp32", "bf16"] = "fp32",
    engine: Literal["auto", "incremental"] = "auto",
    tau: float | None = None,
    drilldown: int | tuple[int, int] | None = None,
    drilldown_fraction: float = 0.25,
    report: bool = False,
    select: Select = None,
    reference: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, OcclusionReport]:
    """:func:`incremental_occlusion` with the engine choice of :func:`netvis.saliency.occlusion`.

    ``reference=False`` skips the exact reference run that ``report=True`` makes for the approximate modes
    (the report then has no ``ssim``).

    ``engine="auto"`` runs the incremental engine when the model traces, the precision is fp32, its
    plan needs at most :data:`AUTO_MAX_MACS_FRACTION` of batched re-inference's multiply-accumulates and
    batched re-inference would need at least :data:`AUTO_MIN_MACS` of them; otherwise (silently) batched
    re-inference. ``engine="incremental"`` always tries, and warns when it falls back.
    """
    check_model(model)
    check_images(x)
    if engine not in ("auto", "incremental"):
        raise ValueError(f"engine must be 'auto' or 'incremental' here, got {engine!r}")
    (kh, kw), (sh, sw), (hp, wp) = check_arguments(x, window, stride, output, precision, batch_size)
    n, _, h, w = x.shape
    factors = _check_options(tau, drilldown, drilldown_fraction, (sh, sw))
    approximate = tau is not None or factors is not None
    modes = [name for name, on in (("threshold", tau is not None), ("drilldown", factors is not None)) if on]
    mode = "+".join(modes) or "exact"
    if precision != "fp32" and engine == "incremental":
        raise ValueError("the incremental engine computes in the model's precision; use precision='fp32'")
    x = x.detach()
    start = time.perf_counter()
    total = n * hp * wp

    reason = None
    maps = None
    info = OcclusionReport(engine="incremental", mode=mode, total_positions=total)
    if precision != "fp32":
        reason = "precision='bf16' runs batched"
    else:
        tops, lefts = _grid_offsets(hp, wp, (sh, sw))
        with eval_session(model, grad=False):
            try:
                program = build_program(model, x)
                plan = plan_regions(program, tops, lefts, (kh, kw), tau)
                resolved, clean = clean_target(model, x, target, batch_size, select)
                _check_reproduces(program, resolved, clean, n)
            except Unsupported as exc:
                reason = str(exc)
            if reason is None:
                info.macs_fraction = plan.macs_fraction
                batched_macs = plan.macs_full * total
                if engine == "auto" and (plan.macs_fraction > AUTO_MAX_MACS_FRACTION or batched_macs < AUTO_MIN_MACS):
                    reason = (
                        f"auto: the incremental plan needs {plan.macs_fraction:.0%} of batched re-inference's "
                        f"{batched_macs:.2g} multiply-accumulates (it runs at <= {AUTO_MAX_MACS_FRACTION:.0%} "
                        f"of >= {AUTO_MIN_MACS:.2g})"
                    )
            if reason is None:
                dtype = torch.promote_types(x.dtype, torch.float32)
                base = clean.to(dtype).view(n, 1, 1)
                fills = fill_values(fill, x, kh, kw)
                runner = _Runner(program, plan, fills, (kh, kw), x.device, resolved, batch_size, progress, dtype)
                if factors is None:
                    flat = runner.scores(*_all_pairs(n, hp * wp, x.device))
                    maps = flat.view(n, hp, wp)
                    info.positions = total
                else:
                    maps, info.positions = _drilldown(runner, n, hp, wp, factors, drilldown_fraction, base.view(n))
                info.seconds = time.perf_counter() - start
                if report and approximate and reference:
                    exact_runner = runner if tau is None else _Runner(
                        program, plan_regions(program, tops, lefts, (kh, kw), None), fills, (kh, kw), x.device,
                        resolved, batch_size, progress, dtype)
                    exact = exact_runner.scores(*_all_pairs(n, hp * wp, x.device)).view(n, hp, wp)
                    info.max_abs_diff = float((maps - exact).abs().max())
                    if min(hp, wp) >= 3:  # on the maps returned: scores or drops
                        shown, exact_shown = (base - maps, base - exact) if output == "drop" else (maps, exact)
                        info.ssim = [float(v) for v in ssim(shown, exact_shown).reshape(-1)]
                if output == "drop":
                    maps = base - maps
                if upsample:
                    maps = upsample_map(maps, (h, w), (kh, kw), (sh, sw))

    if maps is None:
        if engine == "incremental" and reason not in _WARNED.setdefault(model, set()):
            _WARNED[model].add(reason)
            warnings.warn(
                f"netvis: incremental occlusion of {type(model).__name__} falls back to batched re-inference: "
                f"{reason}",
                IncrementalFallbackWarning,
                stacklevel=3,
            )
        maps = batched_occlusion(model, x, target, window=(kh, kw), stride=(sh, sw), grid=(hp, wp), fill=fill,
                                 output=output, upsample=upsample, batch_size=batch_size, progress=progress,
                                 precision=precision, select=select)
        info = OcclusionReport(engine="batched", mode="exact", reason=reason, positions=total, total_positions=total,
                               macs_fraction=info.macs_fraction, seconds=time.perf_counter() - start)
    return (maps, info) if report else maps


def _check_reproduces(program: Program, resolved: Any, clean: torch.Tensor, n: int) -> None:
    """Raise :class:`Unsupported` unless the traced graph's clean output gives the model's clean scores."""
    try:
        mine = resolved.scores(program.clean_output, n)
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise Unsupported(f"the traced graph's output cannot be scored ({exc})") from exc
    scale = float(clean.abs().max()) if clean.numel() else 0.0
    if mine.shape != clean.shape or not torch.allclose(mine, clean, rtol=1e-4, atol=1e-5 * (1 + scale)):
        raise Unsupported("the traced graph does not reproduce the model's outputs")


def _all_pairs(n: int, positions: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.arange(n * positions, device=device)
    return f // positions, f % positions


class _Runner:
    """Scores of occluded images, ``batch_size`` positions per incremental pass."""

    def __init__(self, program: Program, plan: Plan, fills: torch.Tensor, window: tuple[int, int],
                 device: torch.device, resolved: Any, batch_size: int, progress: bool, dtype: torch.dtype) -> None:
        self.engine = _Engine(program, plan, fills, window, device)
        self.resolved = resolved
        self.batch_size = batch_size
        self.progress = progress
        self.dtype = dtype

    def scores(self, image: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        total = len(image)
        out = torch.empty(total, dtype=self.dtype, device=image.device)
        bar = None
        if self.progress:
            bar = tqdm(total=total, desc="occlusion (incremental)", unit="img")
        try:
            with torch.no_grad():
                for f0 in range(0, total, self.batch_size):
                    img = image[f0 : f0 + self.batch_size]
                    pos = position[f0 : f0 + self.batch_size]
                    outputs = self.engine.run(img, pos)
                    out[f0 : f0 + len(img)] = self.resolved.scores(outputs, len(img), rows=img).to(self.dtype)
                    if bar is not None:
                        bar.update(len(img))
        finally:
            if bar is not None:
                bar.close()
        return out


def _drilldown(runner: _Runner, n: int, hp: int, wp: int, factors: tuple[int, int], fraction: float,
               clean: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Coarse grid everywhere, fine grid on the top ``fraction`` of positions by interpolated drop."""
    device = clean.device
    fh, fw = factors
    ci = torch.arange(0, hp, fh)
    cj = torch.arange(0, wp, fw)
    coarse_pos = (ci[:, None] * wp + cj[None, :]).reshape(-1).to(device)
    pc = len(coarse_pos)
    image = torch.arange(n, device=device).repeat_interleave(pc)
    coarse = runner.scores(image, coarse_pos.repeat(n)).view(n, len(ci), len(cj))
    rh = _interpolation(hp, fh).to(device=device, dtype=coarse.dtype)
    rw = _interpolation(wp, fw).to(device=device, dtype=coarse.dtype)
    maps = rh @ coarse @ rw.T  # (n, hp, wp)
    done = torch.zeros(n, hp * wp, dtype=torch.bool, device=device)
    done[:, coarse_pos] = True
    flat = maps.view(n, hp * wp)
    flat[:, coarse_pos] = coarse.view(n, pc)
    drop = clean.view(n, 1) - flat
    k = max(1, math.ceil(fraction * hp * wp))
    chosen = drop.topk(min(k, hp * wp), dim=1).indices  # (n, k)
    pick = torch.zeros_like(done)
    pick.scatter_(1, chosen, True)
    pick &= ~done
    image, position = pick.nonzero(as_tuple=True)
    if len(image):
        flat[image, position] = runner.scores(image, position)
    return flat.view(n, hp, wp), n * pc + len(image)


# ----------------------------------------------------------------------------------------------------
# Approximation with a quality contract
# ----------------------------------------------------------------------------------------------------

DEFAULT_TAUS: tuple[float | None, ...] = (None, 0.7, 0.5, 0.35, 0.25)
"""Projective-field thresholds :func:`calibrate_occlusion` tries (``None``: no thresholding)."""

DEFAULT_DRILLDOWNS: tuple[tuple[int, float] | None, ...] = (
    None, (2, 0.4), (2, 0.25), (2, 0.15), (2, 0.08), (3, 0.25), (3, 0.15), (3, 0.08), (4, 0.15), (4, 0.08),
)
"""Drill-down settings :func:`calibrate_occlusion` tries: ``(factor, fraction)`` means a coarse stride of
``factor * stride`` and the fine grid on ``fraction`` of the positions (``None``: no drill-down)."""


@dataclass(frozen=True)
class Approximation:
    """One approximate setting of :func:`incremental_occlusion`.

    Attributes:
        tau: projective-field threshold, or ``None``.
        factor: drill-down coarse stride as a multiple of the stride, or ``None``.
        fraction: drill-down share of the fine grid.
    """

    tau: float | None = None
    factor: int | None = None
    fraction: float = 0.25

    @property
    def exact(self) -> bool:
        return self.tau is None and self.factor is None

    def options(self, stride: tuple[int, int]) -> dict[str, Any]:
        """The keyword options of :func:`incremental_occlusion` for this setting."""
        drill = None if self.factor is None else (self.factor * stride[0], self.factor * stride[1])
        return {"tau": self.tau, "drilldown": drill, "drilldown_fraction": self.fraction}

    def name(self) -> str:
        parts = [] if self.tau is None else [f"tau={self.tau:g}"]
        if self.factor is not None:
            parts.append(f"drilldown={self.factor}x stride, fraction={self.fraction:g}")
        return ", ".join(parts) or "exact"


@dataclass
class Calibration:
    """What :func:`calibrate_occlusion` found: the cheapest setting that meets the contract on its images.

    Attributes:
        setting: the chosen :class:`Approximation` (``exact`` when nothing cheaper met the contract).
        met: whether an approximate setting met the contract (``False``: the exact engine is used).
        min_ssim, max_error, margin: the contract (``None`` for a bound not asked for).
        ssim: per calibration image, the :func:`ssim` of the chosen setting's map against the exact map
            (1 for the exact fallback).
        error: per calibration image, the largest absolute difference as a share of the exact map's range.
        cost: estimated multiply-accumulates of the chosen setting as a share of the exact incremental
            engine's (the plan's share times the positions evaluated, at most).
        tried: every setting evaluated, cheapest first: its name, cost, worst SSIM and worst error.
        window, stride, fill, output: the occlusion arguments calibrated for.
        image_shape: ``(C, H, W)`` of the calibration images.
        engine: ``"incremental"``, or ``"batched"`` when the model cannot run incrementally (then only the
            exact map is possible).
        seconds: wall time of the calibration.
    """

    setting: Approximation
    met: bool
    min_ssim: float | None
    max_error: float | None
    margin: float
    ssim: list[float]
    error: list[float]
    cost: float
    tried: list[dict[str, Any]]
    window: tuple[int, int]
    stride: tuple[int, int]
    fill: Any
    output: str
    image_shape: tuple[int, ...]
    engine: str = "incremental"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return {
            "setting": self.setting.name(), "tau": self.setting.tau, "drilldown_factor": self.setting.factor,
            "drilldown_fraction": self.setting.fraction, "met": self.met, "min_ssim": self.min_ssim,
            "max_error": self.max_error, "margin": self.margin, "ssim": list(self.ssim), "error": list(self.error),
            "cost": self.cost, "tried": list(self.tried), "engine": self.engine, "seconds": self.seconds,
            "calibration_images": len(self.ssim), "image_shape": list(self.image_shape),
        }


def _check_contract(min_ssim: Any, max_error: Any, margin: Any) -> None:
    if min_ssim is None and max_error is None:
        raise ValueError("give the quality to meet: min_ssim (e.g. 0.9) and/or max_error")
    if min_ssim is not None and (isinstance(min_ssim, bool) or not isinstance(min_ssim, numbers.Real)
                                 or not -1 < min_ssim <= 1):
        raise ValueError(f"min_ssim must be a number in (-1, 1], got {min_ssim!r}")
    if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, numbers.Real)
                                  or not max_error >= 0):
        raise ValueError(f"max_error must be a number >= 0 (a share of the exact map's range), got {max_error!r}")
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real) or not 0 <= margin < 1:
        raise ValueError(f"margin must be a number in [0, 1), got {margin!r}")


def _map_errors(approx: torch.Tensor, exact: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per image: SSIM against the exact map, and the largest difference as a share of its range."""
    a, e = approx.to(torch.float64), exact.to(torch.float64)
    if min(e.shape[-2:]) >= 3:
        s = [float(v) for v in ssim(a, e).reshape(-1)]
    else:  # too small for SSIM's windows: only the error bound means something
        s = [1.0 if torch.equal(ai, ei) else -1.0 for ai, ei in zip(a, e, strict=True)]
    span = (e.flatten(1).amax(1) - e.flatten(1).amin(1)).clamp_min(1e-12)
    err = ((a - e).abs().flatten(1).amax(1) / span).tolist()
    return s, err


def _candidates(taus: Any, drilldowns: Any, hp: int, wp: int) -> list[Approximation]:
    out = []
    for tau in taus:
        for drill in drilldowns:
            if drill is None:
                out.append(Approximation(tau=tau))
                continue
            factor, fraction = drill
            if (hp - 1) // factor + 1 < 2 or (wp - 1) // factor + 1 < 2:
                continue  # the coarse grid would have a single row or column
            out.append(Approximation(tau=tau, factor=int(factor), fraction=float(fraction)))
    return [c for c in out if not c.exact]


def _positions(setting: Approximation, hp: int, wp: int) -> int:
    """The most positions a setting evaluates per image (coarse grid plus the drilled-down share)."""
    if setting.factor is None:
        return hp * wp
    coarse = ((hp - 1) // setting.factor + 1) * ((wp - 1) // setting.factor + 1)
    return min(hp * wp, coarse + math.ceil(setting.fraction * hp * wp))


def calibrate_occlusion(
    model: nn.Module,
    images: torch.Tensor,
    target: TargetLike = None,
    *,
    min_ssim: float | None = None,
    max_error: float | None = None,
    margin: float = 0.0,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    fill: Fill = "mean",
    output: Literal["score", "drop"] = "drop",
    batch_size: int = 256,
    taus: tuple[float | None, ...] = DEFAULT_TAUS,
    drilldowns: tuple[tuple[int, float] | None, ...] = DEFAULT_DRILLDOWNS,
) -> Calibration:
    r"""Find the cheapest approximate occlusion setting that meets a quality contract on calibration images.

    Computes the exact map of every calibration image with the incremental engine, then searches the
    approximate settings -- a projective-field threshold ``tau`` from ``taus``, an adaptive drill-down
    from ``drilldowns``, or both (Nakandala, Kumar and Papakonstantinou, SIGMOD 2019) -- by their
    estimated cost

    .. math:: c = \frac{\mathrm{MACs}_\tau}{\mathrm{MACs}_{\mathrm{exact}}} \cdot
              \frac{\text{positions evaluated (at most)}}{H' W'},

    First each approximation alone, from the cheapest of its family (smallest ``tau``; per drill-down
    factor, the smallest fraction) up to the first that meets the contract; then, cheapest first, the
    combinations of a threshold and a drill-down that each met it alone. It keeps the cheapest setting
    whose maps meet the contract on *every* calibration image:
    :math:`\mathrm{SSIM}(\tilde M, M) \ge` ``min_ssim + margin`` and
    :math:`\max |\tilde M - M| / (\max M - \min M) \le` ``max_error`` (:math:`M` the exact map,
    :math:`\tilde M` the approximation, both as returned: drops or scores, before upsampling). When no
    setting cheaper than exact meets it, the exact engine is chosen (``met=False``). The guarantee holds
    on the calibration images; ``margin`` buys headroom for other images.

    Args:
        model: a classifier.
        images: calibration images ``(N, C, H, W)``, like the ones to explain.
        target: as in :func:`netvis.saliency.occlusion`, for the calibration images.
        min_ssim: the lowest SSIM accepted (e.g. 0.9).
        max_error: the largest difference accepted, as a share of the exact map's range.
        margin: added to ``min_ssim`` during calibration.
        window, stride, fill, output, batch_size: as in :func:`incremental_occlusion`.
        taus: thresholds to try (``None``: none).
        drilldowns: ``(factor, fraction)`` drill-downs to try (``None``: none).

    Returns:
        A :class:`Calibration`; pass it to :func:`approximate_occlusion` to reuse it.

    Raises:
        ValueError: no bound given, or bounds or arguments out of range.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
        ...                       nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> cal = calibrate_occlusion(model, torch.rand(2, 1, 24, 24), 0, min_ssim=0.9, window=4, stride=2)
        >>> all(s >= 0.9 for s in cal.ssim)
        True
    """
    _check_contract(min_ssim, max_error, margin)
    check_model(model)
    check_images(images)
    (kh, kw), (sh, sw), (hp, wp) = check_arguments(images, window, stride, output, "fp32", batch_size)
    start = time.perf_counter()
    common = {"window": (kh, kw), "stride": (sh, sw), "fill": fill, "output": output, "batch_size": batch_size}
    exact, info = run_occlusion(model, images, target, engine="incremental", report=True, **common)
    base = {"min_ssim": None if min_ssim is None else float(min_ssim),
            "max_error": None if max_error is None else float(max_error), "margin": float(margin),
            "window": (kh, kw), "stride": (sh, sw), "fill": fill, "output": output,
            "image_shape": tuple(images.shape[1:])}
    n = images.shape[0]
    if info.engine != "incremental":  # only batched re-inference: nothing to approximate
        return Calibration(setting=Approximation(), met=False, ssim=[1.0] * n, error=[0.0] * n, cost=1.0, tried=[],
                           engine=info.engine, seconds=time.perf_counter() - start, **base)
    tops, lefts = _grid_offsets(hp, wp, (sh, sw))
    fractions: dict[float | None, float] = {}
    with eval_session(model, grad=False):
        program = build_program(model, images.detach())
        for tau in taus:
            fractions[tau] = plan_regions(program, tops, lefts, (kh, kw), tau).macs_fraction
    exact_fraction = fractions.get(None) or plan_regions(program, tops, lefts, (kh, kw), None).macs_fraction
    # thresholds that cut nothing on this model plan exactly like no threshold: keep one tau per plan
    distinct: dict[float, float | None] = {round(exact_fraction, 12): None}
    for tau in sorted((t for t in taus if t is not None), reverse=True):
        distinct.setdefault(round(fractions[tau], 12), tau)
    kept_taus = tuple(distinct.values())
    need_ssim = None if min_ssim is None else float(min_ssim) + float(margin)
    tried: list[dict[str, Any]] = []
    results: dict[Approximation, tuple[bool, list[float], list[float], float]] = {}

    def cost_of(cand: Approximation) -> float:
        return fractions.get(cand.tau, exact_fraction) / exact_fraction * _positions(cand, hp, wp) / (hp * wp)

    def evaluate(cand: Approximation) -> bool:
        if cand not in results:
            approx = run_occlusion(model, images, target, engine="incremental", **cand.options((sh, sw)), **common)
            s, err = _map_errors(approx, exact)
            ok = (need_ssim is None or min(s) >= need_ssim) and (max_error is None or max(err) <= max_error)
            results[cand] = (ok, s, err, cost_of(cand))
            tried.append({"setting": cand.name(), "cost": cost_of(cand), "min_ssim": min(s), "max_error": max(err),
                          "met": ok})
        return results[cand][0]

    # 1. each approximation alone, cheapest first within its family, up to the first that meets the
    #    contract (a smaller tau or fraction, or a coarser drill-down, only loses quality)
    passing: list[Approximation] = []
    for tau in sorted(t for t in kept_taus if t is not None):
        cand = Approximation(tau=tau)
        if cost_of(cand) < 1 and evaluate(cand):
            passing.append(cand)
            break
    singles = [c for c in _candidates((None,), drilldowns, hp, wp)]
    for factor in sorted({c.factor for c in singles}, reverse=True):
        for cand in sorted((c for c in singles if c.factor == factor), key=lambda c: c.fraction):
            if cost_of(cand) < 1 and evaluate(cand):
                passing.append(cand)
                break
    # 2. combinations of a threshold and a drill-down that each met the contract alone, when cheaper
    best = min(passing, key=cost_of, default=None)
    ok_taus = [c.tau for c in passing if c.factor is None]
    ok_drills = [c for c in passing if c.factor is not None]
    combos = [Approximation(tau=t, factor=d.factor, fraction=d.fraction)
              for t in kept_taus if t is not None and ok_taus and t >= min(ok_taus) for d in ok_drills]
    for cand in sorted(combos, key=cost_of):
        if best is not None and cost_of(cand) >= cost_of(best):
            break
        if evaluate(cand):
            best = cand
            break
    tried.sort(key=lambda t: t["cost"])
    if best is None:
        return Calibration(setting=Approximation(), met=False, ssim=[1.0] * n, error=[0.0] * n, cost=1.0,
                           tried=tried, seconds=time.perf_counter() - start, **base)
    _, s, err, cost = results[best]
    return Calibration(setting=best, met=True, ssim=s, error=err, cost=cost, tried=tried,
                       seconds=time.perf_counter() - start, **base)


def approximate_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    target: TargetLike = None,
    *,
    min_ssim: float | None = None,
    max_error: float | None = None,
    calibration: Calibration | torch.Tensor | None = None,
    calibration_target: TargetLike = None,
    calibration_images: int = 2,
    margin: float = 0.0,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] | None = None,
    fill: Fill = "mean",
    output: Literal["score", "drop"] = "drop",
    upsample: bool = False,
    batch_size: int = 256,
    verify: bool = False,
) -> tuple[torch.Tensor, OcclusionReport]:
    r"""Approximate occlusion that meets a requested quality: ``min_ssim`` and/or ``max_error`` vs exact.

    Calibrates (:func:`calibrate_occlusion`) on a few images -- ``calibration`` images given, or the first
    ``calibration_images`` of ``x`` -- and maps ``x`` with the cheapest setting that met the contract
    there, or with the exact engine when none did. A :class:`Calibration` from an earlier call is reused
    as is (calibrate once per model and kind of image, then explain many).

    The report says what was guaranteed: ``report.details["calibration"]`` holds the chosen setting,
    the SSIM and error reached on each calibration image, the settings tried and their costs, and
    ``report.details["contract"]`` whether the contract was met or the exact fallback ran. With
    ``verify=True`` the exact maps of ``x`` are computed too and ``report.ssim`` / ``report.max_abs_diff``
    give the quality reached on ``x`` itself (which costs an exact run).

    Args:
        model: a classifier.
        x: images ``(N, C, H, W)``.
        target: as in :func:`netvis.saliency.occlusion`.
        min_ssim: the lowest SSIM vs the exact map accepted (e.g. 0.9).
        max_error: the largest difference accepted, as a share of the exact map's range.
        calibration: a :class:`Calibration` to reuse, or calibration images ``(M, C, H, W)``; ``None``:
            the first ``calibration_images`` images of ``x``.
        calibration_target: target of separate calibration images (default: their predicted class).
        calibration_images: how many images of ``x`` calibrate when ``calibration`` is ``None``.
        margin: headroom added to ``min_ssim`` during calibration.
        window, stride, fill, output, upsample, batch_size: as in :func:`incremental_occlusion`.
        verify: also compute the exact maps and report the quality reached on ``x``.

    Returns:
        ``(maps, report)``: maps ``(N, H', W')`` (``(N, H, W)`` with ``upsample``) and the
        :class:`OcclusionReport` (``report.seconds`` is the map's time, without calibration).

    Raises:
        ValueError: no bound given, invalid arguments, or a reused calibration made for other
            occlusion arguments or image shapes.

    Example:
        >>> import torch, torch.nn as nn
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                       nn.Flatten(), nn.Linear(4, 3))
        >>> maps, report = approximate_occlusion(model, torch.rand(3, 1, 24, 24), 0, min_ssim=0.9,
        ...                                      window=4, stride=2)
        >>> maps.shape, min(report.details["calibration"]["ssim"]) >= 0.9
        (torch.Size([3, 11, 11]), True)
    """
    check_images(x)
    (kh, kw), (sh, sw), _ = check_arguments(x, window, stride, output, "fp32", batch_size)
    if isinstance(calibration, Calibration):
        cal = calibration
        wanted = {"window": (kh, kw), "stride": (sh, sw), "output": output, "image_shape": tuple(x.shape[1:])}
        got = {"window": cal.window, "stride": cal.stride, "output": cal.output, "image_shape": cal.image_shape}
        if wanted != got or not _same_fill(cal.fill, fill):
            raise ValueError(f"the calibration was made for {got} (fill {cal.fill!r}), not for {wanted} "
                             f"(fill {fill!r}); calibrate again")
        if (min_ssim is not None and (cal.min_ssim is None or cal.min_ssim < min_ssim)) or (
                max_error is not None and (cal.max_error is None or cal.max_error > max_error)):
            raise ValueError(f"the calibration guarantees min_ssim={cal.min_ssim}, max_error={cal.max_error}, "
                             f"weaker than the requested min_ssim={min_ssim}, max_error={max_error}")
    else:
        _check_contract(min_ssim, max_error, margin)
        if calibration is None:
            count = calibration_images
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"calibration_images must be a positive int, got {calibration_images!r}")
            m = min(calibration_images, x.shape[0])
            images, cal_target = x[:m], _target_head(target, m)
        else:
            images, cal_target = calibration, calibration_target
        cal = calibrate_occlusion(model, images, cal_target, min_ssim=min_ssim, max_error=max_error, margin=margin,
                                  window=(kh, kw), stride=(sh, sw), fill=fill, output=output, batch_size=batch_size)
    start = time.perf_counter()
    options = {"window": (kh, kw), "stride": (sh, sw), "fill": fill, "output": output, "upsample": upsample,
               "batch_size": batch_size}
    if cal.setting.exact:
        maps, report = run_occlusion(model, x, target, engine="incremental", report=True, **options)
        if verify:
            report.ssim = [1.0] * x.shape[0]
            report.max_abs_diff = 0.0
    else:
        maps, report = run_occlusion(model, x, target, engine="incremental", report=True, reference=verify,
                                     **cal.setting.options((sh, sw)), **options)
    report.seconds = time.perf_counter() - start
    report.details["calibration"] = cal.to_dict()
    report.details["contract"] = {
        "min_ssim": min_ssim if min_ssim is not None else cal.min_ssim,
        "max_error": max_error if max_error is not None else cal.max_error,
        "met_on_calibration": True,
        "approximate": cal.met,
        "fallback": None if cal.met else "exact",
    }
    return maps, report


def _same_fill(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and bool(
            torch.equal(a.cpu(), b.cpu()))
    return a == b


def _target_head(target: TargetLike, m: int) -> TargetLike:
    """The target of the first ``m`` images."""
    if isinstance(target, torch.Tensor) and target.dim() > 0:
        return target[:m]
    if isinstance(target, (list, tuple)):
        return list(target)[:m]
    return target
