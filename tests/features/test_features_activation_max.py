"""Activation maximization: objectives compose, the objective rises, seeds replay, nothing is left behind."""

from __future__ import annotations

import pytest
import torch
from features_testing import no_hooks_anywhere, one_thread, tiny_cnn  # noqa: F401 - a fixture
from torch import nn

from netvis.data.transforms import Preprocess
from netvis.features import (
    Objective,
    activation_maximization,
    channel,
    class_logit,
    jitter,
    neuron,
    random_rotate,
    random_scale,
    standard_transforms,
)
from netvis.features.activation_max import Activations
from netvis.hooks import snapshot, state_differences


def _acts(model, x, *layers):
    store = {}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda m, a, o, name=name: store.__setitem__(name, o)) for name in layers]
    try:
        out = model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    store[None] = out
    return Activations(store, {})


def test_objectives_add_subtract_and_scale():
    model = tiny_cnn()
    x = torch.randn(2, 1, 28, 28)
    acts = _acts(model, x, "conv2", "relu2")
    a, b = acts["conv2"], acts["relu2"]
    combined = channel("conv2", 5) - 0.5 * channel("relu2", 7) + 2 * neuron("conv2", 1) + class_logit(3) / 4
    expected = a[:, 5].mean((1, 2)) - 0.5 * b[:, 7].mean((1, 2)) + 2 * a[:, 1, 2, 2] + acts[None][:, 3] / 4
    torch.testing.assert_close(combined(acts), expected)
    assert combined.layers == ("conv2", "relu2", None)
    torch.testing.assert_close(sum([channel("conv2", 0), channel("conv2", 1)])(acts),
                               a[:, :2].mean((2, 3)).sum(1))
    torch.testing.assert_close((-neuron("conv2", 2, 0, 3))(acts), -a[:, 2, 0, 3])
    torch.testing.assert_close((1 - channel("fc", 2))(_acts(model, x, "fc")), 1 - acts[None][:, 2])
    assert repr(channel("conv2", 5) - 0.5 * channel("conv2", 7)) == (
        "Objective(channel('conv2', 5) - 0.5 * channel('conv2', 7))")
    custom = Objective(lambda acts: acts["relu2"].amax((1, 2, 3)), ["relu2"], "max of relu2")
    torch.testing.assert_close((custom * 3)(acts), 3 * b.amax((1, 2, 3)))
    with pytest.raises(TypeError):
        channel("conv2", 0) * channel("conv2", 1)


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_the_objective_increases(param):
    model = tiny_cnn()
    result = activation_maximization(model, channel("conv2", 3), shape=(2, 1, 28, 28), steps=25, lr=0.05,
                                     param=param, tv_weight=0.01, l2_weight=0.01, seed=1)
    assert result.image.shape == (2, 1, 28, 28) and result.history.shape == (25, 2)
    assert 0 <= result.image.min() and result.image.max() <= 1
    assert (result.final > result.initial + 0.1).all()
    assert result.history[-5:].mean() > result.history[:5].mean()
    assert model.training and no_hooks_anywhere(model)


def test_class_and_neuron_objectives_on_rgb_with_preprocess():
    model = tiny_cnn(in_channels=3)
    prep = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    objective = class_logit(4) + neuron("conv2", 2)
    result = activation_maximization(model, objective, shape=(1, 3, 28, 28), steps=15, lr=0.05,
                                     preprocess=prep, seed=0)
    torch.testing.assert_close(result.input, prep(result.image))
    assert result.final.item() > result.initial.item()


def test_deterministic_from_a_seed_and_global_rng_untouched():
    model = tiny_cnn()
    kwargs = dict(shape=(1, 1, 28, 28), steps=6, lr=0.05, seed=7)
    rng = torch.get_rng_state()
    first = activation_maximization(model, channel("relu2", 1), **kwargs)
    assert torch.equal(torch.get_rng_state(), rng)
    again = activation_maximization(model, channel("relu2", 1), **kwargs)
    other = activation_maximization(model, channel("relu2", 1), **{**kwargs, "seed": 8})
    assert torch.equal(first.image, again.image) and torch.equal(first.history, again.history)
    assert not torch.equal(first.image, other.image)


def test_transforms_keep_the_size_and_replay_from_the_generator():
    x = torch.rand(2, 3, 30, 30)
    transforms = [jitter(3), random_scale([0.9, 1.1]), random_rotate([-10, 10]), *standard_transforms(30)]
    for transform in transforms:
        a = transform(x, torch.Generator().manual_seed(0))
        b = transform(x, torch.Generator().manual_seed(0))
        assert a.shape == x.shape and torch.equal(a, b)
    shifted = jitter(2)(x, torch.Generator().manual_seed(3))
    assert any(torch.equal(shifted[..., 2:-2, 2:-2], x[..., 2 + dy : 28 + dy, 2 + dx : 28 + dx])
               for dy in range(-2, 3) for dx in range(-2, 3))


def test_no_side_effects_also_on_errors():
    model = tiny_cnn()
    model.fc.bias.grad = torch.ones(10)
    before = snapshot(model)
    activation_maximization(model, channel("conv2", 0) - 0.5 * channel(model.relu2, 1), shape=(1, 1, 28, 28),
                            steps=3)
    assert state_differences(before, snapshot(model)) == []

    def boom(acts):
        raise RuntimeError("objective failed")

    with pytest.raises(RuntimeError, match="objective failed"):
        activation_maximization(model, Objective(boom, ["conv2"], "boom"), shape=(1, 1, 28, 28), steps=3)
    with pytest.raises(ValueError, match="no layer named 'conv7'"):
        activation_maximization(model, channel("conv7", 0), shape=(1, 1, 28, 28), steps=3)
    with pytest.raises(ValueError, match="param"):
        activation_maximization(model, channel("conv2", 0), shape=(1, 1, 28, 28), param="wavelet")
    assert state_differences(before, snapshot(model)) == [] and no_hooks_anywhere(model)
    assert isinstance(model.conv1, nn.Conv2d)
