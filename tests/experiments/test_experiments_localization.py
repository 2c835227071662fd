"""The localization experiment: its table (every method and the random map) matches the library's scores."""

from __future__ import annotations

import json
import math

import pytest
import torch

from netvis.app import experiments
from netvis.app.experiments._common import mix_seed
from netvis.app.experiments.metrics import RANDOM
from netvis.data import WAFER_CLASSES, load
from netvis.models import create
from netvis.saliency import gradient
from netvis.saliency.localization import localization_scores, mean_score
from netvis.train.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained ResNet-20 (narrow) saved as a netvis checkpoint with the wafer sample's preprocessing."""
    options = {"in_channels": 1, "num_classes": 9, "stage_channels": (4, 4, 4)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create("resnet20_cifar", **options)
    train = load("wafer-maps-sample", "train")
    payload = {"model": {"name": "resnet20_cifar", "options": options}, "state_dict": model.state_dict(),
               "classes": list(WAFER_CLASSES), "data": {"name": "wafer-maps-sample",
                                                        "preprocess": train.preprocess.to_dict()},
               "epoch": 0, "metrics": [{"epoch": 0, "test_accuracy": 0.1}]}
    return save_checkpoint(payload, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def test_localization_table_matches_the_scores(tiny_checkpoint, tmp_path):
    methods = ("gradient", "occlusion")
    result = experiments.run("localization", data="wafer-maps-sample", checkpoint=str(tiny_checkpoint),
                             per_class=1, methods=methods, occlusion_window=8, occlusion_stride=8, out=tmp_path)
    rows = {r["method"]: r for r in result.table}
    assert list(rows) == [*methods, RANDOM]
    assert all(r["images"] == 8 for r in rows.values())  # one map of each defect class, none without a mask
    for r in rows.values():
        for key in ("pointing", "pointing_tol2px", "energy", "auc"):
            assert 0 <= r[key] <= 1
    # the gradient row, recomputed outside the experiment from the same maps
    test = load("wafer-maps-sample", "test")
    classes = result.metrics["classes_of_images"]
    assert sorted(set(classes)) == sorted(c for c in WAFER_CLASSES if c != "none")
    per_image = result.metrics["per_image"]["gradient"]
    assert mean_score(torch.tensor(per_image["pointing"])) == pytest.approx(rows["gradient"]["pointing"])
    assert mean_score(torch.tensor(per_image["auc"])) == pytest.approx(rows["gradient"]["auc"])
    # the experiment's picks: every defect class once; rebuild its inputs and check the gradient scores
    ckpt = load_checkpoint(tiny_checkpoint)
    picked = []
    for name in WAFER_CLASSES[:-1]:
        k = WAFER_CLASSES.index(name)
        where = torch.nonzero(test.targets == k).flatten()
        order = torch.randperm(len(where), generator=torch.Generator().manual_seed(
            mix_seed(0, 11, k)))[:1]
        picked.append(where[order])
    idx = torch.cat(picked)
    x = ckpt.preprocess(test.images[idx])
    maps = gradient(ckpt.model, x, test.targets[idx]).abs().amax(1)
    valid = test.images[idx][:, 0] != 0
    mine = localization_scores(maps, test.masks[idx], tolerance=2.0, valid=valid)
    assert mean_score(mine["energy"]) == pytest.approx(rows["gradient"]["energy"], rel=1e-5)
    assert mean_score(mine["pointing_tolerance"]) == pytest.approx(rows["gradient"]["pointing_tol2px"])
    table = result.tables["pointing game per defect class"]
    assert [r["method"] for r in table] == [*methods, RANDOM]
    assert table[0]["near-full"] == 1.0 and table[-1]["random"] == 1.0  # whole-wafer masks: every peak hits
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == "localization" and (tmp_path / "figures" / "overlays.png").is_file()
    assert any("Occlusion's pointing game" in line for line in result.findings)
    assert not math.isnan(rows[RANDOM]["auc"])


def test_localization_needs_masks_and_a_checkpoint():
    fashion = (load("fashion-mnist-sample", "train"), load("fashion-mnist-sample", "test"))
    with pytest.raises(ValueError, match="masks"):
        experiments.run("localization", data=fashion, per_class=1, methods=("gradient",))
    with pytest.raises(ValueError, match="checkpoint"):
        experiments.run("localization", data="wafer-maps-sample", checkpoint=None, per_class=1)
