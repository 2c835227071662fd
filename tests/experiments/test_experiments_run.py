"""Each experiment end to end on a shrunk fast setting: the pipeline runs and its tables, metrics and files
have the right structure. Nothing here asserts what a short training learned: a single seed's outcome
depends on the CPU's kernels. The measurements are tested exactly in test_experiments_measures.py, the
lecture's claims over seeds in benchmarks/experiments.py and tests/slow/ (``pytest -m slow``)."""

from __future__ import annotations

import json

import pytest
import torch

from netvis.app import experiments
from netvis.app.experiments.metrics import RANDOM

LECTURE = ["depth", "bn-trainable", "bn-statistics", "bias", "sanity", "faithfulness"]


def test_registry_names_and_errors():
    names = experiments.list_experiments()
    assert names[:6] == LECTURE  # the lecture's order; experiments beyond the lecture's come after
    assert len(set(names)) == len(names)
    for name in names:
        exp = experiments.get(name)
        assert exp.name == name and set(exp.settings) == {"fast", "full"}
        assert set(exp.settings["fast"]) == set(exp.settings["full"])  # the same parameters in both
    for name in LECTURE:
        assert experiments.get(name).settings["fast"]["data"] == "fashion-mnist-sample"
    with pytest.raises(ValueError, match="unknown experiment 'dept'; choose from depth"):
        experiments.get("dept")
    with pytest.raises(ValueError, match="no option 'n_imgs'; its options are .*n_images"):
        experiments.run("faithfulness", n_imgs=3)
    with pytest.raises(ValueError, match="setting must be one of fast, full"):
        experiments.run("faithfulness", setting="medium")


def test_depth_runs_identical_twins(tmp_path):
    # far shorter than the fast setting: the direction needs the fast setting's 3 epochs (see docs)
    result = experiments.run("depth", device="cpu", limit_train=160, limit_test=100, epochs=1, batch_size=32,
                             out=tmp_path)
    rows = {r["model"]: r for r in result.table}
    assert list(rows) == ["plain20_cifar", "plain56_cifar", "resnet20_cifar", "resnet56_cifar"]
    # shortcut A: a ResNet has exactly its plain twin's parameters
    assert rows["plain20_cifar"]["parameters"] == rows["resnet20_cifar"]["parameters"]
    assert rows["plain56_cifar"]["parameters"] == rows["resnet56_cifar"]["parameters"]
    assert rows["plain56_cifar"]["parameters"] > 2.5 * rows["plain20_cifar"]["parameters"]
    for r in result.table:
        assert 0 <= r["train_error"] <= 1 and 0 <= r["test_error"] <= 1
    gap = rows["plain56_cifar"]["train_error"] - rows["plain20_cifar"]["train_error"]
    assert result.metrics["plain_gap"] == pytest.approx(gap)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == "depth" and saved["table"] == json.loads(json.dumps(result.table))
    assert saved["params"]["limit_train"] == 160 and saved["meta"]["seed"] == 0
    assert "netvis experiment depth --setting fast" in saved["meta"]["command"]
    html = (tmp_path / "index.html").read_text()
    assert "plain56_cifar" in html and "data:image/png;base64," in html
    assert (tmp_path / "figures" / "training-error.png").stat().st_size > 1000


def test_bn_trainable_counts_the_bn_parameters():
    result = experiments.run("bn-trainable", device="cpu", policies=("bn", "all"), limit_train=64, limit_test=32,
                             epochs=1)
    rows = {r["trainable"]: r for r in result.table}
    assert list(rows) == ["bn", "all"]
    # resnet20_cifar with widths 8/16/32: 2 x (8 + 6 x 8 + 6 x 16 + 6 x 32 + 2 x 16 + 2 x 32) gamma and beta
    assert rows["bn"]["trainable_parameters"] == 784
    total = rows["all"]["trainable_parameters"]
    assert rows["all"]["fraction"] == 1.0 and rows["bn"]["fraction"] == pytest.approx(784 / total)
    assert result.metrics["chance"] == pytest.approx(0.1)
    assert result.metrics["test_accuracy"] == {p: rows[p]["test_accuracy"] for p in rows}
    assert all(0 <= r["test_accuracy"] <= 1 and 0 <= r["train_accuracy"] <= 1 for r in result.table)
    assert set(result.figures) == {"test-accuracy"}


def test_bn_statistics_tables():
    result = experiments.run("bn-statistics", device="cpu", limit_train=96, limit_test=64, epochs=1,
                             batch_sizes=(16,), batch_size=32, eval_batch_sizes=(1, 64))
    assert [r["batch_size"] for r in result.table] == [16, 32]
    assert [r["lr"] for r in result.table] == [pytest.approx(0.05), pytest.approx(0.1)]  # scaled with the batch
    assert [r["steps"] for r in result.table] == [6, 3]
    modes = result.tables["train vs eval mode"]
    assert [(r["mode"], r["batch_size"], r["batches"]) for r in modes] == [
        ("eval", None, ""), ("eval", None, ""), ("train", 1, "shuffled"), ("train", 64, "shuffled"),
        ("train", 32, "one class")]
    (row,) = [r for r in result.table if r["batch_size"] == 32]
    assert modes[0]["accuracy"] == row["test_accuracy_running"]
    assert modes[1]["accuracy"] == row["test_accuracy_recomputed"]
    assert result.metrics["train_mode_accuracy"] == {"1": modes[2]["accuracy"], "64": modes[3]["accuracy"]}
    assert all(0 <= r["accuracy"] <= 1 for r in modes)


def test_bias_several_marker_patterns_each_on_its_own_network():
    result = experiments.run("bias", device="cpu", limit_train=300, limit_test=100, n_images=4, epochs=1,
                             methods=("occlusion",), marker_patterns="checker,square")
    assert [r["marker"] for r in result.table] == ["checker", "checker", "square", "square"]
    assert [r["marker"] for r in result.tables["behaviour"]] == ["checker"] * 5 + ["square"] * 5
    assert set(result.figures) == {"maps-checker", "maps-square"}
    assert set(result.metrics["peak_on_marker"]) == {"checker", "square"}
    with pytest.raises(ValueError, match="marker pattern must be one of checker, square, got 'stripes'"):
        experiments.run("bias", device="cpu", limit_train=50, limit_test=20, marker_patterns=("stripes",))
    with pytest.raises(ValueError, match="occlusion_fill"):
        experiments.run("bias", device="cpu", limit_train=50, limit_test=20, epochs=1, n_images=2,
                        methods=("occlusion",), occlusion_fill="white")


def test_sanity_tables_on_the_shipped_checkpoint():
    result = experiments.run("sanity", device="cpu", methods=("gradient", "guided-backprop"), n_images=2,
                             train_limit=64, train_epochs=1)
    units = result.metrics["units"]
    assert units == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    assert [r["method"] for r in result.table] == ["gradient", "guided-backprop"]
    rows = result.tables["all comparisons"]
    assert [(r["test"], r["randomized"]) for r in rows if r["method"] == "gradient"] == (
        [("cascading", u) for u in reversed(units)] + [("independent", u) for u in reversed(units)]
        + [("labels", "training labels")])
    assert all(-1 <= r["spearman"] <= 1 and r["ssim"] <= 1 for r in rows)
    summary = {r["method"]: r for r in result.table}
    for method, row in summary.items():
        cascading = [r for r in rows if r["method"] == method and r["test"] == "cascading"]
        assert row["spearman_top_unit"] == cascading[0]["spearman"]
        assert row["spearman_all_units"] == cascading[-1]["spearman"]
    assert set(result.metrics["label_models"]) == {"true labels", "permuted labels"}
    assert set(result.figures) == {"cascading"}


def test_faithfulness_rows_for_every_method_and_baseline():
    result = experiments.run("faithfulness", device="cpu", methods=("occlusion", "gradient"), n_images=4,
                             steps=4, baselines=("blur", "black"))
    assert [(r["method"], r["baseline"]) for r in result.table] == [
        ("occlusion", "blur"), ("gradient", "blur"), (RANDOM, "blur"),
        ("occlusion", "black"), ("gradient", "black"), (RANDOM, "black")]
    for r in result.table:
        assert r["images"] == 4 and 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert (r["deletion_wins"] is None) == (r["method"] == RANDOM)
    assert result.metrics["deletion_auc"]["blur"] == {r["method"]: r["deletion_auc"] for r in result.table[:3]}
    curves = result.metrics["mean_curves"]["black"]["gradient"]
    assert len(curves["deletion"]) == len(curves["insertion"]) == 5
    assert curves["deletion"][0] == pytest.approx(curves["insertion"][-1])  # both the untouched image
    assert set(result.figures) == {"curves-blur", "curves-black"}


def test_experiments_accept_data_sets_and_leave_global_state_alone():
    from netvis.data import load

    train = load("fashion-mnist-sample", "train").subset(torch.arange(200))
    test = load("fashion-mnist-sample", "test").subset(torch.arange(40))
    rng = torch.get_rng_state()
    result = experiments.run("faithfulness", data=(train, test), device="cpu", checkpoint=None,
                             methods=("gradient",), n_images=4, steps=4, baselines=("mean", "black"),
                             train_limit=100, train_epochs=1, image_size=None)
    assert torch.equal(torch.get_rng_state(), rng)
    assert result.metrics["model"]["model"] == "resnet20_cifar trained here"  # checkpoint=None: train one
    assert {r["baseline"] for r in result.table} == {"mean", "black"}
