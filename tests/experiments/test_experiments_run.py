"""Each experiment in its fast setting (shrunk where noted, to keep the suite short), with the direction of
the result asserted where the fast setting shows it reliably (checked over several seeds)."""

from __future__ import annotations

import json

import pytest
import torch

from netvis.app import experiments
from netvis.app.experiments.metrics import RANDOM


def test_registry_names_and_errors():
    assert experiments.list_experiments() == ["depth", "bn-trainable", "bn-statistics", "bias", "sanity",
                                              "faithfulness"]
    for name in experiments.list_experiments():
        exp = experiments.get(name)
        assert exp.name == name and set(exp.settings) == {"fast", "full"}
        assert set(exp.settings["fast"]) == set(exp.settings["full"])  # the same parameters in both
        assert exp.settings["fast"]["data"] == "fashion-mnist-sample"
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


def test_bn_only_training_learns_far_above_chance():
    # the fast setting, BN-only row: 25-31% test accuracy over seeds 0-2 (chance 10%)
    result = experiments.run("bn-trainable", device="cpu", policies=("bn",), limit_test=500)
    (row,) = result.table
    assert row["trainable"] == "bn"
    assert row["trainable_parameters"] == 784 and row["fraction"] < 0.02
    assert row["test_accuracy"] > result.metrics["chance"] + 0.1


def test_bn_statistics_train_mode_pitfall():
    result = experiments.run("bn-statistics", device="cpu", limit_train=500, limit_test=300, epochs=2,
                             batch_sizes=(32,), eval_batch_sizes=(1, 256))
    modes = result.tables["train vs eval mode"]
    eval_acc = modes[0]["accuracy"]
    by = {(r["mode"], r["batch_size"], r["batches"]): r for r in modes}
    one, large = by["train", 1, "shuffled"], by["train", 256, "shuffled"]
    assert eval_acc > 0.4
    assert one["accuracy"] < eval_acc - 0.2  # every image normalised by itself
    assert large["accuracy"] > eval_acc - 0.05  # large random batches: batch statistics are fine
    assert by["train", 32, "one class"]["accuracy"] < eval_acc - 0.2  # the class signal normalised away
    assert one["eval_after"] < eval_acc  # the train-mode pass overwrote the running averages...
    (row,) = result.table
    assert row["test_accuracy_running"] == pytest.approx(eval_acc)  # ...of a scratch copy only


def test_bias_marker_is_learned_and_found():
    result = experiments.run("bias", device="cpu", limit_train=1000, limit_test=500, n_images=16,
                             methods=("occlusion", "gradient", "integrated-gradients"))
    behaviour = result.tables["behaviour"]
    assert behaviour[2]["accuracy"] > behaviour[1]["accuracy"] + 0.3  # the cue's class needs the marker
    assert behaviour[4]["predicted_as_cue_class"] > behaviour[3]["predicted_as_cue_class"] + 0.1  # husky -> wolf
    rows = {r["method"]: r for r in result.table}
    assert {r["marker"] for r in result.table} == {"square"}
    # occlusion found the marker on 5 of 5 seeds in the fast setting (benchmarks/bias_markers.py), IG on 4 of 5
    assert rows["occlusion"]["peak_on_marker"] >= 0.75
    assert rows["integrated-gradients"]["peak_on_marker"] >= 0.75
    assert rows[RANDOM]["peak_on_marker"] <= 0.2
    # the plain gradient puts more than chance of its mass on the marker, but its peak mostly elsewhere (see docs)
    assert rows["gradient"]["mass_on_marker"] > rows["gradient"]["marker_area"]
    path = result.tables["gradient along the marker's path"]
    assert [r["alpha"] for r in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert path[-1]["logit"] > path[0]["logit"] + 2  # the marker drives the cue class's logit
    assert all(r["gradient_on_marker"] > 0 and r["largest_elsewhere"] >= r["gradient_elsewhere"] for r in path)


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


def test_sanity_gradient_decorrelates_guided_backprop_does_not_at_the_top():
    result = experiments.run("sanity", device="cpu", methods=("gradient", "guided-backprop"), n_images=4,
                             independent=False, train_limit=300, train_epochs=1)
    summary = {r["method"]: r for r in result.table}
    units = result.metrics["units"]
    assert units == ["conv1", "bn1", "layer1", "layer2", "layer3", "fc"]
    assert summary["gradient"]["spearman_all_units"] < 0.5
    assert summary["gradient"]["spearman_top_unit"] < 0.6
    # guided backprop's maps barely change when the output layer is randomised (Adebayo et al.)
    assert summary["guided-backprop"]["spearman_top_unit"] > 0.9
    rows = result.tables["all comparisons"]
    assert {r["test"] for r in rows} == {"cascading", "labels"}
    assert len([r for r in rows if r["test"] == "cascading"]) == 2 * len(units)
    assert all(-1 <= r["spearman"] <= 1 and r["ssim"] <= 1 for r in rows)


def test_faithfulness_every_method_deletes_faster_than_a_random_map():
    # 4 steps instead of the fast setting's 16: the same ordering over seeds 0-2, in half the time
    result = experiments.run("faithfulness", device="cpu", baselines=("blur",), steps=4)
    rows = {r["method"]: r for r in result.table}
    assert set(rows) == {"occlusion", "gradient", "guided-backprop", "deconvnet", "smoothgrad",
                         "integrated-gradients", "grad-cam", "guided-grad-cam", RANDOM}
    for name, row in rows.items():
        if name != RANDOM:
            assert row["deletion_auc"] < rows[RANDOM]["deletion_auc"], name
            assert row["insertion_auc"] > rows[RANDOM]["insertion_auc"], name
    assert rows["occlusion"]["deletion_auc"] < rows[RANDOM]["deletion_auc"] - 0.1


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
