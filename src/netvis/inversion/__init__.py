"""Model inversion: what a layer's representation keeps of an image.

* :func:`invert` -- optimisation-based inversion (Mahendran & Vedaldi, "Understanding Deep Image
  Representations by Inverting Them", CVPR 2015): find an image whose features match a target's, with a
  total-variation prior, by L-BFGS.
* :func:`train_inverter` / :class:`Inverter` -- a trained up-convolutional inversion network (Dosovitskiy &
  Brox, "Inverting Visual Representations with Convolutional Networks", CVPR 2016) that reconstructs a
  whole batch in one forward pass.
* :mod:`netvis.inversion.objectives` -- the objectives and regularisers, which add and scale.
"""

from netvis.inversion.network import Inverter, train_inverter
from netvis.inversion.objectives import (
    Objective,
    alpha_loss,
    alpha_norm,
    feature_error,
    feature_loss,
    total_variation,
    tv_loss,
)
from netvis.inversion.optimise import InversionResult, invert, pixel_bounds

__all__ = [
    "invert",
    "InversionResult",
    "pixel_bounds",
    "train_inverter",
    "Inverter",
    "Objective",
    "feature_error",
    "feature_loss",
    "total_variation",
    "tv_loss",
    "alpha_norm",
    "alpha_loss",
]
