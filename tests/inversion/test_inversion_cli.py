"""``netvis invert`` and ``netvis train-inverter`` on a small checkpoint made here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from inversion_testing import one_thread
from PIL import Image

from netvis.app.cli import main
from netvis.data import Preprocess
from netvis.inversion import Inverter
from netvis.models import create
from netvis.train.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create("resnet20_cifar", in_channels=1, num_classes=10)
    payload = {
        "model": {"name": "resnet20_cifar", "options": {"in_channels": 1, "num_classes": 10}},
        "state_dict": model.state_dict(),
        "classes": [f"class {i}" for i in range(10)],
        "data": {"name": "fashion-mnist-sample", "preprocess": Preprocess(mean=(0.29,), std=(0.35,)).to_dict()},
        "epoch": 0,
    }
    return str(save_checkpoint(payload, tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"))


def test_invert_writes_reconstructions_and_a_summary(checkpoint, tmp_path):
    out = tmp_path / "inv"
    result = CliRunner().invoke(main, ["invert", checkpoint, "sample:3", "--layer", "conv1", "--layer",
                                       "layer1.0", "--out", str(out), "--steps", "4", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "conv1: feature error" in result.output
    summary = json.loads((out / "inversion.json").read_text())
    assert list(summary["layers"]) == ["conv1", "layer1.0"]
    for name in ("conv1", "layer1.0"):
        layer = summary["layers"][name]
        assert layer["error"] < layer["initial_error"]
        assert len(layer["losses"]) == layer["n_evals"] > 0
        assert Image.open(out / f"{name}.png").size == (28, 28)
    assert (out / "inversion.png").stat().st_size > 0
    target = np.asarray(Image.open(out / "target.png"))
    from netvis.data import load

    assert np.array_equal(target, load("fashion-mnist-sample", "test").images[3, 0].numpy())


def test_invert_reads_an_image_file(checkpoint, tmp_path):
    path = tmp_path / "shirt.png"
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[6:22, 8:20] = 200
    Image.fromarray(pixels).save(path)
    out = tmp_path / "inv"
    result = CliRunner().invoke(main, ["invert", checkpoint, str(path), "--layer", "conv1", "--out", str(out),
                                       "--steps", "3", "--no-progress", "--optimizer", "adam"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "inversion.json").read_text())
    assert summary["layers"]["conv1"]["options"]["optimizer"] == "adam"
    assert summary["layers"]["conv1"]["n_evals"] == 3


@pytest.mark.parametrize(
    ("image", "layer", "message"),
    [("sample:3", "layer_1", "layer1"), ("sample:99999", "conv1", "test split has images"),
     ("missing.png", "conv1", "no image file")],
)
def test_invert_errors_are_clear(checkpoint, tmp_path, image, layer, message):
    result = CliRunner().invoke(main, ["invert", checkpoint, image, "--layer", layer, "--out", str(tmp_path),
                                       "--steps", "1", "--no-progress"])
    assert result.exit_code != 0
    assert message in result.output


def test_train_inverter_trains_resumes_and_loads(checkpoint, tmp_path):
    out = tmp_path / "inverter"
    args = ["train-inverter", checkpoint, "--layer", "layer1.0", "--limit", "64", "--batch-size", "32",
            "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "test pixel MSE" in result.output
    summary = json.loads((out / "inverter.json").read_text())
    assert summary["train_images"] == 64 and summary["epochs"] == 1 and summary["test_mse"] > 0
    result = CliRunner().invoke(main, [*args, "--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "inverter.json").read_text())
    assert summary["epochs"] == 2 and summary["history"][1] < summary["history"][0]
    inverter = Inverter.load(out, load_checkpoint(checkpoint).model)
    assert inverter.layer == "layer1.0" and inverter.image_shape == (1, 28, 28)
