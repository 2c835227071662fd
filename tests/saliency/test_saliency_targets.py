"""Target resolution and the input checks every method shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torchvision
from saliency_testing import small_cnn
from torch import nn

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


# ----------------------------------------------------------------------------------------------------
# numpy targets, callable targets and select= for tuple / dict / dataclass outputs, in every method
# ----------------------------------------------------------------------------------------------------

OPTIONS = {"occlusion": {"window": 4, "engine": "batched"}, "smoothgrad": {"n_samples": 2, "generator": 0},
           "integrated-gradients": {"steps": 3}}


@pytest.mark.parametrize("target", [np.int64(2), np.array(2), np.array([2, 2]), np.array([2, 2], dtype=np.int32),
                                    np.array([2, 2], dtype=np.uint8)])
def test_numpy_targets(target):
    t = resolve_target(target, OUT, 2)
    assert t.indices.tolist() == [2, 2]
    assert t.scores(OUT, 2).tolist() == [-1.0, 1.0]


@pytest.mark.parametrize(("target", "message"), [
    (np.array([0.0, 1.0]), "numpy target must hold integer class indices, got dtype float64"),
    (np.array([True, False]), "numpy target must hold integer class indices, got dtype bool"),
    (np.array([[0], [1]]), "0-D or 1-D"),
    (np.array([0, 1, 2]), "holds 3 class indices for 2 inputs"),
    (np.array([0, 3]), "target 3 is out of range"),
])
def test_bad_numpy_targets(target, message):
    with pytest.raises((TypeError, ValueError), match=message):
        resolve_target(target, OUT, 2)


@dataclass
class Output:
    """A dataclass output, like the output objects of Hugging Face models."""

    features: torch.Tensor
    logits: torch.Tensor


class Wrapped(nn.Module):
    """``small_cnn`` returning its logits in a tuple, a dict or a dataclass next to another tensor."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.net = small_cnn(classes=5)

    def forward(self, x):
        logits = self.net(x)
        other = logits.square().sum(1, keepdim=True)  # a second output that the target must not score
        if self.kind == "tuple":
            return other, logits
        if self.kind == "dict":
            return {"other": other, "logits": logits}
        if self.kind == "out":
            return {"out": logits, "aux": other}
        return Output(features=other, logits=logits)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize(("kind", "select"), [("tuple", 1), ("tuple", -1), ("dict", "logits"), ("dict", None),
                                              ("out", None), ("out", "out"), ("dataclass", "logits"),
                                              ("dataclass", None), ("dict", lambda o: o["logits"])])
def test_select_gives_the_plain_models_map(name, kind, select):
    wrapped = Wrapped(kind)
    x = torch.rand(2, 3, 8, 8)
    fn = saliency.METHODS[name]
    for target in ([1, 4], np.array([1, 4]), None):
        expected = fn(wrapped.net, x, target, **OPTIONS.get(name, {}))
        got = fn(wrapped, x, target, select=select, **OPTIONS.get(name, {}))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_tuple_output_without_select_is_refused_by_name(name):
    with pytest.raises(TypeError, match=r"returned a tuple of 2 elements; pass select="):
        saliency.METHODS[name](Wrapped("tuple"), torch.rand(1, 3, 8, 8), 0, **OPTIONS.get(name, {}))


def test_select_errors_name_what_the_model_returned():
    out = {"other": OUT, "logits": OUT}
    with pytest.raises(KeyError, match=r"select='scores': the model returned dict with keys \['other', 'logits'\]"):
        resolve_target(0, out, 2, select="scores")
    with pytest.raises(IndexError, match="select=2 is out of range: the model returned a tuple of 2 elements"):
        resolve_target(0, (OUT, OUT), 2, select=2)
    with pytest.raises(KeyError, match=r"fields \['features', 'logits'\]"):
        resolve_target(0, Output(OUT, OUT), 2, select="scores")


class Segmenter(nn.Module):
    """A per-pixel linear classifier: ``{"out": W x}`` with ``W`` a 1 x 1 convolution (K classes)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.head = nn.Conv2d(3, classes, 1, bias=True)

    def forward(self, x):
        return {"out": self.head(x)}


def test_mask_sum_target_on_a_segmenter_has_the_hand_computed_gradient():
    # score_n = sum_{ij} m_ij (W x_n + b)_{c,ij}  =>  d score / d x_{n,k,ij} = m_ij W_{c,k}
    torch.manual_seed(0)
    model = Segmenter()
    x = torch.rand(2, 3, 6, 6)
    mask = torch.zeros(6, 6)
    mask[1:4, 2:5] = 1.0
    c = 2
    grad = saliency.gradient(model, x, lambda out: (out["out"][:, c] * mask).sum(dim=(1, 2)), abs=False)
    expected = (model.head.weight[c, :, 0, 0].detach()[None, :, None, None] * mask).expand(2, 3, 6, 6)
    torch.testing.assert_close(grad, expected)
    # the same with select="out": the callable then gets the tensor
    grad_sel = saliency.gradient(model, x, lambda out: (out[:, c] * mask).sum(dim=(1, 2)), abs=False,
                                 select="out")
    torch.testing.assert_close(grad_sel, expected)


def test_region_score_target_in_occlusion():
    # occluding outside the region leaves a region-only score unchanged; inside it changes by the patch's share
    torch.manual_seed(0)
    model = Segmenter()
    x = torch.rand(1, 3, 8, 8)
    region = (slice(0, 4), slice(0, 4))

    def score(out):
        return out["out"][:, 1, region[0], region[1]].sum(dim=(1, 2))

    got = saliency.occlusion(model, x, score, window=4, stride=4, fill=0.0, engine="batched")
    with torch.no_grad():
        clean = score(model(x))
        patched = x.clone()
        patched[..., :4, :4] = 0.0
        inside = score(model(patched))
    torch.testing.assert_close(got[0], torch.stack([torch.stack([inside[0], clean[0]]),
                                                    torch.stack([clean[0], clean[0]])]))


def test_fcn_resnet50_dict_output_with_a_mask_sum_target():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=5)
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    mask = torch.zeros(64, 64)
    mask[16:48, 8:40] = 1.0

    def target(out):
        return (out[:, 3] * mask).sum(dim=(1, 2))

    # reference: autograd written out, on the 'out' entry of the dict
    xi = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(target(model(xi)["out"]), xi)
    got = saliency.gradient(model, x, target, select="out", abs=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    # Grad-CAM on the backbone's last stage; the auxiliary head runs but 'out' does not use it
    cam = saliency.grad_cam(model, x, target, select="out", layer="backbone.layer4")
    assert cam.shape == (1, 64, 64) and bool(torch.isfinite(cam).all())
    assert saliency.default_layer(model, x, select="out") == "classifier"
