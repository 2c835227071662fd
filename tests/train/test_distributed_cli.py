"""Data-parallel training under torchrun, and the train/evaluate commands."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from netvis.app.cli import main
from netvis.train import TrainConfig, read_checkpoint, train
from netvis.train.distributed import shard

# A model without BN: BN normalises with the statistics of each rank's share of the batch.
OPTIONS = ["--model-option", "stage_channels=(2, 4, 4)", "--model-option", "norm_layer=none"]
COMMON = ["--model", "resnet20_cifar", "--data", "fashion-mnist-sample", "--epochs", "1", "--batch-size", "16",
          "--limit-train", "53", "--no-eval", "--lr", "0.05", "--augment", "--seed", "3", "--device", "cpu",
          "--no-progress", *OPTIONS]


def test_shard_is_a_partition():
    batch = torch.arange(100, 111)
    parts = [shard(batch, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == batch.tolist()
    assert [len(p) for p in parts] == [4, 4, 3]


def test_two_processes_match_one_process(tmp_path):
    """torchrun with 2 gloo processes (per-rank batch 8) gives the weights of 1 process with batch 16.

    53 images: 3 full batches and a last one of 5, split 3/2 between the ranks.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "netvis", "train", "--out", str(tmp_path / "ddp"), *COMMON]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    payload, _ = read_checkpoint(tmp_path / "ddp")
    assert payload["hardware"]["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoint.pt", "config.json",
                                                                    "curves.png", "metrics.jsonl"]

    single = train(TrainConfig(model="resnet20_cifar", data="fashion-mnist-sample", epochs=1, batch_size=16,
                               limit_train=53, eval_split=None, lr=0.05, augment=True, seed=3, device="cpu",
                               progress=False, model_options={"stage_channels": (2, 4, 4), "norm_layer": "none"}))
    reference = single.model.state_dict()
    assert payload["state_dict"].keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(payload["state_dict"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert payload["metrics"][0]["train_loss"] == pytest.approx(single.metrics[0]["train_loss"], rel=1e-5)
    assert payload["metrics"][0]["train_accuracy"] == single.metrics[0]["train_accuracy"]
    # ...and training did move the weights away from their (seeded) initial values.
    torch.manual_seed(3)
    from netvis.models import create

    initial = create("resnet20_cifar", in_channels=1, num_classes=10, stage_channels=(2, 4, 4), norm_layer="none")
    assert not torch.allclose(initial.fc.weight, payload["state_dict"]["fc.weight"])


def test_train_and_evaluate_commands(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--model", "resnet20_cifar", "--data", "fashion-mnist-sample", "--epochs", "2",
            "--batch-size", "32", "--limit-train", "64", "--limit-test", "32", "--out", str(out),
            "--device", "cpu", "--stop-after", "1", "--model-option", "stage_channels=(2, 4, 4)"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "epoch 1/2" in result.output and "test accuracy" in result.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "--resume" in again.output

    resumed = runner.invoke(main, ["train", "--out", str(out), "--resume", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert "epoch 2/2" in resumed.output
    assert "%|" in result.output and "%|" not in resumed.output  # progress bars, then --no-progress
    assert read_checkpoint(out)[0]["epoch"] == 2

    evaluated = runner.invoke(main, ["evaluate", str(out / "checkpoint.pt"), "--limit", "40", "--no-progress"])
    assert evaluated.exit_code == 0, evaluated.output
    lines = evaluated.output.splitlines()
    assert lines[0].startswith("accuracy ") and "/40)" in lines[0]
    assert any(line.strip().startswith("Ankle boot") for line in lines)
    rows = [line for line in lines if line.strip().startswith(("T-shirt", "Trouser", "Ankle boot"))]
    assert len(rows) == 3

    missing = runner.invoke(main, ["train", "--out", str(tmp_path / "x"), "--data", "fashion-mnist-sample"])
    assert missing.exit_code != 0 and "--model" in missing.output
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"junk")
    bad = runner.invoke(main, ["evaluate", str(broken)])
    assert bad.exit_code != 0 and "broken.pt" in bad.output
