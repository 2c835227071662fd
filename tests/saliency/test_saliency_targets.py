"""Target resolution and the input checks every method shares."""

from __future__ import annotations

import pytest
import torch
from saliency_testing import small_cnn

from netvis import saliency
from netvis.saliency import resolve_target

OUT = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 1.0]])


def test_none_is_the_predicted_class():
    t = resolve_target(None, OUT, 2)
    assert t.indices.tolist() == [1, 0]
    assert t.scores(OUT, 2).tolist() == [2.0, 3.0]


@pytest.mark.parametrize("target", [2, torch.tensor(2), [2, 2], (2, 2), torch.tensor([2, 2])])
def test_int_list_and_tensor_targets(target):
    t = resolve_target(target, OUT, 2)
    assert t.indices.tolist() == [2, 2]
    assert t.scores(OUT, 2).tolist() == [-1.0, 1.0]


def test_rows_pick_each_rows_sample():
    t = resolve_target([0, 2], OUT, 2)
    rows = torch.tensor([1, 1, 0])
    outputs = torch.arange(9.0).view(3, 3)
    assert t.scores(outputs, 3, rows).tolist() == [2.0, 5.0, 6.0]


def test_callable_target():
    t = resolve_target(lambda out: out[:, 0] - out[:, 2], OUT, 2)
    assert torch.allclose(t.scores(OUT, 2), torch.tensor([1.1, 2.0]))


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        (3, ValueError, "target 3 is out of range for a model with 3 classes"),
        (-1, ValueError, "out of range for a model with 3 classes"),
        ([0, 7], ValueError, "target 7 is out of range for a model with 3 classes"),
        (torch.tensor([0, 1, 2]), ValueError, "holds 3 class indices for 2 inputs"),
        ([1], ValueError, "holds 1 class indices for 2 inputs"),
        (torch.tensor([0.0, 1.0]), TypeError, "integer class indices"),
        (torch.zeros(2, 1, dtype=torch.long), ValueError, "0-D or 1-D"),
        (True, TypeError, "not a bool"),
        ("cat", TypeError, "target must be None"),
        (1.5, TypeError, "target must be None"),
    ],
)
def test_bad_targets(target, error, message):
    with pytest.raises(error, match=message):
        resolve_target(target, OUT, 2)


def test_callable_returning_the_wrong_shape():
    t = resolve_target(lambda out: out, OUT, 2)
    with pytest.raises(ValueError, match=r"shape \(2,\); it returned \(2, 3\)"):
        t.scores(OUT, 2)


def test_class_target_needs_class_scores():
    with pytest.raises(ValueError, match="pass a callable target"):
        resolve_target(0, torch.zeros(2, 3, 4, 4), 2)


METHODS = sorted(saliency.METHODS)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_checks_rank_target_and_callable(name):
    model = small_cnn(classes=5)
    fn = saliency.METHODS[name]
    x = torch.rand(2, 3, 8, 8)
    opts = {"occlusion": {"window": 4}, "smoothgrad": {"n_samples": 2, "generator": 0},
            "integrated-gradients": {"steps": 3}}.get(name, {})
    with pytest.raises(ValueError, match="4-D tensor shaped"):
        fn(model, x[0], **opts)
    with pytest.raises(ValueError, match="target 5 is out of range for a model with 5 classes"):
        fn(model, x, 5, **opts)
    with pytest.raises(ValueError, match="holds 3 class indices for 2 inputs"):
        fn(model, x, torch.tensor([0, 1, 2]), **opts)
    with pytest.raises(ValueError, match="one score per input"):
        fn(model, x, lambda out: out[:, :2], **opts)
    with pytest.raises(TypeError, match="floating point"):
        fn(model, (x * 255).to(torch.uint8), **opts)


def test_methods_table_names():
    assert set(saliency.METHODS) == {
        "occlusion", "gradient", "guided-backprop", "deconvnet", "smoothgrad", "integrated-gradients",
        "grad-cam", "guided-grad-cam",
    }
    assert saliency.METHODS["grad-cam"] is saliency.grad_cam
