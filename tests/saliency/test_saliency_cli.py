"""``netvis saliency``: files written, their contents equal the library's maps, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from netvis.app.cli import main
from netvis.app.jobs.saliency import load_classifier
from netvis.saliency import gradient, occlusion


def _invoke(args):
    return CliRunner().invoke(main, ["saliency", *args, "--no-progress"])


def test_shipped_checkpoint_on_a_sample_image(tmp_path):
    result = _invoke(["fashion-mnist-small", "sample:3", "--method", "gradient", "--method", "occlusion",
                      "--window", "6", "--stride", "3", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in ["sample_3_gradient.png", "sample_3_gradient.npy", "sample_3_occlusion.npy", "sample_3_grid.png",
                 "saliency.json"]:
        assert (tmp_path / name).is_file(), name
    clf = load_classifier("fashion-mnist-small")
    from netvis.app.jobs.inversion import load_target

    x = load_target("sample:3", clf.preprocess)
    pred = int(clf.model(x).argmax())
    np.testing.assert_allclose(np.load(tmp_path / "sample_3_gradient.npy"), gradient(clf.model, x, pred)[0].numpy(),
                               rtol=1e-5, atol=1e-7)
    expected = occlusion(clf.model, x, pred, window=6, stride=3, output="drop", upsample=True)[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "sample_3_occlusion.npy"), expected, rtol=1e-5, atol=1e-6,
                               equal_nan=True)


def test_bf16_precision_reaches_the_methods(tmp_path):
    result = _invoke(["fashion-mnist-small", "sample:5", "--method", "gradient", "--method", "grad-cam",
                      "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    clf = load_classifier("fashion-mnist-small")
    from netvis.app.jobs.inversion import load_target

    x = load_target("sample:5", clf.preprocess)
    pred = int(clf.model(x).argmax())
    np.testing.assert_allclose(np.load(tmp_path / "sample_5_gradient.npy"),
                               gradient(clf.model, x, pred, precision="bf16")[0].numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(np.load(tmp_path / "sample_5_gradient.npy"), gradient(clf.model, x, pred)[0].numpy(),
                           rtol=1e-5, atol=1e-7)
    import json

    (entry,) = json.loads((tmp_path / "saliency.json").read_text())["images"]
    assert entry["precision"] == "bf16" and entry["device"] == "cpu"


def test_smoothgrad_from_the_command_line(tmp_path):
    result = _invoke(["fashion-mnist-small", "sample:1", "--method", "smoothgrad", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    clf = load_classifier("fashion-mnist-small")
    from netvis.app.jobs.inversion import load_target
    from netvis.saliency import smoothgrad

    x = load_target("sample:1", clf.preprocess)
    pred = int(clf.model(x).argmax())
    np.testing.assert_allclose(np.load(tmp_path / "sample_1_smoothgrad.npy"),
                               smoothgrad(clf.model, x, pred, generator=0)[0].numpy(), rtol=1e-5, atol=1e-7)


def test_torchvision_model_with_local_weights_and_image_file(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    reference = torchvision.models.get_model("resnet18", weights=None).eval()
    torch.save(reference.state_dict(), weights)
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    clf = load_classifier("torchvision:resnet18", weights)
    for a, b in zip(clf.model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert clf.classes[0] == "tench"  # ImageNet names from torchvision's metadata, no download
    result = _invoke(["torchvision:resnet18", str(tmp_path / "a.png"), "--weights", str(weights), "--method",
                      "gradient", "--target", "5", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "out" / "a_gradient.npy").shape == (3, 224, 224)


@pytest.mark.parametrize(("args", "message"), [
    (["torchvision:resnet19", "sample:0"], "resnet18"),
    (["fashion-mnist-small", "sample:0", "--target", "Wolf"], "unknown class 'Wolf'"),
    (["fashion-mnist-small", "missing.png"], "no image file"),
    (["fashion-mnist-small", "sample:0", "--weights", "x.pt"], "torchvision:NAME"),
    (["fashion-mnist-small", "sample:0", "--precision", "fp16"], "'fp16' is not one of 'fp32', 'bf16'"),
])
def test_clear_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke([*args, "--out", str(tmp_path / "o")])
    assert result.exit_code != 0
    assert message in result.output
