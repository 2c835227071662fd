"""Saliency figures: array conversions checked by value, figures by their content and PNG output."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from netvis.app.render import image_to_array, map_to_array, method_grid, overlay, overlay_array, save_figure


def test_image_to_array_keeps_unit_range_and_rescales_otherwise():
    img = torch.rand(3, 4, 5)
    arr = image_to_array(img)
    assert arr.shape == (4, 5, 3)
    np.testing.assert_allclose(arr, img.permute(1, 2, 0).double().numpy())
    wide = torch.tensor([[[-2.0, 0.0], [2.0, 6.0]]])  # 1 channel, outside [0, 1]
    gray = image_to_array(wide)
    assert gray.shape == (2, 2, 3)
    np.testing.assert_allclose(gray[..., 0], [[0, 0.25], [0.5, 1]])
    np.testing.assert_allclose(gray[..., 0], gray[..., 2])
    np.testing.assert_allclose(image_to_array(wide[0]), gray)  # (H, W) accepted
    np.testing.assert_allclose(image_to_array(img[None]), arr)  # (1, C, H, W) accepted


def test_image_to_array_undoes_normalisation():
    raw = torch.rand(3, 2, 2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (raw - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    np.testing.assert_allclose(image_to_array(normalised, mean=mean, std=std), raw.permute(1, 2, 0).numpy(),
                               atol=1e-6)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        image_to_array(torch.rand(2, 4, 4))


def test_map_to_array():
    m = torch.tensor([[1.0, 3.0], [5.0, math.nan]])
    arr = map_to_array(m)
    np.testing.assert_allclose(arr[0], [0, 0.5])
    assert arr[1, 0] == 1 and math.isnan(arr[1, 1])
    channels = torch.tensor([[[1.0, -4.0]], [[-2.0, 0.0]]])  # (2, 1, 2): max |.| over channels = (2, 4)
    np.testing.assert_allclose(map_to_array(channels), [[0, 1]])
    np.testing.assert_allclose(map_to_array(channels, signed=True), [[0.25, 0]])  # (-2, -4) / 4
    np.testing.assert_allclose(map_to_array(torch.zeros(3, 3)), np.zeros((3, 3)))
    up = map_to_array(torch.tensor([[0.0, 1.0]]), size=(2, 4))
    assert up.shape == (2, 4) and up[0, 0] == 0 and up[0, 3] == 1
    with pytest.raises(ValueError, match="saliency map must be"):
        map_to_array(torch.zeros(4))


def test_overlay_array_blends():
    img = torch.rand(3, 4, 4)
    m = torch.arange(16.0).view(4, 4)
    m[0, 0] = math.nan
    rgb = image_to_array(img)
    np.testing.assert_allclose(overlay_array(img, m, alpha=0.0), rgb)
    full = overlay_array(img, m, alpha=1.0, cmap="viridis")
    heat = matplotlib.colormaps["viridis"](map_to_array(m))[..., :3]
    np.testing.assert_allclose(full[1:], heat[1:])
    np.testing.assert_allclose(full[0, 0], rgb[0, 0])  # NaN: the image shows through
    half = overlay_array(img, m, alpha=0.5, cmap="viridis")
    np.testing.assert_allclose(half[2, 2], 0.5 * rgb[2, 2] + 0.5 * heat[2, 2])
    small = overlay_array(img, torch.rand(2, 2))  # a coarse map (occlusion grid) is resized
    assert small.shape == (4, 4, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay_array(img, m, alpha=2.0)


def test_overlay_figure_and_png(tmp_path):
    fig = overlay(torch.rand(1, 16, 16), torch.rand(16, 16), title="gradient")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "gradient"
    path = save_figure(fig, tmp_path / "sub" / "overlay.png", dpi=50)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 0
    assert len(overlay(torch.rand(3, 8, 8), torch.rand(8, 8), show_image=False).axes) == 1


def test_method_grid(tmp_path):
    images = torch.rand(2, 3, 16, 16)
    maps = {
        "occlusion": torch.rand(2, 3, 3),
        "gradient": torch.rand(2, 3, 16, 16),
        "grad-cam": torch.rand(2, 16, 16),
    }
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    fig = method_grid(images, maps, scores=scores, class_names=["cat", "dog", "car"], target=[1, 2],
                      title="saliency")
    axes = fig.axes
    assert len(axes) == 2 * 4
    assert axes[0].get_title() == "dog: 0.7\ntarget: dog"
    assert axes[4].get_title() == "cat: 0.5\ntarget: car"
    assert [a.get_title() for a in axes[1:4]] == ["occlusion", "gradient", "grad-cam"]
    with Image.open(save_figure(fig, tmp_path / "grid.png")) as im:
        assert im.size[0] > im.size[1]
    single = method_grid(images[0], {"gradient": maps["gradient"][0]}, overlay=False)
    assert len(single.axes) == 2 and single.axes[0].get_title() == "image"
    one = method_grid(images[0], {"gradient": maps["gradient"][0]}, target=torch.tensor(2), class_names="abc")
    assert one.axes[0].get_title() == "target: c"
    with pytest.raises(ValueError, match="holds 1 maps for 2 images"):
        method_grid(images, {"gradient": torch.rand(1, 16, 16)})
    with pytest.raises(ValueError, match="maps is empty"):
        method_grid(images, {})


def test_figures_do_not_use_pyplot_state():
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()
    overlay(torch.rand(3, 8, 8), torch.rand(8, 8))
    method_grid(torch.rand(3, 8, 8), {"m": torch.rand(8, 8)})
    assert plt.get_fignums() == open_before
