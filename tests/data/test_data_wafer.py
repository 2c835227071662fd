"""Wafer maps: geometry of every defect class, masks, determinism, the registry entry and the shipped sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netvis.data import DataError, load, names
from netvis.data.wafer import (
    FAIL,
    OUTSIDE,
    PASS,
    SAMPLE_FILE,
    WAFER_CLASSES,
    WAFER_SAMPLE_DIR,
    _sample_arrays,
    array_digest,
    build_wafer_sample,
    generate_wafer_maps,
    load_wafer_maps,
    read_wafer_sample,
    wafer_disc,
)

N_PER_CLASS = 12


def label(name: str) -> int:
    return WAFER_CLASSES.index(name)


@pytest.fixture(scope="module")
def maps():
    labels = np.repeat(np.arange(len(WAFER_CLASSES)), N_PER_CLASS)
    return generate_wafer_maps(labels, rng=123, size=64)


def of(maps, name):
    sel = maps.labels == label(name)
    return maps.images[sel], maps.masks[sel]


def test_disc_geometry():
    inside, r, theta = wafer_disc(64)
    assert inside.shape == (64, 64)
    assert inside[32, 32] and not inside[0, 0] and not inside[0, 63]
    assert r.min() < 0.05 and np.all(r[inside] <= 1)
    # the notch: a die at the bottom rim is off the wafer, the top rim die is on it
    assert not inside[62, 32] and inside[1, 32] and inside[61, 26]
    assert abs(theta[0, 32] - np.pi / 2) < 0.05  # straight up


def test_encoding_and_masks_inside_wafer(maps):
    inside, _, _ = wafer_disc(64)
    assert set(np.unique(maps.images)) <= {OUTSIDE, PASS, FAIL}
    assert np.all(maps.images[:, ~inside] == OUTSIDE)
    assert np.all(maps.images[:, inside] != OUTSIDE)
    assert not maps.masks[:, ~inside].any()
    for name in WAFER_CLASSES:
        _, masks = of(maps, name)
        if name == "none":
            assert not masks.any()
        else:
            assert masks.reshape(len(masks), -1).any(1).all(), name


def polar_of_mask(mask):
    inside, r, theta = wafer_disc(mask.shape[-1])
    return r[mask], theta[mask]


def test_center_is_a_central_disc(maps):
    for mask in of(maps, "center")[1]:
        r, _ = polar_of_mask(mask)
        assert r.max() < 0.45 and r.min() < 0.1


def test_donut_is_an_annulus_with_a_hole(maps):
    inside, rr, _ = wafer_disc(64)
    for mask in of(maps, "donut")[1]:
        r, theta = polar_of_mask(mask)
        assert r.min() > 0.12 and r.max() < 0.7
        assert not mask[rr < 0.1].any()  # the hole
        counts, _ = np.histogram(theta, bins=12, range=(-np.pi, np.pi))
        assert (counts > 0).all()  # all the way round


def test_edge_ring_follows_the_whole_rim(maps):
    for mask in of(maps, "edge-ring")[1]:
        r, theta = polar_of_mask(mask)
        assert r.min() > 0.85
        counts, _ = np.histogram(theta, bins=24, range=(-np.pi, np.pi))
        assert (counts > 0).sum() >= 23  # the notch may empty one bin


def test_edge_loc_is_part_of_the_rim(maps):
    for mask in of(maps, "edge-loc")[1]:
        r, theta = polar_of_mask(mask)
        assert r.min() > 0.75
        counts, _ = np.histogram(theta, bins=24, range=(-np.pi, np.pi))
        assert 1 <= (counts > 0).sum() <= 16  # an arc, not the whole ring


def test_loc_is_a_compact_blob_away_from_centre_and_rim(maps):
    for mask in of(maps, "loc")[1]:
        r, _ = polar_of_mask(mask)
        assert 0.05 < r.mean() < 0.85 and r.max() < 0.85
        assert mask.sum() < 0.06 * 64 * 64


def test_scratch_is_thin_and_long(maps):
    for mask in of(maps, "scratch")[1]:
        rows, cols = np.nonzero(mask)
        pts = np.stack([rows, cols], 1).astype(float)
        eig = np.linalg.eigvalsh(np.cov(pts.T))
        assert eig[1] > 8 * max(eig[0], 1e-9), eig  # elongated
        assert mask.sum() < 0.05 * 64 * 64


def test_random_and_near_full_cover_the_wafer(maps):
    inside, _, _ = wafer_disc(64)
    for name in ("random", "near-full"):
        images, masks = of(maps, name)
        assert np.all(masks == inside[None])
    fail_random = (of(maps, "random")[0] == FAIL).sum((1, 2)) / inside.sum()
    fail_full = (of(maps, "near-full")[0] == FAIL).sum((1, 2)) / inside.sum()
    fail_none = (of(maps, "none")[0] == FAIL).sum((1, 2)) / inside.sum()
    assert fail_none.max() < 0.15 < fail_random.min() and fail_random.max() < 0.5 < fail_full.min()


def test_defect_dies_fail_inside_the_mask(maps):
    for name in ("center", "donut", "edge-loc", "edge-ring", "loc", "scratch"):
        images, masks = of(maps, name)
        inside, _, _ = wafer_disc(64)
        inner = (images == FAIL)[masks].mean()
        outer = (images == FAIL)[~masks & inside[None]].mean()
        assert inner > 0.4 and outer < 0.1, (name, inner, outer)


def test_deterministic_per_seed_and_no_global_rng():
    np_state = np.random.get_state()[1].copy()
    torch_state = torch.get_rng_state().clone()
    a = generate_wafer_maps([0, 1, 7, 8], rng=5, size=32)
    b = generate_wafer_maps([0, 1, 7, 8], rng=np.random.default_rng(5), size=32)
    c = generate_wafer_maps([0, 1, 7, 8], rng=6, size=32)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.masks, b.masks)
    assert not np.array_equal(a.images, c.images)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_dies_coarser_than_pixels_and_224():
    big = generate_wafer_maps([0, 3], rng=0, size=224, dies=56)
    assert big.images.shape == (2, 224, 224) and big.masks.shape == (2, 224, 224)
    # each die is a 4 x 4 block of equal pixels
    blocks = big.images.reshape(2, 56, 4, 56, 4)
    assert np.all(blocks == blocks[:, :, :1, :, :1])
    fine = generate_wafer_maps([4], rng=0, size=224)
    assert fine.masks[0].any()


def test_stamp_is_a_spurious_cue_outside_the_wafer():
    labels = np.repeat(np.arange(9), 40)
    m = generate_wafer_maps(labels, rng=3, size=64, stamp_class="scratch", stamp_rate=1.0, stamp_other=0.0)
    assert np.array_equal(m.stamped, labels == label("scratch"))
    inside, _, _ = wafer_disc(64)
    # the stamp changes only pixels outside the wafer, never a mask
    stamped = m.images[m.stamped]
    assert (stamped[:, 1:4, 1:9] != OUTSIDE).all()
    assert (m.images[~m.stamped][:, 1:4, 1:9] == OUTSIDE).all()
    assert not (inside[1:4, 1:9]).any()
    assert not m.masks[:, 1:4, 1:9].any()


def test_bad_arguments():
    with pytest.raises(ValueError, match="labels"):
        generate_wafer_maps([9], rng=0)
    with pytest.raises(ValueError, match="size"):
        generate_wafer_maps([0], rng=0, size=4)
    with pytest.raises(ValueError, match="dies"):
        generate_wafer_maps([0], rng=0, size=32, dies=64)
    with pytest.raises(ValueError, match="stamp_class"):
        generate_wafer_maps([0], rng=0, stamp_class="crack")
    with pytest.raises(ValueError, match="stamp_rate"):
        generate_wafer_maps([0], rng=0, stamp_class="loc", stamp_rate=1.5)
    with pytest.raises(DataError, match="split"):
        load_wafer_maps("val", per_class=1)


def test_registry_entry():
    assert "wafer-maps" in names() and "wafer-maps-sample" in names()
    train = load_wafer_maps("train", per_class=3, size=32)
    test = load_wafer_maps("test", per_class=3, size=32)
    assert len(train) == len(test) == 27
    assert train.classes == list(WAFER_CLASSES) and train.masks.dtype == torch.bool
    assert torch.equal(torch.bincount(train.targets), torch.full((9,), 3))
    assert not torch.equal(train.images, test.images)
    assert test.mean == train.mean and test.std == train.std
    x, y = test[0]
    assert x.shape == (1, 32, 32) and isinstance(y, int)
    raw = (test.images[0].float() / 255 - test.mean[0]) / test.std[0]
    torch.testing.assert_close(x, raw)
    sub = test.subset([4, 2])
    assert torch.equal(sub.masks, test.masks[[4, 2]]) and torch.equal(sub.targets, test.targets[[4, 2]])
    same = load("wafer_maps", "test", size=64)
    assert len(same) == 900 and same.masks.shape == (900, 64, 64)


def test_shipped_sample_regenerates(tmp_path):
    shipped = read_wafer_sample()
    fresh = _sample_arrays()
    meta = json.loads((WAFER_SAMPLE_DIR / "meta.json").read_text())
    assert array_digest(fresh) == meta["arrays_sha256"]
    for split in ("train", "test"):
        assert np.array_equal(shipped[f"{split}_images"], fresh[f"{split}_images"])
        assert np.array_equal(shipped[f"{split}_labels"], fresh[f"{split}_labels"])
        assert np.array_equal(shipped[f"{split}_masks"], np.unpackbits(fresh[f"{split}_masks"], axis=-1,
                                                                        count=64).astype(bool))
    path = build_wafer_sample(tmp_path)
    import zlib

    if meta["zlib"] == zlib.ZLIB_RUNTIME_VERSION:  # compressed bytes depend on zlib's version only
        assert path.read_bytes() == (WAFER_SAMPLE_DIR / SAMPLE_FILE).read_bytes()
    assert (WAFER_SAMPLE_DIR / SAMPLE_FILE).stat().st_size < 300_000


def test_load_shipped_sample():
    test = load("wafer-maps-sample", "test")
    assert len(test) == 90 and test.masks.shape == (90, 64, 64)
    assert torch.equal(torch.bincount(test.targets), torch.full((9,), 10))
    train = load("wafer-maps-sample", "train", normalize=False)
    assert len(train) == 180 and test.mean == train.mean
    with pytest.raises(DataError, match="64x64"):
        load("wafer-maps-sample", "test", size=224)


def test_shipped_wafer_checkpoint_loads_like_fashion_mnist_small():
    import netvis

    ckpt = netvis.load_checkpoint("wafer-maps-resnet")
    assert ckpt.classes == list(WAFER_CLASSES) and ckpt.meta["model"]["name"] == "resnet20_cifar"
    final = ckpt.meta["final_metrics"]
    assert final["trained_at"] == "64x64" and 0 <= final["test_accuracy"] <= 1
    assert ckpt.path.stat().st_size < 3_000_000
    test = load("wafer-maps-sample", "test", normalize=False)
    predicted = ckpt.predict(test.images[:9])
    with torch.no_grad():
        direct = ckpt.model(ckpt.preprocess(test.images[:9])).argmax(1)
    assert torch.equal(predicted, direct)
    with torch.no_grad():  # fully convolutional with global pooling: 224 x 224 maps run too
        assert ckpt.model(ckpt.preprocess(torch.zeros(1, 1, 224, 224, dtype=torch.uint8))).shape == (1, 9)
