"""The CUDA paths: every saliency method, the incremental occlusion engine, bf16, training and the feature
tools on a GPU give what they give on the CPU.

Skipped where CUDA is missing. ``NETVIS_TEST_DEVICE=cpu`` runs the same comparisons with the CPU in the
GPU's place (a check of the tests themselves on machines without a GPU).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from netvis import saliency
from netvis.models import create

DEVICE = os.environ.get("NETVIS_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else None)
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs CUDA (or NETVIS_TEST_DEVICE)")


@pytest.fixture(scope="module")
def pair():
    """A small netvis ResNet on the CPU and its copy on the device, fp32 kernels without TF32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.random.fork_rng():
        torch.manual_seed(0)
        cpu = create("resnet20_cifar", in_channels=1, num_classes=10, stage_channels=(8, 16, 16)).eval()
        x = torch.randn(3, 1, 20, 20)
    return cpu, copy.deepcopy(cpu).to(DEVICE), x


CALLS = {
    "gradient": lambda m, x: saliency.gradient(m, x, [1, 2, 3]),
    "guided-backprop": lambda m, x: saliency.guided_backprop(m, x, [1, 2, 3]),
    "deconvnet": lambda m, x: saliency.deconvnet(m, x, [1, 2, 3]),
    "smoothgrad": lambda m, x: saliency.smoothgrad(m, x, [1, 2, 3], n_samples=4, generator=0),
    "integrated-gradients": lambda m, x: saliency.integrated_gradients(m, x, [1, 2, 3], steps=8),
    "grad-cam": lambda m, x: saliency.grad_cam(m, x, [1, 2, 3], layer="layer3"),
    "occlusion-batched": lambda m, x: saliency.occlusion(m, x, [1, 2, 3], window=4, stride=2, engine="batched"),
    "occlusion-incremental": lambda m, x: saliency.occlusion(m, x, [1, 2, 3], window=4, stride=2,
                                                             engine="incremental"),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_methods_agree_with_the_cpu(pair, name):
    cpu, dev, x = pair
    want = CALLS[name](cpu, x)
    got = CALLS[name](dev, x.to(DEVICE))
    assert got.device.type == torch.device(DEVICE).type and got.dtype == torch.float32
    scale = float(want.abs().max())
    torch.testing.assert_close(got.cpu(), want, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("name", ["gradient", "guided-backprop", "occlusion"])
def test_bf16_is_close_to_fp32_on_the_device(pair, name):
    _, dev, x = pair
    x = x.to(DEVICE)
    calls = {
        "gradient": lambda p: saliency.gradient(dev, x, [1, 2, 3], precision=p),
        "guided-backprop": lambda p: saliency.guided_backprop(dev, x, [1, 2, 3], precision=p),
        "occlusion": lambda p: saliency.occlusion(dev, x, [1, 2, 3], window=4, stride=2, output="drop",
                                                  engine="batched", precision=p),
    }
    fp32, bf16 = calls[name]("fp32"), calls[name]("bf16")
    assert bf16.dtype == torch.float32
    corr = torch.corrcoef(torch.stack([fp32.flatten().double(), bf16.flatten().double()]))[0, 1]
    assert corr > 0.95


def test_training_steps_on_the_device(tmp_path):
    from netvis.data import load
    from netvis.train import TrainConfig, train

    data = load("fashion-mnist-sample", "train").subset(torch.arange(256))
    config = TrainConfig(model="resnet20_cifar", data="fashion-mnist-sample", epochs=1, batch_size=64,
                         model_options={"stage_channels": (4, 8, 8)}, device=DEVICE, eval_split=None,
                         progress=False, seed=0)
    result = train(config, train_data=data)
    assert next(result.model.parameters()).device.type == torch.device(DEVICE).type
    losses = [float(v) for k, v in result.metrics[-1].items() if "loss" in k]
    assert result.finished and losses and all(torch.isfinite(torch.tensor(losses)))


def test_dataset_examples_on_the_device_equal_the_cpu(pair):
    from netvis.features import dataset_examples

    cpu, dev, _ = pair
    images = torch.randn(40, 1, 20, 20)
    want = dataset_examples(cpu, "layer2", images, k=3, device="cpu")
    got = dataset_examples(cpu, "layer2", images, k=3, device=DEVICE)
    w, g = want["layer2"] if isinstance(want, dict) else want, got["layer2"] if isinstance(got, dict) else got
    torch.testing.assert_close(g.values.cpu(), w.values.cpu(), rtol=1e-4, atol=1e-5)


def test_cli_on_the_device_writes_the_cpu_maps(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from netvis.app.cli import main

    for device in ("cpu", DEVICE):
        result = CliRunner().invoke(main, ["saliency", "fashion-mnist-small", "sample:2", "--method", "gradient",
                                           "--method", "occlusion", "--device", device, "--no-progress",
                                           "--out", str(tmp_path / device.replace(":", "_"))])
        assert result.exit_code == 0, result.output
    for name in ("sample_2_gradient.npy", "sample_2_occlusion.npy"):
        want = np.load(tmp_path / "cpu" / name)
        got = np.load(tmp_path / DEVICE.replace(":", "_") / name)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.nanmax(np.abs(want)), equal_nan=True)
