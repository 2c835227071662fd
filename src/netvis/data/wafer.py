r"""Synthetic wafer maps with the WM-811K defect taxonomy and a ground-truth mask per map.

A wafer map is the pass/fail result of every die on a wafer after electrical test: a round wafer on a
square grid of dies. Failing dies that form a *pattern* tell an engineer which process step went wrong;
Wu, Jang and Chen, "Wafer Map Failure Pattern Recognition and Similarity Ranking for Large-Scale Data
Sets", IEEE Transactions on Semiconductor Manufacturing 28(1), 2015, named eight patterns in their
WM-811K data set (811,457 wafer maps from a real fab), which this module draws:

==============  ==================================================================================
class           the defect (its ground-truth mask)
==============  ==================================================================================
``center``      a dense disc of failing dies around the wafer's centre
``donut``       an annulus of failing dies at mid radius, passing dies inside it
``edge-loc``    failing dies along part of the rim (an arc of the outer band)
``edge-ring``   failing dies along the whole rim (the outer band)
``loc``         a compact blob (an ellipse) of failing dies away from the centre and the rim
``near-full``   almost every die fails (the whole wafer)
``random``      failing dies scattered uniformly over the whole wafer, at a rate far above the yield noise
``scratch``     a thin curved line of failing dies (a handling scratch)
``none``        yield noise only (an empty mask)
==============  ==================================================================================

Every map also carries *yield noise*: dies fail independently at a per-wafer rate (0.5% to 5%), made
spatially clustered by a smooth log-normal intensity field, as real fails cluster. The noise is not part
of the mask: the mask marks the region the defect pattern occupies (for ``random`` and ``near-full``
that is the whole wafer).

Images follow WM-811K's encoding, stored as ``uint8`` gray levels: 0 outside the wafer, 127 a passing
die, 255 a failing die. A map of ``size`` pixels shows a grid of ``dies`` dies across (default
``dies = size``: one die per pixel); for ``dies < size`` each die covers a block of pixels. The masks
are ``(size, size)`` booleans at pixel resolution.

An optional spurious cue, a *lot-ID stamp* (a small bar code in the top-left corner, outside the
wafer), can be made to correlate with one class, for the bias experiment: a model may learn the stamp
instead of the pattern.

Everything is drawn from an explicit :class:`numpy.random.Generator` (from a seed); the global numpy
and torch random states are never used or changed. The same seed gives the same maps (with the same
numpy version). A small sample, ``wafer-maps-sample``, ships inside the package (built by
``python -m netvis.data.make_wafer_sample``).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from netvis.data.base import TensorImageDataset, channel_stats
from netvis.data.errors import DataError

__all__ = [
    "OUTSIDE",
    "PASS",
    "FAIL",
    "WAFER_CLASSES",
    "WAFER_SAMPLE_DIR",
    "WaferMapDataset",
    "WaferMaps",
    "build_wafer_sample",
    "generate_wafer_maps",
    "load_wafer_maps",
    "load_wafer_sample",
    "pass_value",
    "wafer_disc",
]

WAFER_CLASSES = ("center", "donut", "edge-loc", "edge-ring", "loc", "near-full", "random", "scratch", "none")
"""The WM-811K failure types (Wu, Jang and Chen 2015) in label order: label 8 is ``"none"``."""

OUTSIDE, PASS, FAIL = 0, 127, 255
"""Gray levels of the stored maps: outside the wafer, a passing die, a failing die."""

def pass_value(preprocess: Any) -> float:
    """A passing die's value as the model sees it: :data:`PASS` through ``preprocess`` (e.g. a checkpoint's
    or a data set's). Filled into an occlusion window, it makes the patch look like a healthy part of the wafer.

    >>> round(pass_value(lambda images: images.float() / 255), 6)  # 127 / 255
    0.498039
    """
    return float(preprocess(torch.full((1, 1, 1, 1), PASS, dtype=torch.uint8)).flatten()[0])


WAFER_SAMPLE_DIR = Path(__file__).resolve().parent.parent / "assets" / "wafer-maps-sample"
"""The wafer-map sample shipped inside the package (``wafer-maps-sample.npz`` and ``meta.json``)."""

SPLIT_STREAMS = {"train": 0, "test": 1}
"""Each split draws from its own stream of the seed (``numpy.random.SeedSequence([seed, stream])``)."""

DEFAULT_PER_CLASS = {"train": 400, "test": 100}
"""Maps per class of ``load("wafer-maps", split)``: 3,600 training and 900 test maps."""

SAMPLE_PER_CLASS = {"train": 20, "test": 10}
SAMPLE_SEED = 2015
SAMPLE_FILE = "wafer-maps-sample.npz"


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------


def wafer_disc(dies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The wafer on a ``dies x dies`` grid: inside mask, normalised radius and angle of every die.

    Die ``(i, j)`` has its centre at ``(i + 1/2, j + 1/2)``; the wafer's centre is the grid's, its
    radius :math:`R = d/2 - 1/2` (so the outermost dies touch the grid's border). A die is on the wafer
    when :math:`r = \\lVert c_{ij} - c \\rVert / R \\le 1`, except for a small orientation notch at the
    bottom (:math:`r > 0.94`, within 0.08 rad of straight down).

    Args:
        dies: dies across the grid (at least 8).

    Returns:
        ``(inside, r, theta)``: ``bool (d, d)``, ``float64 (d, d)`` radius in units of :math:`R`, and
        ``float64 (d, d)`` angle in ``(-pi, pi]`` (0 to the right, ``pi/2`` up).
    """
    if isinstance(dies, bool) or not isinstance(dies, int) or dies < 8:
        raise ValueError(f"dies must be an int >= 8, got {dies!r}")
    centre = dies / 2
    radius = dies / 2 - 0.5
    coords = np.arange(dies) + 0.5
    dy = centre - coords[:, None]  # rows grow downwards; y grows upwards
    dx = coords[None, :] - centre
    r = np.hypot(dx, dy) / radius
    theta = np.arctan2(dy, dx)
    notch = (r > 0.94) & (np.abs(_angle_diff(theta, -np.pi / 2)) < 0.08)
    return (r <= 1.0) & ~notch, r, theta


def _angle_diff(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    return (np.asarray(a) - b + np.pi) % (2 * np.pi) - np.pi


def _smooth_field(rng: np.random.Generator, dies: int, sigma: float) -> np.ndarray:
    """A zero-mean, unit-variance Gaussian random field: white noise blurred by a Gaussian (FFT, periodic)."""
    noise = rng.standard_normal((dies, dies))
    freq = np.fft.fftfreq(dies)
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * transfer))
    return (field - field.mean()) / max(float(field.std()), 1e-12)


class _Grid:
    """Coordinates of one die grid, in units of the wafer radius (x right, y up, origin at the centre)."""

    def __init__(self, dies: int) -> None:
        self.dies = dies
        self.inside, self.r, self.theta = wafer_disc(dies)
        self.radius = dies / 2 - 0.5
        self.x = self.r * np.cos(self.theta)
        self.y = self.r * np.sin(self.theta)


def _defect(kind: str, grid: _Grid, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The mask ``bool (d, d)`` of one defect and the fail probability ``float (d, d)`` inside it."""
    x, y, r, theta, inside = grid.x, grid.y, grid.r, grid.theta, grid.inside
    zero = np.zeros_like(r)
    if kind == "none":
        return np.zeros_like(inside), zero
    if kind == "center":
        cx, cy = rng.normal(0.0, 0.04, size=2)
        rc = rng.uniform(0.14, 0.32)
        d = np.hypot(x - cx, y - cy) / rc
        mask = d < 1
        prob = rng.uniform(0.6, 0.9) * (1 - 0.45 * d**2)
    elif kind == "donut":
        cx, cy = rng.normal(0.0, 0.03, size=2)
        r0 = rng.uniform(0.32, 0.5)
        half = rng.uniform(0.07, 0.13)
        d = np.hypot(x - cx, y - cy)
        mask = np.abs(d - r0) < half
        prob = np.full_like(r, rng.uniform(0.55, 0.9))
    elif kind == "edge-ring":
        width = rng.uniform(0.05, 0.1)
        mask = r > 1 - width
        prob = np.full_like(r, rng.uniform(0.6, 0.9))
    elif kind == "edge-loc":
        width = rng.uniform(0.09, 0.2)
        phi = rng.uniform(-np.pi, np.pi)
        half_angle = rng.uniform(0.35, 0.9)
        mask = (r > 1 - width) & (np.abs(_angle_diff(theta, phi)) < half_angle)
        prob = np.full_like(r, rng.uniform(0.6, 0.9))
    elif kind == "loc":
        rho, phi = rng.uniform(0.2, 0.62), rng.uniform(-np.pi, np.pi)
        cx, cy = rho * np.cos(phi), rho * np.sin(phi)
        a, b = rng.uniform(0.08, 0.17, size=2)
        rot = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(rot) + (y - cy) * np.sin(rot)
        v = -(x - cx) * np.sin(rot) + (y - cy) * np.cos(rot)
        d = np.hypot(u / a, v / b)
        mask = d < 1
        prob = rng.uniform(0.6, 0.9) * (1 - 0.3 * d**2)
    elif kind == "scratch":
        rho, phi = rng.uniform(0.0, 0.55), rng.uniform(-np.pi, np.pi)
        heading = rng.uniform(-np.pi, np.pi)
        length = rng.uniform(0.5, 1.1)
        curvature = rng.uniform(-1.2, 1.2)
        steps = 64
        s = np.linspace(0, length, steps)
        angle = heading + curvature * s
        ds = length / (steps - 1)
        px = rho * np.cos(phi) + np.concatenate([[0.0], np.cumsum(np.cos(angle[:-1]) * ds)])
        py = rho * np.sin(phi) + np.concatenate([[0.0], np.cumsum(np.sin(angle[:-1]) * ds)])
        half_width = max(rng.uniform(0.5, 1.1), 0.5) / grid.radius  # in dies -> radius units
        half_width = max(half_width, 0.012)
        dist = np.min(np.hypot(x[..., None] - px, y[..., None] - py), axis=-1)
        mask = dist <= half_width + 0.5 / grid.radius
        prob = np.full_like(r, rng.uniform(0.75, 0.98))
    elif kind == "random":
        mask = np.ones_like(inside)
        prob = np.full_like(r, rng.uniform(0.15, 0.35))
    elif kind == "near-full":
        mask = np.ones_like(inside)
        prob = np.clip(rng.uniform(0.75, 0.95) + 0.08 * _smooth_field(rng, grid.dies, grid.dies / 16), 0, 1)
    else:
        raise ValueError(f"unknown wafer defect class {kind!r}; choose from {', '.join(WAFER_CLASSES)}")
    return mask & inside, np.where(mask & inside, prob, 0.0)


def _stamp(image: np.ndarray, lot: int) -> None:
    """Draw an 8-bit lot-ID bar code (framed by two bars) into the top-left corner, outside the wafer."""
    size = image.shape[0]
    unit = max(1, round(size / 64))
    top, left = unit, unit
    bits = [1] + [(lot >> k) & 1 for k in range(6)] + [1]
    for k, bit in enumerate(bits):
        c0 = left + k * unit
        image[top : top + 3 * unit, c0 : c0 + unit] = FAIL if bit else PASS


def _stamp_mask(size: int) -> np.ndarray:
    unit = max(1, round(size / 64))
    mask = np.zeros((size, size), dtype=bool)
    mask[unit : 4 * unit, unit : 9 * unit] = True
    return mask


# --------------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------------


class WaferMaps:
    """What :func:`generate_wafer_maps` returns (numpy arrays).

    Attributes:
        images: ``uint8 (N, size, size)``: 0 outside, 127 pass, 255 fail.
        labels: ``int64 (N,)``: indices into :data:`WAFER_CLASSES`.
        masks: ``bool (N, size, size)``: the defect's region (empty for ``none``).
        stamped: ``bool (N,)``: whether the map carries the lot-ID stamp.
        fail_rate: ``float64 (N,)``: each wafer's yield-noise rate.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, masks: np.ndarray, stamped: np.ndarray,
                 fail_rate: np.ndarray) -> None:
        self.images, self.labels, self.masks, self.stamped, self.fail_rate = images, labels, masks, stamped, fail_rate

    def __len__(self) -> int:
        return len(self.labels)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def generate_wafer_maps(
    labels: Sequence[int] | np.ndarray,
    *,
    rng: np.random.Generator | int,
    size: int = 64,
    dies: int | None = None,
    stamp_class: str | None = None,
    stamp_rate: float = 0.9,
    stamp_other: float = 0.05,
) -> WaferMaps:
    r"""Draw one wafer map per label, with its defect mask.

    For each wafer: a yield-noise rate :math:`p_0 \sim U(0.005, 0.05)` and a clustering field
    :math:`z` (white noise blurred by a Gaussian of 1.5 to 3 dies, standardised); each die on the wafer
    fails by noise with probability :math:`\min(p_0 e^{0.6 z - 0.18}, 0.5)`, and, inside the defect's
    mask :math:`M`, by the defect with the class's probability :math:`q_{ij}` (see the module's table;
    e.g. 0.6 to 0.9 for ``center``, decreasing towards the disc's edge):

    .. math:: \mathrm{fail}_{ij} = \mathrm{inside}_{ij} \wedge
              \big(B(\min(p_0 e^{0.6 z_{ij} - 0.18}, 0.5)) \vee (M_{ij} \wedge B(q_{ij}))\big)

    Args:
        labels: class index per map (into :data:`WAFER_CLASSES`), ``(N,)``.
        rng: a :class:`numpy.random.Generator`, or an int seed for one (``numpy.random.default_rng``).
        size: pixels across each map (at least 8; 64 by default, 224 works).
        dies: dies across the wafer's grid (default ``size``: one die per pixel); each die covers
            ``size / dies`` pixels (nearest neighbour).
        stamp_class: a class whose maps carry the lot-ID stamp with probability ``stamp_rate`` (the
            others with ``stamp_other``); ``None``: no stamps.
        stamp_rate: :math:`P(\mathrm{stamp} \mid \mathrm{stamp\_class})`.
        stamp_other: :math:`P(\mathrm{stamp} \mid \text{any other class})`.

    Returns:
        A :class:`WaferMaps`.

    Raises:
        ValueError: a label outside ``0..8``, bad sizes, an unknown ``stamp_class`` or rates outside [0, 1].

    Example:
        >>> maps = generate_wafer_maps([0, 3, 8], rng=0, size=32)
        >>> maps.images.shape, maps.masks[2].any()
        ((3, 32, 32), np.False_)
    """
    size = _check_int("size", size, 8)
    dies = size if dies is None else _check_int("dies", dies, 8)
    if dies > size:
        raise ValueError(f"dies ({dies}) cannot exceed size ({size}): a die needs at least one pixel")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(WAFER_CLASSES)):
        raise ValueError(
            f"labels must be in 0..{len(WAFER_CLASSES) - 1} (WAFER_CLASSES), got {labels.min()}..{labels.max()}"
        )
    if stamp_class is not None and stamp_class not in WAFER_CLASSES:
        raise ValueError(f"unknown stamp_class {stamp_class!r}; choose from {', '.join(WAFER_CLASSES)}")
    stamp_rate, stamp_other = _check_rate("stamp_rate", stamp_rate), _check_rate("stamp_other", stamp_other)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(_check_int("rng (a seed)", rng, 0))
    grid = _Grid(dies)
    pick = (np.arange(size) * dies) // size  # pixel -> die, nearest neighbour
    n = len(labels)
    images = np.zeros((n, size, size), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    stamped = np.zeros(n, dtype=bool)
    rates = np.zeros(n)
    stamp_label = WAFER_CLASSES.index(stamp_class) if stamp_class is not None else -1
    for k, label in enumerate(labels):
        p0 = rng.uniform(0.005, 0.05)
        z = _smooth_field(rng, dies, rng.uniform(1.5, 3.0) * dies / 64)
        noise_p = np.minimum(p0 * np.exp(0.6 * z - 0.18), 0.5)
        fail = rng.random((dies, dies)) < noise_p
        mask, prob = _defect(WAFER_CLASSES[label], grid, rng)
        fail |= mask & (rng.random((dies, dies)) < prob)
        fail &= grid.inside
        die_map = np.where(grid.inside, np.where(fail, FAIL, PASS), OUTSIDE).astype(np.uint8)
        images[k] = die_map[pick[:, None], pick[None, :]]
        masks[k] = mask[pick[:, None], pick[None, :]]
        rates[k] = p0
        if stamp_label >= 0:
            stamped[k] = rng.random() < (stamp_rate if label == stamp_label else stamp_other)
            if stamped[k]:
                _stamp(images[k], int(rng.integers(0, 64)))
    return WaferMaps(images, labels.copy(), masks, stamped, rates)


def _balanced_labels(per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(len(WAFER_CLASSES)), per_class))


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split: ``PCG64(SeedSequence([seed, SPLIT_STREAMS[split]]))``."""
    if split not in SPLIT_STREAMS:
        raise DataError(f"unknown split {split!r} for wafer maps; use 'train' or 'test'")
    seed = _check_int("seed", seed, 0)
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLIT_STREAMS[split]])))


def generate_split(
    split: str, *, per_class: int | None = None, seed: int = 0, size: int = 64, dies: int | None = None,
    stamp_class: str | None = None, stamp_rate: float = 0.9, stamp_other: float = 0.05,
) -> WaferMaps:
    """One split of a balanced wafer-map data set: ``per_class`` maps of each class in random order."""
    rng = split_rng(seed, split)
    per_class = DEFAULT_PER_CLASS[split] if per_class is None else _check_int("per_class", per_class, 1)
    labels = _balanced_labels(per_class, rng)
    return generate_wafer_maps(labels, rng=rng, size=size, dies=dies, stamp_class=stamp_class,
                               stamp_rate=stamp_rate, stamp_other=stamp_other)


# --------------------------------------------------------------------------------------------------
# data sets
# --------------------------------------------------------------------------------------------------


class WaferMapDataset(TensorImageDataset):
    """A :class:`~netvis.data.base.TensorImageDataset` of wafer maps that also holds their defect masks.

    Items are ``(image, label)`` like every netvis data set (``image`` float ``(1, H, W)``), so the
    trainer and the saliency methods take it as is; the masks sit alongside.

    Attributes:
        masks: ``bool (N, H, W)`` tensor: each map's ground-truth defect region (empty for ``none``).
        stamped: ``bool (N,)`` tensor: which maps carry the lot-ID stamp.
        stamp_mask: ``bool (H, W)`` tensor: where the stamp is drawn.
        (and everything :class:`~netvis.data.base.TensorImageDataset` has.)
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                 stamped: torch.Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(images, targets, WAFER_CLASSES, **kwargs)
        masks = torch.as_tensor(masks, dtype=torch.bool)
        if masks.shape != (self.images.shape[0], *self.images.shape[2:]):
            raise ValueError(f"masks must be (N, H, W) = {(self.images.shape[0], *self.images.shape[2:])}, "
                             f"got {tuple(masks.shape)}")
        self.masks = masks
        self.stamped = torch.zeros(len(masks), dtype=torch.bool) if stamped is None else torch.as_tensor(
            stamped, dtype=torch.bool)
        self.stamp_mask = torch.from_numpy(_stamp_mask(self.images.shape[-1]))

    def subset(self, indices: Sequence[int] | torch.Tensor) -> WaferMapDataset:
        """The maps at ``indices`` (masks and stamps included), with the same statistics and preprocessing."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        new = super().subset(idx)
        new.masks = self.masks[idx.to(self.masks.device)]
        new.stamped = self.stamped[idx.to(self.stamped.device)]
        return new  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> WaferMapDataset:
        """The same data set with images, targets and masks on ``device``."""
        new = super().to(device)
        new.masks = self.masks.to(device)
        return new  # type: ignore[return-value]


def _dataset(maps: WaferMaps, *, name: str, split: str, normalize: bool, channels: int | None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             source: str | Path | None = None) -> WaferMapDataset:
    return WaferMapDataset(
        torch.from_numpy(maps.images), torch.from_numpy(maps.labels), torch.from_numpy(maps.masks),
        torch.from_numpy(maps.stamped), mean=mean, std=std, normalize=normalize, channels=channels, name=name,
        split=split, source=source,
    )


def _size(size: int | Sequence[int] | None) -> int:
    if size is None:
        return 64
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise DataError(f"wafer maps are square; got size {tuple(size)}")
        size = size[0]
    return _check_int("size", size, 8)


def load_wafer_maps(
    split: str = "train",
    *,
    per_class: int | None = None,
    seed: int = 0,
    size: int | Sequence[int] | None = None,
    dies: int | None = None,
    normalize: bool = True,
    channels: int | None = None,
    stamp_class: str | None = None,
    stamp_rate: float = 0.9,
    stamp_other: float = 0.05,
) -> WaferMapDataset:
    """Generate one split of the ``wafer-maps`` data set: balanced classes, a mask per map.

    ``load("wafer-maps", split)`` calls this with the defaults: 400 training / 100 test maps per class
    (3,600 / 900), 64 x 64, seed 0. The splits come from separate streams of the seed, so train and
    test never share a map. Normalisation statistics are those of the training split drawn with the
    same arguments (generated too for ``split="test"``).

    Args:
        split: ``"train"`` or ``"test"``.
        per_class: maps per class (default 400 train, 100 test).
        seed: the data set's seed.
        size: pixels across (default 64; an int or a square ``(size, size)``).
        dies: dies across the wafer (default ``size``).
        normalize: normalise items with the training split's mean and standard deviation.
        channels: give items 1 or 3 channels.
        stamp_class, stamp_rate, stamp_other: the spurious lot-ID stamp (see :func:`generate_wafer_maps`).

    Returns:
        A :class:`WaferMapDataset` named ``"wafer-maps"``: ``images`` ``uint8 (N, 1, H, W)``, ``targets``,
        ``masks`` ``bool (N, H, W)``, ``classes`` :data:`WAFER_CLASSES`.

    Example:
        >>> ds = load_wafer_maps("test", per_class=2, size=32)
        >>> len(ds), ds.masks.shape, ds.classes[0]
        (18, torch.Size([18, 32, 32]), 'center')
    """
    px = _size(size)
    options = {"per_class": per_class, "seed": seed, "size": px, "dies": dies, "stamp_class": stamp_class,
               "stamp_rate": stamp_rate, "stamp_other": stamp_other}
    maps = generate_split(split, **options)
    mean = std = None
    if split != "train":
        train = generate_split("train", **options)
        mean, std = _stats(train.images, channels)
    return _dataset(maps, name="wafer-maps", split=split, normalize=normalize, channels=channels, mean=mean,
                    std=std)


def _stats(images: np.ndarray, channels: int | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return channel_stats(torch.from_numpy(images)[:, None], channels=channels)


# --------------------------------------------------------------------------------------------------
# the shipped sample
# --------------------------------------------------------------------------------------------------


def _sample_arrays() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        maps = generate_split(split, per_class=SAMPLE_PER_CLASS[split], seed=SAMPLE_SEED, size=64)
        out[f"{split}_images"] = maps.images
        out[f"{split}_labels"] = maps.labels.astype(np.uint8)
        out[f"{split}_masks"] = np.packbits(maps.masks, axis=-1)
    return out


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A compressed ``.npz`` with fixed timestamps and order, so the same arrays give the same bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buffer.getvalue(), compresslevel=9)
    os.replace(tmp, path)


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def build_wafer_sample(out: str | os.PathLike = WAFER_SAMPLE_DIR) -> Path:
    """Write the shipped sample (``wafer-maps-sample.npz``, ``meta.json``, ``README.md``) into ``out``.

    180 training and 90 test maps of 64 x 64 (20 / 10 per class), seed 2015; masks bit-packed along
    the rows (``numpy.packbits(masks, axis=-1)``). Re-running writes the same arrays (and, with the
    same zlib, the same bytes).

    Returns:
        The ``.npz`` path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arrays = _sample_arrays()
    _write_npz(out / SAMPLE_FILE, arrays)
    meta = {
        "name": "wafer-maps-sample",
        "classes": list(WAFER_CLASSES),
        "seed": SAMPLE_SEED,
        "size": 64,
        "per_class": SAMPLE_PER_CLASS,
        "encoding": {"outside": OUTSIDE, "pass": PASS, "fail": FAIL},
        "masks": "numpy.packbits(masks, axis=-1); unpack with numpy.unpackbits(..., axis=-1, count=64)",
        "arrays_sha256": array_digest(arrays),
        "numpy": np.__version__,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "built_by": "python -m netvis.data.make_wafer_sample",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_README, encoding="utf-8")
    return out / SAMPLE_FILE


_README = """\
# Wafer-map sample

Synthetic wafer maps (64 x 64 dies) drawn by `netvis.data.wafer` with seed 2015: 20 training and 10
test maps of each WM-811K failure type (center, donut, edge-loc, edge-ring, loc, near-full, random,
scratch, none; Wu, Jang and Chen 2015, IEEE TSM), each with its ground-truth defect mask.

`wafer-maps-sample.npz` holds `{train,test}_images` (uint8: 0 outside, 127 pass, 255 fail),
`{train,test}_labels` (uint8 class indices) and `{train,test}_masks` (bit-packed rows). Load it with
`netvis.data.load("wafer-maps-sample", "test")`; rebuild it with `python -m netvis.data.make_wafer_sample`.
"""


def read_wafer_sample(folder: str | os.PathLike = WAFER_SAMPLE_DIR) -> dict[str, np.ndarray]:
    """The sample's arrays, masks unpacked to ``bool (N, 64, 64)``."""
    path = Path(folder) / SAMPLE_FILE
    if not path.is_file():
        raise DataError(f"the shipped wafer-map sample is missing: {path}; rebuild it with "
                        "`python -m netvis.data.make_wafer_sample` or reinstall netvis")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path} is not a readable wafer-map sample: {exc}") from exc
    out = dict(arrays)
    for split in ("train", "test"):
        key = f"{split}_masks"
        if key not in arrays or f"{split}_images" not in arrays:
            raise DataError(f"{path} lacks the {split} arrays")
        width = arrays[f"{split}_images"].shape[-1]
        out[key] = np.unpackbits(arrays[key], axis=-1, count=width).astype(bool)
    return out


def load_wafer_sample(
    split: str = "train", *, normalize: bool = True, channels: int | None = None,
    folder: str | os.PathLike = WAFER_SAMPLE_DIR,
) -> WaferMapDataset:
    """Load the wafer-map sample shipped with netvis (180 train / 90 test maps, 64 x 64, with masks).

    Normalisation statistics come from the sample's training maps.

    Example:
        >>> ds = load_wafer_sample("test")
        >>> len(ds), tuple(ds.masks.shape)
        (90, (90, 64, 64))
    """
    if split not in SPLIT_STREAMS:
        raise DataError(f"unknown split {split!r} for wafer maps; use 'train' or 'test'")
    arrays = read_wafer_sample(folder)
    mean, std = _stats(arrays["train_images"], channels)
    maps = WaferMaps(arrays[f"{split}_images"], arrays[f"{split}_labels"].astype(np.int64),
                     arrays[f"{split}_masks"], np.zeros(len(arrays[f"{split}_labels"]), dtype=bool),
                     np.full(len(arrays[f"{split}_labels"]), math.nan))
    return _dataset(maps, name="wafer-maps-sample", split=split, normalize=normalize, channels=channels,
                    mean=mean, std=std, source=Path(folder))
