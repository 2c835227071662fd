"""The trained inversion network (Dosovitskiy & Brox): decoder sizing, training, checkpoints."""

from __future__ import annotations

import os

import pytest
import torch
from inversion_testing import assert_unchanged, messy_state, one_thread, tiny_cnn, tiny_images
from torch import nn

from netvis.hooks import snapshot
from netvis.inversion import Inverter, train_inverter
from netvis.inversion.network import CHECKPOINT_NAME, UpConvDecoder

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture
def images():
    return tiny_images(48, seed=5)


@pytest.mark.parametrize(
    ("feature_shape", "image_shape", "n_up"),
    [
        ((16, 28, 28), (1, 28, 28), 0),
        ((64, 7, 7), (1, 28, 28), 2),
        ((8, 4, 4), (3, 28, 28), 3),  # 4 -> 32, then resized to 28
        ((10,), (1, 28, 28), 3),  # flat features: linear to 4x4 first
        ((32, 14, 14), (3, 28, 20), 1),
    ],
)
def test_decoder_is_sized_from_the_shapes(feature_shape, image_shape, n_up):
    decoder = UpConvDecoder(feature_shape, image_shape, generator=torch.Generator().manual_seed(0))
    assert decoder.n_up == n_up
    out = decoder(torch.randn(2, *feature_shape))
    assert out.shape == (2, *image_shape)
    with pytest.raises(ValueError, match="built for features"):
        decoder(torch.randn(2, 5))


def test_decoder_init_comes_from_the_generator():
    rng = torch.get_rng_state()
    a = UpConvDecoder((8, 6, 6), (1, 12, 12), generator=torch.Generator().manual_seed(1))
    b = UpConvDecoder((8, 6, 6), (1, 12, 12), generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_training_lowers_the_loss_and_the_reconstruction_error(images):
    model = tiny_cnn().eval()
    untrained = train_inverter(model, "relu2", images, epochs=0, seed=0)
    inverter = train_inverter(model, "relu2", images, epochs=6, batch_size=8, lr=3e-3, seed=0)
    assert len(inverter.history) == 6
    assert inverter.history[-1] < 0.5 * inverter.history[0]
    before = nn.functional.mse_loss(untrained(images), images)
    after = nn.functional.mse_loss(inverter(images), images)
    assert after < 0.5 * before
    assert inverter(images[:3]).shape == (3, 1, 12, 12)
    lo, hi = inverter.bounds
    out = inverter(images)
    assert out.min() >= lo.min() and out.max() <= hi.max()


def test_training_is_deterministic_and_leaves_the_global_rng_alone(images):
    model = tiny_cnn().eval()
    rng = torch.get_rng_state()
    a = train_inverter(model, "relu1", images, epochs=2, batch_size=16, seed=7)
    b = train_inverter(model, "relu1", images, epochs=2, batch_size=16, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.history == b.history
    assert all(torch.equal(p, q) for p, q in zip(a.decoder.parameters(), b.decoder.parameters(), strict=True))


def test_feature_loss_trains_through_the_frozen_model_without_side_effects(images):
    model = tiny_cnn()
    messy_state(model)
    before = snapshot(model)
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
    inverter = train_inverter(model, model.relu2, dataset, epochs=2, batch_size=16, seed=0,
                              feature_loss_weight=1.0)
    inverter(images[:4])
    assert_unchanged(before, model)
    assert inverter.layer == "relu2" and inverter.config["feature_loss_weight"] == 1.0
    assert inverter.history[-1] < inverter.history[0]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(images, tmp_path):
    model = tiny_cnn().eval()
    straight = train_inverter(model, "relu2", images, epochs=3, batch_size=16, seed=2, out=tmp_path / "a")
    train_inverter(model, "relu2", images, epochs=1, batch_size=16, seed=2, out=tmp_path / "b")
    saved = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    resumed = train_inverter(model, "relu2", images, epochs=3, batch_size=16, seed=2, out=tmp_path / "b",
                             resume=True)
    assert resumed.history == pytest.approx(straight.history)
    for p, q in zip(straight.decoder.parameters(), resumed.decoder.parameters(), strict=True):
        assert torch.allclose(p, q)
    # resuming a finished run trains nothing more
    again = train_inverter(model, "relu2", images, epochs=3, batch_size=16, seed=2, out=tmp_path / "b",
                           resume=True)
    assert again.history == resumed.history


def test_resume_refuses_a_checkpoint_of_another_layer(images, tmp_path):
    model = tiny_cnn().eval()
    train_inverter(model, "relu2", images, epochs=1, batch_size=16, out=tmp_path)
    with pytest.raises(ValueError, match="was made for"):
        train_inverter(model, "relu1", images, epochs=2, batch_size=16, out=tmp_path, resume=True)


def test_checkpoint_writes_are_atomic(images, tmp_path, monkeypatch):
    model = tiny_cnn().eval()
    train_inverter(model, "relu2", images, epochs=1, batch_size=16, seed=0, out=tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    good = path.read_bytes()
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.write(b"half-written")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        train_inverter(model, "relu2", images, epochs=2, batch_size=16, seed=0, out=tmp_path, resume=True)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [CHECKPOINT_NAME]  # no temporary file left behind


def test_save_and_load_round_trip(images, tmp_path):
    model = tiny_cnn().eval()
    inverter = train_inverter(model, "relu2", images, epochs=1, batch_size=16, seed=0)
    inverter.save(tmp_path / "inv.pt")
    loaded = Inverter.load(tmp_path / "inv.pt", model)
    assert loaded.layer == "relu2" and loaded.history == inverter.history
    assert torch.equal(loaded(images), inverter(images))
    features = inverter.features(images)
    assert features.shape == (48, *inverter.feature_shape)
    assert torch.equal(loaded.reconstruct(features), inverter(images))
    with pytest.raises(ValueError, match="not a netvis inverter"):
        torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
        Inverter.load(tmp_path / "other.pt", model)


def test_bad_inputs(images):
    model = tiny_cnn().eval()
    with pytest.raises(ValueError, match="conv1"):
        train_inverter(model, "conv_1", images, epochs=1)
    with pytest.raises(ValueError, match="empty"):
        train_inverter(model, "relu2", images[:0], epochs=1)
    with pytest.raises(TypeError, match="data must yield image tensors"):
        train_inverter(model, "relu2", [1, 2, 3], epochs=1)
    with pytest.raises(TypeError, match="Dataset, a DataLoader, an iterable"):
        train_inverter(model, "relu2", 3, epochs=1)
    with pytest.raises(ValueError, match="empty"):
        train_inverter(model, "relu2", (b for b in []), epochs=1)


def test_any_iterable_of_batches_trains_the_same_inverter(images):
    """A generator, a list of batches, a list of (images, labels) pairs and a DataLoader give the tensor's run."""
    model = tiny_cnn().eval()
    ref = train_inverter(model, "relu2", images, epochs=2, batch_size=16, seed=3)
    pieces = [images[:20], images[20:]]
    labels = torch.zeros(len(images), dtype=torch.long)
    sources = [
        (b for b in pieces),
        pieces,
        [(images[:20], labels[:20]), (images[20:], labels[20:])],
        [img for img in images],  # single (C, H, W) images
        torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=7),
    ]
    for source in sources:
        got = train_inverter(model, "relu2", source, epochs=2, batch_size=16, seed=3)
        assert got.history == ref.history
        torch.testing.assert_close(got(images), ref(images), rtol=0, atol=0)
