"""The incremental occlusion engine against batched re-inference, its box algebra, SSIM and its fallbacks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from saliency_testing import assert_untouched, fingerprint, small_cnn
from scipy import ndimage
from torch import nn

from netvis.hooks import snapshot, state_differences
from netvis.models import BatchNorm2d as NetvisBatchNorm2d
from netvis.models import densenet, resnet
from netvis.saliency import incremental
from netvis.saliency._fx_regions import _grow
from netvis.saliency.incremental import (
    Calibration,
    IncrementalFallbackWarning,
    approximate_occlusion,
    calibrate_occlusion,
    incremental_occlusion,
    run_occlusion,
    ssim,
)
from netvis.saliency.occlusion import occlusion


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batched(model, x, target, **options):
    return occlusion(model, x, target, engine="batched", **options)


def assert_same_map(got, ref, rtol=1e-4):
    """Equal within ``rtol`` of the map's scale, and the map is not flat (else the check would say little)."""
    scale = float(ref.abs().max())
    assert float(ref.std()) > 1e-3 * scale, "the reference map is flat: the comparison would say little"
    torch.testing.assert_close(got, ref, rtol=rtol, atol=rtol * scale)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that eval-mode BN does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, NetvisBatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.rand(c, generator=g) * 0.2 - 0.1)
    return model


class Kitchen(nn.Module):
    """Most operations the engine knows, on odd geometry: 3 x 32 x 32 -> 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, (3, 5), stride=(1, 2), padding=(1, 2))  # 32 x 16
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_same = nn.Conv2d(8, 8, 4, padding="same", dilation=2, groups=2, bias=False)  # asymmetric pad
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)  # 17 x 9, one clipped window
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.pos = nn.Parameter(torch.randn(1, 12, 17, 9) * 0.1)  # a constant that varies over the map
        self.conv3 = nn.Conv2d(12, 16, 3, stride=3, padding=2)  # 7 x 4
        self.short = nn.Conv2d(12, 16, 1, stride=3, padding=1)  # 7 x 4
        self.drop = nn.Dropout(0.5)
        self.bn2 = NetvisBatchNorm2d(16)
        self.register_buffer("mean16", torch.rand(16) * 0.1)
        self.register_buffer("var16", torch.rand(16) + 0.5)
        self.prelu = nn.PReLU(16, init=0.1)
        self.gate = nn.Linear(16, 16)
        self.fc = nn.Linear(16 * 7 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        y = self.conv_same(x)
        y.relu_()  # in place: later readers of y see the rectified tensor
        x = x + y
        x = F.relu(x, inplace=True)
        x = self.pool(x)
        z = torch.cat([x, self.avg(x)[:, :4]], 1)
        z = z * torch.sigmoid(z) + self.pos
        w = self.bn2(self.drop(self.conv3(z) + self.short(z)))
        w = F.dropout(w, 0.3, training=self.training)
        w = self.prelu(F.batch_norm(w, self.mean16, self.var16, None, None, False))  # per-channel tensors
        gate = torch.sigmoid(self.gate(w.mean((2, 3))))[:, :, None, None]  # squeeze-and-excitation
        w = torch.relu(w * gate)
        return self.fc(w.reshape(w.size(0), -1))


# ----------------------------------------------------------------------------------------------------
# Equality with batched re-inference
# ----------------------------------------------------------------------------------------------------


def test_kitchen_matches_batched_all_options():
    torch.manual_seed(0)
    model = randomise_norms(Kitchen()).eval()
    x = torch.rand(2, 3, 32, 32)
    options = {"window": (6, 5), "stride": (5, 3)}
    ref = batched(model, x, [1, 7], **options)
    got, report = incremental_occlusion(model, x, [1, 7], report=True, **options)
    assert report.engine == "incremental" and report.reason is None
    assert got.shape == (2, 6, 10)
    assert_same_map(got, ref)
    # a fill value, the drop, upsampling, another batch size, a callable target
    ref = batched(model, x, [1, 7], fill=0.3, output="drop", upsample=True, **options)
    got = incremental_occlusion(model, x, [1, 7], fill=0.3, output="drop", upsample=True, batch_size=7, **options)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * float(ref.nan_to_num().abs().max()), equal_nan=True)
    patch = torch.rand(3, 6, 5)
    ref = batched(model, x, lambda out: out[:, 2] - out[:, 0], fill=patch, **options)
    got = incremental_occlusion(model, x, lambda out: out[:, 2] - out[:, 0], fill=patch, **options)
    assert_same_map(got, ref)


def test_batch_size_does_not_change_the_map():
    torch.manual_seed(1)
    model = randomise_norms(Kitchen()).eval()
    x = torch.rand(1, 3, 32, 32)
    maps = [incremental_occlusion(model, x, 4, window=5, stride=3, batch_size=b) for b in (1, 13, 1000)]
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(maps[0], maps[2], rtol=1e-5, atol=1e-6)


def vgg11_small_head() -> nn.Module:
    """torchvision's VGG-11 with a narrower classifier (its 25088 x 4096 layer alone takes seconds to initialise)."""
    with torch.device("meta"):
        model = torchvision.models.vgg11(weights=None, num_classes=10)
    model.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 10),
    )
    model.features.to_empty(device="cpu")
    for m in model.features:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return model


TORCHVISION = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=10), 64, 16, 16),
    "densenet121": (lambda: torchvision.models.densenet121(weights=None, num_classes=10), 64, 16, 16),
    "vgg11": (vgg11_small_head, 32, 8, 8),
}
NETVIS = {
    "resnet18": (lambda: resnet.resnet18(num_classes=10), 64, 16, 16),
    "resnet18-netvis-bn": (lambda: resnet.resnet18(num_classes=10, norm_layer="netvis"), 64, 24, 20),
    "resnet20_cifar": (lambda: resnet.resnet20_cifar(), 32, 8, 8),
    "resnet20_cifar-A": (lambda: resnet.resnet20_cifar(shortcut="A", preact=True), 32, 7, 9),
    "densenet_bc_100": (lambda: densenet.densenet_bc_100(), 32, 8, 12),
}


@pytest.mark.parametrize(
    "family, name",
    [("torchvision", n) for n in TORCHVISION] + [("netvis", n) for n in NETVIS],
)
def test_architectures_match_batched(family, name):
    build, size, window, stride = (TORCHVISION if family == "torchvision" else NETVIS)[name]
    torch.manual_seed(0)
    model = randomise_norms(build()).eval()
    x = torch.rand(1, 3, size, size)
    ref = batched(model, x, 3, window=window, stride=stride, output="drop")
    got, report = incremental_occlusion(model, x, 3, window=window, stride=stride, output="drop", report=True)
    assert report.engine == "incremental", report.reason
    assert 0 < report.macs_fraction < 1
    assert_same_map(got, ref)


def test_mean_fill_and_two_images_on_a_torchvision_resnet():
    torch.manual_seed(2)
    model = randomise_norms(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    x = torch.rand(2, 3, 48, 48)
    ref = batched(model, x, None, window=12, stride=12)
    assert_same_map(incremental_occlusion(model, x, None, window=12, stride=12), ref)


def test_trained_checkpoint_matches_batched():
    """netvis's shipped Fashion-MNIST ResNet-20: trained weights, real images, maps with structure."""
    import netvis
    from netvis.data.fashion_mnist import load_idx_folder

    ckpt = netvis.load_checkpoint("fashion-mnist-small")
    sample = Path(netvis.__file__).parent / "assets" / "fashion-mnist-sample"
    x = ckpt.preprocess(load_idx_folder(sample, "test").images[:2])
    ref = batched(ckpt.model, x, None, window=4, stride=3, output="drop")
    got = incremental_occlusion(ckpt.model, x, None, window=4, stride=3, output="drop")
    assert_same_map(got, ref)


# ----------------------------------------------------------------------------------------------------
# The box algebra
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_grown_box_holds_every_changed_output(seed):
    """Brute force: output o changes iff one of its taps o*s - p + j*d lies in the changed input rows."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p = int(rng.integers(0, k * d))
        n_in = int(rng.integers(k * d, 40))
        n_out = (n_in + 2 * p - d * (k - 1) - 1) // s + 1
        h = int(rng.integers(1, n_in + 1))
        starts = torch.arange(0, n_in - h + 1)
        tops, size = _grow(starts, h, n_out, k, s, d, p, None)
        assert 1 <= size <= n_out
        assert bool(((tops >= 0) & (tops + size <= n_out)).all())
        for a, top in zip(starts.tolist(), tops.tolist(), strict=True):
            changed = [o for o in range(n_out) if any(a <= o * s - p + j * d < a + h for j in range(k))]
            assert all(top <= o < top + size for o in changed), (k, s, d, p, n_in, h, a)


def test_threshold_caps_the_box():
    starts = torch.arange(0, 30)
    _, exact = _grow(starts, 10, 32, 3, 1, 1, 1, None)
    tops, capped = _grow(starts, 10, 32, 3, 1, 1, 1, 0.25)
    assert exact == 12 and capped == 8 and bool((tops + capped <= 32).all())


# ----------------------------------------------------------------------------------------------------
# Approximate modes and SSIM
# ----------------------------------------------------------------------------------------------------


def ssim_reference(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """scikit-image's structural_similarity (uniform window, sample covariance), written with scipy."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    data_range = max(a.max(), b.max()) - min(a.min(), b.min())
    filt = lambda t: ndimage.uniform_filter(t, size=win, mode="reflect")  # noqa: E731
    n = win * win
    cov_norm = n / (n - 1)
    ux, uy = filt(a), filt(b)
    vx = cov_norm * (filt(a * a) - ux * ux)
    vy = cov_norm * (filt(b * b) - uy * uy)
    vxy = cov_norm * (filt(a * b) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def test_ssim_against_a_scipy_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(20, 17, generator=g)
    b = a + 0.2 * torch.rand(20, 17, generator=g)
    assert math.isclose(float(ssim(a, b)), ssim_reference(a.numpy(), b.numpy()), rel_tol=1e-6)
    c = torch.roll(a, 3, 0)
    assert math.isclose(float(ssim(a, c)), ssim_reference(a.numpy(), c.numpy()), rel_tol=1e-6)
    assert math.isclose(float(ssim(a.double(), c.double())), ssim_reference(a.numpy(), c.numpy()), rel_tol=1e-12)
    assert float(ssim(a, a)) == pytest.approx(1.0)
    assert float(ssim(a, c)) < float(ssim(a, b)) < 1
    batch = ssim(torch.stack([a, a]), torch.stack([b, c]))
    torch.testing.assert_close(batch, torch.stack([ssim(a, b), ssim(a, c)]))
    with pytest.raises(ValueError, match="3 x 3"):
        ssim(torch.rand(2, 5), torch.rand(2, 5))


def test_approximate_modes_report_ssim_and_tau_one_is_exact():
    torch.manual_seed(3)
    model = randomise_norms(resnet.resnet20_cifar()).eval()
    x = torch.rand(1, 3, 32, 32)
    exact = incremental_occlusion(model, x, 2, window=4, stride=2)
    same = incremental_occlusion(model, x, 2, window=4, stride=2, tau=1.0)
    torch.testing.assert_close(same, exact, rtol=1e-5, atol=1e-6)
    approx, report = incremental_occlusion(model, x, 2, window=4, stride=2, tau=0.3, report=True)
    assert report.mode == "threshold" and report.macs_fraction < 0.6
    assert report.ssim is not None and -1 <= report.ssim[0] < 1
    assert report.ssim[0] == pytest.approx(float(ssim(approx[0], exact[0])), abs=1e-6)
    assert report.max_abs_diff == pytest.approx(float((approx - exact).abs().max()), rel=1e-6)
    drop, report = incremental_occlusion(model, x, 2, window=4, stride=2, tau=0.3, output="drop", report=True)
    with torch.no_grad():
        clean = model(x)[0, 2]
    torch.testing.assert_close(drop, clean - approx, rtol=1e-5, atol=1e-5)
    assert report.ssim[0] == pytest.approx(float(ssim(drop[0], clean - exact[0])), abs=1e-5)  # on the drop maps


def test_drilldown_evaluates_the_coarse_grid_and_the_top_positions():
    torch.manual_seed(4)
    model = randomise_norms(resnet.resnet20_cifar()).eval()
    x = torch.rand(1, 3, 32, 32)
    exact = incremental_occlusion(model, x, 2, window=4, stride=2)  # 15 x 15
    full = incremental_occlusion(model, x, 2, window=4, stride=2, drilldown=4, drilldown_fraction=1.0)
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=1e-6)
    approx, report = incremental_occlusion(model, x, 2, window=4, stride=2, drilldown=4, drilldown_fraction=0.1,
                                           report=True)
    assert report.mode == "drilldown" and report.positions < 0.5 * report.total_positions
    torch.testing.assert_close(approx[0, ::2, ::2], exact[0, ::2, ::2], rtol=1e-5, atol=1e-6)  # the coarse grid
    # every evaluated position holds its exact value; the others are interpolated
    assert int(torch.isclose(approx, exact, rtol=1e-5, atol=1e-6).sum()) >= report.positions
    assert report.ssim[0] > 0
    with pytest.raises(ValueError, match="multiple"):
        incremental_occlusion(model, x, 2, window=4, stride=2, drilldown=5)


# ----------------------------------------------------------------------------------------------------
# Fallbacks, side effects, engine choice
# ----------------------------------------------------------------------------------------------------


class Rolling(nn.Module):
    """``torch.roll`` moves pixels across the map: the engine does not know it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.roll(self.conv1(x), 2, dims=3)
        return self.fc(self.conv2(x).mean((2, 3)))


class Branchy(nn.Module):
    """A data-dependent branch: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = -x
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("model_class, reason", [(Rolling, "roll"), (Branchy, "torch.fx cannot trace")])
def test_fallback_warns_once_and_returns_the_batched_map(model_class, reason):
    torch.manual_seed(5)
    model = model_class().eval()
    x = torch.rand(1, 3, 16, 16)
    ref = batched(model, x, 1, window=4, stride=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        maps = [incremental_occlusion(model, x, 1, window=4, stride=3) for _ in range(2)]
        got, report = incremental_occlusion(model, x, 1, window=4, stride=3, report=True)
    fallbacks = [w for w in caught if issubclass(w.category, IncrementalFallbackWarning)]
    assert len(fallbacks) == 1 and reason in str(fallbacks[0].message)
    assert report.engine == "batched" and reason in report.reason
    for m in [*maps, got]:
        torch.testing.assert_close(m, ref)


def test_no_side_effects_and_forward_hooks_force_batched():
    model = small_cnn(classes=5).train()
    model[0].weight.grad = torch.randn_like(model[0].weight)
    model[4].bias.requires_grad_(False)
    model[8].weight.register_hook(lambda g: g)
    x = torch.rand(2, 3, 16, 16)
    x_before = x.clone()
    before, state = fingerprint(model), snapshot(model)
    got, report = incremental_occlusion(model, x, [1, 2], window=4, stride=2, report=True)
    assert report.engine == "incremental"
    assert_untouched(before, model)
    assert state_differences(state, snapshot(model)) == []
    assert torch.equal(x, x_before) and model.training and model[1].training
    calls = []
    model[5].register_forward_hook(lambda m, i, o: calls.append(len(o)))
    before = fingerprint(model)
    with pytest.warns(IncrementalFallbackWarning, match="forward hooks"):
        hooked = incremental_occlusion(model, x, [1, 2], window=4, stride=2)
    assert calls, "batched re-inference runs the hooks"
    assert_untouched(before, model)
    torch.testing.assert_close(hooked, got, rtol=1e-5, atol=1e-6)


def test_auto_engine_choice(monkeypatch):
    torch.manual_seed(6)
    model = small_cnn(classes=5).eval()
    x = torch.rand(1, 3, 32, 32)
    ref = batched(model, x, 1, window=4, stride=4)
    # small work: batched, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, report = run_occlusion(model, x, 1, window=4, stride=4, engine="auto", report=True)
    assert report.engine == "batched" and report.reason.startswith("auto")
    torch.testing.assert_close(got, ref)
    # enough work (threshold lowered) and a small window: incremental
    monkeypatch.setattr(incremental, "AUTO_MIN_MACS", 0)
    got, report = run_occlusion(model, x, 1, window=4, stride=4, engine="auto", report=True)
    assert report.engine == "incremental" and report.macs_fraction <= incremental.AUTO_MAX_MACS_FRACTION
    assert_same_map(got, ref)
    assert_same_map(occlusion(model, x, 1, window=4, stride=4, engine="auto"), ref)
    assert_same_map(occlusion(model, x, 1, window=4, stride=4, engine="incremental"), ref)
    # a window as large as the image changes everything: batched
    _, report = run_occlusion(model, x, 1, window=32, stride=4, engine="auto", report=True)
    assert report.engine == "batched"
    with pytest.raises(ValueError, match="engine"):
        occlusion(model, x, 1, window=4, engine="fast")


def test_invalid_options():
    model = small_cnn(classes=5).eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="tau"):
        incremental_occlusion(model, x, 1, window=4, tau=0)
    with pytest.raises(ValueError, match="drilldown_fraction"):
        incremental_occlusion(model, x, 1, window=4, stride=2, drilldown=4, drilldown_fraction=1.5)
    with pytest.raises(ValueError, match="precision"):
        occlusion(model, x, 1, window=4, engine="incremental", precision="bf16")


# ----------------------------------------------------------------------------------------------------
# approximation with a quality contract
# ----------------------------------------------------------------------------------------------------


def blob_detector() -> nn.Sequential:
    """A hand-built model: two 5x5 box filters with ReLUs, global average pooling, a fixed 2-way head."""
    conv1, conv2 = nn.Conv2d(1, 2, 5, padding=2), nn.Conv2d(2, 2, 5, padding=2)
    with torch.no_grad():
        conv1.weight.copy_(torch.stack([torch.full((1, 5, 5), 1 / 25), torch.full((1, 5, 5), -1 / 25)]))
        conv1.bias.copy_(torch.tensor([-0.1, 0.3]))
        conv2.weight.zero_()
        conv2.weight[0, 0] = 1 / 25
        conv2.weight[1, 1] = 1 / 25
        conv2.bias.zero_()
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4.0, 0.0], [0.0, 4.0]]))
        head.bias.zero_()
    return nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def blobs(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Images of one bright Gaussian blob at a random place, plus faint noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    out = []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=g) * (size - 12) + 6).tolist()
        sigma = float(torch.rand(1, generator=g)) * 2 + 2.5
        img = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        out.append(img + 0.02 * torch.rand(size, size, generator=g))
    return torch.stack(out)[:, None]


def test_tau_and_drilldown_combine():
    model = blob_detector()
    x = blobs(2, 0)
    options = {"window": 4, "stride": 2, "output": "drop"}
    # a threshold that cuts nothing plus a drill-down is the drill-down alone
    both, report = incremental_occlusion(model, x, 0, tau=1.0, drilldown=4, drilldown_fraction=0.3, report=True,
                                         **options)
    alone = incremental_occlusion(model, x, 0, drilldown=4, drilldown_fraction=0.3, **options)
    assert report.mode == "threshold+drilldown"
    assert_same_map(both, alone)


def test_contract_is_met_on_calibration_and_held_out_images():
    model = blob_detector()
    before = fingerprint(model)
    calibration, held_out = blobs(3, 1), blobs(6, 2)
    options = {"window": 4, "stride": 2, "output": "drop"}
    cal = calibrate_occlusion(model, calibration, 0, min_ssim=0.9, margin=0.03, **options)
    assert isinstance(cal, Calibration) and cal.met and not cal.setting.exact
    assert cal.cost < 1 and any(t["met"] for t in cal.tried)
    # recompute both maps independently: exact by batched re-inference, the approximation by its options
    for images in (calibration, held_out):
        exact = batched(model, images, 0, **options)
        approx = incremental_occlusion(model, images, 0, **cal.setting.options((2, 2)), **options)
        got = ssim(approx, exact)
        assert float(got.min()) >= 0.9, (cal.setting, got)
    assert all(s >= 0.93 for s in cal.ssim)
    maps, report = approximate_occlusion(model, held_out, 0, min_ssim=0.9, calibration=cal, verify=True, **options)
    assert min(report.ssim) >= 0.9 and report.details["contract"]["fallback"] is None
    assert report.positions < report.total_positions or report.macs_fraction < 1
    assert_untouched(before, model)


def test_max_error_contract():
    model = blob_detector()
    x = blobs(4, 3)
    options = {"window": 4, "stride": 2, "output": "drop"}
    maps, report = approximate_occlusion(model, x, 0, max_error=0.05, calibration_images=2, **options)
    exact = batched(model, x, 0, **options)
    cal = report.details["calibration"]
    assert max(cal["error"]) <= 0.05
    for i in range(2):  # the calibration images: the bound holds there
        span = float(exact[i].max() - exact[i].min())
        assert float((maps[i] - exact[i]).abs().max()) <= 0.05 * span + 1e-6


def test_unreachable_contract_falls_back_to_exact():
    model = small_cnn(classes=5).eval()
    x = torch.rand(2, 3, 16, 16)
    options = {"window": 4, "stride": 2, "output": "drop"}
    maps, report = approximate_occlusion(model, x, 1, min_ssim=1.0, max_error=0.0, **options)
    assert report.mode == "exact" and report.details["contract"]["fallback"] == "exact"
    assert report.details["calibration"]["met"] is False and report.details["calibration"]["tried"]
    assert_same_map(maps, batched(model, x, 1, **options))


def test_contract_arguments_and_reuse_checks():
    model = blob_detector()
    x = blobs(2, 4)
    options = {"window": 4, "stride": 2, "output": "drop"}
    with pytest.raises(ValueError, match="min_ssim"):
        approximate_occlusion(model, x, 0, **options)
    with pytest.raises(ValueError, match="min_ssim must be"):
        calibrate_occlusion(model, x, 0, min_ssim=1.5, **options)
    with pytest.raises(ValueError, match="max_error"):
        calibrate_occlusion(model, x, 0, max_error=-1, **options)
    cal = calibrate_occlusion(model, x, 0, min_ssim=0.8, **options)
    with pytest.raises(ValueError, match="calibrate again"):
        approximate_occlusion(model, x, 0, min_ssim=0.8, calibration=cal, window=6, stride=2, output="drop")
    with pytest.raises(ValueError, match="weaker"):
        approximate_occlusion(model, x, 0, min_ssim=0.95, calibration=cal, **options)
