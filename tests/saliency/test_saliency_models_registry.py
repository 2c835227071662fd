"""Grad-CAM's default layer on every torchvision classifier and on a registry-driven sample of timm.

Every name in ``torchvision.models.list_models(module=torchvision.models)`` is built with random weights
(nothing is downloaded); the cheapest model of each family runs in the default suite, every other one
under ``pytest -m slow``. For each model the test checks, against a table of the layer a person picks
by reading the architecture (the last spatial feature map before global pooling; for a ViT the last
block's first norm, see :func:`netvis.saliency.default_layer`):

* :func:`default_layer` gives that name;
* the layer's output at that input is a spatial map of more than one position;
* the Grad-CAM map (without the ReLU) is finite and not constant.

Families the table does not know (a future torchvision) still get the two last checks.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torchvision
from torch import nn

from netvis.hooks import capture_activation
from netvis.saliency import default_layer, grad_cam
from netvis.saliency.cam import Layout, layout, to_grid

timm = pytest.importorskip("timm")

TORCHVISION = torchvision.models.list_models(module=torchvision.models)

# the cheapest member of each family: the default suite
CHEAP = {
    "alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s", "googlenet",
    "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2", "mobilenet_v3_small", "regnet_x_400mf",
    "regnet_y_400mf", "resnet18", "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t",
    "swin_v2_t", "vgg11", "vit_b_16",
}

# (name pattern, expected default layer); ``{last}`` is the index of a ViT's last encoder block
EXPECTED = [
    (r"(resnet|resnext|wide_resnet)\d", "layer4"),
    (r"(vgg|densenet|convnext|efficientnet|mobilenet|alexnet)", "features"),
    (r"mnasnet", "layers"),
    (r"regnet", "trunk_output"),
    (r"shufflenet", "conv5"),
    (r"squeezenet", "classifier.1"),
    (r"googlenet", "inception5b"),
    (r"inception_v3", "Mixed_7c"),
    (r"maxvit", "blocks.3"),
    (r"swin", "permute"),
    (r"vit_", "encoder.layers.encoder_layer_{last}.ln_1"),
]


def _input_size(name: str) -> int:
    """The smallest square input that leaves the last stage more than one position (or that the model needs)."""
    if name == "inception_v3":
        return 160
    if name == "maxvit_t":
        return 224  # its block partitions need 224 / 32 = 7 cells
    if name.startswith("vit_"):
        patch = int(re.search(r"_(\d+)$", name).group(1))
        return 4 * patch
    if name == "alexnet":
        return 128
    return 64


def _build_torchvision(name: str) -> tuple[nn.Module, torch.Tensor]:
    size = _input_size(name)
    kwargs = {"image_size": size} if name.startswith("vit_") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs)
    return model, torch.randn(2, 3, size, size)


def _randomise_zero_heads(model: nn.Module) -> None:
    """torchvision's ViT starts with an all-zero head (every map would be zero); give it random weights."""
    gen = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.Linear) and not bool(module.weight.detach().any()):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.02)


def _expected(name: str, model: nn.Module) -> str | None:
    for pattern, layer in EXPECTED:
        if re.match(pattern, name):
            if "{last}" in layer:
                return layer.format(last=len(model.encoder.layers) - 1)
            return layer
    return None


def _check(model: nn.Module, x: torch.Tensor, expected: str | None) -> str:
    model.eval()
    _randomise_zero_heads(model)
    layer = default_layer(model, x)
    if expected is not None:
        assert layer == expected
    with capture_activation(model, layer) as capture, torch.no_grad():
        model(x)
    where = layout(capture.output, tuple(x.shape[2:]), getattr(model, "num_prefix_tokens", None))
    assert where is not None and where.grid[0] * where.grid[1] > 1, (layer, tuple(capture.output.shape))
    cam = grad_cam(model, x, None, layer=layer, relu=False, upsample=False)  # each image's predicted class
    assert cam.shape == (x.shape[0], *where.grid)
    assert bool(torch.isfinite(cam).all())
    spread = cam.amax(dim=(1, 2)) - cam.amin(dim=(1, 2))
    assert bool((spread > 1e-4 * cam.abs().amax(dim=(1, 2))).all()) and bool((spread > 0).all())
    return layer


@pytest.mark.parametrize(
    "name", [n if n in CHEAP else pytest.param(n, marks=pytest.mark.slow) for n in TORCHVISION]
)
def test_torchvision_classifier(name):
    torch.manual_seed(0)
    model, x = _build_torchvision(name)
    _check(model, x, _expected(name, model))


def test_the_table_covers_the_registry():
    assert CHEAP <= set(TORCHVISION)
    assert [n for n in TORCHVISION if not any(re.match(p, n) for p, _ in EXPECTED)] == []


# timm: the first registry name of each pattern, built with random weights (pretrained=False)
TIMM = [
    ("resnet1*", {}, 64, "layer4"),
    ("efficientnet_b0", {}, 64, "bn2"),
    ("mobilenetv3_small*", {}, 64, None),
    ("regnetx_00*", {}, 64, "s4"),
    ("convnext_atto*", {}, 64, "stages"),
    ("vit_tiny_patch16_*", {"img_size": 64}, 64, "blocks.11.norm1"),
    ("vit_small_patch14_reg4_*", {"img_size": 56}, 56, "blocks.11.norm1"),
    ("deit_tiny_distilled_*", {"img_size": 64}, 64, "blocks.11.norm1"),
    ("swin_tiny_*", {}, 224, "norm"),
]


def _timm_name(pattern: str) -> str:
    names = timm.list_models(pattern)
    assert names, f"timm has no model matching {pattern!r}"
    return names[0]


@pytest.mark.parametrize(("pattern", "kwargs", "size", "expected"), TIMM, ids=[t[0] for t in TIMM])
def test_timm_model(pattern, kwargs, size, expected):
    name = _timm_name(pattern)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    x = torch.randn(2, 3, size, size)
    layer = _check(model, x, expected)
    if name.startswith(("vit", "deit")):
        # the class, distillation and register tokens are dropped: the grid is the patch grid
        patch = model.patch_embed.patch_size[0]
        assert model.num_prefix_tokens > 1 or name.startswith("vit_tiny")
        assert grad_cam(model, x, 3, layer=layer, upsample=False).shape == (2, size // patch, size // patch)


# ----------------------------------------------------------------------------------------------------
# transformers: Grad-CAM on token sequences and channels-last maps against references written out here
# ----------------------------------------------------------------------------------------------------


def _reference_cam(model, x, target, layer, to_nchw):
    """Grad-CAM by hand: a forward hook, ``torch.autograd.grad``, the layer's output reshaped by ``to_nchw``."""
    store = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits[torch.arange(x.shape[0]), target].sum()
    (grad,) = torch.autograd.grad(score, store["a"])
    a, g = to_nchw(store["a"].detach()), to_nchw(grad)
    cam = (g.mean(dim=(2, 3), keepdim=True) * a).sum(dim=1, keepdim=True).clamp(min=0)
    return torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[:, 0]


def test_vit_b_16_grad_cam_equals_the_reference():
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    _randomise_zero_heads(model)
    x = torch.randn(2, 3, 224, 224)
    target = torch.tensor([3, 700])
    block = model.encoder.layers[-1]

    def tokens_to_grid(t):  # drop the class token, 196 patch tokens row by row -> (N, 768, 14, 14)
        return t[:, 1:].reshape(t.shape[0], 14, 14, t.shape[2]).permute(0, 3, 1, 2)

    ref = _reference_cam(model, x, target, block.ln_1, tokens_to_grid)
    got = grad_cam(model, x, target)  # default layer, automatic reshape
    assert ref.abs().max() > 0
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    explicit = grad_cam(model, x, target, layer=block.ln_1, reshape="tokens")
    torch.testing.assert_close(explicit, got)
    torch.testing.assert_close(grad_cam(model, x, target, layer=block.ln_1, reshape=tokens_to_grid), got)
    # the patch embedding is a spatial map too, but not the default any more
    assert default_layer(model) == "encoder.layers.encoder_layer_11.ln_1"
    with pytest.raises(ValueError, match=r"\(N, K, h, w\) .* returned shape \(2, 197, 768\); pass reshape="):
        grad_cam(model, x, target, layer=block.ln_1, reshape="nchw")


def test_channels_last_stage_of_swin_equals_the_reference():
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = _reference_cam(model, x, torch.tensor([1, 2]), model.norm, lambda t: t.permute(0, 3, 1, 2))
    got = grad_cam(model, x, [1, 2], layer="norm")  # (N, 2, 2, 768): channels last, found from the shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    torch.testing.assert_close(grad_cam(model, x, [1, 2], layer="norm", reshape="nhwc"), got)


def test_layout_of_token_sequences_and_maps():
    assert layout(torch.zeros(1, 197, 8), (224, 224)) == Layout("tokens", (14, 14), 1)
    assert layout(torch.zeros(1, 1 + 4 + 196, 8), (224, 224)) == Layout("tokens", (14, 14), 5)  # registers
    assert layout(torch.zeros(1, 2 + 196, 8), (224, 224)) == Layout("tokens", (14, 14), 2)  # DeiT distilled
    assert layout(torch.zeros(1, 196, 8), (224, 224)) == Layout("tokens", (14, 14), 0)  # no class token
    assert layout(torch.zeros(1, 1 + 4 * 6, 8), (64, 96)) == Layout("tokens", (4, 6), 1)  # not square
    assert layout(torch.zeros(1, 768, 7, 7), (224, 224)) == Layout("nchw", (7, 7))
    assert layout(torch.zeros(1, 7, 7, 768), (224, 224)) == Layout("nhwc", (7, 7))
    assert layout(torch.zeros(1, 768, 1, 1), (224, 224)) is None  # pooled
    assert layout(torch.zeros(1, 1000), (224, 224)) is None
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(1, 5, 6)[:, :, :3].contiguous()
    grid = to_grid(x, Layout("tokens", (2, 2), 1))
    assert grid.shape == (1, 3, 2, 2) and torch.equal(grid[0, :, 0, 1], x[0, 2])  # token 1 + 1 is cell (0, 1)


def test_timm_convnext_channels_last_block_layer():
    # timm's ConvNeXt blocks compute their MLP channels last: an (N, h, w, C) layer inside a block
    torch.manual_seed(0)
    model = timm.create_model(_timm_name("convnext_atto*"), pretrained=False, num_classes=10, conv_mlp=False,
                              ls_init_value=1.0).eval()
    x = torch.randn(2, 3, 64, 64)
    norm = model.stages[3].blocks[-1].norm
    ref = _reference_cam(model, x, torch.tensor([4, 5]), norm, lambda t: t.permute(0, 3, 1, 2))
    assert ref.abs().max() > 0
    got = grad_cam(model, x, [4, 5], layer=norm)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
    assert default_layer(model, x) == "stages"  # the stage output (N, C, h, w), after the last block
