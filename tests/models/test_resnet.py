"""netvis.models.resnet against torchvision's ResNets, He et al.'s parameter counts and netvis conventions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from models_testing import forward_call_counts, n_params, randomize_norms
from torch import nn

from netvis.models import batchnorm as bn_module
from netvis.models import resnet as R

X64 = (1, 3, 64, 64)

TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def torchvision_reference(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    """torchvision's model (no weights downloaded), filled quickly with He-normal convs, random BNs; eval."""
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)(weights=None, **kwargs)
    ref.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
            elif isinstance(m, nn.Linear):
                bound = m.in_features ** -0.5
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)
    randomize_norms(ref, seed)
    return ref.eval()


def netvis_with_weights_of(ref: nn.Module, build, **options) -> nn.Module:
    """Build a netvis model on the meta device and give it ``ref``'s tensors (strict key match), in eval."""
    with torch.device("meta"):
        model = build(**options)
    model.load_state_dict(ref.state_dict(), strict=True, assign=True)
    return model.eval()


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """max |actual - expected| <= tol, relative to the reference's magnitude when it exceeds 1."""
    assert actual.shape == expected.shape
    scale = max(1.0, expected.abs().max().item())
    diff = (actual - expected).abs().max().item()
    assert diff <= tol * scale, f"max abs diff {diff} (reference magnitude {scale})"


def cifar_params_by_hand(n: int, shortcut: str, in_channels: int = 3, num_classes: int = 10) -> int:
    """Parameter count of a 6n+2 CIFAR ResNet transcribed from He et al. 2015, section 4.2."""

    def conv(cin, cout, k):
        return cin * cout * k * k

    def bn(c):
        return 2 * c

    def block(cin, c):
        return conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c)

    total = conv(in_channels, 16, 3) + bn(16)
    total += n * block(16, 16)
    total += block(16, 32) + (n - 1) * block(32, 32)
    total += block(32, 64) + (n - 1) * block(64, 64)
    total += 64 * num_classes + num_classes
    if shortcut == "B":  # 1x1 conv + BN at the two stage transitions
        total += conv(16, 32, 1) + bn(32) + conv(32, 64, 1) + bn(64)
    return total


class CallOrder:
    """Record the order in which a module's direct submodules are called (forward hooks, removed on exit)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.order: list[str] = []
        self.handles = []

    def __enter__(self):
        for name, sub in self.module.named_modules():
            if name and not isinstance(sub, nn.Sequential):
                hook = sub.register_forward_hook(lambda m, i, o, name=name: self.order.append(name))
                self.handles.append(hook)
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# ---------------------------------------------------------------- torchvision equivalence


@pytest.mark.parametrize("arch", list(TORCHVISION_COUNTS))
def test_matches_torchvision(arch):
    with torch.device("meta"):
        assert n_params(getattr(R, arch)()) == TORCHVISION_COUNTS[arch]
    ref = torchvision_reference(arch)
    assert n_params(ref) == TORCHVISION_COUNTS[arch]
    model = netvis_with_weights_of(ref, getattr(R, arch))  # strict: no missing, no unexpected keys
    x = torch.randn(X64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x))


def test_state_dict_loads_into_freshly_initialised_model():
    ref = torchvision_reference("resnet18", seed=1)
    model = R.resnet18()
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = torch.randn(X64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x))


def test_netvis_batchnorm_gives_equal_outputs():
    ref = torchvision_reference("resnet18")
    model = R.resnet18(norm_layer="netvis")
    assert any(isinstance(m, bn_module.BatchNorm2d) for m in model.modules())
    assert not any(type(m) is nn.BatchNorm2d for m in model.modules())
    model.load_state_dict(ref.state_dict(), strict=True)
    model.eval()
    x = torch.randn(X64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x))


def test_resnext_and_wide_options_match_torchvision():
    ref = torchvision_reference("resnext50_32x4d")
    model = netvis_with_weights_of(ref, R.resnet50, groups=32, width_per_group=4)
    assert n_params(model) == n_params(ref)
    x = torch.randn(X64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x))
    with torch.device("meta"):
        assert n_params(R.resnet50(width_per_group=128)) == n_params(torchvision.models.wide_resnet50_2())


# ---------------------------------------------------------------- v1 vs v1.5


def test_variant_stride_placement():
    with torch.device("meta"):
        v15 = R.resnet50()
        v1 = R.resnet50(variant="v1")
    for stage in ("layer2", "layer3", "layer4"):
        first15, first1 = getattr(v15, stage)[0], getattr(v1, stage)[0]
        assert first15.conv1.stride == (1, 1) and first15.conv2.stride == (2, 2)
        assert first1.conv1.stride == (2, 2) and first1.conv2.stride == (1, 1)
        assert first15.downsample[0].stride == first1.downsample[0].stride == (2, 2)
        for later in list(getattr(v1, stage))[1:]:
            assert later.conv1.stride == later.conv2.stride == (1, 1)
        assert isinstance(first1, R.Bottleneck) and first1.variant == "v1"
    assert v1.config["variant"] == "v1" and v15.config["variant"] == "v1.5"
    # basic blocks have a single stride position: the variant does not change ResNet-18
    with torch.device("meta"):
        assert R.resnet18(variant="v1").layer2[0].conv1.stride == (2, 2)


def test_v1_equals_torchvision_with_strides_moved():
    ref = torchvision_reference("resnet50")
    for stage in (ref.layer2, ref.layer3, ref.layer4):  # turn torchvision's v1.5 into v1
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    model = netvis_with_weights_of(ref, R.resnet50, variant="v1")
    v15 = netvis_with_weights_of(ref, R.resnet50)
    x = torch.randn(X64)
    with torch.no_grad():
        out = model(x)
        assert_close_scaled(out, ref(x))
        assert not torch.allclose(out, v15(x))  # same weights, different network


# ---------------------------------------------------------------- block order, pre-activation


def test_post_activation_block_call_order():
    block = R.resnet18().layer2[0]
    with CallOrder(block) as rec:
        block(torch.randn(1, 64, 8, 8))
    assert rec.order == ["downsample.0", "downsample.1", "conv1", "bn1", "relu1", "conv2", "bn2", "relu_out"]


def test_preact_block_order_and_math():
    model = R.resnet18(preact=True)
    first, second = model.layer2[0], model.layer2[1]
    assert isinstance(first, R.PreActBasicBlock)
    children = [n for n, _ in first.named_children()]
    assert children == ["bn1", "relu1", "conv1", "bn2", "relu2", "conv2", "downsample"]
    with CallOrder(first) as rec:
        first(torch.randn(1, 64, 8, 8))
    assert rec.order == ["bn1", "relu1", "downsample.0", "conv1", "bn2", "relu2", "conv2"]
    # the projection of a pre-activation block is a bare 1x1 conv fed with ReLU(BN(x))
    assert len(first.downsample) == 1 and first.downsample[0].kernel_size == (1, 1)

    randomize_norms(model)
    model.eval()
    x = torch.randn(1, 128, 8, 8)
    b = second
    with torch.no_grad():
        expected = b.conv2(F.relu(b.bn2(b.conv1(F.relu(b.bn1(x)))))) + x  # He et al. 2016, eq. (4)
        assert_close_scaled(b(x), expected)
        y = torch.randn(1, 64, 8, 8)
        pre = F.relu(first.bn1(y))
        expected = first.conv2(F.relu(first.bn2(first.conv1(pre)))) + first.downsample(pre)
        assert_close_scaled(first(y), expected)


def test_preact_models_forward():
    for model, size, feat_shape in [
        (R.ResNet("bottleneck", (1, 1, 1, 1), preact=True, variant="v1"), 64, (2, 2048, 2, 2)),
        (R.resnet20_cifar(preact=True), 32, (2, 64, 8, 8)),
    ]:
        assert isinstance(model.bn_final, nn.BatchNorm2d) and isinstance(model.relu_final, nn.ReLU)
        model.eval()
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            feats = model.forward_features(x)
            assert feats.shape == feat_shape
            assert feats.min() >= 0  # the final BN-ReLU comes before pooling
            out = model(x)
        assert out.shape == (2, model.num_classes)
        assert torch.isfinite(out).all()
    with torch.device("meta"):
        assert isinstance(R.resnet50(preact=True).layer1[0], R.PreActBottleneck)
        assert not hasattr(R.resnet18(), "bn_final")


def test_zero_init_residual_makes_blocks_identities():
    post = R.resnet18(zero_init_residual=True).eval()
    pre = R.resnet18(preact=True, zero_init_residual=True).eval()
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0 for s in (post.layer1, post.layer4) for b in s)
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(post.layer1[1](x), F.relu(x))
        assert torch.equal(pre.layer1[1](x), x)
    bottleneck = R.ResNet("bottleneck", (1, 2), zero_init_residual=True)
    assert float(bottleneck.layer2[1].bn3.weight.detach().abs().sum()) == 0
    assert float(R.ResNet("bottleneck", (1, 2)).layer2[1].bn3.weight.detach().abs().sum()) > 0


# ---------------------------------------------------------------- CIFAR ResNets


def test_cifar_stem_shapes():
    gray = R.resnet20_cifar(in_channels=1).eval()
    assert gray.maxpool is None
    assert gray.conv1.kernel_size == (3, 3) and gray.conv1.stride == (1, 1) and gray.conv1.out_channels == 16
    with torch.no_grad():
        assert gray.forward_features(torch.randn(1, 1, 28, 28)).shape == (1, 64, 7, 7)
        assert gray(torch.randn(1, 1, 28, 28)).shape == (1, 10)
        rgb = R.resnet20_cifar().eval()
        assert rgb.conv1(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32, 32)  # the stem keeps 32x32
        assert rgb.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 64, 8, 8)
        wide = R.resnet18(stem="cifar", num_classes=10).eval()
        assert wide.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 512, 4, 4)
    assert [n for n, _ in rgb.named_children()] == ["conv1", "bn1", "relu", "layer1", "layer2", "layer3",
                                                    "avgpool", "fc"]


@pytest.mark.parametrize("depth, paper_millions", [(20, "0.27"), (32, "0.46"), (44, "0.66"), (56, "0.85"),
                                                   (110, "1.7")])
def test_cifar_parameter_counts(depth, paper_millions):
    n = (depth - 2) // 6
    with torch.device("meta"):
        option_a = R.resnet_cifar(depth, shortcut="A")
        option_b = R.resnet_cifar(depth)
        gray = R.resnet_cifar(depth, in_channels=1, num_classes=7)
    assert n_params(option_a) == cifar_params_by_hand(n, "A")
    assert n_params(option_b) == cifar_params_by_hand(n, "B")
    assert n_params(gray) == cifar_params_by_hand(n, "B", in_channels=1, num_classes=7)
    # He et al. 2015, table 6 (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    assert f"{n_params(option_a) / 1e6:.2g}" == paper_millions
    assert sum(1 for m in option_a.modules() if isinstance(m, nn.Conv2d)) + 1 == depth  # 6n+2 weighted layers


def test_resnet20_cifar_exact_counts():
    # 16*3*9 + 32 (stem) + 3*4672 + 13952 + 2*18560 + 55552 + 2*73984 + 650 = 269,722 (paper: 0.27M)
    assert n_params(R.resnet20_cifar(shortcut="A")) == 269_722
    # option B adds (16*32 + 2*32) + (32*64 + 2*64) = 2,752
    assert n_params(R.resnet20_cifar()) == 272_474
    with torch.device("meta"):
        assert R.resnet56_cifar().config["layers"] == (9, 9, 9)
        assert R.resnet32_cifar().arch == "resnet32_cifar"
        assert len(R.resnet44_cifar().layer3) == 7
        assert R.resnet110_cifar().config["stage_channels"] == (16, 32, 64)


def test_zero_pad_shortcut():
    x = torch.randn(2, 16, 9, 9)
    sc = R.ZeroPadShortcut(16, 32, stride=2)
    y = sc(x)
    assert y.shape == (2, 32, 5, 5)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(y[:, 16:], torch.zeros(2, 16, 5, 5))
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1)
    assert conv(x).shape == y.shape  # matches the residual branch's shape
    model = R.resnet20_cifar(shortcut="A")
    assert isinstance(model.layer2[0].downsample, R.ZeroPadShortcut)
    assert not any("downsample" in k for k in model.state_dict())
    with pytest.raises(ValueError, match="shortcut='B'"):
        R.ZeroPadShortcut(32, 16)


@pytest.mark.parametrize("depth", [0, 7, 21, 33, -4, 20.0, True])
def test_cifar_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=r"6n\+2"):
        R.resnet_cifar(depth)


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    "option, value, allowed",
    [
        ("variant", "v2", "v1.5"),
        ("stem", "tiny", "cifar"),
        ("shortcut", "C", "'A'"),
        ("preact", "yes", "True"),
        ("zero_init_residual", 1, "False"),
        ("norm_layer", "layernorm", "netvis"),
        ("in_channels", 0, "positive"),
        ("num_classes", -1, "positive"),
        ("groups", 0, "positive"),
    ],
)
def test_invalid_options_raise(option, value, allowed):
    with pytest.raises(ValueError, match=option) as info:
        R.resnet50(**{option: value})
    assert allowed in str(info.value)


def test_invalid_structure_raises():
    with pytest.raises(ValueError, match="groups"):
        R.resnet18(groups=32)
    with pytest.raises(ValueError, match="same length"):
        R.ResNet("basic", (1, 1), stage_channels=(8, 16, 32))
    with pytest.raises(ValueError, match="block"):
        R.ResNet("dense", (1, 1))
    with pytest.raises(ValueError, match="inplace"):
        R.resnet18(act_layer=lambda: nn.ReLU(inplace=True))
    with pytest.raises(TypeError):
        R.resnet18(bogus=1)


def test_norm_none_gives_biased_convs_and_no_norms():
    with torch.device("meta"):
        model = R.resnet50(norm_layer="none")
        ref = torchvision.models.resnet50(weights=None)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is not None for c in convs)
    # parameter count: torchvision's minus every BN's 2C plus every conv's C_out bias
    bn = sum(2 * m.num_features for m in ref.modules() if isinstance(m, nn.BatchNorm2d))
    bias = sum(m.out_channels for m in ref.modules() if isinstance(m, nn.Conv2d))
    assert n_params(model) == TORCHVISION_COUNTS["resnet50"] - bn + bias
    with torch.no_grad():
        assert R.resnet20_cifar(norm_layer=None).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_custom_norm_and_act_layers():
    model = R.resnet20_cifar(norm_layer=lambda c: nn.GroupNorm(4, c), act_layer=nn.GELU)
    # one in the stem, two per block, one per projection shortcut
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 1 + 9 * 2 + 2
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.config["act_layer"] is nn.GELU


def test_attributes_and_config():
    with torch.device("meta"):
        model = R.resnet50(num_classes=7, in_channels=1, stem="cifar", variant="v1", preact=True)
    assert model.in_channels == 1 and model.num_classes == 7 and model.num_features == 2048
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    assert model.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert model.arch == "resnet50"
    cfg = model.config
    assert cfg["block"] == "bottleneck" and cfg["layers"] == (3, 4, 6, 3)
    assert cfg["stem"] == "cifar" and cfg["variant"] == "v1" and cfg["preact"] is True
    assert cfg["norm_layer"] == "torch" and cfg["in_channels"] == 1 and cfg["num_classes"] == 7
    with torch.device("meta"):
        rebuilt = R.ResNet(**cfg)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    pooled = R.resnet20_cifar().forward_head(torch.randn(2, 64, 3, 3), pre_logits=True)
    assert pooled.shape == (2, 64)


# ---------------------------------------------------------------- netvis conventions


RELU_MODELS = {
    "resnet18": lambda: R.resnet18(),
    "resnet50_v1": lambda: R.resnet50(variant="v1"),
    "resnet18_preact": lambda: R.resnet18(preact=True),
    "resnet20_cifar": lambda: R.resnet20_cifar(),
    "resnet20_cifar_preact_A": lambda: R.resnet20_cifar(preact=True, shortcut="A"),
}
# stem + one per conv-BN pair and per addition (post-activation); stem + two per block + final (preact)
EXPECTED_RELUS = {
    "resnet18": 1 + 8 * 2,
    "resnet50_v1": 1 + 16 * 3,
    "resnet18_preact": 1 + 8 * 2 + 1,
    "resnet20_cifar": 1 + 9 * 2,
    "resnet20_cifar_preact_A": 1 + 9 * 2 + 1,
}


@pytest.mark.parametrize("name", list(RELU_MODELS))
def test_every_relu_is_its_own_module_called_once(name):
    with torch.device("meta"):  # shapes only: hooks and tracing need no numbers
        model = RELU_MODELS[name]().eval()
    relus = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == EXPECTED_RELUS[name]
    assert len({id(m) for _, m in relus}) == len(relus), "a ReLU module is reused"
    assert not any(m.inplace for _, m in relus)
    calls = forward_call_counts(model, relus, torch.randn(1, 3, 32, 32, device="meta"))
    assert all(c == 1 for c in calls.values()), calls
    # no functional ReLU anywhere in the traced graph
    graph = torch.fx.symbolic_trace(model).graph
    functional = {F.relu, torch.relu, torch.relu_, F.relu_}
    assert not any(node.op == "call_function" and node.target in functional for node in graph.nodes)
    assert not any(node.op == "call_method" and node.target in ("relu", "relu_") for node in graph.nodes)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_one_relu_module_per_torchvision_relu_call(arch):
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)(weights=None).eval()
        model = getattr(R, arch)()
    calls = []
    relus = [m for m in ref.modules() if isinstance(m, nn.ReLU)]
    handles = [m.register_forward_hook(lambda *a: calls.append(1)) for m in relus]
    with torch.no_grad():
        ref(torch.randn(X64, device="meta"))
    for h in handles:
        h.remove()
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == len(calls)


def test_input_validation():
    model = R.resnet20_cifar(in_channels=1)
    with pytest.raises(ValueError, match="in_channels"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(1, 28, 28))
    with torch.device("meta"):  # the check runs before any layer
        big = R.resnet18()
    with pytest.raises(ValueError, match="in_channels"):
        big(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="4-D"):
        big.forward_features(torch.randn(3, 64, 64))


@pytest.mark.parametrize(
    "build, shape",
    [
        (lambda: R.resnet18(), X64),
        (lambda: R.ResNet("bottleneck", (1, 1, 1, 1), variant="v1", preact=True), X64),
        (lambda: R.resnet20_cifar(shortcut="A", in_channels=1), (2, 1, 28, 28)),
        (lambda: R.resnet20_cifar(norm_layer="none"), (2, 3, 32, 32)),
    ],
)
def test_fx_symbolic_trace(build, shape):
    model = build().eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    with pytest.raises(ValueError, match="in_channels"):
        traced(torch.randn(shape[0], shape[1] + 1, *shape[2:]))
    # the input check is recorded as one leaf call (torch.fx.wrap), not traced through
    assert any(n.op == "call_function" and "check_input" in getattr(n.target, "__name__", "")
               for n in traced.graph.nodes)


@pytest.mark.parametrize(
    "build",
    [
        lambda: R.resnet20_cifar(),
        lambda: R.resnet20_cifar(preact=True, zero_init_residual=True),
        lambda: R.ResNet("bottleneck", (1, 1, 1), stage_channels=(8, 16, 32), stem="cifar", num_classes=10),
    ],
)
def test_gradient_flows_to_every_parameter_and_the_input(build):
    torch.manual_seed(0)
    model = build()
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = model(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *model.parameters()], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n, g in zip(names, grads[1:], strict=True) if g is None or not torch.isfinite(g).all()]
    assert not missing
    # the stem conv (deepest from the loss) gets a non-zero gradient through the shortcuts
    assert grads[1 + names.index("conv1.weight")].abs().sum() > 0
