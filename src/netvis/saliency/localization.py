r"""Does a saliency map point at the object? Scores of maps against ground-truth masks.

Three scores, each a pure function of a batch of maps ``(N, H, W)`` and masks ``(N, H, W)`` (``True``
on the object, e.g. a wafer map's defect), one value per image:

* :func:`pointing_game` -- is the map's maximum on the object (Zhang, Bargal, Lin, Brandt, Shen and
  Sclaroff, "Top-down Neural Attention by Excitation Backprop", ECCV 2016), optionally within a
  tolerance of a few pixels;
* :func:`energy_inside` -- the share of the map's positive mass that falls on the object (the
  "energy-based pointing game" of Wang et al., "Score-CAM: Score-Weighted Visual Explanations for
  Convolutional Neural Networks", CVPR workshops 2020);
* :func:`mask_auc` -- the ROC-AUC of the map's pixel values as a detector of object pixels: the chance
  that a random object pixel scores above a random background pixel (ties count one half).

An optional ``valid`` region (e.g. the wafer itself, without the corners outside it) restricts every
score to its pixels. Images whose mask is empty (inside ``valid``) score ``nan``; :func:`mean_score`
averages the others. A map of uniform noise scores about the mask's area share in the pointing game
and in energy, and 0.5 in AUC: the baseline a method must beat.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["energy_inside", "fill_uncovered", "localization_scores", "mask_auc", "mean_score", "pointing_game"]


def fill_uncovered(maps: Tensor) -> Tensor:
    """``(N, H, W)`` maps with every NaN (a pixel no occlusion window covered: no evidence) replaced by its
    image's smallest value, the least important; maps without NaN are returned as they are.

    >>> fill_uncovered(torch.tensor([[[float("nan"), 2.0], [3.0, 1.0]]])).tolist()
    [[[1.0, 2.0], [3.0, 1.0]]]
    """
    if not torch.isnan(maps).any():
        return maps
    low = torch.nan_to_num(maps, nan=float("inf")).flatten(1).amin(1).view(-1, *([1] * (maps.dim() - 1)))
    return torch.where(torch.isnan(maps), low.expand_as(maps), maps)


def _check(maps: Tensor, masks: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(maps, Tensor) or not isinstance(masks, Tensor):
        raise TypeError(f"maps and masks must be tensors, got {type(maps).__name__} and {type(masks).__name__}")
    if maps.dim() == 2:
        maps = maps[None]
    if masks.dim() == 2:
        masks = masks[None]
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"maps and masks must both be (N, H, W) (or (H, W)); got {tuple(maps.shape)} and "
                         f"{tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        raise ValueError(f"masks must be bool tensors, got {masks.dtype}")
    if not maps.is_floating_point():
        maps = maps.to(torch.float32)
    if torch.isnan(maps).any():
        raise ValueError("maps contain NaN; replace uncovered pixels first (e.g. by the map's minimum)")
    if valid is None:
        valid = torch.ones_like(masks)
    else:
        if valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor, got {valid.dtype}")
        valid = valid.to(masks.device)
        if valid.dim() == 2:
            valid = valid[None]
        try:
            valid = valid.expand_as(masks)
        except RuntimeError as exc:
            raise ValueError(f"valid must be (H, W) or (N, H, W) like the masks, got {tuple(valid.shape)}") from exc
    return maps.detach(), masks.to(maps.device), valid.to(maps.device)


def _dilate(masks: Tensor, tolerance: float) -> Tensor:
    """Pixels within Euclidean distance ``tolerance`` of a mask pixel (a disc-shaped dilation)."""
    if tolerance <= 0:
        return masks
    r = int(math.floor(tolerance))
    offsets = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float64)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2) <= tolerance**2 + 1e-9
    kernel = disc.to(torch.float32)[None, None]
    hits = F.conv2d(masks[:, None].to(torch.float32), kernel, padding=r)
    return hits[:, 0] > 0.5


def pointing_game(maps: Tensor, masks: Tensor, *, tolerance: float = 0.0, valid: Tensor | None = None) -> Tensor:
    r"""Pointing game: 1 where the map's maximum lies on the object (within ``tolerance`` pixels), else 0.

    .. math:: \mathrm{hit}_n = \frac{|\{p \in P_n : d(p, M_n) \le t\}|}{|P_n|}, \qquad
              P_n = \operatorname{argmax}_{p \in V_n} S_n(p)

    where :math:`S_n` is the map, :math:`V_n` the valid pixels, :math:`M_n` the mask, :math:`d` the
    Euclidean distance in pixels and :math:`t` the tolerance (Zhang et al. 2016 use 15 pixels on
    224 x 224 images). When several pixels tie for the maximum, the score is the share of them that
    hit: the expected hit of breaking the tie at random (so a constant map scores the mask's area share).

    From Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016.

    Args:
        maps: saliency maps ``(N, H, W)`` (or ``(H, W)``); higher means more important.
        masks: ``bool (N, H, W)``: the object.
        tolerance: :math:`t` in pixels (0: the maximum must be on a mask pixel).
        valid: ``bool (H, W)`` or ``(N, H, W)``: the pixels that count (default all).

    Returns:
        ``float64 (N,)`` in ``[0, 1]``; ``nan`` where the mask is empty inside ``valid``.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 4, 4); m[0, 1, 2] = 1.0
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool); mask[0, 1, 1] = True
        >>> pointing_game(m, mask).tolist(), pointing_game(m, mask, tolerance=1).tolist()
        ([0.0], [1.0])
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    maps, masks, valid = _check(maps, masks, valid)
    target = _dilate(masks & valid, float(tolerance))
    low = torch.finfo(maps.dtype).min
    shown = torch.where(valid, maps, torch.full_like(maps, low))
    peak = shown.flatten(1).amax(1).view(-1, 1, 1)
    top = (shown == peak) & valid
    hits = (top & target).flatten(1).sum(1).to(torch.float64) / top.flatten(1).sum(1).clamp_min(1)
    empty = ~(masks & valid).flatten(1).any(1)
    return torch.where(empty, torch.full_like(hits, math.nan), hits)


def energy_inside(maps: Tensor, masks: Tensor, *, valid: Tensor | None = None) -> Tensor:
    r"""Share of the map's positive mass on the object.

    .. math:: E_n = \frac{\sum_{p \in M_n \cap V_n} \max(S_n(p), 0)}{\sum_{p \in V_n} \max(S_n(p), 0)}

    Negative values (pixels that speak *against* the class, e.g. an occlusion drop below zero) carry no
    mass. A uniform map scores :math:`|M_n| / |V_n|`.

    From Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
    CVPR workshops 2020 (the energy-based pointing game).

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``).
        masks: ``bool (N, H, W)``.
        valid: ``bool (H, W)`` or ``(N, H, W)`` (default all pixels).

    Returns:
        ``float64 (N,)`` in ``[0, 1]``; ``nan`` where the mask is empty or the map has no positive mass.

    Example:
        >>> import torch
        >>> m = torch.tensor([[[3.0, 1.0], [-2.0, 0.0]]])
        >>> energy_inside(m, torch.tensor([[[True, False], [True, False]]])).tolist()
        [0.75]
    """
    maps, masks, valid = _check(maps, masks, valid)
    positive = maps.clamp_min(0).to(torch.float64) * valid
    total = positive.flatten(1).sum(1)
    inside = (positive * masks).flatten(1).sum(1)
    empty = ~(masks & valid).flatten(1).any(1) | (total <= 0)
    return torch.where(empty, torch.full_like(total, math.nan), inside / total.clamp_min(1e-300))


def _average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..M`` of a 1-D tensor, ties getting their average rank."""
    sorted_values, order = values.sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    average = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(len(values), dtype=torch.float64, device=values.device)
    ranks[order] = average[inverse]
    return ranks


def mask_auc(maps: Tensor, masks: Tensor, *, valid: Tensor | None = None) -> Tensor:
    r"""ROC-AUC of the map's values for telling object pixels from background pixels.

    With :math:`n_1` object and :math:`n_0` background pixels (inside ``valid``) and :math:`R_1` the sum
    of the object pixels' ranks among all (ties get their average rank), the Mann-Whitney statistic gives

    .. math:: \mathrm{AUC}_n = \frac{R_1 - n_1 (n_1 + 1) / 2}{n_1 n_0}
              = P(S(p) > S(q)) + \tfrac{1}{2} P(S(p) = S(q)), \quad p \in M_n,\ q \notin M_n.

    1 means every object pixel outranks every background pixel, 0.5 is chance.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``).
        masks: ``bool (N, H, W)``.
        valid: ``bool (H, W)`` or ``(N, H, W)`` (default all pixels).

    Returns:
        ``float64 (N,)`` in ``[0, 1]``; ``nan`` where the mask is empty or covers every valid pixel.

    Example:
        >>> import torch
        >>> m = torch.tensor([[[0.9, 0.1], [0.4, 0.4]]])
        >>> mask_auc(m, torch.tensor([[[True, False], [True, False]]])).tolist()
        [0.875]
    """
    maps, masks, valid = _check(maps, masks, valid)
    out = torch.full((maps.shape[0],), math.nan, dtype=torch.float64)
    for n in range(maps.shape[0]):
        keep = valid[n].flatten()
        values = maps[n].flatten()[keep].to(torch.float64)
        labels = masks[n].flatten()[keep]
        n1 = int(labels.sum())
        n0 = len(labels) - n1
        if n1 == 0 or n0 == 0:
            continue
        r1 = float(_average_ranks(values)[labels].sum())
        out[n] = (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def localization_scores(
    maps: Tensor, masks: Tensor, *, tolerance: float = 0.0, valid: Tensor | None = None
) -> dict[str, Tensor]:
    """All three scores: ``{"pointing": ..., "energy": ..., "auc": ...}`` (each ``float64 (N,)``).

    With ``tolerance > 0`` also ``"pointing_tolerance"`` (the pointing game within ``tolerance`` pixels).
    """
    scores = {
        "pointing": pointing_game(maps, masks, valid=valid),
        "energy": energy_inside(maps, masks, valid=valid),
        "auc": mask_auc(maps, masks, valid=valid),
    }
    if tolerance > 0:
        scores["pointing_tolerance"] = pointing_game(maps, masks, tolerance=tolerance, valid=valid)
    return scores


def mean_score(values: Tensor) -> float:
    """The mean over the images that have a score (``nan`` entries left out; ``nan`` if none has one)."""
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if len(finite) else math.nan
