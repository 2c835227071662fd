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
    "IncrementalFallbackWarning",
    "OcclusionReport",
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
        mode: ``"exact"``, ``"threshold"`` (projective-field thresholding) or ``"drilldown"``.
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
    if tau is not None:
        raise ValueError("choose one approximation: tau or drilldown, not both")
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
) -> torch.Tensor | tuple[torch.Tensor, OcclusionReport]:
    """:func:`incremental_occlusion` with the engine choice of :func:`netvis.saliency.occlusion`.

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
    mode = "threshold" if tau is not None else "drilldown" if factors is not None else "exact"
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
                if report and approximate:
                    exact_runner = runner if tau is None else _Runner(
                        program, plan_regions(program, tops, lefts, (kh, kw), None), fills, (kh, kw), x.device,
                        resolved, batch_size, progress, dtype)
                    exact = exact_runner.scores(*_all_pairs(n, hp * wp, x.device)).view(n, hp, wp)
                    info.max_abs_diff = float((maps - exact).abs().max())
                    if min(hp, wp) >= 3:  # on the maps returned: scores or drops
                        shown, reference = (base - maps, base - exact) if output == "drop" else (maps, exact)
                        info.ssim = [float(v) for v in ssim(shown, reference).reshape(-1)]
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
