"""netvis.models.densenet against torchvision's DenseNet, the paper's numbers and hand formulas."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
import torchvision
import torchvision.models.feature_extraction
from models_testing import forward_call_counts, n_params
from torch import nn

from netvis.models import densenet as dn
from netvis.models import registry
from netvis.models.densenet import (
    DenseBlock,
    DenseLayer,
    DenseNet,
    Transition,
    densenet121,
    densenet169,
    densenet201,
    densenet264,
    densenet_bc,
    densenet_bc_100,
)

TV_COUNTS = {"densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928}
BUILDERS = {"densenet121": densenet121, "densenet169": densenet169, "densenet201": densenet201}


def formula_params(growth_rate, block_config, num_init_features, num_classes, in_channels=3, stem="imagenet",
                   bn_size=4, compression=0.5):
    """Parameter count of a DenseNet-BC written out from the paper's description (BN: 2 per channel)."""
    k, width = growth_rate, bn_size * growth_rate
    c = num_init_features
    total = in_channels * c * (49 if stem == "imagenet" else 9)
    total += 2 * c if stem == "imagenet" else 0  # norm0
    for b, layers in enumerate(block_config):
        for _ in range(layers):
            total += 2 * c + c * width + 2 * width + width * k * 9  # BN, 1x1 conv, BN, 3x3 conv
            c += k
        if b != len(block_config) - 1:
            out = int(compression * c)
            total += 2 * c + c * out  # BN, 1x1 conv
            c = out
    return total + 2 * c + c * num_classes + num_classes  # norm5, classifier


def small_net(**kw) -> DenseNet:
    options = dict(growth_rate=4, block_config=(2, 3), num_init_features=8, num_classes=5)
    options.update(kw)
    return DenseNet(**options)


def randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN affine parameters and running statistics, so that comparisons mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


# ----------------------------------------------------------------------------- parameter counts


def test_densenet264_parameter_count_and_torchvision_keys():
    ours = densenet264()
    reference = torchvision.models.DenseNet(32, (6, 12, 64, 48), 64)
    expected = formula_params(32, (6, 12, 64, 48), 64, 1000)
    assert n_params(ours) == n_params(reference) == expected == 33_337_704
    ours.load_state_dict(reference.state_dict(), strict=True)


def test_formula_reproduces_torchvision_counts():
    assert formula_params(32, (6, 12, 24, 16), 64, 1000) == TV_COUNTS["densenet121"]
    assert formula_params(32, (6, 12, 48, 32), 64, 1000) == TV_COUNTS["densenet201"]


def test_densenet_bc_100_parameter_count_is_the_papers_0_8m():
    # The paper (Table 2) lists DenseNet-BC (L=100, k=12) with 0.8M parameters: 3 blocks of
    # (100 - 4) / 6 = 16 bottleneck layers, 24 stem channels, transitions 216 -> 108 and 300 -> 150,
    # 342 channels into the 10-way classifier.
    model = densenet_bc_100()
    count = n_params(model)
    assert 760_000 <= count <= 800_000
    assert count == formula_params(12, (16, 16, 16), 24, 10, stem="cifar") == 769_162
    assert model.block_config == (16, 16, 16)
    assert model.num_features == 342
    assert model.features.transition1.conv.out_channels == 108
    assert model.features.transition2.conv.out_channels == 150


@pytest.mark.parametrize("depth,k,paper_millions", [(250, 24, 15.3), (190, 40, 25.6)])
def test_densenet_bc_larger_models_match_paper(depth, k, paper_millions):
    model = densenet_bc(depth, k)
    assert model.block_config == ((depth - 4) // 6,) * 3
    assert round(n_params(model) / 1e6, 1) == paper_millions


# ----------------------------------------------------------------------------- torchvision compatibility


@pytest.mark.parametrize("name", sorted(TV_COUNTS))
def test_torchvision_parameter_count_state_dict_and_outputs(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    randomize_bn(reference)
    reference.eval()
    ours = BUILDERS[name]().eval()
    assert n_params(ours) == n_params(reference) == TV_COUNTS[name]
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert got.shape == (1, 1000)
    assert (got - expected).abs().max().item() <= 1e-5
    if name == "densenet121":
        with torch.no_grad():
            assert (ours.forward_features(x) - reference.features(x)).abs().max().item() <= 1e-5


def test_norm_layer_netvis_matches_torch():
    torch.manual_seed(0)
    reference = small_net(norm_layer="torch")
    randomize_bn(reference)
    ours = small_net(norm_layer="netvis")
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for mode in (False, True):  # eval (running statistics), then train (batch statistics)
            reference.train(mode)
            ours.train(mode)
            assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=1e-4)


def test_norm_layer_none_has_no_normalization():
    model = small_net(norm_layer="none")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert small_net(norm_layer=None).config["norm_layer"] is None


def test_norm_layer_callable_is_used():
    model = small_net(norm_layer=lambda c: nn.GroupNorm(1, c))
    assert isinstance(model.features.denseblock1.denselayer1.norm1, nn.GroupNorm)
    assert isinstance(model.features.norm5, nn.GroupNorm)


# ----------------------------------------------------------------------------- dense connectivity


def test_dense_block_concatenates_all_previous_feature_maps():
    torch.manual_seed(0)
    block = DenseBlock(3, 8, 4, 4, 0.0, nn.BatchNorm2d)
    randomize_bn(block)
    block.eval()
    assert [layer.in_channels for layer in block.values()] == [8, 12, 16]
    assert block.out_channels == 8 + 3 * 4
    x0 = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        y = block(x0)
        x1 = block.denselayer1([x0])
        x2 = block.denselayer2([x0, x1])
        x3 = block.denselayer3(torch.cat([x0, x1, x2], 1))  # one tensor works as well as a list
    assert y.shape == (2, 20, 6, 6)
    assert torch.equal(y[:, :8], x0)
    assert torch.allclose(y[:, 8:12], x1) and torch.allclose(y[:, 12:16], x2)
    assert torch.allclose(y[:, 16:], x3, atol=1e-6)


def test_dense_layer_is_bn_relu_1x1_then_bn_relu_3x3():
    torch.manual_seed(0)
    layer = DenseLayer(10, growth_rate=3, bn_size=4, drop_rate=0.0, norm_layer=nn.BatchNorm2d)
    randomize_bn(layer)
    layer.eval()
    assert layer.conv1.weight.shape == (12, 10, 1, 1) and layer.conv2.weight.shape == (3, 12, 3, 3)
    a, b = torch.randn(1, 4, 5, 5), torch.randn(1, 6, 5, 5)

    def bn(m, t):
        return (t - m.running_mean[:, None, None]) / torch.sqrt(m.running_var[:, None, None] + m.eps) \
            * m.weight[:, None, None] + m.bias[:, None, None]

    with torch.no_grad():
        h = torch.nn.functional.conv2d(bn(layer.norm1, torch.cat([a, b], 1)).clamp_min(0), layer.conv1.weight)
        expected = torch.nn.functional.conv2d(bn(layer.norm2, h).clamp_min(0), layer.conv2.weight, padding=1)
        got = layer([a, b])
    assert torch.allclose(got, expected, atol=1e-5)


def test_transition_compresses_and_halves():
    t = Transition(21, 10, nn.BatchNorm2d)
    assert t(torch.randn(1, 21, 9, 9)).shape == (1, 10, 4, 4)
    model = DenseNet(growth_rate=5, block_config=(3, 2, 1), num_init_features=7, compression=0.7)
    # 7 + 15 = 22 -> floor(0.7 * 22) = 15; 15 + 10 = 25 -> 17; 17 + 5 = 22 into the head
    assert model.features.transition1.conv.out_channels == 15
    assert model.features.transition2.conv.out_channels == 17
    assert model.num_features == 22 == model.classifier.in_features
    assert n_params(model) == formula_params(5, (3, 2, 1), 7, 1000, compression=0.7)


# ----------------------------------------------------------------------------- memory efficiency


def _grads(model, x):
    g = torch.Generator().manual_seed(3)
    out = model(x)
    weights = torch.randn(out.shape, generator=g)
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), [x, *params])
    return out.detach(), grads


@pytest.mark.parametrize(
    "build", [small_net, lambda **kw: densenet_bc(16, 4, **kw)], ids=["imagenet", "cifar"]
)
def test_memory_efficient_same_outputs_gradients_and_running_stats(build):
    torch.manual_seed(0)
    plain = build(memory_efficient=False)
    randomize_bn(plain)
    efficient = build(memory_efficient=True)
    efficient.load_state_dict(plain.state_dict(), strict=True)
    calls = []
    hook = efficient.features.denseblock1.denselayer1.relu1.register_forward_hook(lambda *a: calls.append(1))
    try:
        for model in (plain, efficient):
            model.train()
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        out_p, grads_p = _grads(plain, x)
        out_e, grads_e = _grads(efficient, x)
    finally:
        hook.remove()
    assert len(calls) == 2, "the bottleneck should be recomputed in the backward pass"
    assert torch.allclose(out_p, out_e, atol=1e-6)
    assert len(grads_p) == len(grads_e)
    for gp, ge in zip(grads_p, grads_e, strict=True):
        assert torch.allclose(gp, ge, atol=1e-5, rtol=1e-4)
    # the recomputation must not update BN's running statistics a second time
    for (name, bp), (_, be) in zip(plain.named_buffers(), efficient.named_buffers(), strict=True):
        assert torch.allclose(bp.float(), be.float(), atol=1e-6), name


def test_memory_efficient_eval_and_no_grad_equal():
    torch.manual_seed(0)
    plain = small_net()
    randomize_bn(plain)
    efficient = small_net(memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    plain.eval()
    efficient.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(plain(x), efficient(x), atol=1e-6)
    assert torch.allclose(plain(x), efficient(x), atol=1e-6)  # grad enabled: checkpointed path


# ----------------------------------------------------------------------------- activations


def test_every_relu_is_its_own_module_called_once_and_not_inplace():
    model = densenet121().eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)
    # torchvision's ReLUs (relu0, 2 per dense layer, 1 per transition) plus the final one
    assert len(relus) == 1 + 2 * sum((6, 12, 24, 16)) + 3 + 1
    calls = forward_call_counts(model, enumerate(relus), torch.randn(1, 3, 64, 64))
    assert set(calls.values()) == {1}


def test_forward_calls_no_functional_relu(monkeypatch):
    model = small_net().eval()
    depth = [0]
    handles = []
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            handles.append(m.register_forward_pre_hook(lambda *a: depth.__setitem__(0, depth[0] + 1)))
            handles.append(m.register_forward_hook(lambda *a: depth.__setitem__(0, depth[0] - 1)))

    def guard(original):
        def relu(*args, **kwargs):
            if depth[0] == 0:
                raise AssertionError("functional relu called outside an nn.ReLU module")
            return original(*args, **kwargs)
        return relu

    for owner, name in [(torch.nn.functional, "relu"), (torch.nn.functional, "relu_"), (torch, "relu"),
                        (torch, "relu_"), (torch.Tensor, "relu"), (torch.Tensor, "relu_")]:
        monkeypatch.setattr(owner, name, guard(getattr(owner, name)))
    try:
        with torch.no_grad():
            out = model(torch.randn(1, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (1, 5)
    assert depth[0] == 0


def test_source_has_no_functional_relu_or_inplace():
    tree = ast.parse(inspect.getsource(dn))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr != "functional", f"line {node.lineno}: torch.nn.functional used"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            func = node.func
            called_on_self = isinstance(func.value, ast.Name) and func.value.id == "self"  # a module
            assert called_on_self or func.attr not in ("relu", "relu_"), f"line {node.lineno}: .{func.attr}()"
        if isinstance(node, ast.keyword) and node.arg == "inplace":
            raise AssertionError(f"line {node.value.lineno}: inplace= passed")


# ----------------------------------------------------------------------------- inputs and options


@pytest.mark.parametrize("shape", [(1, 1, 32, 32), (1, 4, 32, 32), (3, 32, 32), (1, 1, 3, 32, 32)])
def test_wrong_input_raises_value_error(shape):
    model = small_net().eval()
    with pytest.raises(ValueError):
        model(torch.randn(*shape))
    with pytest.raises(ValueError):
        model.forward_features(torch.randn(*shape))


@pytest.mark.parametrize(
    "option,value",
    [
        ("growth_rate", 0),
        ("growth_rate", 2.5),
        ("block_config", ()),
        ("block_config", (6, 0)),
        ("num_init_features", -1),
        ("bn_size", 0),
        ("drop_rate", 1.0),
        ("drop_rate", -0.1),
        ("compression", 0.0),
        ("compression", 1.5),
        ("num_classes", 0),
        ("in_channels", 0),
        ("stem", "tiny"),
        ("norm_layer", "layernorm"),
        ("memory_efficient", "yes"),
    ],
)
def test_invalid_option_raises_value_error_naming_it(option, value):
    with pytest.raises(ValueError, match=option):
        DenseNet(**{option: value})


def test_builders_reject_fixed_and_bad_options():
    with pytest.raises(ValueError, match="growth_rate"):
        densenet121(growth_rate=12)
    with pytest.raises(ValueError, match="block_config"):
        densenet169(block_config=(1, 2))
    with pytest.raises(ValueError, match="num_classes"):
        densenet121(num_classes=-3)
    with pytest.raises(ValueError, match="depth"):
        densenet_bc(99)
    with pytest.raises(ValueError, match="depth"):
        densenet_bc(4)
    with pytest.raises(TypeError):
        densenet121(10)  # options are keyword-only


def test_densenet_bc_depth_formula_for_other_block_counts():
    model = densenet_bc(2 * 3 * 4 + 4 + 1, 6, num_blocks=4)  # depth 29 = 2*n*B + B + 1 with n=3, B=4
    assert model.block_config == (3, 3, 3, 3)


# ----------------------------------------------------------------------------- CIFAR models and heads


def test_cifar_densenet_bc_forward_shapes():
    model = densenet_bc_100().eval()
    assert model.num_classes == 10 and model.in_channels == 3
    assert isinstance(model.features.conv0, nn.Conv2d) and model.features.conv0.kernel_size == (3, 3)
    assert model.features.conv0.out_channels == 24
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    gray = densenet_bc_100(in_channels=1, num_classes=7).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 32, 32))
        assert feats.shape == (1, 342, 8, 8)
        assert model.forward_head(feats).shape == (1, 10)
        feats = gray.forward_features(torch.randn(1, 1, 28, 28))
        assert feats.shape == (1, 342, 7, 7)
        assert gray.forward_head(feats).shape == (1, 7)


def test_forward_is_features_then_head():
    torch.manual_seed(0)
    model = small_net().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 4, 4)  # 32 -> 8 (stem) -> 4 (transition)
        assert torch.equal(model(x), model.forward_head(feats))
        pooled = model.forward_head(feats, pre_logits=True)
        assert torch.allclose(pooled, feats.clamp_min(0).mean((2, 3)))
        assert torch.allclose(model.classifier(pooled), model(x))


def test_attributes_and_config_rebuild():
    model = densenet121(num_classes=10, in_channels=1, norm_layer="none", drop_rate=0.1)
    assert (model.arch, model.num_classes, model.in_channels, model.growth_rate) == ("densenet121", 10, 1, 32)
    assert model.block_config == (6, 12, 24, 16)
    cfg = model.config
    assert cfg["num_init_features"] == 64 and cfg["stem"] == "imagenet" and cfg["drop_rate"] == 0.1
    twin = DenseNet(**cfg)
    twin.load_state_dict(model.state_dict(), strict=True)
    assert DenseNet(**densenet_bc_100().config).config == densenet_bc_100().config


def test_registry_creates_densenets():
    model = registry.create("densenet_bc_100", in_channels=1)
    assert isinstance(model, DenseNet) and model.in_channels == 1
    assert registry.create("densenet121", num_classes=3, stem="cifar").config["stem"] == "cifar"


def test_fx_symbolic_trace():
    torch.manual_seed(0)
    model = small_net().eval()
    traced = torch.fx.symbolic_trace(model)
    assert any(node.op == "call_function" and "check_input" in node.name for node in traced.graph.nodes)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError):
        traced(torch.randn(1, 2, 32, 32))
    features = torchvision.models.feature_extraction.create_feature_extractor(
        densenet_bc_100().eval(), {"features.denseblock2": "block2"}
    )
    with torch.no_grad():
        assert features(torch.randn(1, 3, 32, 32))["block2"].shape == (1, 108 + 16 * 12, 16, 16)


def test_drop_rate_only_in_training():
    model = small_net(drop_rate=0.5)
    x = torch.randn(1, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
