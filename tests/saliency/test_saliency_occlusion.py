"""Occlusion against a brute-force transcription of the lecture's pseudo-code, and its options."""

from __future__ import annotations

import math

import pytest
import torch
from saliency_testing import small_cnn

from netvis.saliency import occlusion, occlusion_grid_size


def brute_force(model, x, target, k, s, fill=None):
    """For each position (i, j): copy the image, fill the k x k patch at (i*s, j*s), run the model."""
    model.eval()
    n, _, h, w = x.shape
    hp, wp = (h - k) // s + 1, (w - k) // s + 1
    out = torch.empty(n, hp, wp)
    with torch.no_grad():
        for b in range(n):
            for i in range(hp):
                for j in range(wp):
                    img = x[b].clone()
                    value = img.mean() if fill is None else fill
                    img[:, i * s : i * s + k, j * s : j * s + k] = value
                    out[b, i, j] = model(img[None])[0, target[b]]
    return out


@pytest.fixture
def model():
    return small_cnn(classes=5).eval()


def test_matches_the_lectures_loop(model):
    x = torch.rand(2, 3, 16, 16)
    target = [1, 3]
    got = occlusion(model, x, target, window=5, stride=3)
    assert got.shape == (2, 4, 4)
    torch.testing.assert_close(got, brute_force(model, x, target, 5, 3), rtol=1e-5, atol=1e-6)


def test_default_target_and_stride(model):
    x = torch.rand(2, 3, 12, 12)
    predicted = model(x).argmax(1).tolist()
    got = occlusion(model, x, window=4)  # stride 2
    torch.testing.assert_close(got, brute_force(model, x, predicted, 4, 2), rtol=1e-5, atol=1e-6)


def test_rectangular_window_and_stride(model):
    x = torch.rand(1, 3, 12, 10)
    got = occlusion(model, x, 2, window=(3, 5), stride=(2, 1))
    assert got.shape == (1, 5, 6) == (1, *occlusion_grid_size((12, 10), (3, 5), (2, 1)))
    model.eval()
    ref = torch.empty(5, 6)
    with torch.no_grad():
        for i in range(5):
            for j in range(6):
                img = x[0].clone()
                img[:, i * 2 : i * 2 + 3, j : j + 5] = x[0].mean()
                ref[i, j] = model(img[None])[0, 2]
    torch.testing.assert_close(got[0], ref, rtol=1e-5, atol=1e-6)


def test_fill_number_channel_mean_and_patch_tensor(model):
    x = torch.rand(2, 3, 10, 10)
    t = [0, 4]
    torch.testing.assert_close(
        occlusion(model, x, t, window=4, stride=3, fill=0.25), brute_force(model, x, t, 4, 3, fill=0.25)
    )
    # per-channel mean
    got = occlusion(model, x, t, window=4, stride=3, fill="channel_mean")
    ref = torch.stack([brute_force(model, x[b : b + 1], [t[b]], 4, 3, fill=x[b].mean((1, 2), keepdim=True))[0]
                       for b in range(2)])
    torch.testing.assert_close(got, ref)
    # a patch that varies over space and channels
    patch = torch.rand(3, 4, 4)
    torch.testing.assert_close(
        occlusion(model, x, t, window=4, stride=3, fill=patch), brute_force(model, x, t, 4, 3, fill=patch)
    )


def test_drop_is_clean_score_minus_occluded(model):
    x = torch.rand(2, 3, 12, 12)
    score = occlusion(model, x, [0, 1], window=4, stride=4)
    drop = occlusion(model, x, [0, 1], window=4, stride=4, output="drop")
    with torch.no_grad():
        clean = model(x)[[0, 1], [0, 1]]
    torch.testing.assert_close(drop, clean[:, None, None] - score)


def test_upsample_averages_covering_windows_and_marks_uncovered_nan(model):
    x = torch.rand(1, 3, 11, 11)  # window 4, stride 3: positions 0, 3, 6 cover rows 0..9; row 10 uncovered
    coarse = occlusion(model, x, 1, window=4, stride=3)[0]
    fine = occlusion(model, x, 1, window=4, stride=3, upsample=True)[0]
    assert fine.shape == (11, 11)
    ref = torch.full((11, 11), math.nan)
    for r in range(11):
        for c in range(11):
            vals = [coarse[i, j] for i in range(3) for j in range(3)
                    if 3 * i <= r < 3 * i + 4 and 3 * j <= c < 3 * j + 4]
            if vals:
                ref[r, c] = torch.stack(vals).mean()
    torch.testing.assert_close(fine, ref, equal_nan=True)
    assert torch.isnan(fine[10]).all() and torch.isnan(fine[:, 10]).all()
    assert not torch.isnan(fine[:10, :10]).any()


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_independent_of_batch_size(model, batch_size):
    x = torch.rand(3, 3, 12, 12)
    ref = occlusion(model, x, window=4, stride=2)
    torch.testing.assert_close(occlusion(model, x, window=4, stride=2, batch_size=batch_size), ref)


def test_batch_equals_images_one_by_one(model):
    x = torch.rand(3, 3, 12, 12)
    batch = occlusion(model, x, [0, 1, 2], window=4, stride=2, output="drop", upsample=True)
    for b in range(3):
        single = occlusion(model, x[b : b + 1], b, window=4, stride=2, output="drop", upsample=True)
        torch.testing.assert_close(batch[b : b + 1], single, equal_nan=True)


def test_callable_target_and_bf16(model):
    x = torch.rand(2, 3, 12, 12)
    fp32 = occlusion(model, x, lambda out: out[:, 2] - out[:, 0], window=6, stride=3)
    ref = occlusion(model, x, 2, window=6, stride=3) - occlusion(model, x, 0, window=6, stride=3)
    torch.testing.assert_close(fp32, ref, rtol=1e-5, atol=1e-5)
    bf16 = occlusion(model, x, 2, window=6, stride=3, precision="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, occlusion(model, x, 2, window=6, stride=3), rtol=0.05, atol=0.05)


def test_progress_bar_runs(model, capsys):
    got = occlusion(model, torch.rand(1, 3, 8, 8), 0, window=4, stride=4, progress=True, batch_size=2)
    assert got.shape == (1, 2, 2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"window": 13}, "window 13x13 is larger than the image 12x12"),
        ({"window": (4, 20)}, "larger than the image"),
        ({"window": 0}, "window must be >= 1"),
        ({"window": 4, "stride": 0}, "stride must be >= 1"),
        ({"window": 4, "stride": (1, -2)}, "stride must be >= 1"),
        ({"output": "ratio"}, "output must be 'score' or 'drop'"),
        ({"fill": "median"}, "fill must be"),
        ({"fill": torch.zeros(2, 3, 3)}, "must broadcast to the patch"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"precision": "fp8"}, "precision must be"),
    ],
)
def test_clear_errors(model, options, message):
    with pytest.raises(ValueError, match=message):
        occlusion(model, torch.rand(1, 3, 12, 12), **options)


def test_tensor_fill_feeds_contiguous_batches_to_models_that_view():
    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2 * 6 * 6, 3)

        def forward(self, x):
            return self.fc(x.view(x.shape[0], -1))  # .view needs a contiguous input

    gen = torch.Generator().manual_seed(0)
    model = ViewNet().eval()
    x = torch.randn(2, 2, 6, 6, generator=gen)
    fill = torch.randn(2, 3, 3, generator=gen)  # a per-pixel patch content
    got = occlusion(model, x, 1, window=3, stride=1, fill=fill, engine="batched")
    expected = torch.empty(2, 4, 4)
    with torch.no_grad():
        for n in range(2):
            for i in range(4):
                for j in range(4):
                    img = x[n : n + 1].clone()
                    img[0, :, i : i + 3, j : j + 3] = fill
                    expected[n, i, j] = model(img)[0, 1]
    torch.testing.assert_close(got, expected)
