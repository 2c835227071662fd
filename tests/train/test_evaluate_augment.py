"""Evaluation (accuracy, loss, confusion matrix) and the batched crop-and-flip augmentation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netvis.data import TensorImageDataset
from netvis.train import CropFlip, confusion_matrix, evaluate


class CodeModel(nn.Module):
    """Predicts class (pixel value mod 3) with logits 2 for that class and 0 elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        code = (x[:, 0, 0, 0] * 255).round().long() % 3
        return nn.functional.one_hot(code, 3).float() * 2 * self.scale


def test_evaluate_matches_a_hand_count():
    values = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dtype=torch.uint8)
    targets = torch.tensor([0, 1, 2, 0, 0, 2, 0, 1, 1, 1, 2])
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    data = TensorImageDataset(images, targets, ["a", "b", "c"], normalize=False)
    model = CodeModel().train()
    result = evaluate(model, data, batch_size=4)
    predicted = values.long() % 3
    expected = torch.zeros(3, 3, dtype=torch.int64)
    for t, p in zip(targets.tolist(), predicted.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(result.confusion, expected)
    assert result.accuracy == pytest.approx((predicted == targets).float().mean().item())
    # cross-entropy of logits (2, 0, 0): -log(e^2 / (e^2 + 2)) when right, -log(1 / (e^2 + 2)) when wrong
    right, wrong = math.log(math.e**2 + 2) - 2, math.log(math.e**2 + 2)
    hits = int((predicted == targets).sum())
    assert result.loss == pytest.approx((hits * right + (len(values) - hits) * wrong) / len(values), rel=1e-5)
    assert result.count == 11 and result.classes == ["a", "b", "c"]
    assert model.training  # the mode is restored
    text = result.format()
    assert "accuracy" in text and "confusion matrix" in text and "2=c" in text
    assert torch.equal(confusion_matrix(predicted, targets, 3), expected)


def test_evaluate_rejects_wrong_logit_width():
    data = TensorImageDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4), ["a", "b"],
                              normalize=False)
    with pytest.raises(ValueError, match=r"logits of shape \(4, 3\)"):
        evaluate(CodeModel(), data)


def test_crop_flip_equals_a_per_image_loop():
    images = torch.randint(0, 256, (6, 2, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    padding = 2
    generator = torch.Generator().manual_seed(5)
    replay = torch.Generator()
    replay.set_state(generator.get_state())
    out = CropFlip(generator, padding=padding)(images)

    offsets = torch.randint(0, 2 * padding + 1, (2, 6), generator=replay)
    flips = torch.rand(6, generator=replay) < 0.5
    padded = torch.zeros(6, 2, 5 + 2 * padding, 7 + 2 * padding, dtype=torch.uint8)
    padded[:, :, padding:-padding, padding:-padding] = images
    for i in range(6):
        top, left = offsets[0, i], offsets[1, i]
        expected = padded[i, :, top:top + 5, left:left + 7]
        if flips[i]:
            expected = expected.flip(-1)
        assert torch.equal(out[i], expected), i
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert flips.any() and not flips.all()


def test_crop_flip_options():
    images = torch.arange(2 * 1 * 3 * 3, dtype=torch.uint8).view(2, 1, 3, 3)
    same = CropFlip(torch.Generator().manual_seed(0), padding=0, flip=False)(images)
    assert torch.equal(same, images)
    with pytest.raises(ValueError, match="padding"):
        CropFlip(torch.Generator(), padding=-1)


def test_evaluate_any_iterable_of_batches_equals_the_data_set():
    values = torch.arange(23, dtype=torch.uint8)
    targets = torch.arange(23) % 2 + (torch.arange(23) % 5 == 0).long()
    images = values.view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    data = TensorImageDataset(images, targets, ["a", "b", "c"], normalize=False)
    model = CodeModel()
    ref = evaluate(model, data, batch_size=5)
    x = images.float() / 255  # what the data set's preprocess gives without normalisation
    pairs = [(x[i : i + 5], targets[i : i + 5]) for i in range(0, 23, 5)]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, targets), batch_size=5)
    for source in (pairs, iter(pairs), (p for p in pairs), loader,
                   [{"image": a, "label": b} for a, b in pairs]):
        got = evaluate(model, source, classes=["a", "b", "c"])
        assert torch.equal(got.confusion, ref.confusion)
        assert got.count == 23 and got.accuracy == ref.accuracy
        assert got.loss == pytest.approx(ref.loss, rel=1e-12)
    # without classes=: the logits' width names them
    assert evaluate(model, iter(pairs)).classes == ["0", "1", "2"]
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, (p for p in []))
    with pytest.raises(TypeError, match="needs the labels"):
        evaluate(model, iter([x]))
