"""The measures behind the experiments, against references and hand-computed values."""

from __future__ import annotations

import pytest
import scipy.ndimage
import scipy.stats
import torch
from torch import nn

from netvis.app.experiments import metrics as M


def test_ranks_average_ties_like_scipy():
    stats = scipy.stats
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 5, (3, 40), generator=g).float()  # many ties
    expected = torch.from_numpy(stats.rankdata(values.numpy(), axis=1)).to(torch.float64)
    torch.testing.assert_close(M.ranks(values), expected)


def test_spearman_matches_scipy_with_and_without_ties():
    stats = scipy.stats
    g = torch.Generator().manual_seed(1)
    a = torch.rand(4, 6, 6, generator=g)
    b = a + 0.5 * torch.rand(4, 6, 6, generator=g)
    b[0] = b[0].round()  # ties
    a[1, :3] = 0.0  # ties in a
    rho = M.spearman(a, b)
    for i in range(4):
        expected = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert rho[i].item() == pytest.approx(expected, abs=1e-10)


def test_spearman_extremes_and_constant_maps():
    a = torch.arange(16.0).view(1, 4, 4)
    assert M.spearman(a, a * 3 + 1).item() == pytest.approx(1.0)
    assert M.spearman(a, -a).item() == pytest.approx(-1.0)
    assert M.spearman(a, a.exp()).item() == pytest.approx(1.0)  # ranks only
    assert M.spearman(a, torch.zeros_like(a)).item() == 0.0  # a constant map ranks nothing
    with pytest.raises(ValueError, match="different shapes"):
        M.spearman(a, a[:, :2])


def test_map_ssim_is_one_for_affine_copies_and_lower_for_noise():
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 12, 12, generator=g)
    torch.testing.assert_close(M.map_ssim(a, 5 * a + 2), torch.ones(2, dtype=torch.float64))
    noise = torch.rand(2, 12, 12, generator=g)
    assert (M.map_ssim(a, noise) < 0.3).all()


def test_to_2d_channel_max_of_absolute_values_and_nan_to_minimum():
    m = torch.tensor([[[[1.0, -3.0]], [[-2.0, 0.5]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(M.to_2d(m), torch.tensor([[[2.0, 3.0]]]))
    occ = torch.tensor([[[0.5, float("nan")], [-1.0, 2.0]]])
    torch.testing.assert_close(M.to_2d(occ, absolute=False), torch.tensor([[[0.5, -1.0], [-1.0, 2.0]]]))


def test_curve_area_trapezoids():
    curves = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(M.curve_area(curves), torch.tensor([0.5, 0.25], dtype=torch.float64))


class PixelSum(nn.Module):
    """Logits (w . x, 0): the class-0 probability is sigmoid(w . x), easy to compute by hand."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone())

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([s, torch.zeros_like(s)], 1)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_perturbation_curves_match_a_brute_force_loop(mode):
    g = torch.Generator().manual_seed(3)
    h = w = 4
    model = PixelSum(torch.randn(h, w, generator=g))
    x = torch.rand(2, 1, h, w, generator=g)
    saliency = torch.rand(2, h, w, generator=g)  # no ties
    steps = 5
    curves = M.perturbation_curves(model, x, saliency, torch.tensor([0, 0]), mode=mode, steps=steps,
                                   baseline="mean", batch_size=3)
    for i in range(2):
        base = x[i].mean()
        order = saliency[i].flatten().argsort(descending=True)
        for k in range(steps + 1):
            n = round(k * h * w / steps)
            img = x[i].flatten().clone() if mode == "deletion" else torch.full((h * w,), float(base))
            img[order[:n]] = base if mode == "deletion" else x[i].flatten()[order[:n]]
            expected = torch.sigmoid(img @ model.w.detach())
            assert curves[i, k].item() == pytest.approx(expected.item(), abs=1e-6)


def test_perturbation_curves_end_points_and_baselines():
    g = torch.Generator().manual_seed(4)
    model = PixelSum(torch.randn(6, 6, generator=g))
    x = torch.rand(3, 1, 6, 6, generator=g)
    s = torch.rand(3, 6, 6, generator=g)
    t = torch.zeros(3, dtype=torch.long)
    for baseline in ("mean", "zero", "blur", 0.25, torch.full((1, 1, 1, 1), -1.0)):
        d = M.perturbation_curves(model, x, s, t, mode="deletion", steps=4, baseline=baseline)
        i = M.perturbation_curves(model, x, s, t, mode="insertion", steps=4, baseline=baseline)
        torch.testing.assert_close(d[:, 0], i[:, -1])  # the untouched image
        torch.testing.assert_close(d[:, -1], i[:, 0])  # the baseline image
    with pytest.raises(ValueError, match="mode"):
        M.perturbation_curves(model, x, s, t, mode="erase")
    with pytest.raises(ValueError, match="baseline"):
        M.perturbation_curves(model, x, s, t, baseline="gray")


def test_a_faithful_map_deletes_faster_than_its_reverse():
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(5, 5, generator=g).abs()
    model = PixelSum(weights)
    x = torch.rand(2, 1, 5, 5, generator=g) + 0.5
    target = torch.zeros(2, dtype=torch.long)
    contribution = (weights * x[:, 0]).detach()  # exact per-pixel evidence for class 0
    good = M.curve_area(M.perturbation_curves(model, x, contribution, target, baseline="zero", steps=25))
    bad = M.curve_area(M.perturbation_curves(model, x, -contribution, target, baseline="zero", steps=25))
    assert (good < bad).all()


def test_marker_mask_corners_and_add_marker():
    mask = M.marker_mask((8, 10), 3, "bottom-right", margin=1)
    assert mask.sum() == 9 and mask[4:7, 6:9].all()
    assert M.marker_mask((8, 8), 2)[1:3, 1:3].all()
    images = torch.zeros(2, 3, 8, 10, dtype=torch.uint8)
    marked = M.add_marker(images, mask, 200)
    assert (marked[:, :, mask] == 200).all() and (marked[:, :, ~mask] == 0).all()
    assert images.sum() == 0  # a copy
    with pytest.raises(ValueError, match="does not fit"):
        M.marker_mask((8, 8), 8)
    with pytest.raises(ValueError, match="corner"):
        M.marker_mask((8, 8), 2, "middle")
    center = M.marker_mask((8, 10), 2, "center")
    assert center.sum() == 4 and center[3:5, 4:6].all()


def test_add_marker_checker_pattern():
    mask = M.marker_mask((6, 6), 3)  # rows 1-3, cols 1-3
    images = torch.full((2, 3, 6, 6), 7, dtype=torch.uint8)
    marked = M.add_marker(images, mask, 200, pattern="checker")
    expected = torch.tensor([[200, 55, 200], [55, 200, 55], [200, 55, 200]], dtype=torch.uint8)
    for n in range(2):
        for c in range(3):
            assert torch.equal(marked[n, c, 1:4, 1:4], expected)
    assert (marked[:, :, ~mask] == 7).all() and (images == 7).all()
    with pytest.raises(ValueError, match="pattern must be one of checker, square"):
        M.add_marker(images, mask, 200, pattern="stripes")
    with pytest.raises(ValueError, match="0..255"):
        M.add_marker(images, mask, 300)


def test_region_hits_on_hand_made_maps():
    mask = M.marker_mask((6, 6), 2)  # rows 1-2, cols 1-2
    maps = torch.zeros(3, 6, 6)
    maps[0, 1:3, 1:3] = 1.0  # all mass on the marker
    maps[1] = 0.01
    maps[1, 1:3, 1:3] = 0.0
    maps[1, 4, 4] = 5.0  # peak far away
    maps[1, 1, 1] = 1.0
    maps[2] = 1.0  # flat
    hits = M.region_hits(maps, mask)
    assert hits["peak"][:2].tolist() == [1.0, 0.0]
    assert hits["argmax"][:2].tolist() == [1.0, 0.0]
    assert hits["top"][0].item() == 1.0 and hits["top"][1].item() == pytest.approx(0.25)
    assert hits["mass"][0].item() == pytest.approx(1.0)
    assert hits["mass"][1].item() == pytest.approx(1 / (5 + 1 + 31 * 0.01))
    assert hits["mass"][2].item() == pytest.approx(4 / 36)


def test_region_hits_peak_needs_half_the_region():
    mask = M.marker_mask((6, 6), 2)  # rows 1-2, cols 1-2
    maps = torch.zeros(3, 6, 6)
    maps[0, 2:4, 2:4] = 1.0  # the best 2x2 window covers one marker pixel of four
    maps[1, 1:3, 2:4] = 1.0  # it covers two of four
    maps[2, 0:2, 0:2] = 1.0  # one of four, on the other side
    hits = M.region_hits(maps, mask)
    assert hits["peak"].tolist() == [0.0, 1.0, 0.0]


def _tiny_resnet():
    from netvis.models import create

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create("resnet20_cifar", in_channels=1, num_classes=3, stage_channels=(2, 2, 2)).eval()


def test_layer_units_in_forward_order():
    model = _tiny_resnet()
    x = torch.rand(2, 1, 8, 8)
    assert M.layer_units(model, x, "stages") == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    blocks = M.layer_units(model, x, "blocks")
    assert blocks[:3] == ["conv1", "bn1", "layer1.0"] and blocks[-2:] == ["layer3.2", "fc"] and len(blocks) == 12
    layers = M.layer_units(model, x, "layers")
    assert layers[0] == "conv1" and layers[-1] == "fc" and "layer1.0.bn2" in layers
    with pytest.raises(ValueError, match="granularity"):
        M.layer_units(model, x, "everything")


def test_randomized_copy_changes_only_the_named_units():
    model = _tiny_resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    clone = M.randomized_copy(model, ["layer3", "fc"], seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the global generator is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])  # the original is untouched
    new = clone.state_dict()
    assert not torch.equal(new["fc.weight"], before["fc.weight"])
    assert not torch.equal(new["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    assert torch.equal(new["layer2.0.conv1.weight"], before["layer2.0.conv1.weight"])
    assert torch.equal(new["layer3.0.bn1.running_var"], before["layer3.0.bn1.running_var"])  # statistics stay
    assert (new["layer3.0.bn1.weight"] == 1).all() and (new["layer3.0.bn1.bias"] == 0).all()
    # the same seed gives the same weights, and a unit's weights do not depend on the others randomised
    again = M.randomized_copy(model, ["fc"], seed=7).state_dict()
    assert torch.equal(again["fc.weight"], new["fc.weight"])
    assert not torch.equal(M.randomized_copy(model, ["fc"], seed=8).state_dict()["fc.weight"], new["fc.weight"])


def test_gaussian_blur_matches_scipy():
    ndimage = scipy.ndimage
    g = torch.Generator().manual_seed(6)
    x = torch.rand(2, 3, 12, 10, generator=g, dtype=torch.float64)
    blurred = M.gaussian_blur(x, 1.5)  # radius ceil(2 * 1.5) = 3, reflected borders
    for i in range(2):
        for c in range(3):
            expected = ndimage.gaussian_filter(x[i, c].numpy(), 1.5, mode="mirror", truncate=2.0)
            torch.testing.assert_close(blurred[i, c], torch.from_numpy(expected))
    torch.testing.assert_close(M.gaussian_blur(x, 0.0), x)
