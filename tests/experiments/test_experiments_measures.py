"""The measurement code of every experiment, on hand-built models whose answer is known exactly.

No training here: each model is built so that the quantity an experiment measures can be computed by
hand (or by a float64 transcription of the formula), and the experiment's function must return it.
Whether the lecture's claims hold on *trained* networks is a statistical question, asked over seeds in
``benchmarks/experiments.py`` and ``tests/slow/``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import scipy.stats
import torch
from torch import nn

from netvis.app.experiments import bias, bn_statistics, bn_trainable, depth, faithfulness, sanity
from netvis.app.experiments.metrics import RANDOM, add_marker, marker_mask, randomized_copy, region_hits
from netvis.data import TensorImageDataset

# --------------------------------------------------------------------------------------------------
# bn-statistics: a BN layer whose running statistics are set by hand
# --------------------------------------------------------------------------------------------------

THRESHOLD = 0.5  # the mean reader predicts class 1 when the image's mean normalised value exceeds it


class MeanReader(nn.Module):
    """BN over one channel, then the image's mean normalised value ``z``; logits ``(-z, z - 1)``:
    class 1 exactly when ``z > 0.5``."""

    def __init__(self, running_mean: float, running_var: float):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.bn.running_mean.fill_(running_mean)
            self.bn.running_var.fill_(running_var)
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, -2 * THRESHOLD]))

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.bn(x))))


def _dark_and_bright(n_per_class: int = 32, size: int = 4, seed: int = 0) -> TensorImageDataset:
    """Class 0: pixels in 0..60; class 1: pixels in 195..255 (interleaved); items are pixel / 255."""
    g = torch.Generator().manual_seed(seed)
    dark = torch.randint(0, 61, (n_per_class, 1, size, size), generator=g)
    bright = torch.randint(195, 256, (n_per_class, 1, size, size), generator=g)
    images = torch.stack([dark, bright], 1).reshape(2 * n_per_class, 1, size, size).to(torch.uint8)
    targets = torch.tensor([0, 1] * n_per_class)
    return TensorImageDataset(images, targets, ["dark", "bright"], mean=(0.0,), std=(1.0,))


def _reference_train_mode(data, order, batch_size, running_mean, running_var, momentum=0.1, eps=1e-5):
    """Train-mode BN by hand in float64 (batch mean and biased variance over batch and pixels; the running
    averages updated with the unbiased variance), then eval mode with the running averages left behind.

    Returns (accuracy, eval accuracy after, the smallest distance of any z from the threshold)."""
    x = data.preprocess(data.images).double()
    y = data.targets
    rm, rv = float(running_mean), float(running_var)
    correct, closest = 0, math.inf
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        xb = x[idx]
        mu, var, n = float(xb.mean()), float(((xb - xb.mean()) ** 2).mean()), xb.numel()
        z = ((xb - mu) / math.sqrt(var + eps)).mean(dim=(1, 2, 3))
        closest = min(closest, float((z - THRESHOLD).abs().min()))
        correct += int(((z > THRESHOLD).long() == y[idx]).sum())
        rm = (1 - momentum) * rm + momentum * mu
        rv = (1 - momentum) * rv + momentum * var * n / (n - 1)
    z = ((x - rm) / math.sqrt(rv + eps)).mean(dim=(1, 2, 3))
    closest = min(closest, float((z - THRESHOLD).abs().min()))
    after = float(((z > THRESHOLD).long() == y).double().mean())
    return correct / len(order), after, closest


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()]


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
@pytest.mark.parametrize("order_kind", ["shuffled", "one class"])
def test_train_mode_accuracy_matches_batch_norm_by_hand(batch_size, order_kind):
    data = _dark_and_bright()
    model = MeanReader(running_mean=0.5, running_var=0.04).eval()
    state, modes = _bn_state(model)
    if order_kind == "shuffled":
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    else:
        order = torch.sort(data.targets, stable=True).indices
    accuracy, after = bn_statistics.train_mode_accuracy(model, data, order, batch_size, "cpu")
    expected, expected_after, closest = _reference_train_mode(data, order, batch_size, 0.5, 0.04)
    assert closest > 1e-3  # no image sits on the decision threshold: fp32 and fp64 must agree
    assert accuracy == expected and after == expected_after
    # the model keeps its statistics and its mode
    after_state, after_modes = _bn_state(model)
    assert after_modes == modes
    for key, value in state.items():
        assert torch.equal(after_state[key], value), key


def test_batch_of_one_normalises_every_image_by_itself():
    data = _dark_and_bright()
    model = MeanReader(running_mean=0.5, running_var=0.04).eval()
    from netvis.train.evaluate import evaluate

    assert evaluate(model, data).accuracy == 1.0  # eval mode: the running statistics separate the classes
    order = torch.arange(len(data))
    accuracy, _ = bn_statistics.train_mode_accuracy(model, data, order, 1, "cpu")
    # each image normalised by its own pixels has mean exactly 0 (up to rounding): always class 0
    assert accuracy == 0.5
    # ...and the pass overwrites the running averages: after the dark images then the bright ones, one at a
    # time, they hold the bright images' statistics and eval mode no longer separates the classes
    by_class = torch.sort(data.targets, stable=True).indices
    assert bn_statistics.train_mode_accuracy(model, data, by_class, 1, "cpu")[1] < 0.75
    # one batch of everything: the batch mean lies between the classes, which stay apart
    assert bn_statistics.train_mode_accuracy(model, data, order, len(data), "cpu")[0] == 1.0


def test_mode_table_rows():
    data = _dark_and_bright()
    model = MeanReader(running_mean=0.5, running_var=0.04).eval()
    rows = bn_statistics.mode_table(model, data, eval_accuracy=1.0, recomputed_accuracy=0.75,
                                    eval_batch_sizes=(1, 4), one_class_batch_size=8,
                                    generator=torch.Generator().manual_seed(5), device="cpu")
    assert [(r["mode"], r["statistics"], r["batch_size"], r["batches"]) for r in rows] == [
        ("eval", "running averages", None, ""), ("eval", "recomputed", None, ""),
        ("train", "the batch's own", 1, "shuffled"), ("train", "the batch's own", 4, "shuffled"),
        ("train", "the batch's own", 8, "one class")]
    assert rows[0]["accuracy"] == rows[0]["eval_after"] == 1.0 and rows[1]["accuracy"] == 0.75
    shuffled = torch.randperm(len(data), generator=torch.Generator().manual_seed(5))
    by_class = torch.sort(data.targets, stable=True).indices
    for row, order in ((rows[2], shuffled), (rows[3], shuffled), (rows[4], by_class)):
        accuracy, after, closest = _reference_train_mode(data, order, row["batch_size"], 0.5, 0.04)
        assert closest > 1e-3
        assert (row["accuracy"], row["eval_after"]) == (accuracy, after)
    assert rows[2]["accuracy"] == 0.5
    without = bn_statistics.mode_table(model, data, eval_accuracy=1.0, recomputed_accuracy=None, eval_batch_sizes=(),
                                       one_class_batch_size=8, generator=torch.Generator(), device="cpu")
    assert [r["statistics"] for r in without] == ["running averages", "the batch's own"]


# --------------------------------------------------------------------------------------------------
# bias: a classifier that reads the marker by construction
# --------------------------------------------------------------------------------------------------

SIZE = 8
MASK = marker_mask((SIZE, SIZE), 2, "top-left")  # rows 1-2, columns 1-2


class MarkerReader(nn.Module):
    """Class 0's logit is the sum of the marker pixels minus 2 (a white marker: +2, none: -2); classes 1 and
    2 compare the brightness of the lower-left and lower-right quarters."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mask", MASK.float())
        self.scale = nn.Parameter(torch.ones(()))  # netvis methods expect a model with parameters

    def forward(self, x):
        v = x[:, 0] * self.scale
        cue = (v * self.mask).sum(dim=(1, 2)) - 2
        left = v[:, 4:, :4].mean(dim=(1, 2)) - v[:, 4:, 4:].mean(dim=(1, 2))
        return torch.stack([cue, left, -left], 1)


def _garments() -> TensorImageDataset:
    """Four images per class, black above row 4; class 0 lower-left 100 and lower-right 50 (read as class 1
    without the marker), class 1 lower-left bright, class 2 lower-right bright."""
    images = torch.zeros(12, 1, SIZE, SIZE, dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2] * 4)
    for i, t in enumerate(targets.tolist()):
        left, right = {0: (100, 50), 1: (200, 0), 2: (0, 200)}[t]
        images[i, 0, 4:, :4] = left + i  # a little variety between images
        images[i, 0, 4:, 4:] = right
    return TensorImageDataset(images, targets, ["cue", "left", "right"], mean=(0.0,), std=(1.0,))


def test_behaviour_table_of_a_model_that_reads_the_marker():
    data = _garments()
    rows = bias.behaviour_table(MarkerReader(), data, MASK, 255, "square", 0, "cpu")
    got = [(r["test images"], r["images"], r["accuracy"], r["predicted_as_cue_class"]) for r in rows]
    assert got == [
        ("all, clean", 12, pytest.approx(8 / 12), 0.0),  # float32 mean
        ("class 0 (cue), clean", 4, 0.0, 0.0),  # read as class 1 without the marker
        ("class 0 (cue), with marker", 4, 1.0, 1.0),
        ("other classes, clean", 8, 1.0, 0.0),
        ("other classes, with marker", 8, 0.0, 1.0),  # every husky becomes a wolf
    ]
    assert {r["marker"] for r in rows} == {"square"}


def test_measure_marker_finds_the_marker_the_model_reads():
    data = _garments()
    model = MarkerReader()
    pick = torch.tensor([0, 3, 6, 9])  # the class-0 images
    options = {"occlusion": {"window": 2, "stride": 1, "output": "drop", "upsample": True, "fill": 0.0},
               "integrated-gradients": {"steps": 8}}
    methods = ["occlusion", "gradient", "integrated-gradients", RANDOM]
    out = bias.measure_marker(model, data, MASK, pattern="square", cue_class=0, value=255, pick=pick,
                              methods=methods, options=options, device="cpu",
                              generator=torch.Generator().manual_seed(11))
    rows = {r["method"]: r for r in out["rows"]}
    assert list(rows) == methods and all(r["images"] == 4 and r["marker_area"] == 4 / 64 for r in rows.values())
    # the class-0 logit depends on the marker pixels only, linearly: gradient and IG (baseline 0) are
    # exactly the marker; occluding the marker is the largest drop
    for name in ("gradient", "integrated-gradients"):
        assert (rows[name]["peak_on_marker"], rows[name]["argmax_on_marker"], rows[name]["top_on_marker"]) == (1, 1, 1)
        assert rows[name]["mass_on_marker"] == pytest.approx(1.0)
    assert rows["occlusion"]["peak_on_marker"] == 1.0 and rows["occlusion"]["argmax_on_marker"] == 1.0
    assert rows["occlusion"]["mass_on_marker"] > 4 / 64
    noise = region_hits(torch.rand(4, SIZE, SIZE, generator=torch.Generator().manual_seed(11)), MASK)
    assert rows[RANDOM]["peak_on_marker"] == float(noise["peak"].mean())
    assert rows[RANDOM]["mass_on_marker"] == pytest.approx(float(noise["mass"].mean()))
    # the explained inputs carry the marker
    torch.testing.assert_close(out["x"], data.preprocess(add_marker(data.images[pick], MASK, 255)))
    # along the path from no marker to the marker the logit rises linearly from -2 to 2, the gradient is 1
    # on the marker and 0 elsewhere
    path = out["saturation"]
    assert [r["alpha"] for r in path] == [0.0, 0.25, 0.5, 0.75, 1.0]
    for r in path:
        assert r["logit"] == pytest.approx(-2 + 4 * r["alpha"], abs=1e-5)
        assert r["gradient_on_marker"] == pytest.approx(1.0)
        assert r["gradient_elsewhere"] == 0.0 and r["largest_elsewhere"] == 0.0


def test_plant_marks_exactly_the_drawn_images():
    data = _garments()
    planted, marked = bias.plant(data, MASK, 0, 1.0, 0.0, 255, torch.Generator().manual_seed(0))
    assert torch.equal(marked, data.targets == 0)
    assert torch.equal(planted.images[marked], add_marker(data.images[marked], MASK, 255))
    assert torch.equal(planted.images[~marked], data.images[~marked])
    assert planted.mean == data.mean and planted.std == data.std and torch.equal(planted.targets, data.targets)
    assert data.images[:, :, MASK].sum() == 0  # the original is untouched
    _, none = bias.plant(data, MASK, 0, 0.0, 0.0, 255, torch.Generator().manual_seed(0))
    assert not none.any()


# --------------------------------------------------------------------------------------------------
# sanity: a model whose gradient map is known
# --------------------------------------------------------------------------------------------------


def _scale_then_linear() -> nn.Module:
    """x -> 1x1 convolution (one scalar weight) -> flatten -> linear: the gradient of class c is
    ``w_scale * W_fc[c]``, whatever the input."""
    g = torch.Generator().manual_seed(4)
    model = nn.Sequential(OrderedDict(scale=nn.Conv2d(1, 1, 1, bias=False), flat=nn.Flatten(), fc=nn.Linear(16, 3)))
    with torch.no_grad():
        model.scale.weight.fill_(0.7)
        model.fc.weight.copy_(torch.randn(3, 16, generator=g))
        model.fc.bias.copy_(torch.randn(3, generator=g))
    return model.eval()


def _expected_spearman(w_a: torch.Tensor, w_b: torch.Tensor, target: torch.Tensor) -> float:
    values = [scipy.stats.spearmanr(w_a[c].abs().numpy(), w_b[c].abs().numpy()).statistic for c in target.tolist()]
    return float(sum(values) / len(values))


def test_cascading_and_independent_randomization_on_a_known_map():
    model = _scale_then_linear()
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    target = torch.tensor([0, 1, 2])
    units = ["scale", "fc"]
    from netvis.app.experiments.metrics import layer_units

    assert layer_units(model, x, "stages") == units
    rows, steps = sanity.cascading_randomization(model, x, target, ["gradient"], {}, units, seed=9)
    new_fc = randomized_copy(model, ["fc"], 9).fc.weight.detach()
    expected = _expected_spearman(model.fc.weight.detach(), new_fc, target)
    assert [(r["test"], r["randomized"], r["units"]) for r in rows] == [("cascading", "fc", 1),
                                                                        ("cascading", "scale", 2)]
    # the output layer's new weights decide the map; re-initialising the scale as well changes no rank
    assert rows[0]["spearman"] == pytest.approx(expected, abs=1e-9)
    assert rows[1]["spearman"] == pytest.approx(expected, abs=1e-9)
    assert [name for name, _ in steps] == ["fc", "scale"]
    torch.testing.assert_close(steps[0][1]["gradient"], (0.7 * new_fc).abs().view(3, 4, 4)[target])
    independent = sanity.independent_randomization(model, x, target, ["gradient"], {}, units, seed=9)
    assert [(r["randomized"], r["units"]) for r in independent] == [("fc", 1), ("scale", 1)]
    assert independent[0]["spearman"] == pytest.approx(expected, abs=1e-9)
    # a new scale multiplies the map by a constant: the same ranks, the same map once scaled to [0, 1]
    assert independent[1]["spearman"] == pytest.approx(1.0, abs=1e-12)
    assert independent[1]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert model.scale.weight.item() == pytest.approx(0.7)  # the model itself is untouched


def test_summary_table_reads_the_comparisons():
    rows = [
        {"method": "a", "test": "cascading", "units": 1, "spearman": 0.9},
        {"method": "a", "test": "cascading", "units": 2, "spearman": 0.4},
        {"method": "a", "test": "cascading", "units": 3, "spearman": 0.1},
        {"method": "b", "test": "cascading", "units": 1, "spearman": 0.95},
        {"method": "b", "test": "cascading", "units": 2, "spearman": 0.9},
        {"method": "b", "test": "cascading", "units": 3, "spearman": 0.8},
        {"method": "a", "test": "labels", "units": 0, "spearman": 0.2},
        {"method": "b", "test": "labels", "units": 0, "spearman": 0.7},
    ]
    summary, found = sanity.summary_table(rows, ["a", "b"], ["u1", "u2", "u3"], labels=True)
    assert summary == [
        {"method": "a", "spearman_top_unit": 0.9, "spearman_all_units": 0.1, "below_0.5_from": "u2",
         "spearman_labels": 0.2},
        {"method": "b", "spearman_top_unit": 0.95, "spearman_all_units": 0.8, "below_0.5_from": "never",
         "spearman_labels": 0.7},
    ]
    assert found["below_at"] == {"a": "u2", "b": None}
    without, _ = sanity.summary_table(rows, ["a"], ["u1", "u2", "u3"], labels=False)
    assert without[0]["spearman_labels"] is None


# --------------------------------------------------------------------------------------------------
# faithfulness: deletion curves computed by hand
# --------------------------------------------------------------------------------------------------


class PixelSum(nn.Module):
    """Logits ``(sum of the pixels, 0)``: the class-0 probability is ``sigmoid(sum)``."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x):
        s = x.flatten(1).sum(1) * self.w
        return torch.stack([s, torch.zeros_like(s)], 1)


def _curve(pixels: list[float], order: list[int], mode: str) -> list[float]:
    """The class-0 probability as the pixels go (deletion: to 0) or come (insertion: from 0) in ``order``."""
    out = []
    for k in range(len(pixels) + 1):
        gone = set(order[:k])
        kept = [v for i, v in enumerate(pixels) if (i in gone) == (mode == "insertion")]
        out.append(1 / (1 + math.exp(-sum(kept))))
    return out


def _area(curve: list[float]) -> float:
    return sum((a + b) / 2 for a, b in zip(curve[:-1], curve[1:], strict=True)) / (len(curve) - 1)


def test_deletion_insertion_rows_match_curves_by_hand():
    pixels = [[0.8, 0.6, 0.4, 0.2], [0.1, 0.7, 0.3, 0.5]]
    x = torch.tensor(pixels).view(2, 1, 2, 2)
    good = x[:, 0].clone()  # the exact evidence: delete the largest pixel first
    random = torch.stack([-good[0], good[1] * 2])  # image 0: the reverse order; image 1: the same order
    target = torch.zeros(2, dtype=torch.long)
    rows, curves = faithfulness.deletion_insertion(PixelSum(), x, target, {"good": good, RANDOM: random},
                                                   baseline="zero", steps=4, blur_sigma=1.0, tie_seed=0)
    orders = {"good": [[0, 1, 2, 3], [1, 3, 2, 0]], RANDOM: [[3, 2, 1, 0], [1, 3, 2, 0]]}
    by = {r["method"]: r for r in rows}
    for method, per_image in orders.items():
        for mode in ("deletion", "insertion"):
            expected = [_curve(pixels[i], per_image[i], mode) for i in range(2)]
            torch.testing.assert_close(curves[method][mode], torch.tensor(expected, dtype=torch.float64),
                                       rtol=1e-6, atol=1e-7)
            areas = [_area(c) for c in expected]
            assert by[method][f"{mode}_auc"] == pytest.approx(sum(areas) / 2, rel=1e-6)
            assert by[method][f"{mode}_sem"] == pytest.approx(abs(areas[0] - areas[1]) / 2, rel=1e-5)
    # image 0: the good map deletes faster than the reverse order; image 1: the same order, not faster
    assert by["good"]["deletion_wins"] == 0.5 and by[RANDOM]["deletion_wins"] is None
    assert by["good"]["deletion_below_random"] and by["good"]["insertion_above_random"]
    assert not by[RANDOM]["deletion_below_random"] and not by[RANDOM]["insertion_above_random"]
    assert {r["images"] for r in rows} == {2} and {r["baseline"] for r in rows} == {"zero"}
    with pytest.raises(ValueError, match="'random' map"):
        faithfulness.deletion_insertion(PixelSum(), x, target, {"good": good}, baseline="zero", steps=4,
                                        blur_sigma=1.0, tie_seed=0)


# --------------------------------------------------------------------------------------------------
# depth and bn-trainable: the table from finished trainings
# --------------------------------------------------------------------------------------------------


def test_depth_result_row_and_degradation():
    net = nn.Linear(3, 2)  # 8 parameters
    metrics = [{"train_loss": 2.0, "train_accuracy": 0.1, "test_accuracy": 0.2},
               {"train_loss": 1.5, "train_accuracy": 0.75, "test_accuracy": 0.625}]
    row = depth.result_row("plain20_cifar", "plain", 20, net, metrics, 1.26)
    assert row == {"model": "plain20_cifar", "kind": "plain", "layers": 20, "parameters": 8, "train_loss": 1.5,
                   "train_error": 0.25, "test_error": 0.375, "seconds": 1.3}
    rows = [{"kind": "plain", "layers": 20, "train_error": 0.25}, {"kind": "plain", "layers": 56, "train_error": 0.5},
            {"kind": "residual", "layers": 20, "train_error": 0.25},
            {"kind": "residual", "layers": 56, "train_error": 0.125}]
    assert depth.degradation(rows, (20, 56)) == {"plain_gap": 0.25, "residual_gap": -0.125, "depth_penalty": 0.375,
                                                 "deep_plain_vs_residual": 0.375, "shallow": 20, "deep": 56}


def test_bn_trainable_parameter_counts():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))  # 40 + 8 + 10
    net[0].weight.requires_grad_(False)
    assert bn_trainable.parameter_counts(net, "all") == (58, 58)
    assert bn_trainable.parameter_counts(net, "bn") == (8, 58)
    assert bn_trainable.parameter_counts(net, "bn+fc") == (18, 58)
    assert bn_trainable.parameter_counts(net, "all-but-bn") == (50, 58)
    assert not net[0].weight.requires_grad and net[0].bias.requires_grad  # the flags are as before
