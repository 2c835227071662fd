"""netvis.models.batchnorm against torch.nn.BatchNorm1d/2d and against the lecture's formulas."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from netvis.models.batchnorm import BatchNorm1d, BatchNorm2d

# (case id, netvis class, torch class, input shape, channels_last)
CASES = [
    ("bn1d-2d", BatchNorm1d, nn.BatchNorm1d, (6, 4), False),
    ("bn1d-3d", BatchNorm1d, nn.BatchNorm1d, (5, 4, 3), False),
    ("bn2d-4d", BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 2), False),
    ("bn2d-channels-last", BatchNorm2d, nn.BatchNorm2d, (3, 4, 5, 2), True),
]
NUM_FEATURES = 4


def _batch(shape, channels_last, dtype, seed, requires_grad=True):
    """A batch with per-channel offsets and scales, so that normalization has something to undo."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    view = [1, -1] + [1] * (len(shape) - 2)
    scale = torch.linspace(0.5, 3.0, shape[1], dtype=dtype).view(view)
    shift = torch.linspace(-2.0, 4.0, shape[1], dtype=dtype).view(view)
    x = x * scale + shift
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def _randomize(module, seed):
    """Non-trivial gamma, beta and running statistics, so that a mix-up of any of them shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        if module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.num_batches_tracked.fill_(2)


def _step(ours, ref, x, upstream, tol):
    """Forward both layers on the same input, backward the same upstream gradient, compare everything."""
    x_ours = x.detach().clone().requires_grad_()
    if x.is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        x_ours = x_ours.contiguous(memory_format=torch.channels_last)
    y_ours, y_ref = ours(x_ours), ref(x)
    torch.testing.assert_close(y_ours, y_ref, **tol)
    g_ours = torch.autograd.grad(y_ours, [x_ours, *ours.parameters()], upstream)
    g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], upstream)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, **tol)
    _assert_same_state(ours, ref, tol)


def _assert_same_state(ours, ref, tol):
    s_ours, s_ref = ours.state_dict(), ref.state_dict()
    assert list(s_ours) == list(s_ref)
    for key in s_ref:
        assert s_ours[key].dtype == s_ref[key].dtype, key
        torch.testing.assert_close(s_ours[key], s_ref[key], **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("track_running_stats", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["mom0.1", "cumulative"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_train_then_eval(case, momentum, affine, track_running_stats, dtype):
    _, ours_cls, ref_cls, shape, channels_last = case
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    kwargs = dict(momentum=momentum, affine=affine, track_running_stats=track_running_stats, dtype=dtype)
    ref = ref_cls(NUM_FEATURES, **kwargs)
    _randomize(ref, seed=0)
    ours = ours_cls(NUM_FEATURES, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    _assert_same_state(ours, ref, tol)

    gen = torch.Generator().manual_seed(1)
    for step in range(3):
        x = _batch(shape, channels_last, dtype, seed=10 + step)
        _step(ours, ref, x, torch.randn(shape, generator=gen, dtype=dtype), tol)
    if track_running_stats:
        assert int(ours.num_batches_tracked) == 2 + 3

    ours.eval()
    ref.eval()
    for step in range(2):
        x = _batch(shape, channels_last, dtype, seed=20 + step)
        _step(ours, ref, x, torch.randn(shape, generator=gen, dtype=dtype), tol)

    # ...and back: a fresh torch layer loads netvis's state strictly and then behaves the same.
    ref2 = ref_cls(NUM_FEATURES, **kwargs).eval()
    ref2.load_state_dict(ours.state_dict(), strict=True)
    x = _batch(shape, channels_last, dtype, seed=30, requires_grad=False)
    torch.testing.assert_close(ours(x), ref2(x), **tol)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_buffers_switched_off_after_construction_match_torch(case):
    """track_running_stats=False set later: train uses batch stats without updating, eval uses buffers."""
    _, ours_cls, ref_cls, shape, channels_last = case
    ref = ref_cls(NUM_FEATURES)
    _randomize(ref, seed=3)
    ours = ours_cls(NUM_FEATURES)
    ours.load_state_dict(ref.state_dict())
    ours.track_running_stats = ref.track_running_stats = False
    tol = {"rtol": 1e-4, "atol": 1e-5}
    gen = torch.Generator().manual_seed(5)
    for train in (True, False):
        ours.train(train)
        ref.train(train)
        x = _batch(shape, channels_last, torch.float32, seed=4)
        _step(ours, ref, x, torch.randn(shape, generator=gen), tol)
    assert int(ours.num_batches_tracked) == 2


def test_batch_statistics_follow_the_lecture_formula():
    """Per channel over (B, P, Q): zero mean, unit biased variance, then gamma and beta."""
    bn = BatchNorm2d(3, eps=0.0)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 5.0, 1.0]))
    x = _batch((4, 3, 6, 5), False, torch.float64, seed=5, requires_grad=False).float()
    y = bn(x)
    normalized = (y - bn.bias.view(1, -1, 1, 1)) / bn.weight.view(1, -1, 1, 1)
    flat = normalized.detach().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.var(1, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    # BatchNorm1d on (B, N): one mean and variance per entry, over the batch only.
    x1 = torch.randn(7, 5) * 4 + 2
    y1 = BatchNorm1d(5, eps=0.0)(x1).detach()
    expected = (x1 - x1.mean(0)) / x1.var(0, unbiased=False).sqrt()
    torch.testing.assert_close(y1, expected, atol=1e-5, rtol=1e-5)


def test_running_averages_follow_the_momentum_update():
    """Exponential update with the unbiased variance; momentum=None is the plain mean of batch stats."""
    xs = [torch.randn(5, 3, 2, 2) * (i + 1) + i for i in range(4)]
    means = [x.transpose(0, 1).reshape(3, -1).mean(1) for x in xs]
    variances = [x.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for x in xs]

    bn = BatchNorm2d(3, momentum=0.3)
    mean, var = torch.zeros(3), torch.ones(3)
    for x, m, v in zip(xs, means, variances, strict=True):
        bn(x)
        mean, var = 0.7 * mean + 0.3 * m, 0.7 * var + 0.3 * v
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)

    cumulative = BatchNorm2d(3, momentum=None)
    for x in xs:
        cumulative(x)
    torch.testing.assert_close(cumulative.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(cumulative.running_var, torch.stack(variances).mean(0))
    assert int(cumulative.num_batches_tracked) == 4


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "cls,shape", [(BatchNorm1d, (5, 3)), (BatchNorm1d, (4, 3, 2)), (BatchNorm2d, (3, 3, 2, 2))]
)
def test_gradcheck_float64(cls, shape, train):
    bn = cls(3, dtype=torch.float64).train(train)
    _randomize(bn, seed=6)
    x = _batch(shape, False, torch.float64, seed=7)
    weight = bn.weight.detach().clone().requires_grad_()
    bias = bn.bias.detach().clone().requires_grad_()

    def fn(x, weight, bias):
        return torch.func.functional_call(bn, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(fn, (x, weight, bias))
    assert torch.autograd.gradgradcheck(fn, (x, weight, bias))


@pytest.mark.parametrize(
    "bn,shape",
    [(BatchNorm1d(3), (1, 3)), (BatchNorm1d(3), (1, 3, 1)), (BatchNorm2d(3), (1, 3, 1, 1))],
    ids=["bn1d-2d", "bn1d-3d", "bn2d"],
)
def test_one_value_per_channel_in_training_raises(bn, shape):
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        bn.train()(torch.randn(shape))
    assert int(bn.num_batches_tracked) == 0
    # Eval mode with running statistics has no batch statistics to compute: a single sample is fine.
    torch.testing.assert_close(bn.eval()(torch.ones(shape)), torch.ones(shape) / (1 + 1e-5) ** 0.5)
    # Without running statistics eval mode needs batch statistics too, like torch.
    no_stats = type(bn)(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        no_stats(torch.randn(shape))


@pytest.mark.parametrize(
    "bn,shape",
    [
        (BatchNorm1d(3), (3,)),
        (BatchNorm1d(3), (2, 3, 4, 5)),
        (BatchNorm2d(3), (2, 3, 4)),
        (BatchNorm2d(3), (2, 3, 4, 5, 6)),
        (BatchNorm2d(3), (3, 4, 5)),
    ],
)
def test_wrong_rank_raises(bn, shape):
    expected = r"\(B, N\) or \(B, N, L\)" if isinstance(bn, BatchNorm1d) else r"\(B, C, P, Q\)"
    with pytest.raises(ValueError, match=expected) as info:
        bn(torch.randn(shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize(
    "bn,shape", [(BatchNorm1d(3), (4, 2)), (BatchNorm1d(3), (4, 5, 6)), (BatchNorm2d(3), (2, 4, 3, 3))]
)
def test_wrong_channel_count_raises(bn, shape):
    with pytest.raises(ValueError, match=rf"num_features=3 but the input has {shape[1]}"):
        bn(torch.randn(shape))


def test_non_tensor_raises():
    with pytest.raises(TypeError, match="expects a torch.Tensor"):
        BatchNorm2d(3)([[1.0, 2.0, 3.0]])


def test_does_not_call_torch_batch_norm(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("netvis's BatchNorm must compute the statistics itself")

    monkeypatch.setattr(torch.nn.functional, "batch_norm", forbidden)
    monkeypatch.setattr(torch, "batch_norm", forbidden)
    monkeypatch.setattr(torch, "native_batch_norm", forbidden)

    class Recorder(torch.overrides.TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.names.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    layers = [(BatchNorm1d(3), (4, 3)), (BatchNorm1d(3), (4, 3, 2)), (BatchNorm2d(3), (4, 3, 2, 2))]
    with Recorder() as recorder:
        for bn, shape in layers:
            for train in (True, False):
                x = torch.randn(shape, requires_grad=True)
                bn.train(train)(x).sum().backward()
    assert recorder.names and "mean" in recorder.names
    assert not [name for name in recorder.names if "batch_norm" in name or "instance_norm" in name]


def test_channels_last_is_preserved():
    bn = BatchNorm2d(3)
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    for train in (True, False):
        y = bn.train(train)(x)
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("cls", [BatchNorm1d, BatchNorm2d])
def test_constructor_parameters_and_buffers_match_torch(cls):
    ref_cls = {BatchNorm1d: nn.BatchNorm1d, BatchNorm2d: nn.BatchNorm2d}[cls]
    for kwargs in (
        {},
        {"affine": False},
        {"track_running_stats": False},
        {"bias": False},
        {"dtype": torch.float64, "eps": 1e-3, "momentum": None},
    ):
        ours, ref = cls(5, **kwargs), ref_cls(5, **kwargs)
        assert repr(ours) == repr(ref).replace("torch.nn.", "")
        assert [(n, p.dtype, p.shape) for n, p in ours.named_parameters()] == [
            (n, p.dtype, p.shape) for n, p in ref.named_parameters()
        ]
        assert [(n, b.dtype, b.shape) for n, b in ours.named_buffers()] == [
            (n, b.dtype, b.shape) for n, b in ref.named_buffers()
        ]
        _assert_same_state(ours, ref, {"rtol": 0, "atol": 0})
        assert (ours.running_mean is None) == (ref.running_mean is None)


def test_reset_parameters_and_running_stats():
    bn = BatchNorm2d(3)
    _randomize(bn, seed=8)
    bn.reset_running_stats()
    assert torch.equal(bn.running_mean, torch.zeros(3)) and torch.equal(bn.running_var, torch.ones(3))
    assert int(bn.num_batches_tracked) == 0 and not torch.equal(bn.weight, torch.ones(3))
    _randomize(bn, seed=8)
    bn.reset_parameters()
    _assert_same_state(bn, nn.BatchNorm2d(3), {"rtol": 0, "atol": 0})


def test_old_state_dict_without_counter_loads():
    """A version-1 checkpoint (before num_batches_tracked existed) loads strictly, as in torch."""
    state = nn.BatchNorm2d(3).state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    bn = BatchNorm2d(3)
    bn.load_state_dict(state, strict=True)
    assert int(bn.num_batches_tracked) == 0


def test_empty_batch_counts_but_keeps_running_stats_like_torch():
    ours, ref = BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(0, 3, 4, 4)
    assert ours(x).shape == ref(x).shape == x.shape
    _assert_same_state(ours, ref, {"rtol": 0, "atol": 0})


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fx_symbolic_trace(train):
    """The forward has no data-dependent Python branches: fx traces it, buffer updates included."""
    model = nn.Sequential(nn.Conv2d(2, 3, 3), BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4), BatchNorm1d(4))
    model.train(train)
    traced_model = copy.deepcopy(model)
    graph_module = torch.fx.symbolic_trace(traced_model)
    for seed in range(2):
        x = torch.randn(5, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(graph_module(x), model(x))
    _assert_same_state(traced_model, model, {"rtol": 1e-6, "atol": 1e-6})
    if train:
        assert int(traced_model[1].num_batches_tracked) == 2
