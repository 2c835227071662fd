"""netvis.hooks: every context manager undoes what it did, also when the body raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from netvis.hooks import (
    GuidedReLUError,
    capture_activation,
    eval_session,
    guided_relus,
    preserved_state,
    resolve_layer,
    snapshot,
    state_differences,
)


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 4, 3), nn.Dropout()),
        nn.Flatten(), nn.Linear(4 * 4 * 4, 2),
    )


# ----------------------------------------------------------------------------------------------------
# resolve_layer
# ----------------------------------------------------------------------------------------------------


def test_resolve_layer():
    model = make_model()
    assert resolve_layer(model, "3.0") is model[3][0]
    assert resolve_layer(model, model[1]) is model[1]
    with pytest.raises(ValueError, match=r"no layer named '3\.2'; close names: .*'3\.0'"):
        resolve_layer(model, "3.2")
    with pytest.raises(ValueError, match="not part of the model"):
        resolve_layer(model, nn.ReLU())
    with pytest.raises(TypeError, match="nn.Module or a dotted name"):
        resolve_layer(model, 3)


# ----------------------------------------------------------------------------------------------------
# preserved_state / snapshot
# ----------------------------------------------------------------------------------------------------


def test_preserved_state_restores_everything_even_on_error():
    model = make_model().train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    grad_object = model[0].weight.grad
    model[5].bias.requires_grad_(False)
    mean = model[1].running_mean.clone()
    with pytest.raises(KeyError, match="inside"):
        with preserved_state(model):
            model(torch.randn(4, 3, 8, 8)).sum().backward()  # moves BN stats, accumulates grads
            model.eval()
            model[0].weight.grad.mul_(3)
            model[0].weight.requires_grad_(False)
            model[5].bias.requires_grad_(True)
            model[1].running_var = torch.zeros(4)  # replaces the buffer object
            assert not torch.equal(model[1].running_mean, mean)
            raise KeyError("inside")
    assert model.training and all(m.training for m in model.modules())
    assert model[0].weight.grad is grad_object and torch.equal(grad_object, torch.ones_like(grad_object))
    assert model[5].weight.grad is None and model[1].weight.grad is None  # None stays None
    assert model[0].weight.requires_grad and not model[5].bias.requires_grad
    assert torch.equal(model[1].running_mean, mean)
    assert torch.equal(model[1].running_var, torch.ones(4))
    assert int(model[1].num_batches_tracked) == 0


def test_preserved_state_keeps_each_modules_own_flag():
    model = make_model().train()
    model[1].eval()  # a frozen BN inside a training model
    with preserved_state(model):
        model.train()
    assert model.training and not model[1].training


def test_snapshot_differences_name_what_changed():
    model = make_model()
    before = snapshot(model)
    assert state_differences(before, snapshot(model)) == []
    handle = model[2].register_forward_hook(lambda m, i, o: None)
    model[3][1].eval()
    model[5].weight.grad = torch.zeros_like(model[5].weight)
    with torch.no_grad():
        model[1].running_mean.add_(1)
    diffs = "\n".join(state_differences(before, snapshot(model)))
    handle.remove()
    assert "2: _forward_hooks 0 -> 1 hooks" in diffs
    assert "3.1: training True -> False" in diffs
    assert "5.weight: .grad object replaced (None -> tensor(2, 64))" in diffs
    assert "1.running_mean: buffer values changed" in diffs
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: None)
    try:
        assert any("_global_forward_hooks" in d for d in state_differences(before, snapshot(model)))
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------------
# eval_session
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grad", [True, False])
def test_eval_session(grad):
    model = make_model().train()
    with torch.inference_mode():
        with eval_session(model, grad=grad):
            assert not any(m.training for m in model.modules())
            assert torch.is_grad_enabled() == grad
            out = model(torch.randn(1, 3, 8, 8))
            assert out.requires_grad == grad
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, torch.zeros(4))


# ----------------------------------------------------------------------------------------------------
# capture_activation
# ----------------------------------------------------------------------------------------------------


def test_capture_activation_records_and_removes_its_hook():
    model = make_model().eval()
    x = torch.randn(2, 3, 8, 8)
    with capture_activation(model, "3.0") as cap:
        model(x)
        assert len(model[3][0]._forward_hooks) == 1
    assert len(model[3][0]._forward_hooks) == 0
    torch.testing.assert_close(cap.output, model[3][0](model[2](model[1](model[0](x)))))
    assert cap.name == "3.0"
    with pytest.raises(RuntimeError, match="boom"):
        with capture_activation(model, model[0]):
            raise RuntimeError("boom")
    assert len(model[0]._forward_hooks) == 0


def test_capture_activation_needs_exactly_one_call():
    model = make_model().eval()
    with capture_activation(model, "2") as cap:
        pass
    with pytest.raises(RuntimeError, match="ran 0 times"):
        _ = cap.output
    with capture_activation(model, "2") as cap:
        model(torch.randn(1, 3, 8, 8))
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(RuntimeError, match="ran 2 times"):
        _ = cap.output


# ----------------------------------------------------------------------------------------------------
# guided_relus
# ----------------------------------------------------------------------------------------------------


def test_guided_relus_leaves_no_mode_behind_even_on_error():
    model = make_model().eval()
    with pytest.raises(ZeroDivisionError):
        with guided_relus(model):
            model(torch.randn(1, 3, 8, 8))
            _ = 1 / 0
    assert torch._C._len_torch_function_stack() == 0
    x = torch.randn(5, requires_grad=True)
    (g,) = torch.autograd.grad(torch.relu(x).sum(), x)
    torch.testing.assert_close(g, (x > 0).float())  # plain ReLU gradient again


def test_guided_relus_backward_rules():
    x = torch.tensor([-1.0, 2.0, 3.0, -4.0], requires_grad=True)
    upstream = torch.tensor([5.0, -6.0, 7.0, 8.0])
    model = nn.Identity()
    with guided_relus(model, "guided"):
        y = torch.relu(x)
    (g,) = torch.autograd.grad(y, x, upstream)
    assert g.tolist() == [0, 0, 7, 0]
    with guided_relus(model, "deconv"):
        y = nn.ReLU(inplace=True)(x * 1)
    (g,) = torch.autograd.grad(y, x, upstream)
    assert g.tolist() == [5, 0, 7, 8]
    assert y.tolist() == [0, 2, 3, 0]


def test_guided_relus_refuses_unrouted_modules():
    model = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU())
    with pytest.raises(GuidedReLUError, match="module '1' is LeakyReLU"):
        with guided_relus(model):
            pass
    assert torch._C._len_torch_function_stack() == 0
