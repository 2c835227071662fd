r"""Saliency: which pixels of an image a classifier's decision depends on.

Every method is a function ``method(model, x, target=None, **options) -> Tensor`` that works on any
``torch.nn.Module`` classifier mapping images ``(N, C, H, W)`` to class scores ``(N, num_classes)``:

* :func:`occlusion` -- the class score while a patch hides part of the image (Zeiler & Fergus 2014);
* :func:`gradient` -- :math:`|\partial f_c / \partial x|` (Simonyan, Vedaldi & Zisserman 2014);
* :func:`guided_backprop` (Springenberg et al. 2015) and :func:`deconvnet` (Zeiler & Fergus 2014);
* :func:`smoothgrad` (Smilkov et al. 2017) and :func:`integrated_gradients` (Sundararajan et al. 2017);
* :func:`grad_cam` and :func:`guided_grad_cam` (Selvaraju et al. 2017).

Faster occlusion: :func:`incremental_occlusion` re-runs only what a patch changes (exact, or with a
projective-field threshold), and :func:`approximate_occlusion` meets a quality the user asks for
(``min_ssim=`` or ``max_error=``) on a calibration that :func:`calibrate_occlusion` measures and reports.

``target`` is ``None`` (each image's predicted class), an int, ``N`` ints (a list or tensor), or a
callable ``outputs -> (N,) scores``. Each call runs the model in eval mode and leaves it exactly as it
was: modes, ``requires_grad`` flags, parameter ``.grad``, buffers and hooks (see :mod:`netvis.hooks`).

:mod:`netvis.saliency.methods` is the typed registry of the methods (:class:`Method`: options with defaults
and checks, output kind, supported precisions, batch sizes and devices, the 2-D display reduction); the
command line, the viewer, the report and the experiments are generated from it. :data:`METHODS` is its
``name -> function`` view.
"""

from __future__ import annotations

from netvis.hooks import GuidedReLUError, resolve_layer
from netvis.saliency._common import TargetLike, resolve_target
from netvis.saliency.cam import default_layer, grad_cam, guided_grad_cam
from netvis.saliency.gradient import gradient, integrated_gradients, quadrature, smoothgrad
from netvis.saliency.guided import deconvnet, guided_backprop
from netvis.saliency.incremental import (
    Approximation,
    Calibration,
    IncrementalFallbackWarning,
    OcclusionReport,
    approximate_occlusion,
    calibrate_occlusion,
    incremental_occlusion,
    ssim,
)
from netvis.saliency.methods import METHODS, Method, Option, OutputKind, register, registered, unregister
from netvis.saliency.occlusion import occlusion, occlusion_grid_size

__all__ = [
    "METHODS",
    "Approximation",
    "Calibration",
    "GuidedReLUError",
    "IncrementalFallbackWarning",
    "Method",
    "OcclusionReport",
    "Option",
    "OutputKind",
    "TargetLike",
    "approximate_occlusion",
    "calibrate_occlusion",
    "deconvnet",
    "default_layer",
    "grad_cam",
    "gradient",
    "guided_backprop",
    "guided_grad_cam",
    "incremental_occlusion",
    "integrated_gradients",
    "occlusion",
    "occlusion_grid_size",
    "quadrature",
    "register",
    "registered",
    "resolve_layer",
    "resolve_target",
    "smoothgrad",
    "ssim",
    "unregister",
]
