"""The methods on torchvision's ResNet-18, DenseNet-121 (ends in F.relu), VGG-11, and 1-channel images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from saliency_testing import RefRule, reference_rule_gradient, small_cnn, swap_relus

from netvis import saliency

OPTIONS = {
    "occlusion": {"window": 16, "stride": 16},
    "smoothgrad": {"n_samples": 2, "generator": 0},
    "integrated-gradients": {"steps": 3},
}


def all_methods(model, x, target):
    return {name: fn(model, x, target, **OPTIONS.get(name, {})) for name, fn in saliency.METHODS.items()}


def check_shapes(maps, x, occlusion_grid):
    n, c, h, w = x.shape
    for name, m in maps.items():
        expected = {"occlusion": (n, *occlusion_grid), "grad-cam": (n, h, w)}.get(name, (n, c, h, w))
        assert tuple(m.shape) == expected, name
        assert torch.isfinite(m).all(), name
        assert m.abs().sum() > 0, name


def guided_reference(model, x, target, forward=None):
    """Hand-written guided ReLU modules in place of the model's (the model is changed: call it last)."""
    ref = swap_relus(model.eval(), "guided")
    fwd = ref if forward is None else (lambda xi: forward(ref, xi))
    return reference_rule_gradient(fwd, x, torch.as_tensor(target))


def test_resnet18():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    maps = all_methods(model, x, [3])
    check_shapes(maps, x, (4, 4))
    # one nn.ReLU(inplace=True) per block, called twice: every call guided
    ref = guided_reference(model, x, [3])
    torch.testing.assert_close(maps["guided-backprop"], ref, rtol=1e-4, atol=1e-6)
    assert saliency.default_layer(model) == "layer4"


def test_densenet121_final_functional_relu_is_guided():
    torch.manual_seed(0)
    model = torchvision.models.densenet121(weights=None, num_classes=10)
    x = torch.randn(1, 3, 32, 32)

    def forward(net, xi, relu):
        features = net.features(xi)  # torchvision's DenseNet.forward, with the final F.relu made explicit
        out = F.adaptive_avg_pool2d(relu(features), (1, 1))
        return net.classifier(torch.flatten(out, 1))

    got = saliency.guided_backprop(model, x, 4)
    cam = saliency.grad_cam(model, x, 4)
    assert cam.shape == (1, 32, 32) and saliency.default_layer(model) == "features"
    guided_relu = lambda t: RefRule.apply(t, "guided")  # noqa: E731
    ref = guided_reference(model, x, [4], lambda net, xi: forward(net, xi, guided_relu))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    # guiding the module ReLUs only (what hook-based implementations do) gives something else
    modules_only = guided_reference(model, x, [4], lambda net, xi: forward(net, xi, F.relu))
    assert not torch.allclose(got, modules_only, atol=1e-6)


def test_vgg11():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None, num_classes=10, init_weights=False)  # faster init
    x = torch.randn(1, 3, 32, 32)
    assert saliency.default_layer(model) == "features"
    assert saliency.grad_cam(model, x, 2, layer="features.18").shape == (1, 32, 32)
    assert saliency.occlusion(model, x, 2, window=16, stride=8).shape == (1, 3, 3)
    got = saliency.guided_backprop(model, x, 2)  # inplace ReLUs in features and classifier
    torch.testing.assert_close(got, guided_reference(model, x, [2]), rtol=1e-4, atol=1e-6)


def test_one_channel_images():
    model = small_cnn(in_channels=1, classes=4)
    x = torch.rand(2, 1, 16, 16)
    check_shapes(all_methods(model, x, [0, 3]), x, (1, 1))
