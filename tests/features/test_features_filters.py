"""Filter visualization and receptive fields: against autograd by hand, guided backprop and geometry."""

from __future__ import annotations

import pytest
import torch
from features_testing import no_hooks_anywhere, one_thread, tiny_cnn  # noqa: F401 - a fixture
from torch import nn

from netvis.features import filter_visualization, receptive_field, unit_mask
from netvis.hooks import GuidedReLUError, capture_activation, snapshot, state_differences
from netvis.saliency import guided_backprop

UNITS = [5, [0, 3, 7], (2, 1, 2), [1, (4, 0, 3), (4, 3, 3)]]


def _images(n=3, seed=0):
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _head(model, layer):
    names = list(model._modules)
    return model[: names.index(layer) + 1].eval()


def _selected_sum(acts, units):
    return (acts * unit_mask(units, acts.shape[1:])).flatten(1).sum(1)


@pytest.mark.parametrize("units", UNITS, ids=["channel", "channels", "position", "mixed"])
@pytest.mark.parametrize("layer", ["conv2", "relu2"])
def test_plain_version_equals_autograd_by_hand(layer, units):
    model = tiny_cnn()
    x = _images()
    vis = filter_visualization(model, x, layer, units, guided=False)
    head = _head(model, layer)
    xi = x.clone().requires_grad_(True)
    s = _selected_sum(head(xi), units)
    (expected,) = torch.autograd.grad((s**2).sum(), xi)
    torch.testing.assert_close(vis.grad, expected)
    torch.testing.assert_close(vis.score, s.detach())
    assert vis.grad.shape == x.shape and model.training


@pytest.mark.parametrize("units", UNITS, ids=["channel", "channels", "position", "mixed"])
def test_guided_version_equals_guided_backprop_of_the_same_objective(units):
    model = tiny_cnn()
    x = _images()
    vis = filter_visualization(model, x, "relu2", units, guided=True)
    expected = guided_backprop(_head(model, "relu2"), x, target=lambda out: _selected_sum(out, units) ** 2)
    torch.testing.assert_close(vis.grad, expected)
    plain = filter_visualization(model, x, "relu2", units, guided=False)
    assert not torch.allclose(vis.grad, plain.grad)  # guiding changed something
    assert model.training


def test_guided_on_a_resnet_block_equals_guided_backprop():
    from netvis.models import create

    torch.manual_seed(0)
    model = create("resnet20_cifar", in_channels=1, num_classes=10).eval()

    class Layer(nn.Module):  # the resnet, read at layer2.0
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            with capture_activation(self.net, "layer2.0") as cap:
                self.net(x)
            return cap.output

    x = _images(2, seed=1)
    units = [3, (7, 2, 5)]
    vis = filter_visualization(model, x, "layer2.0", units)
    expected = guided_backprop(Layer(model), x, target=lambda out: _selected_sum(out, units) ** 2)
    torch.testing.assert_close(vis.grad, expected)


def test_crop_box_of_one_unit_lies_in_its_receptive_field():
    model = tiny_cnn()
    x = _images(4)
    rf = receptive_field(model, "conv2", (1, 28, 28))
    vis = filter_visualization(model, x, "conv2", (6, 2, 1), guided=False)
    t, l, b, r = rf[6, 2, 1].tolist()
    assert (b - t, r - l) == (15, 15)
    for box in vis.crop_boxes.tolist():
        assert t <= box[0] < box[2] <= b and l <= box[1] < box[3] <= r
    nonzero = vis.grad.ne(0).any(1)
    for n, (bt, bl, bb, br) in enumerate(vis.crop_boxes.tolist()):
        assert nonzero[n, bt:bb, bl:br].sum() == nonzero[n].sum()  # every non-zero pixel is inside
    crops = vis.crops(x)
    t0, l0, b0, r0 = vis.crop_boxes[0].tolist()
    assert crops[0].shape[-2:] == (b0 - t0, r0 - l0)


def test_receptive_field_matches_the_arithmetic_of_a_conv_stack():
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(2, 3, 3, stride=2))
    boxes = receptive_field(net, "3", (1, 20, 20))
    assert boxes.shape == (3, 4, 4, 4)
    for i in range(4):
        for j in range(4):
            # conv3 (stride 2) over pool-2 over conv3/pad1: unit (i, j) covers input 4i - 1 .. 4i + 6
            expected = [max(0, 4 * i - 1), max(0, 4 * j - 1), min(20, 4 * i + 7), min(20, 4 * j + 7)]
            assert boxes[:, i, j].tolist() == [expected] * 3
    with torch.no_grad():  # a zero weight or a ReLU that is off does not shrink the field
        net[3].weight.zero_()
    assert torch.equal(receptive_field(net, net[3], (1, 20, 20)), boxes)
    linear = receptive_field(tiny_cnn(), "fc", (1, 28, 28))
    # a 5 x 5 conv at stride 2 over 28 pixels reads pixels 0 .. 26 only: the last row and column are unseen
    assert linear.shape == (10, 1, 1, 4) and linear[:, 0, 0].tolist() == [[0, 0, 27, 27]] * 10


def test_unit_selection_errors_and_masks():
    assert unit_mask(torch.tensor([0, 2]), (3, 2, 2)).sum(dim=(1, 2)).tolist() == [4, 0, 4]
    assert unit_mask((1,), (4,)).tolist() == [False, True, False, False]
    with pytest.raises(ValueError, match="3 entries"):
        unit_mask((1, 2), (3, 5, 5))
    with pytest.raises(ValueError, match="out of range"):
        unit_mask(3, (3, 5, 5))
    with pytest.raises(ValueError, match="row 5 is out of range"):
        unit_mask((0, 5, 0), (3, 5, 5))
    with pytest.raises(ValueError, match="no units"):
        unit_mask([], (3, 5, 5))


def test_no_side_effects_also_on_errors():
    model = tiny_cnn()
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 0.5)
    model.fc.weight.requires_grad_(False)
    before = snapshot(model)
    filter_visualization(model, _images(2), "conv2", 3)
    filter_visualization(model, _images(2), model.relu2, [1, 2], guided=False)
    with pytest.raises(ValueError, match="out of range"):
        filter_visualization(model, _images(2), "conv2", 99)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        filter_visualization(model, _images(2), "conv9", 0)
    assert state_differences(before, snapshot(model)) == [] and no_hooks_anywhere(model)
    leaky = nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(), nn.Conv2d(2, 2, 3))
    with pytest.raises(GuidedReLUError):
        filter_visualization(leaky, _images(1), "2", 0)
    assert no_hooks_anywhere(leaky)
    assert filter_visualization(leaky, _images(1), "2", 0, guided=False).grad.abs().sum() > 0
