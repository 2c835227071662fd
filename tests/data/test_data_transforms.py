"""Preprocess (uint8 images to model inputs) and the batch augmentations."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from netvis.data import Preprocess, random_crop, random_hflip


def test_uint8_batches_are_scaled_and_normalized_per_channel():
    p = Preprocess(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = p(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    expected = torch.tensor([(0 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 1.0])
    torch.testing.assert_close(out[1, :, 1, 0], expected)


def test_accepted_shapes_and_types():
    p = Preprocess(mean=(0.5,), std=(0.5,))
    gray = torch.full((4, 5), 255, dtype=torch.uint8)
    assert p(gray).shape == (1, 1, 4, 5)  # (H, W): one image
    assert p(gray.expand(3, 4, 5)).shape == (3, 1, 4, 5)  # (N, H, W): a batch of grayscale images
    assert p(gray.numpy()).shape == (1, 1, 4, 5)
    pil = Image.fromarray(np.full((4, 5, 3), 255, dtype=np.uint8))
    out = p(pil)
    assert out.shape == (1, 3, 4, 5) and torch.all(out == 1.0)
    rgba = Image.fromarray(np.full((4, 5, 4), 255, dtype=np.uint8))
    assert p(rgba).shape == (1, 3, 4, 5)
    floats = torch.ones(2, 1, 3, 3, dtype=torch.float64)  # float input is taken as [0, 1]
    assert p(floats).dtype == torch.float64 and torch.all(p(floats) == 1.0)
    with pytest.raises(TypeError, match="uint8"):
        p(torch.ones(1, 1, 2, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"got \(1, 1, 1, 1, 1\)"):
        p(torch.zeros(1, 1, 1, 1, 1, dtype=torch.uint8))


def test_channel_conversion():
    to_rgb = Preprocess(channels=3)
    gray = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2) * 60
    rgb = to_rgb(gray)
    assert rgb.shape == (1, 3, 2, 2)
    torch.testing.assert_close(rgb[:, 0], rgb[:, 2])
    to_gray = Preprocess(channels=1)
    red = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    red[:, 0] = 255
    torch.testing.assert_close(to_gray(red), torch.full((1, 1, 2, 2), 0.299))
    # Agrees with Pillow's own RGB -> L conversion to within rounding.
    pixels = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.float32) / 255
    ours = to_gray(torch.from_numpy(pixels).permute(2, 0, 1)[None])[0, 0].numpy()
    assert np.abs(ours - pil).max() <= 1 / 255 + 1e-6
    rgba = torch.full((1, 4, 2, 2), 255, dtype=torch.uint8)
    assert Preprocess()(rgba).shape == (1, 3, 2, 2)  # alpha dropped
    with pytest.raises(ValueError, match="5-channel"):
        to_rgb(torch.zeros(1, 5, 2, 2, dtype=torch.uint8))


def test_resize_matches_torch_bilinear_antialiased():
    images = torch.randint(
        0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    out = Preprocess(size=4)(images)
    expected = F.interpolate(
        images.float() / 255, size=(4, 4), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(out, expected)
    assert Preprocess(size=(3, 5))(images).shape == (2, 1, 3, 5)
    # A constant image stays constant through resizing.
    flat = torch.full((1, 1, 7, 9), 128, dtype=torch.uint8)
    torch.testing.assert_close(Preprocess(size=(16, 16))(flat), torch.full((1, 1, 16, 16), 128 / 255))


def test_denormalize_inverts():
    p = Preprocess(mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    images = torch.randint(
        0, 256, (3, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(p.denormalize(p(images)), images.float() / 255)
    torch.testing.assert_close(p.denormalize(p(images)[0]), images[0].float() / 255)


def test_serialisation_round_trips():
    p = Preprocess(mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6], size=32, channels=3)
    d = p.to_dict()
    assert d == {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "size": [32, 32], "channels": 3}
    assert Preprocess.from_dict(json.loads(json.dumps(d))) == p
    assert pickle.loads(pickle.dumps(p)) == p
    with pytest.raises(ValueError, match="unknown"):
        Preprocess.from_dict({**d, "colour": 1})


def test_invalid_settings():
    with pytest.raises(ValueError, match="positive"):
        Preprocess(mean=(0.0,), std=(0.0,))
    with pytest.raises(ValueError, match="channels=3"):
        Preprocess(mean=(0.1, 0.2), std=(1.0,), channels=3)
    with pytest.raises(ValueError, match="channels must be"):
        Preprocess(channels=2)
    with pytest.raises(ValueError, match="size"):
        Preprocess(size=(0, 3))
    with pytest.raises(ValueError, match="3 values but the images have 1"):
        Preprocess(mean=(0.1, 0.2, 0.3), std=(1.0,))(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))


def test_hflip_is_deterministic_and_correct():
    images = torch.arange(4 * 1 * 2 * 3, dtype=torch.float32).view(4, 1, 2, 3)
    state = torch.get_rng_state()
    a = random_hflip(images, generator=torch.Generator().manual_seed(3))
    b = random_hflip(images, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a, b)
    coins = torch.rand(4, generator=torch.Generator().manual_seed(3)) < 0.5
    for i in range(4):
        torch.testing.assert_close(a[i], images[i].flip(-1) if coins[i] else images[i])
    assert torch.equal(random_hflip(images, generator=torch.Generator(), p=1.0), images.flip(-1))
    assert torch.equal(random_hflip(images, generator=torch.Generator(), p=0.0), images)


def test_random_crop_matches_a_loop():
    images = torch.randint(
        0, 256, (5, 3, 6, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    state = torch.get_rng_state()
    out = random_crop(images, padding=2, generator=torch.Generator().manual_seed(9))
    assert torch.equal(torch.get_rng_state(), state)
    offsets = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(9))
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(5):
        r, c = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(out[i], padded[i, :, r : r + 6, c : c + 7])
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(random_crop(images, padding=0, generator=torch.Generator()), images)
