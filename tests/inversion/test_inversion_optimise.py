"""Optimisation-based inversion (Mahendran & Vedaldi) on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from inversion_testing import assert_unchanged, messy_state, one_thread, tiny_cnn, tiny_images
from torch import nn

from netvis.data import Preprocess
from netvis.hooks import snapshot
from netvis.inversion import InversionResult, invert, pixel_bounds, total_variation

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture
def model():
    return tiny_cnn().eval()


@pytest.fixture
def x0():
    return tiny_images(2)


def test_recovers_the_image_from_an_injective_layer(model, x0):
    result = invert(model, x0, "conv1", steps=60, tv_weight=0.0, seed=0)
    assert result.initial_error > 0.05
    assert result.error < 1e-6
    assert (result.image - x0).abs().max() < 1e-2


def test_lowers_the_feature_error_a_hundredfold_after_relu_and_downsampling(model, x0):
    result = invert(model, x0, "relu2", steps=80, tv_weight=0.0, seed=0)
    assert result.error < 0.01 * result.initial_error
    assert result.errors.shape == (2,)
    assert result.error == pytest.approx(float(result.errors.mean()))


def test_result_describes_the_run(model, x0):
    result = invert(model, x0, model.relu1, steps=5, seed=0)
    assert isinstance(result, InversionResult)
    assert result.layer == "relu1"
    assert result.image.shape == x0.shape and result.image.dtype == x0.dtype and not result.image.requires_grad
    assert len(result.losses) == len(result.feature_errors) == result.n_evals >= result.steps == 5
    assert result.losses[-1] < result.losses[0]
    assert result.feature_errors[0] == result.initial_error
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["n_evals"] == result.n_evals and summary["options"]["optimizer"] == "lbfgs"


def test_is_deterministic_from_a_seed_and_leaves_the_global_rng_alone(model, x0):
    rng = torch.get_rng_state()
    a = invert(model, x0, "relu2", steps=10, seed=3)
    b = invert(model, x0, "relu2", steps=10, seed=3)
    c = invert(model, x0, "relu2", steps=10, seed=torch.Generator().manual_seed(3))
    d = invert(model, x0, "relu2", steps=10, seed=4)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.image, b.image) and a.losses == b.losses
    assert torch.equal(a.image, c.image)
    assert not torch.equal(a.image, d.image)


def test_works_under_no_grad_and_inference_mode(model, x0):
    reference = invert(model, x0, "relu2", steps=5, seed=0)
    with torch.no_grad():
        a = invert(model, x0, "relu2", steps=5, seed=0)
    with torch.inference_mode():
        b = invert(model, x0.clone(), "relu2", steps=5, seed=0, optimizer="adam")
    assert torch.equal(a.image, reference.image)
    assert b.error < b.initial_error
    assert torch.is_grad_enabled()


def test_features_form_equals_image_form(model, x0):
    with torch.no_grad():
        phi0 = model.relu1(model.bn1(model.conv1(x0)))
    start = torch.full_like(x0, 0.5)
    from_image = invert(model, x0, "relu1", steps=10, init=start, bounds=(0.0, 1.0))
    from_features = invert(model, layer="relu1", features=phi0, shape=(1, 12, 12), steps=10, init=start,
                           bounds=(0.0, 1.0))
    assert torch.allclose(from_image.image, from_features.image)
    assert from_image.losses == pytest.approx(from_features.losses)


def test_pixels_stay_in_the_bounds(model, x0):
    result = invert(model, x0, "relu2", steps=20, seed=0, bounds=(0.2, 0.8))
    assert result.image.min() >= 0.2 and result.image.max() <= 0.8
    default = invert(model, x0, "relu2", steps=20, seed=0)  # the target's own range, [0, 1] here
    assert default.image.min() >= x0.min() and default.image.max() <= x0.max()
    adam = invert(model, x0, "relu2", steps=20, seed=0, optimizer="adam", bounds=(0.2, 0.8))
    assert adam.image.min() >= 0.2 and adam.image.max() <= 0.8


def test_total_variation_weight_smooths_the_result(model, x0):
    rough = invert(model, x0, "relu2", steps=40, seed=0, tv_weight=0.0)
    smooth = invert(model, x0, "relu2", steps=40, seed=0, tv_weight=1.0)
    assert total_variation(smooth.image).sum() < 0.8 * total_variation(rough.image).sum()


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_first_order_optimizers_lower_the_error(model, x0, optimizer):
    result = invert(model, x0, "relu2", steps=60, seed=0, tv_weight=0.0, optimizer=optimizer)
    assert result.n_evals == 60
    assert result.error < 0.2 * result.initial_error


def test_alpha_norm_and_extra_regularizer_enter_the_loss(model, x0):
    plain = invert(model, x0, "relu1", steps=3, seed=0, tv_weight=0.0)
    extra = invert(model, x0, "relu1", steps=3, seed=0, tv_weight=0.0, alpha_norm=(2, 1.0),
                   regularizer=lambda x, features: torch.full((x.shape[0],), 5.0))
    # same start image: the first loss differs by the alpha term (>0) plus the constant 5
    assert extra.losses[0] > plain.losses[0] + 5.0


def test_no_side_effects_on_the_model(x0):
    model = tiny_cnn()
    messy_state(model)
    before = snapshot(model)
    invert(model, x0, "relu2", steps=5, seed=0)
    invert(model, x0, layers=["conv1", model.relu2], steps=2, seed=0, optimizer="adam")
    assert_unchanged(before, model)
    assert model.training and model.bn1.training
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert model.conv2.weight.grad is None
    assert torch.equal(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.5))
    assert len(model.conv2._forward_hooks) == 1


class _FailOnCall(nn.Module):
    """Identity until its ``fail_on``-th call, which raises."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("layer failed")
        return x


@pytest.mark.parametrize("fail_on", [1, 3])
def test_no_side_effects_when_the_layer_raises(x0, fail_on):
    model = tiny_cnn()
    model.add_module("boom", _FailOnCall(fail_on))  # after the head: used as the layer itself below
    model = nn.Sequential(model.conv1, model.bn1, model.relu1, _FailOnCall(fail_on), model.conv2)
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="layer failed"):
        invert(model, x0, "3", steps=5, seed=0)
    assert_unchanged(before, model)


def test_no_side_effects_when_the_target_does_not_fit(model, x0):
    messy_state(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="target features have shape"):
        invert(model, layer="relu1", features=torch.ones(2, 8, 5, 5), shape=(1, 12, 12), steps=2)
    assert_unchanged(before, model)


def test_forward_stops_after_the_layer(x0):
    model = tiny_cnn()
    model.fc = _FailOnCall(1)  # anything reaching the head raises
    result = invert(model.eval(), x0, "relu2", steps=5, seed=0)
    assert model.fc.calls == 0 and result.n_evals >= 5


def test_bad_layer_names_get_clear_errors(model, x0):
    with pytest.raises(ValueError, match="conv1"):
        invert(model, x0, "conv_1", steps=1)
    with pytest.raises(ValueError, match="not part of the model"):
        invert(model, x0, nn.ReLU(), steps=1)
    unused = tiny_cnn()
    unused.fc.add_module("spare", nn.ReLU())  # registered, never called by Linear.forward
    with pytest.raises(ValueError, match="did not run"):
        invert(unused, x0, "fc.spare", steps=1)


def test_several_layers_give_a_dict_equal_to_single_calls(model, x0):
    results = invert(model, x0, layers=["conv1", "relu2"], steps=8, seed=0)
    assert list(results) == ["conv1", "relu2"]
    single = invert(model, x0, "relu2", steps=8, seed=0)
    assert torch.equal(results["relu2"].image, single.image)
    assert results["conv1"].layer == "conv1"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "exactly one of image"),
        ({"image": "x", "features": torch.ones(1, 8, 12, 12), "layer": "conv1"}, "exactly one of image"),
        ({"image": "x"}, "exactly one of layer"),
        ({"image": "x", "layer": "conv1", "layers": ["conv1"]}, "exactly one of layer"),
        ({"image": "x", "layer": "conv1", "optimizer": "newton"}, "optimizer"),
        ({"image": "x", "layer": "conv1", "init": "zeros"}, "init"),
        ({"image": "x", "layer": "conv1", "bounds": (1.0, 0.0)}, "lo < hi"),
        ({"image": "x", "layer": "conv1", "steps": 0}, "steps"),
        ({"features": torch.ones(1, 8, 12, 12), "layer": "conv1"}, "shape"),
    ],
)
def test_argument_errors(model, x0, kwargs, error):
    if kwargs.get("image") == "x":
        kwargs["image"] = x0
    with pytest.raises(ValueError, match=error):
        invert(model, **kwargs)


def test_pixel_bounds_from_a_preprocess():
    p = Preprocess(mean=(0.25,), std=(0.5,))
    lo, hi = pixel_bounds(p)
    assert lo.flatten().tolist() == [-0.5] and hi.flatten().tolist() == [1.5]
    lo, hi = pixel_bounds(lambda u: u.float() / 255 * 2 - 1, channels=3)
    assert lo.shape == (1, 3, 1, 1) and lo.flatten().tolist() == [-1.0] * 3 and hi.flatten().tolist() == [1.0] * 3


def test_unbounded_features_form(model, x0):
    with torch.no_grad():
        phi0 = model.conv1(x0)
    result = invert(model, layer="conv1", features=phi0, shape=x0.shape, steps=40, tv_weight=0.0, seed=0)
    assert result.error < 1e-6 and math.isfinite(result.losses[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(x0):
    model = tiny_cnn().cuda().eval()
    result = invert(model, x0.cuda(), "relu2", steps=10, seed=0)
    assert result.image.is_cuda and result.error < result.initial_error
