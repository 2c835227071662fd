"""netvis.bn: exact BN recalibration, BN-only training, BN statistics."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from netvis.bn import bn_layers, bn_statistics, is_batchnorm, output_layer, recalibrate, set_trainable
from netvis.hooks import snapshot, state_differences
from netvis.models import create
from netvis.models.batchnorm import BatchNorm1d as NetvisBN1d
from netvis.models.batchnorm import BatchNorm2d as NetvisBN2d


class ShuffledNet(nn.Module):
    """Registration order differs from forward order; mixes torch, netvis and 1-D BN layers."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_fc = nn.BatchNorm1d(6)  # used last, registered first
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1)
        self.bn2 = NetvisBN2d(4)
        self.conv1 = nn.Conv2d(2, 5, 3)
        self.bn1 = nn.BatchNorm2d(5)
        self.act1 = nn.ReLU()
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        return self.bn_fc(self.fc(x.mean(dim=(2, 3))))


def _randomise_stats(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _, m in bn_layers(model):
        m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        with torch.no_grad():
            m.weight.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))


def _brute_force(model: nn.Module, images: torch.Tensor, order: list[str]) -> dict[str, tuple]:
    """The lecture's pseudo-code, transcribed: for each BN layer in forward order, feed the whole data set
    (one float64 batch) through the model in eval mode, capture the layer's input, set mean/variance."""
    ref = copy.deepcopy(model).double().eval()
    x = images.double()
    result = {}
    for name in order:
        layer = ref.get_submodule(name)
        captured = []
        handle = layer.register_forward_pre_hook(lambda _m, args, out=captured: out.append(args[0]))
        with torch.no_grad():
            ref(x)
        handle.remove()
        inputs = captured[0]
        dims = [0, *range(2, inputs.dim())]
        mean = inputs.mean(dim=dims)
        var = inputs.var(dim=dims, unbiased=True)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        result[name] = (mean, var)
    return result


# Tiny models run faster (and far more steadily on a busy machine) on one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def net_and_data():
    torch.manual_seed(0)
    net = ShuffledNet()
    _randomise_stats(net)
    images = torch.randn(43, 2, 9, 9, generator=torch.Generator().manual_seed(1)) * 2 + 0.7
    return net, images


def test_recalibrate_equals_brute_force_layer_by_layer(net_and_data):
    net, images = net_and_data
    expected = _brute_force(net, images, ["bn1", "bn2", "bn_fc"])
    recalibrate(net, TensorDataset(images, torch.zeros(len(images))), batch_size=10)
    for name, (mean, var) in expected.items():
        layer = net.get_submodule(name)
        torch.testing.assert_close(layer.running_mean.double(), mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.running_var.double(), var, rtol=1e-5, atol=1e-5)


def test_recalibrate_is_not_a_single_pass(net_and_data):
    """Statistics of later layers must use the recalibrated earlier layers, not the old ones."""
    net, images = net_and_data
    stale = copy.deepcopy(net).double().eval()
    captured = []
    stale.bn2.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    with torch.no_grad():
        stale(images.double())
    stale_mean = captured[0].mean(dim=(0, 2, 3))
    recalibrate(net, TensorDataset(images), batch_size=16)
    assert not torch.allclose(net.bn2.running_mean.double(), stale_mean, atol=1e-3)


def test_recalibrate_independent_of_batching_and_input_kind(net_and_data):
    net, images = net_and_data
    a, b, c = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    recalibrate(a, TensorDataset(images), batch_size=1 + len(images))
    recalibrate(b, DataLoader(TensorDataset(images, torch.arange(len(images))), batch_size=5))
    recalibrate(c, [images[:20], images[20:]])
    for other in (b, c):
        for (_, m1), (_, m2) in zip(bn_layers(a), bn_layers(other), strict=True):
            torch.testing.assert_close(m1.running_mean, m2.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(m1.running_var, m2.running_var, rtol=1e-5, atol=1e-6)


def test_recalibrate_changes_only_the_statistics(net_and_data):
    net, images = net_and_data
    net.train()
    net.bn2.eval()
    net.fc.weight.requires_grad_(False)
    net.conv1.weight.grad = torch.ones_like(net.conv1.weight)
    net.register_forward_hook(lambda *args: None)
    params = {k: v.clone() for k, v in net.state_dict().items()}
    before = snapshot(net)
    recalibrate(net, TensorDataset(images), batch_size=8)
    after = snapshot(net)
    diffs = state_differences(before, after)
    assert diffs and all("running_mean" in d or "running_var" in d for d in diffs), diffs
    for key, value in net.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            continue
        assert torch.equal(value, params[key]), key  # weights and num_batches_tracked untouched


def test_recalibrate_recovers_dataset_statistics_of_a_resnet():
    torch.manual_seed(0)
    model = create("resnet20_cifar", in_channels=1, stage_channels=(2, 2, 4), norm_layer="netvis").eval()
    images = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    recalibrate(model, TensorDataset(images), batch_size=9)
    with torch.no_grad():
        first = model.conv1(images)
    torch.testing.assert_close(model.bn1.running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # In eval mode with exact statistics, the first BN layer's output has zero mean and ~unit variance.
    with torch.no_grad():
        out = model.bn1(first)
    gamma, beta = model.bn1.weight, model.bn1.bias
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), beta, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), gamma.abs(), atol=1e-3, rtol=1e-3)


def test_recalibrate_errors():
    with pytest.raises(ValueError, match="no batch normalization"):
        recalibrate(nn.Sequential(nn.Conv2d(1, 2, 3)), [torch.zeros(2, 1, 4, 4)])
    with pytest.raises(ValueError, match="empty"):
        recalibrate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), [])
    with pytest.raises(TypeError):
        recalibrate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), [{"x": 1}])


def _bn_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [(f"{name}.{b}", buf.clone()) for name, m in bn_layers(model) for b, buf in m.named_buffers()]


def _assert_same_bn_state(a: list, b: list) -> None:
    assert [n for n, _ in a] == [n for n, _ in b]
    for (name, x), (_, y) in zip(a, b, strict=True):
        assert x.dtype == y.dtype and torch.equal(x, y), name  # bit for bit


@pytest.mark.parametrize("kind", ["generator", "iter", "map", "dataloader_iterator"])
def test_recalibrate_from_a_one_shot_iterator_equals_the_list(net_and_data, kind):
    net, images = net_and_data
    batches = [images[:10], images[10:25], images[25:]]
    from_list = recalibrate(copy.deepcopy(net), batches)
    one_shot = {
        "generator": (b for b in batches),
        "iter": iter(batches),
        "map": map(lambda b: (b, torch.zeros(len(b))), batches),  # (inputs, labels) pairs
        "dataloader_iterator": iter(DataLoader(TensorDataset(images), batch_size=10)),
    }[kind]
    got = recalibrate(copy.deepcopy(net), one_shot)
    if kind == "dataloader_iterator":  # other batch boundaries: equal up to float rounding
        for (n1, a), (_, b) in zip(_bn_state(from_list), _bn_state(got), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n1)
    else:
        _assert_same_bn_state(_bn_state(from_list), _bn_state(got))
    reference = _brute_force(net, images, ["bn1", "bn2", "bn_fc"])
    for name, (mean, var) in reference.items():
        torch.testing.assert_close(got.get_submodule(name).running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.get_submodule(name).running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_recalibrate_from_an_empty_generator_changes_nothing(net_and_data):
    net, _ = net_and_data
    before = _bn_state(net)
    with pytest.raises(ValueError, match="data is empty"):
        recalibrate(net, (b for b in []))
    _assert_same_bn_state(before, _bn_state(net))


@pytest.mark.parametrize("one_shot", [False, True])
def test_a_failure_midway_restores_every_bn_buffer(net_and_data, one_shot):
    net, images = net_and_data
    net.train()
    net.bn2.eval()
    net.bn1.momentum = 0.3
    net.bn_fc.momentum = None  # cumulative averaging
    before = _bn_state(net)
    modes = [m.training for m in net.modules()]
    # conv2 runs in the pass that finds the forward order, then in no pass before bn2's (bn1's stops at
    # bn1): its second call comes once bn1 has new statistics, and fails
    seen = []

    def fail(_module, _args):
        seen.append(not torch.equal(net.bn1.running_mean, dict(before)["bn1.running_mean"]))
        if len(seen) > 1:
            raise RuntimeError("a bad batch")

    handle = net.conv2.register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="a bad batch"):
            recalibrate(net, iter([images[:20], images[20:]]) if one_shot else [images[:20], images[20:]])
    finally:
        handle.remove()
    assert seen == [False, True]  # bn1 had been changed when the error came
    _assert_same_bn_state(before, _bn_state(net))
    assert net.bn1.momentum == 0.3 and net.bn_fc.momentum is None
    assert [m.training for m in net.modules()] == modes
    # a batch of another type midway
    with pytest.raises(TypeError, match="each batch must be a tensor"):
        recalibrate(net, [images[:20], "not a batch"])
    _assert_same_bn_state(before, _bn_state(net))


def test_is_batchnorm_duck_typing():
    class MyBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.momentum = 0.1
            self.register_buffer("running_mean", torch.zeros(3))
            self.register_buffer("running_var", torch.ones(3))

    assert is_batchnorm(nn.BatchNorm2d(3)) and is_batchnorm(NetvisBN2d(3)) and is_batchnorm(NetvisBN1d(3))
    assert is_batchnorm(MyBN())
    assert is_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))
    assert not is_batchnorm(nn.Conv2d(1, 1, 1)) and not is_batchnorm(nn.LayerNorm(3))


@pytest.mark.parametrize("norm", ["torch", "netvis"])
def test_set_trainable_policies(norm):
    model = create("resnet20_cifar", in_channels=1, stage_channels=(4, 4, 8), norm_layer=norm)
    names = {n for n, _ in model.named_parameters()}
    bn_names = {f"{layer}.{p}" for layer, _ in bn_layers(model) for p in ("weight", "bias")}
    assert bn_names and bn_names < names
    assert output_layer(model)[0] == "fc"

    with set_trainable(model, "bn") as state:
        assert set(state.trainable) == bn_names
        assert {n for n, p in model.named_parameters() if p.requires_grad} == bn_names
    assert all(p.requires_grad for p in model.parameters())

    state = set_trainable(model, "bn+fc")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == bn_names | {"fc.weight", "fc.bias"}
    state.restore()
    with set_trainable(model, "all-but-bn"):
        assert {n for n, p in model.named_parameters() if p.requires_grad} == names - bn_names
    model.conv1.weight.requires_grad_(False)
    with set_trainable(model, "all"):
        assert all(p.requires_grad for p in model.parameters())
    assert not model.conv1.weight.requires_grad  # the previous flag, not True, comes back


def test_set_trainable_errors():
    with pytest.raises(ValueError, match="unknown trainable policy"):
        set_trainable(nn.Linear(2, 2), "some")
    plain = create("resnet20_cifar", stage_channels=(4, 4, 8), norm_layer="none")
    with pytest.raises(ValueError, match="no BN layer"):
        set_trainable(plain, "bn")
    assert all(p.requires_grad for p in plain.parameters())


def test_bn_statistics_reports_copies():
    model = ShuffledNet()
    _randomise_stats(model, seed=4)
    rows = bn_statistics(model)
    assert [r["name"] for r in rows] == ["bn_fc", "bn2", "bn1"]
    assert [r["type"] for r in rows] == ["BatchNorm1d", "BatchNorm2d", "BatchNorm2d"]
    for row in rows:
        layer = model.get_submodule(row["name"])
        assert row["num_features"] == layer.num_features
        for key in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(row[key], getattr(layer, key).detach())
        assert row["eps"] == layer.eps and row["momentum"] == layer.momentum
    rows[0]["running_mean"].zero_()
    assert not torch.equal(model.bn_fc.running_mean, rows[0]["running_mean"])
