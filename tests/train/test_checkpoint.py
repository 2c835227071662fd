"""Checkpoints: atomic writes, safe loading, clear errors, the shipped checkpoint."""

from __future__ import annotations

import os

import pytest
import torch

import netvis
from netvis.models import create
from netvis.train import checkpoint as ckpt_module
from netvis.train.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

OPTIONS = {"in_channels": 1, "num_classes": 3, "stage_channels": (2, 2, 4)}


def _payload(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = create("resnet20_cifar", **OPTIONS)
    return {
        "model": {"name": "resnet20_cifar", "options": dict(OPTIONS)},
        "state_dict": model.state_dict(),
        "epoch": 1,
        "classes": ["a", "b", "c"],
        "data": {"name": "toy", "preprocess": {"mean": [0.5], "std": [0.25], "size": None, "channels": 1},
                 "mean": [0.5], "std": [0.25], "channels": 1, "size": [8, 8]},
        "metrics": [{"epoch": 1, "test_accuracy": 0.5}],
    }


def test_save_and_load_round_trip(tmp_path):
    payload = _payload()
    path = save_checkpoint(payload, tmp_path / "run" / "model.pt")
    ckpt = load_checkpoint(path)
    assert not ckpt.model.training
    assert all(p.device.type == "cpu" for p in ckpt.model.parameters())
    for key, value in payload["state_dict"].items():
        assert torch.equal(ckpt.model.state_dict()[key], value)
    assert ckpt.classes == ["a", "b", "c"]
    assert ckpt.meta["model"]["name"] == "resnet20_cifar" and ckpt.meta["epoch"] == 1
    assert ckpt.meta["final_metrics"] == {"epoch": 1, "test_accuracy": 0.5}
    images = torch.tensor([[[0, 255], [128, 64]]], dtype=torch.uint8)
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(ckpt.preprocess(images), expected[:, None])
    raw, _ = read_checkpoint(path)
    assert raw["format"] == FORMAT and raw["format_version"] == FORMAT_VERSION
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


class Boom(Exception):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(_payload(seed=0), path)
    before = path.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)  # a full write to the temp file...
        f.truncate(100)                      # ...then a crash half way
        raise error("simulated crash during torch.save")

    monkeypatch.setattr(ckpt_module.torch, "save", failing_save)
    with pytest.raises(error):
        save_checkpoint(_payload(seed=1), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left
    ckpt = load_checkpoint(path)
    for key, value in _payload(seed=0)["state_dict"].items():
        assert torch.equal(ckpt.model.state_dict()[key], value)


def test_failure_before_replace_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_payload(), path)
    assert list(tmp_path.iterdir()) == []


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CheckpointNotFoundError, match="nope.pt") as info:
        load_checkpoint(missing)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, CheckpointError)
    with pytest.raises(CheckpointNotFoundError, match="fashion-mnist-small"):
        load_checkpoint("no-such-shipped-name")


def test_truncated_and_garbage_files(tmp_path):
    good = save_checkpoint(_payload(), tmp_path / "good.pt")
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)


def test_wrong_format(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(create("resnet20_cifar", **OPTIONS).state_dict(), bare)
    with pytest.raises(CheckpointError, match="bare.pt is not a netvis checkpoint.*bare state_dict"):
        load_checkpoint(bare)
    newer = tmp_path / "newer.pt"
    torch.save({**_payload(), "format": FORMAT, "format_version": FORMAT_VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="newer.pt.*newer than"):
        load_checkpoint(newer)
    incomplete = tmp_path / "incomplete.pt"
    payload = _payload()
    del payload["classes"]
    save_checkpoint(payload, incomplete)
    with pytest.raises(CheckpointError, match="incomplete.pt.*classes"):
        load_checkpoint(incomplete)


def test_weights_not_matching_the_model(tmp_path):
    payload = _payload()
    payload["state_dict"] = dict(payload["state_dict"])
    payload["state_dict"]["fc.weight"] = torch.zeros(5, 4)
    path = save_checkpoint(payload, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="(?s)shape.pt: the weights do not match.*fc.weight"):
        load_checkpoint(path)
    payload = _payload()
    payload["state_dict"] = {k: v for k, v in payload["state_dict"].items() if k != "bn1.running_var"}
    path = save_checkpoint(payload, tmp_path / "missing_key.pt")
    with pytest.raises(CheckpointError, match="(?s)missing_key.pt.*bn1.running_var"):
        load_checkpoint(path)
    payload = _payload()
    payload["model"] = {"name": "resnet20_cifar", "options": {"no_such_option": 1}}
    path = save_checkpoint(payload, tmp_path / "options.pt")
    with pytest.raises(CheckpointError, match="options.pt: cannot build model"):
        load_checkpoint(path)


def test_shipped_checkpoint_is_small_and_accurate_on_the_sample():
    from netvis.data import load
    from netvis.train import evaluate
    from netvis.train.evaluate import evaluate_checkpoint, with_preprocess

    ckpt = netvis.load_checkpoint("fashion-mnist-small")
    assert ckpt.path.stat().st_size < 5 * 2**20
    assert ckpt.classes[0] == "T-shirt/top" and len(ckpt.classes) == 10
    assert not ckpt.model.training
    assert ckpt.meta["model"]["name"] == "resnet20_cifar"
    assert ckpt.meta["data"]["name"] == "fashion-mnist" and ckpt.meta["data"]["num_train"] == 60000
    assert ckpt.meta["final_metrics"]["test_accuracy"] >= 0.90  # full Fashion-MNIST test set
    # The model's inputs are normalised with the full training set's statistics.
    mean, std = ckpt.meta["data"]["mean"][0], ckpt.meta["data"]["std"][0]
    assert abs(mean - 0.2860) < 1e-3 and abs(std - 0.3530) < 1e-3
    test = load("fashion-mnist-sample", "test").subset(torch.arange(500))
    torch.testing.assert_close(ckpt.preprocess(test.images[:4]), (test.images[:4].float() / 255 - mean) / std)
    result = evaluate_checkpoint(ckpt, test)
    assert result.accuracy >= 0.88
    same = evaluate(ckpt.model, with_preprocess(test, ckpt.preprocess))
    assert torch.equal(same.confusion, result.confusion)
    predictions = ckpt.predict(test.images[:100])
    assert (predictions == test.targets[:100]).float().mean() >= 0.85


def test_export_drops_the_training_state(tmp_path):
    from netvis.train import export_checkpoint

    payload = _payload()
    model = create("resnet20_cifar", **OPTIONS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.zeros(2, 1, 8, 8)).sum().backward()
    optimizer.step()
    payload.update(optimizer=optimizer.state_dict(), rng={"torch": torch.get_rng_state()}, scheduler={"x": 1})
    full = save_checkpoint(payload, tmp_path / "run" / "checkpoint.pt")
    small = export_checkpoint(tmp_path / "run", tmp_path / "small.pt")
    assert small.stat().st_size < 0.7 * full.stat().st_size
    raw, _ = read_checkpoint(small)
    assert raw["optimizer"] is None and raw["rng"] is None and raw["scheduler"] is None
    a, b = load_checkpoint(full), load_checkpoint(small)
    assert a.meta["resumable"] and not b.meta["resumable"]
    for key, value in a.model.state_dict().items():
        assert torch.equal(b.model.state_dict()[key], value)


def test_loading_a_checkpoint_leaves_the_global_rng_alone():
    from netvis.train.checkpoint import load_checkpoint

    before = torch.get_rng_state()
    load_checkpoint("fashion-mnist-small")
    assert torch.equal(torch.get_rng_state(), before)
