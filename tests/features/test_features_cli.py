"""``netvis examples``: grids with outlined regions, an index page, results that load, reruns that resume."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from features_testing import one_thread  # noqa: F401 - a fixture
from PIL import Image

from netvis.app.cli import main
from netvis.app.jobs.features import STATE_FILE
from netvis.features import DatasetExamples, dataset_examples


@pytest.fixture
def checkpoint(tmp_path):
    """A real netvis checkpoint file: a random ResNet-20 for 1-channel 28 x 28 images."""
    from netvis.data import load
    from netvis.models import create
    from netvis.train.checkpoint import FORMAT, FORMAT_VERSION, save_checkpoint

    torch.manual_seed(0)
    options = {"in_channels": 1, "num_classes": 10}
    model = create("resnet20_cifar", **options)
    data = load("fashion-mnist-sample", "train")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": "resnet20_cifar", "options": options},
        "state_dict": model.state_dict(),
        "classes": list(data.classes),
        "data": {"name": "fashion-mnist-sample", "mean": [0.3], "std": [0.35], "channels": 1},
        "epoch": 1,
    }
    return save_checkpoint(payload, tmp_path / "model.pt")


def test_examples_writes_grids_index_and_results(checkpoint, tmp_path):
    import netvis
    from netvis.data import load
    from netvis.train.evaluate import with_preprocess

    out = tmp_path / "examples"
    args = ["examples", str(checkpoint), "--layer", "layer1.0", "--layer", "fc", "--k", "4", "--limit", "48",
            "--batch-size", "16", "--out", str(out), "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    index = (out / "index.html").read_text()
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(pngs) == 16 + 10 and "layer1.0/channel_0015.png" in pngs and "fc/channel_0009.png" in pngs
    assert set(re.findall(r'src="([^"]+\.png)"', index)) == set(pngs)  # the page lists every grid
    grid = Image.open(out / "layer1.0" / "channel_0003.png").convert("RGB")
    assert (torch.from_numpy(np.array(grid)) == torch.tensor([255, 64, 32])).all(-1).any()  # outlines

    saved = DatasetExamples.load(out / "layer1.0" / "examples.pt")
    ckpt = netvis.load_checkpoint(checkpoint)
    data = with_preprocess(load("fashion-mnist-sample", "test"), ckpt.preprocess).subset(range(48))
    direct = dataset_examples(ckpt.model, "layer1.0", data, k=4, batch_size=16)
    assert torch.equal(saved.indices, direct.indices) and torch.equal(saved.values, direct.values)
    assert saved.meta["data"] == "fashion-mnist-sample" and saved.num_images == 48

    # a rerun resumes from the saved state (nothing to do) and gives the same files
    assert (out / STATE_FILE).exists()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert torch.equal(DatasetExamples.load(out / "layer1.0" / "examples.pt").indices, saved.indices)
    changed = CliRunner().invoke(main, [*args, "--k", "5"])  # the last --k counts
    assert changed.exit_code != 0 and "different call" in changed.output


def test_examples_reports_a_bad_layer_clearly(checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["examples", str(checkpoint), "--layer", "layer9", "--limit", "8",
                                       "--out", str(tmp_path / "x"), "--no-progress"])
    assert result.exit_code != 0
    assert "no layer named 'layer9'" in result.output
