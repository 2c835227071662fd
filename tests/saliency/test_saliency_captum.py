"""Agreement with Captum, the reference implementation, to 1e-5 where both implement the same thing."""

from __future__ import annotations

import captum.attr as captum_attr
import pytest
import torch
from saliency_testing import TinyNet, small_cnn

from netvis import saliency

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def model():
    return small_cnn(classes=5).eval()  # module ReLUs, not in place


@pytest.fixture
def x():
    torch.manual_seed(3)
    return torch.rand(3, 3, 12, 12)


TARGET = torch.tensor([0, 2, 4])


def test_saliency(model, x):
    ref = captum_attr.Saliency(model).attribute(x, target=TARGET, abs=True)
    torch.testing.assert_close(saliency.gradient(model, x, TARGET), ref, **TOL)


def test_guided_backprop_and_deconvolution(model, x):
    ref = captum_attr.GuidedBackprop(model).attribute(x, target=TARGET)
    torch.testing.assert_close(saliency.guided_backprop(model, x, TARGET), ref, **TOL)
    ref = captum_attr.Deconvolution(model).attribute(x, target=TARGET)
    torch.testing.assert_close(saliency.deconvnet(model, x, TARGET), ref, **TOL)


def test_guided_backprop_on_tinynet():
    torch.manual_seed(1)
    model = TinyNet("module").eval()
    x = torch.randn(2, 3, 12, 12)
    ref = captum_attr.GuidedBackprop(model).attribute(x, target=torch.tensor([1, 2]))
    torch.testing.assert_close(saliency.guided_backprop(model, x, [1, 2]), ref, **TOL)


@pytest.mark.parametrize(("window", "stride"), [(4, 2), (3, 3), (6, 2)])
def test_occlusion(model, x, window, stride):
    """Captum's Occlusion gives each pixel the score drop averaged over the windows that cover it.

    With a window over all channels, the same stride, and each image's mean as baseline, that is netvis's
    ``output="drop", upsample=True``. Captum places ceil((H - k) / s) + 1 windows per dimension (the last
    one cut at the border), netvis floor((H - k) / s) + 1; they coincide when s divides H - k, as here.
    """
    assert (x.shape[-1] - window) % stride == 0
    c = x.shape[1]
    baselines = x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x)
    ref = captum_attr.Occlusion(model).attribute(
        x, sliding_window_shapes=(c, window, window), strides=(c, stride, stride), baselines=baselines,
        target=TARGET, perturbations_per_eval=1,
    )
    got = saliency.occlusion(model, x, TARGET, window=window, stride=stride, output="drop", upsample=True)
    for ch in range(c):  # Captum repeats the map over the channels
        torch.testing.assert_close(got, ref[:, ch], **TOL)


@pytest.mark.parametrize("method", ["riemann_trapezoid", "gausslegendre", "riemann_left"])
def test_integrated_gradients(model, x, method):
    baseline = torch.full_like(x, 0.25)
    ref = captum_attr.IntegratedGradients(model).attribute(
        x, baselines=baseline, target=TARGET, n_steps=16, method=method
    )
    got = saliency.integrated_gradients(model, x, TARGET, baseline=0.25, steps=16, method=method,
                                        batch_size=20)
    if method == "riemann_trapezoid":
        # Captum weighs the 16 evenly spaced points 1/16 (ends 1/32): weights summing to 15/16, not 1.
        # netvis uses the trapezoidal rule's 1/15 (ends 1/30); the two differ by exactly that factor.
        got = got * 15 / 16
    torch.testing.assert_close(got, ref, **TOL)


def test_layer_grad_cam(model, x):
    for relu in (False, True):
        ref = captum_attr.LayerGradCam(model, model[4]).attribute(x, target=TARGET, relu_attributions=relu)
        got = saliency.grad_cam(model, x, TARGET, layer="4", relu=relu, upsample=False)
        torch.testing.assert_close(got, ref[:, 0], **TOL)
    up = captum_attr.LayerAttribution.interpolate(ref, (12, 12), interpolate_mode="bilinear")
    torch.testing.assert_close(saliency.grad_cam(model, x, TARGET, layer="4"), up[:, 0], **TOL)


def test_guided_grad_cam(model, x):
    ref = captum_attr.GuidedGradCam(model, model[4]).attribute(x, target=TARGET)  # nearest upsampling
    got = saliency.guided_grad_cam(model, x, TARGET, layer="4", interpolation="nearest")
    torch.testing.assert_close(got, ref, **TOL)
