"""Guided backpropagation and deconvnet: every form of ReLU is routed, anything else refused."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from saliency_testing import (
    RELU_KINDS,
    RefRule,
    TinyNet,
    assert_untouched,
    fingerprint,
    reference_rule_gradient,
)
from torch import nn

from netvis.hooks import GuidedReLUError, guided_relus
from netvis.saliency import deconvnet, gradient, guided_backprop


def test_hand_computed_example():
    """x = (2, 1, 1); hidden pre-activations W1 x = (1, 0.5, -1); output weights w2 = (2, -3, 4).

    plain   : W1^T (w2 * [pre > 0])            = W1^T (2, -3, 0) = (0.5, -5, 3)
    guided  : W1^T (w2 * [pre > 0] * [w2 > 0]) = W1^T (2,  0, 0) = (2, -2, 0)
    deconv  : W1^T (w2 * [w2 > 0])             = W1^T (2,  0, 4) = (-2, -2, 4)
    """
    conv = nn.Conv2d(3, 3, 1, bias=False)
    fc = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1, 0], [0.5, 1, -1], [-1, 0, 1]]).view(3, 3, 1, 1))
        fc.weight.copy_(torch.tensor([[2.0, -3, 4], [1, 1, 1]]))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), fc)
    x = torch.tensor([2.0, 1, 1]).view(1, 3, 1, 1)
    assert gradient(model, x, 0, abs=False).flatten().tolist() == [0.5, -5, 3]
    assert guided_backprop(model, x, 0).flatten().tolist() == [2, -2, 0]
    assert deconvnet(model, x, 0).flatten().tolist() == [-2, -2, 4]


@pytest.mark.parametrize("kind", RELU_KINDS)
@pytest.mark.parametrize("rule", ["guided", "deconv"])
def test_every_relu_form_is_routed(kind, rule):
    torch.manual_seed(0)
    model = TinyNet(kind)
    x = torch.randn(2, 3, 12, 12)
    target = torch.tensor([1, 3])
    method = guided_backprop if rule == "guided" else deconvnet
    got = method(model, x, target)
    ref = reference_rule_gradient(
        lambda xi: model.forward_with(xi, lambda t, i: RefRule.apply(t, rule)), x, target
    )
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    plain = gradient(model, x, target, abs=False)
    assert not torch.allclose(got, plain, atol=1e-4), "the rule changed nothing: not a meaningful check"


def test_guided_batch_equals_one_by_one():
    torch.manual_seed(0)
    model = TinyNet("reused_inplace")
    x = torch.randn(3, 3, 12, 12)
    batch = guided_backprop(model, x, [0, 1, 2])
    for b in range(3):
        torch.testing.assert_close(batch[b : b + 1], guided_backprop(model, x[b : b + 1], b))


def test_input_untouched_even_with_an_inplace_relu_on_it():
    class InputRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 2)

        def forward(self, x):
            x.relu_()  # modifies its input in place
            return self.fc(x.flatten(1))

    x = torch.randn(2, 3, 2, 2)
    before = x.clone()
    grad = guided_backprop(InputRelu(), x, 0)
    assert torch.equal(x, before)
    assert (grad[before < 0] == 0).all()


@pytest.mark.parametrize(
    "activation",
    [nn.ReLU6(), nn.LeakyReLU(), nn.GELU(), nn.SiLU(), nn.ELU(), nn.PReLU(), nn.Hardtanh(), nn.Softplus(),
     nn.Hardswish(), nn.Mish(), nn.SELU(), nn.CELU(), nn.RReLU()],
    ids=lambda m: type(m).__name__,
)
@pytest.mark.parametrize("method", [guided_backprop, deconvnet])
def test_refuses_rectifier_modules_without_a_rule(activation, method):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), activation, nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3))
    before = fingerprint(model)
    with pytest.raises(GuidedReLUError, match=rf"module '3' is {type(activation).__name__}"):
        method(model, torch.rand(1, 3, 8, 8), 0)
    assert_untouched(before, model)


class Functional(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.fn = fn

    def forward(self, x):
        return self.fc(self.fn(self.conv(x)).flatten(1))


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (F.gelu, "calls gelu"),
        (F.leaky_relu, "calls leaky_relu"),
        (F.relu6, "calls relu6"),
        (F.silu, "calls silu"),
        (F.elu, "calls elu"),
        (lambda t: F.hardtanh(t, 0.0, 6.0), "calls hardtanh"),
        (lambda t: t.clamp(min=0), "computes a ReLU as clamp"),
        (lambda t: torch.clamp_min(t, 0), "computes a ReLU as clamp_min"),
        (lambda t: F.threshold(t, 0.1, 0.0), "threshold"),
    ],
    ids=["gelu", "leaky_relu", "relu6", "silu", "elu", "hardtanh", "clamp", "clamp_min", "threshold"],
)
def test_refuses_functional_rectifiers_without_a_rule(fn, message):
    model = Functional(fn)
    before = fingerprint(model)
    with pytest.raises(GuidedReLUError, match=message):
        guided_backprop(model, torch.rand(1, 3, 8, 8), 0)
    assert_untouched(before, model)


def test_refuses_relus_it_cannot_see_in_torchscript():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    model = nn.Sequential(scripted, nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    with pytest.raises(GuidedReLUError, match=r"aten::relu ran without passing through"):
        guided_backprop(model, torch.rand(1, 3, 8, 8), 0)
    assert torch._C._len_torch_function_stack() == 0


def test_other_nonlinearities_and_clamps_pass():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4 * 6 * 6, 3)

        def forward(self, x):
            h = torch.relu(self.conv(x)).clamp(max=5.0) * torch.sigmoid(x.mean())
            return self.fc(h.flatten(1)).tanh()

    model = Mixed()
    x = torch.rand(2, 3, 8, 8)
    got = guided_backprop(model, x, [0, 1])

    def ref_forward(xi):
        h = RefRule.apply(model.conv(xi), "guided").clamp(max=5.0) * torch.sigmoid(xi.mean())
        return model.fc(h.flatten(1)).tanh()

    torch.testing.assert_close(got, reference_rule_gradient(ref_forward, x, torch.tensor([0, 1])))


def test_guided_relus_context_is_local():
    model = TinyNet("functional")
    x = torch.randn(1, 3, 12, 12)
    with guided_relus(model):
        assert torch._C._len_torch_function_stack() == 1
    assert torch._C._len_torch_function_stack() == 0
    out = F.relu(x)  # an ordinary relu again
    assert out.grad_fn is None and torch.equal(out, x.clamp(min=0))
    with pytest.raises(ValueError, match="rule must be"):
        with guided_relus(model, "positive"):
            pass


@pytest.mark.parametrize("kind", ["module", "functional", "reused_inplace"])
def test_guided_bf16_routes_every_relu_under_autocast(kind):
    torch.manual_seed(0)
    model = TinyNet(kind)
    x = torch.randn(2, 3, 12, 12)
    target = torch.tensor([1, 3])

    def reference(xi):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.forward_with(xi, lambda t, i: RefRule.apply(t, "guided")).float()

    got = guided_backprop(model, x, target, precision="bf16")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference_rule_gradient(reference, x, target), rtol=1e-5, atol=1e-6)
    fp32 = guided_backprop(model, x, target)
    torch.testing.assert_close(got, fp32, rtol=0.1, atol=0.05 * float(fp32.abs().max()))
    deconv16, deconv32 = deconvnet(model, x, target, precision="bf16"), deconvnet(model, x, target)
    assert deconv16.shape == x.shape and not torch.equal(deconv16, deconv32)  # bf16 reaches the deconvnet too
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16', got 'fp8'"):
        deconvnet(model, x, target, precision="fp8")
