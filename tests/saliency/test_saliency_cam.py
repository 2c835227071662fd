"""Grad-CAM against a manual computation; layer resolution and the default layer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from saliency_testing import small_cnn
from torch import nn

from netvis.saliency import default_layer, grad_cam, guided_backprop, guided_grad_cam, resolve_layer


@pytest.fixture
def model():
    return small_cnn(classes=5)


def manual_grad_cam(model, x, target, layer_index):
    """Activations and their gradient from an ordinary backward pass on a copy of the model."""
    ref = copy.deepcopy(model).eval()
    store = {}
    ref[layer_index].register_forward_hook(lambda m, i, o: store.update(a=o))
    out = ref(x)
    store["a"].retain_grad()
    out.gather(1, torch.as_tensor(target)[:, None]).sum().backward()
    a, g = store["a"], store["a"].grad
    return (g.mean((2, 3), keepdim=True) * a).sum(1).detach()


def test_grad_cam_matches_manual_computation(model):
    x = torch.rand(3, 3, 8, 8)
    target = [0, 2, 4]
    raw = manual_grad_cam(model, x, target, 5)
    got = grad_cam(model, x, target, layer="5", relu=False, upsample=False)
    assert got.shape == (3, 4, 4)
    torch.testing.assert_close(got, raw)
    torch.testing.assert_close(grad_cam(model, x, target, layer=model[5], upsample=False), raw.clamp(min=0))
    up = grad_cam(model, x, target, layer="5")
    assert up.shape == (3, 8, 8)
    ref_up = F.interpolate(raw.clamp(min=0)[:, None], size=(8, 8), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref_up)
    assert (raw < 0).any(), "relu=False keeps negative values (a meaningful check)"


def test_grad_cam_batch_equals_one_by_one(model):
    x = torch.rand(3, 3, 8, 8)
    batch = grad_cam(model, x, [1, 2, 3], layer="4")
    for b in range(3):
        torch.testing.assert_close(batch[b : b + 1], grad_cam(model, x[b : b + 1], 1 + b, layer="4"))


def test_guided_grad_cam_is_the_product(model):
    x = torch.rand(2, 3, 8, 8)
    got = guided_grad_cam(model, x, [1, 2], layer="5")
    ref = guided_backprop(model, x, [1, 2]) * grad_cam(model, x, [1, 2], layer="5")[:, None]
    torch.testing.assert_close(got, ref)
    near = guided_grad_cam(model, x, [1, 2], layer="5", interpolation="nearest")
    cam = grad_cam(model, x, [1, 2], layer="5", upsample=False)
    torch.testing.assert_close(near, guided_backprop(model, x, [1, 2]) * cam.repeat_interleave(2, 1)
                               .repeat_interleave(2, 2)[:, None])


def test_layer_errors(model):
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match=r"Grad-CAM needs a layer whose output is \(N, K, h, w\)"):
        grad_cam(model, x, layer="8")
    with pytest.raises(ValueError, match="not part of the model"):
        grad_cam(model, x, layer=nn.Conv2d(3, 3, 1))
    with pytest.raises(TypeError, match="nn.Module or a dotted name"):
        grad_cam(model, x, layer=4)
    with pytest.raises(ValueError, match="interpolation must be"):
        grad_cam(model, x, layer="4", interpolation="spline")
    relu = nn.ReLU()
    twice = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu, nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        grad_cam(twice, torch.rand(1, 3, 8, 8), layer="1")


def test_nonexistent_layer_lists_close_names():
    resnet = torchvision.models.resnet18(weights=None)
    with pytest.raises(ValueError, match=r"no layer named 'layer4.1.conv3'; close names: .*'layer4.1.conv2'"):
        resolve_layer(resnet, "layer4.1.conv3")
    with pytest.raises(ValueError, match="no layer named 'layr4'; close names: 'layer4'"):
        grad_cam(resnet, torch.rand(1, 3, 32, 32), layer="layr4")


def test_default_layer():
    assert default_layer(torchvision.models.resnet18(weights=None)) == "layer4"
    assert default_layer(torchvision.models.squeezenet1_1(weights=None)) == "classifier.1"
    assert default_layer(small_cnn()) == "5"  # the last rectified map, before the adaptive pooling
    wrapped = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)),
                            nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    assert default_layer(wrapped, torch.rand(1, 3, 6, 6)) == "0"  # the 2 x 2 map of the second conv
    assert default_layer(wrapped[:1], torch.rand(1, 3, 5, 5)) == "0.1"  # 1 x 1 there: the last map is 3 x 3
    inner = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    assert default_layer(nn.Sequential(inner)) == "0.1"
    with pytest.raises(ValueError, match="no layer whose output is a spatial map .* pass layer="):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.rand(1, 3, 2, 2))
    with pytest.raises(ValueError, match=r"a probe of shape \(1, 3, 32, 32\) failed .* pass x="):
        default_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)))


def test_grad_cam_uses_the_default_layer(model):
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(grad_cam(model, x, 1), grad_cam(model, x, 1, layer="5"))
