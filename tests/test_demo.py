"""The lecture report and ``netvis demo`` on a tiny checkpoint trained in the test."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from netvis.app.cli import main
from netvis.app.render.lecture import lecture_report, section_localization
from netvis.app.render.report import Report
from netvis.data import load
from netvis.train import TrainConfig, train
from netvis.train.checkpoint import load_checkpoint
from netvis.train.evaluate import evaluate, with_preprocess

TINY = dict(model="resnet20_cifar", data="fashion-mnist-sample", epochs=1, batch_size=32, limit_train=96,
            limit_test=32, model_options={"stage_channels": (4, 4, 8)}, progress=False, device="cpu", lr=0.05)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(TrainConfig(out=str(out), **TINY))
    return load_checkpoint(result.checkpoint), out


def test_report_escapes_text_and_writes_one_file(tmp_path):
    report = Report("a <title>")
    report.section("S & T").text("<script>alert(1)</script>").table(["a<b"], [["<i>"]])
    path = report.write(tmp_path)
    html = path.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    assert "a &lt;title&gt;" in html and "&lt;i&gt;" in html
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_lecture_report_sections_and_numbers(tiny_checkpoint, tmp_path):
    ckpt, run_dir = tiny_checkpoint
    train_data = with_preprocess(load("fashion-mnist-sample", "train"), ckpt.preprocess).subset(range(64))
    test_data = with_preprocess(load("fashion-mnist-sample", "test"), ckpt.preprocess).subset(range(40))
    state = {k: v.clone() for k, v in ckpt.model.state_dict().items()}

    report, summary = lecture_report(ckpt, train_data, test_data, run_dir=run_dir)
    html = report.write(tmp_path).read_text()

    titles = [s.title for s in report.sections]
    assert titles == ["The model", "Batch normalization", "ResNet and DenseNet", "Saliency: where the model looks",
                      "What units respond to: dataset examples and filter visualization",
                      "Model inversion: what a layer keeps"]
    assert summary["inversion"]["layers"] == ["layer1", "layer2", "layer3"]
    assert all(e < 1 for e in summary["inversion"]["errors"])
    # Every figure is embedded (self-contained) and decodes as PNG.
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 4
    # The accuracy reported is the accuracy of the model on those images.
    expected = evaluate(ckpt.model, test_data).accuracy
    assert summary["model"]["accuracy"] == pytest.approx(expected)
    assert summary["model"]["test_images"] == 40
    assert summary["batchnorm"]["bn_layers"] == sum(isinstance(m, torch.nn.BatchNorm2d) for m in ckpt.model.modules())
    assert "11,689,512" in html  # resnet18's parameter count, netvis and torchvision
    # The report changed nothing in the model (recalibration works on a copy).
    for key, value in ckpt.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not ckpt.model.training


def test_demo_command_writes_the_report(tiny_checkpoint, tmp_path, monkeypatch):
    ckpt, _ = tiny_checkpoint
    import netvis.app.demo as demo

    real_load = demo.load
    monkeypatch.setattr(demo, "load", lambda name, split: real_load(name, split).subset(range(24)))
    result = CliRunner().invoke(main, ["demo", "--checkpoint", str(ckpt.path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "report:" in result.output
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["model"]["test_images"] == 24
    assert summary["localization"]["localization_images"] == 16  # the demo adds the wafer-map section
    assert "Localization on wafer maps" in (tmp_path / "r" / "index.html").read_text()
    assert (tmp_path / "r" / "index.html").stat().st_size > 10_000


def test_localization_section_scores_every_lecture_method_against_the_defect_masks():
    from netvis.saliency import methods

    sample = load("wafer-maps-sample", "test")
    images, masks = sample.images.clone(), sample.masks.clone()
    report = Report("t")
    summary = section_localization(report, per_class=1, stride=4)
    (section,) = report.sections
    assert section.title == "Do the maps point at the defect? Localization on wafer maps"
    defects = [c for c in sample.classes if c != "none" and (sample.targets == sample.classes.index(c)).any()]
    assert summary["localization_images"] == len(defects) == 8
    lecture = [m.title for m in methods.methods() if m.lecture]
    assert list(summary["localization"]) == [*lecture, "random map"]
    for scores in summary["localization"].values():
        assert set(scores) == {"pointing", "energy", "auc"}
        assert all(0.0 <= v <= 1.0 for v in scores.values())
    # the shipped checkpoint's occlusion map finds the defects far better than seeded noise does
    assert summary["localization"]["occlusion"]["auc"] > summary["localization"]["random map"]["auc"] + 0.2
    # the shipped sample is left as it was (in memory and on disk)
    assert torch.equal(sample.images, images) and torch.equal(sample.masks, masks)
    fresh = load("wafer-maps-sample", "test")
    assert torch.equal(fresh.images, images) and torch.equal(fresh.masks, masks)


def test_localization_section_names_data_without_masks_or_defects(monkeypatch):
    import netvis.app.render.lecture as lecture

    with pytest.raises(ValueError, match="defect masks, not 'fashion-mnist-sample'"):
        section_localization(Report("t"), data="fashion-mnist-sample")
    sample = load("wafer-maps-sample", "test")
    only_none = sample.subset([i for i in range(len(sample)) if sample.classes[int(sample.targets[i])] == "none"])
    monkeypatch.setattr(lecture, "load", lambda name, split: only_none)
    with pytest.raises(ValueError, match="needs maps with a defect"):
        section_localization(Report("t"))


def test_report_command_on_a_run_folder_shows_its_curves(tiny_checkpoint, tmp_path):
    _, run_dir = tiny_checkpoint
    result = CliRunner().invoke(main, ["report", str(run_dir), "--data", "fashion-mnist-sample", "--limit", "24",
                                       "--out", str(tmp_path / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    html = (tmp_path / "r" / "index.html").read_text()
    assert "Training curves" in html
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["model"]["test_images"] == 24


def test_report_command_names_a_missing_checkpoint(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "nope.pt" in result.output
    assert not (tmp_path / "r").exists()
