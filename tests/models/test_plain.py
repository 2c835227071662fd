"""netvis.models.plain: the shortcut-free twins of the ResNets, checked against torchvision and ResNets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from models_testing import forward_call_counts, n_params, randomize_norms
from torch import nn

from netvis.models import plain as P
from netvis.models import resnet as R


def shortcut_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".downsample." in name)


def without_shortcuts(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".downsample." not in k}


class ZeroShortcut(nn.Module):
    """A shortcut that adds nothing: zeros shaped like the block's output."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x):
        x = x[:, :1, :: self.stride, :: self.stride]
        return torch.zeros_like(x).expand(-1, self.out_channels, -1, -1)


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_plain_count_is_residual_twin_minus_projections(depth):
    with torch.device("meta"):
        plain = P.plain_cifar(depth)
        resnet_b = R.resnet_cifar(depth)
        resnet_a = R.resnet_cifar(depth, shortcut="A")
    projections = shortcut_params(resnet_b)
    # two projections (16->32 and 32->64): 1x1 conv + BN each
    assert projections == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) == 2752
    assert n_params(plain) == n_params(resnet_b) - projections
    assert n_params(plain) == n_params(resnet_a)  # option A shortcuts have no parameters
    assert sum(isinstance(m, nn.Conv2d) for m in plain.modules()) + 1 == depth


def test_plain20_exact_count():
    # stem 16*3*9 + 32; stage 1 3*(2*(16*16*9 + 32));
    # stage 2 (16*32*9 + 64) + (32*32*9 + 64) + 2*2*(32*32*9 + 64);
    # stage 3 (32*64*9 + 128) + (64*64*9 + 128) + 2*2*(64*64*9 + 128); fc 64*10 + 10
    expected = (432 + 32) + 3 * 2 * (2304 + 32) + (4608 + 64) + (9216 + 64) + 4 * (9216 + 64) \
        + (18432 + 128) + (36864 + 128) + 4 * (36864 + 128) + 650
    assert expected == 269_722
    assert n_params(P.plain20_cifar()) == expected


@pytest.mark.parametrize("arch, twin", [("plain18", "resnet18"), ("plain34", "resnet34")])
def test_imagenet_plain_count_and_weights(arch, twin):
    with torch.device("meta"):
        plain = getattr(P, arch)()
        ref = getattr(torchvision.models, twin)(weights=None)
    assert n_params(plain) == n_params(ref) - shortcut_params(ref)
    # every layer of the plain net exists in torchvision's ResNet under the same name and shape
    plain.load_state_dict(without_shortcuts(ref.state_dict()), strict=True, assign=True)


# ---------------------------------------------------------------- forward against torchvision


def test_plain18_equals_torchvision_resnet18_with_zero_shortcuts():
    ref = torchvision.models.resnet18(weights=None)
    for stage in (ref.layer1, ref.layer2, ref.layer3, ref.layer4):
        for block in stage:  # every shortcut now adds zeros: torchvision's own plain net
            block.downsample = ZeroShortcut(block.conv2.out_channels, block.conv1.stride[0])
    randomize_norms(ref)
    ref.eval()
    model = P.plain18()
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        out = model(x)
    assert (out - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())


def test_plain_block_adds_nothing():
    block = P.PlainBlock(8, 8).eval()
    randomize_norms(block)
    x = torch.randn(2, 8, 6, 6)
    residual = R.BasicBlock(8, 8).eval()
    residual.load_state_dict(block.state_dict(), strict=True)  # same layers, same names
    with torch.no_grad():
        branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        assert torch.allclose(block(x), F.relu(branch), atol=1e-6)
        assert torch.allclose(residual(x), F.relu(branch + x), atol=1e-6)
        assert not torch.allclose(residual(x), block(x))
    assert [n for n, _ in block.named_children()] == ["conv1", "bn1", "relu1", "conv2", "bn2", "relu2"]


def test_cifar_plain_loads_resnet_twin_weights():
    resnet = R.resnet20_cifar()
    plain = P.plain20_cifar()
    plain.load_state_dict(without_shortcuts(resnet.state_dict()), strict=True)
    assert plain.state_dict().keys() == without_shortcuts(resnet.state_dict()).keys()


# ---------------------------------------------------------------- shapes, options


def test_cifar_stem_shapes():
    with torch.device("meta"):
        gray = P.plain20_cifar(in_channels=1)
        assert gray.forward_features(torch.randn(1, 1, 28, 28)).shape == (1, 64, 7, 7)
        assert gray(torch.randn(1, 1, 28, 28)).shape == (1, 10)
        rgb = P.plain56_cifar()
        assert rgb.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)
        imagenet = P.plain34(num_classes=5)
        assert imagenet.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
        assert imagenet(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert gray.maxpool is None and gray.conv1.kernel_size == (3, 3)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d) and imagenet.conv1.kernel_size == (7, 7)
    assert len(rgb.layer1) == len(rgb.layer3) == 9
    with torch.device("meta"):
        assert len(P.plain32_cifar().layer2) == 5 and len(P.plain44_cifar().layer2) == 7


def test_attributes_and_config():
    model = P.plain44_cifar(num_classes=3, in_channels=2, norm_layer="none")
    assert model.in_channels == 2 and model.num_classes == 3 and model.num_features == 64
    assert model.arch == "plain44_cifar"
    assert model.config["layers"] == (7, 7, 7) and model.config["stage_channels"] == (16, 32, 64)
    assert model.config["norm_layer"] == "none"
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    rebuilt = P.PlainNet(**model.config)
    assert n_params(rebuilt) == n_params(model)
    assert model.forward_head(torch.randn(2, 64, 4, 4), pre_logits=True).shape == (2, 64)


@pytest.mark.parametrize("depth", [19, 0, 8.0])
def test_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"6n\+2"):
        P.plain_cifar(depth)


def test_invalid_options():
    with pytest.raises(ValueError, match="stem.*'imagenet', 'cifar'"):
        P.plain18(stem="mnist")
    with pytest.raises(ValueError, match="norm_layer"):
        P.plain20_cifar(norm_layer="group")
    with pytest.raises(ValueError, match="in_channels"):
        P.plain20_cifar(in_channels=0)
    with pytest.raises(ValueError, match="inplace"):
        P.plain20_cifar(act_layer=lambda: nn.ReLU(inplace=True))


def test_netvis_batchnorm_gives_equal_outputs():
    ref = P.plain20_cifar()
    randomize_norms(ref)
    model = P.plain20_cifar(norm_layer="netvis")
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - ref(x)).abs().max() <= 1e-5


# ---------------------------------------------------------------- conventions


def test_relus_are_separate_non_inplace_and_called_once():
    model = P.plain20_cifar().eval()
    relus = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 9 * 2 == len({id(m) for _, m in relus})
    assert not any(m.inplace for _, m in relus)
    calls = forward_call_counts(model, relus, torch.randn(1, 3, 32, 32))
    assert set(calls.values()) == {1}
    graph = torch.fx.symbolic_trace(model).graph
    assert not any(n.op == "call_function" and n.target in (F.relu, torch.relu) for n in graph.nodes)
    assert not any(n.op == "call_function" and "add" in str(n.target) for n in graph.nodes)  # no shortcuts


def test_input_validation():
    model = P.plain20_cifar(in_channels=1)
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(1, 28, 28))


def test_fx_symbolic_trace_gives_equal_outputs():
    model = P.plain20_cifar(in_channels=1).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError, match="in_channels"):
        traced(torch.randn(2, 3, 28, 28))


def test_gradient_flows():
    torch.manual_seed(0)
    model = P.plain20_cifar()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    params = list(model.parameters())
    grads = torch.autograd.grad(model(x).square().sum(), [x, *params])
    assert grads[0].abs().sum() > 0
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[1].abs().sum() > 0  # the stem conv
