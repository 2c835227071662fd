"""Gradient, SmoothGrad and integrated gradients against manual backward passes and their definitions."""

from __future__ import annotations

import copy

import pytest
import torch
from saliency_testing import small_cnn
from torch import nn

from netvis.saliency import gradient, integrated_gradients, quadrature, smoothgrad


@pytest.fixture
def model():
    return small_cnn(classes=5)


def manual_input_grad(model, x, target):
    """|input.grad| from an ordinary backward pass on a copy of the model (eval mode)."""
    ref = copy.deepcopy(model).eval()
    xi = x.clone().requires_grad_(True)
    ref(xi).gather(1, torch.as_tensor(target)[:, None]).sum().backward()
    return xi.grad


def test_gradient_equals_manual_backward(model):
    x = torch.rand(3, 3, 8, 8)
    target = [0, 2, 4]
    ref = manual_input_grad(model, x, target)
    torch.testing.assert_close(gradient(model, x, target), ref.abs())
    torch.testing.assert_close(gradient(model, x, target, abs=False), ref)
    torch.testing.assert_close(gradient(model, x, target, reduce="max"), ref.abs().amax(1))
    torch.testing.assert_close(gradient(model, x, target, abs=False, reduce="sum"), ref.sum(1))


def test_gradient_default_target_is_prediction(model):
    x = torch.rand(2, 3, 8, 8)
    pred = model.eval()(x).argmax(1)
    torch.testing.assert_close(gradient(model, x), manual_input_grad(model, x, pred).abs())


def test_gradient_of_a_linear_model_is_its_weights():
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.rand(2, 3, 2, 2)
    got = gradient(lin, x, [1, 3], abs=False)
    torch.testing.assert_close(got[0], lin[1].weight[1].view(3, 2, 2))
    torch.testing.assert_close(got[1], lin[1].weight[3].view(3, 2, 2))


def test_gradient_batch_equals_one_by_one(model):
    x = torch.rand(3, 3, 8, 8)
    batch = gradient(model, x, [1, 2, 3])
    for b in range(3):
        torch.testing.assert_close(batch[b : b + 1], gradient(model, x[b : b + 1], 1 + b))


def test_gradient_inside_no_grad_and_inference_mode(model):
    x = torch.rand(1, 3, 8, 8)
    ref = gradient(model, x, 1)
    with torch.no_grad():
        torch.testing.assert_close(gradient(model, x, 1), ref)
    with torch.inference_mode():
        torch.testing.assert_close(gradient(model, x, 1), ref)
    assert torch.is_grad_enabled()


def test_bad_reduce(model):
    with pytest.raises(ValueError, match="reduce must be"):
        gradient(model, torch.rand(1, 3, 8, 8), reduce="mean")


# ----------------------------------------------------------------------------------------------------
# SmoothGrad
# ----------------------------------------------------------------------------------------------------


def smoothgrad_reference(model, x, target, n, level, seed):
    """The definition, one noisy image at a time, noise drawn image by image from one CPU generator."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(x.shape[0]):
        noise = torch.randn((n, *x.shape[1:]), generator=g)
        sigma = level * (x[b].max() - x[b].min())
        grads = [manual_input_grad(model, (x[b] + sigma * noise[k])[None], [target[b]]) for k in range(n)]
        out.append(torch.cat(grads).mean(0))
    return torch.stack(out)


def test_smoothgrad_matches_its_definition(model):
    x = torch.rand(2, 3, 8, 8)
    got = smoothgrad(model, x, [1, 3], n_samples=5, noise_level=0.2, generator=7, batch_size=3)
    torch.testing.assert_close(got, smoothgrad_reference(model, x, [1, 3], 5, 0.2, 7), rtol=1e-5, atol=1e-6)


def test_smoothgrad_options_and_reproducibility(model):
    x = torch.rand(2, 3, 8, 8)
    a = smoothgrad(model, x, 1, n_samples=4, generator=3)
    same_seed = torch.Generator().manual_seed(3)
    torch.testing.assert_close(a, smoothgrad(model, x, 1, n_samples=4, generator=same_seed))
    for bs in (1, 3, 100):
        torch.testing.assert_close(smoothgrad(model, x, 1, n_samples=4, generator=3, batch_size=bs), a)
    # zero noise: the plain gradient
    torch.testing.assert_close(smoothgrad(model, x, 1, n_samples=3, noise_level=0.0, generator=0),
                               gradient(model, x, 1, abs=False))
    sq = smoothgrad(model, x, 1, n_samples=3, noise_level=0.0, squared=True, generator=0)
    torch.testing.assert_close(sq, gradient(model, x, 1) ** 2)
    ab = smoothgrad(model, x, 1, n_samples=3, noise_level=0.0, abs=True, reduce="max", generator=0)
    torch.testing.assert_close(ab, gradient(model, x, 1, reduce="max"))
    with pytest.raises(ValueError, match="at most one"):
        smoothgrad(model, x, abs=True, squared=True)
    with pytest.raises(ValueError, match="n_samples"):
        smoothgrad(model, x, n_samples=0)
    with pytest.raises(TypeError, match="generator"):
        smoothgrad(model, x, generator="seed")


def test_smoothgrad_batch_equals_one_by_one_from_one_generator(model):
    x = torch.rand(3, 3, 8, 8)
    batch = smoothgrad(model, x, [0, 1, 2], n_samples=3, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    singles = torch.cat([smoothgrad(model, x[b : b + 1], b, n_samples=3, generator=g) for b in range(3)])
    torch.testing.assert_close(batch, singles)


def test_smoothgrad_leaves_the_global_rng_alone(model):
    x = torch.rand(1, 3, 8, 8)
    state = torch.get_rng_state()
    smoothgrad(model, x, 0, n_samples=2)
    smoothgrad(model, x, 0, n_samples=2, generator=1)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------------------------------
# Integrated gradients
# ----------------------------------------------------------------------------------------------------


class Smooth(nn.Module):
    """A smooth model (tanh), so quadrature converges fast and completeness can be checked tightly."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_quadrature_rules_integrate_polynomials():
    for method, steps, degree in [("gausslegendre", 4, 7), ("riemann_trapezoid", 200, 1),
                                  ("riemann_middle", 200, 1)]:
        a, w = quadrature(method, steps)
        assert abs(w.sum() - 1) < 1e-12
        assert abs((w * a**degree).sum() - 1 / (degree + 1)) < 1e-4
    a, w = quadrature("riemann_left", 4)
    assert a.tolist() == [0, 0.25, 0.5, 0.75] and w.tolist() == [0.25] * 4
    a, w = quadrature("riemann_trapezoid", 3)
    assert a.tolist() == [0, 0.5, 1] and w.tolist() == [0.25, 0.5, 0.25]
    with pytest.raises(ValueError, match="method must be"):
        quadrature("simpson", 4)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_completeness(method):
    model = Smooth()
    x = torch.rand(2, 3, 4, 4)
    baseline = torch.full((3, 1, 1), 0.5)
    steps = 16 if method == "gausslegendre" else 300
    ig = integrated_gradients(model, x, [0, 2], baseline=baseline, steps=steps, method=method, batch_size=64)
    with torch.no_grad():
        delta = model(x)[[0, 1], [0, 2]] - model(baseline.expand_as(x))[[0, 1], [0, 2]]
    torch.testing.assert_close(ig.sum((1, 2, 3)), delta, rtol=1e-4, atol=1e-5)


def test_integrated_gradients_definition_and_batching(model):
    x = torch.rand(2, 3, 8, 8)
    ig = integrated_gradients(model, x, [1, 4], steps=5, method="riemann_trapezoid", batch_size=3)
    alphas, weights = quadrature("riemann_trapezoid", 5)
    ref = torch.zeros_like(x)
    for a, w in zip(alphas, weights, strict=True):
        ref += float(w) * manual_input_grad(model, float(a) * x, [1, 4])
    torch.testing.assert_close(ig, x * ref, rtol=1e-5, atol=1e-6)
    for b in range(2):
        single = integrated_gradients(model, x[b : b + 1], [1, 4][b], steps=5)
        torch.testing.assert_close(ig[b : b + 1], single)
    with pytest.raises(ValueError, match="broadcast to the inputs"):
        integrated_gradients(model, x, baseline=torch.zeros(2, 8, 8))


def test_gradient_bf16_is_the_autocast_backward_pass(model):
    x = torch.rand(3, 3, 8, 8)
    target = [0, 2, 4]
    ref = copy.deepcopy(model).eval()
    xi = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = ref(xi).gather(1, torch.as_tensor(target)[:, None])
    scores.float().sum().backward()
    bf16 = gradient(model, x, target, abs=False, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.is_contiguous()
    torch.testing.assert_close(bf16, xi.grad)
    fp32 = gradient(model, x, target, abs=False)
    assert not torch.equal(bf16, fp32)  # bfloat16 rounding is visible...
    torch.testing.assert_close(bf16, fp32, rtol=0.1, atol=0.05 * float(fp32.abs().max()))  # ...and small
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp16'"):
        gradient(model, x, target, precision="fp16")
