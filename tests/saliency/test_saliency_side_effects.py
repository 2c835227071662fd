"""No lasting side effects: every method leaves the model and the input as they were, also when it raises."""

from __future__ import annotations

import copy

import pytest
import torch
from saliency_testing import assert_untouched, fingerprint, small_cnn
from torch import nn

from netvis import saliency

OPTIONS = {
    "occlusion": {"window": 4, "stride": 2},
    "smoothgrad": {"n_samples": 3, "generator": 0},
    "integrated-gradients": {"steps": 4},
    "grad-cam": {"layer": "4"},
    "guided-grad-cam": {"layer": "4"},
}
NAMES = sorted(saliency.METHODS)


def prepared_model() -> nn.Module:
    """BN in train mode, some parameters with gradients, one frozen, a user hook: all must survive."""
    model = small_cnn(classes=5).train()
    model[0].weight.grad = torch.randn_like(model[0].weight)
    model[8].bias.grad = torch.randn_like(model[8].bias)
    model[4].bias.requires_grad_(False)
    model[6].register_forward_hook(lambda m, i, o: None)
    model[8].weight.register_hook(lambda g: g)
    return model


def run(name, model, x, target=None, **extra):
    return saliency.METHODS[name](model, x, target, **{**OPTIONS.get(name, {}), **extra})


def eval_outputs(model, x):
    with torch.no_grad():
        return copy.deepcopy(model).eval()(x)


@pytest.mark.parametrize("name", NAMES)
def test_no_side_effects_and_train_mode_result_equals_eval(name):
    model = prepared_model()
    x = torch.rand(2, 3, 8, 8)
    x_before = x.clone()
    params = {k: v.clone() for k, v in model.state_dict().items()}
    outputs = eval_outputs(model, x)
    before = fingerprint(model)
    got = run(name, model, x, [1, 2])
    assert_untouched(before, model)
    assert torch.equal(x, x_before)
    assert all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
    assert torch.equal(eval_outputs(model, x), outputs)
    assert model.training and model[1].training
    # the methods evaluate the model in eval mode whatever its mode
    torch.testing.assert_close(got, run(name, copy.deepcopy(model).eval(), x, [1, 2]), equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_no_side_effects_when_the_target_is_invalid(name):
    model = prepared_model()
    before = fingerprint(model)
    with pytest.raises(ValueError, match="out of range for a model with 5 classes"):
        run(name, model, torch.rand(2, 3, 8, 8), 999)
    assert_untouched(before, model)


class Boom(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", NAMES)
def test_no_side_effects_when_a_layer_raises(name):
    model = prepared_model()
    model[6] = nn.Sequential(model[6], Boom())
    before = fingerprint(model)
    with pytest.raises(RuntimeError, match="boom"):
        run(name, model, torch.rand(2, 3, 8, 8), 1)
    assert_untouched(before, model)


@pytest.mark.parametrize("name", NAMES)
def test_input_unchanged_when_the_model_modifies_it_in_place(name):
    class Normalising(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = small_cnn(classes=5)

        def forward(self, x):
            x.sub_(0.5).mul_(2.0)  # in-place input normalisation, as some models do
            return self.net(x)

    model = Normalising()
    x = torch.rand(2, 3, 8, 8)
    before = x.clone()
    opts = {"layer": "net.4"} if "cam" in name else {}
    got = run(name, model, x, [0, 3], **opts)
    assert torch.equal(x, before)
    assert torch.isfinite(got).all()


def test_grads_of_parameters_that_had_none_stay_none():
    model = small_cnn(classes=5)
    for name in NAMES:
        run(name, model, torch.rand(1, 3, 8, 8), 0)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_images_one_by_one(name):
    model = small_cnn(classes=5)
    x = torch.rand(3, 3, 8, 8)
    targets = [4, 0, 2]
    extra = {"generator": torch.Generator().manual_seed(1)} if name == "smoothgrad" else {}
    batch = run(name, model, x, targets, **extra)
    shared = {"generator": torch.Generator().manual_seed(1)} if name == "smoothgrad" else {}
    for b in range(3):  # smoothgrad: the images draw their noise one after the other from one generator
        single = run(name, model, x[b : b + 1], targets[b], **shared)
        torch.testing.assert_close(batch[b : b + 1], single, rtol=1e-5, atol=1e-6)
