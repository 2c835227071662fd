"""Inversion objectives: hand-computed values and composition."""

from __future__ import annotations

import math

import pytest
import torch

from netvis.inversion.objectives import (
    Objective,
    alpha_loss,
    alpha_norm,
    as_objective,
    box_loss,
    feature_error,
    feature_loss,
    total_variation,
    tv_loss,
)

# A 3x3 image whose TV terms are worked out by hand. The pixels with a right and a lower neighbour are
# (0,0), (0,1), (1,0), (1,1):
#   (0,0): dx = 1-0 = 1, dy = 2-0 = 2  -> 1 + 4 = 5
#   (0,1): dx = 3-1 = 2, dy = 4-1 = 3  -> 4 + 9 = 13
#   (1,0): dx = 4-2 = 2, dy = 1-2 = -1 -> 4 + 1 = 5
#   (1,1): dx = 4-4 = 0, dy = 1-4 = -3 -> 0 + 9 = 9
X = torch.tensor([[0.0, 1.0, 3.0], [2.0, 4.0, 4.0], [1.0, 1.0, 0.0]])


def test_total_variation_matches_hand_computation():
    x = X[None, None]
    assert total_variation(x, beta=2.0).tolist() == [32.0]
    assert total_variation(x, beta=4.0).tolist() == [25.0 + 169.0 + 25.0 + 81.0]
    expected = 2 * math.sqrt(5) + math.sqrt(13) + 3.0
    assert total_variation(x, beta=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_total_variation_sums_channels_and_is_per_image():
    x = torch.stack([torch.stack([X, torch.full_like(X, 7.0)]), torch.stack([2 * X, X])])  # (2, 2, 3, 3)
    assert total_variation(x, beta=2.0).tolist() == [32.0, 4 * 32.0 + 32.0]


def test_total_variation_beta1_has_finite_zero_gradient_on_flat_images():
    x = torch.ones(1, 1, 4, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(total_variation(x, beta=1.0).sum(), x)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_total_variation_gradient_beta2_matches_hand_computation():
    # TV = (b - a)^2 + (c - a)^2 for a 2x2 image [[a, b], [c, d]]: d/da = -2(b - a) - 2(c - a).
    x = torch.tensor([[[[1.0, 3.0], [4.0, 9.0]]]], requires_grad=True)
    (grad,) = torch.autograd.grad(total_variation(x).sum(), x)
    assert grad[0, 0].tolist() == [[-2 * 2 - 2 * 3, 2 * 2], [2 * 3, 0.0]]


def test_total_variation_rejects_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        total_variation(X)
    with pytest.raises(ValueError, match="beta"):
        total_variation(X[None, None], beta=0)


def test_tv_loss_is_normalised_by_size_and_range():
    x = X[None, None]
    assert tv_loss(2.0)(x, None).item() == pytest.approx(32.0 / 4)  # mean over the 2x2 terms
    assert tv_loss(2.0, scale=10.0)(10 * x, None).item() == pytest.approx(32.0 / 4)
    assert tv_loss(1.0, scale=3.0)(3 * x, None).item() == pytest.approx(total_variation(x, 1.0).item() / 4)


def test_alpha_norm_and_alpha_loss():
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]]])
    assert alpha_norm(x, 2.0).item() == pytest.approx(1 + 4 + 0.25)
    assert alpha_norm(x, 6.0).item() == pytest.approx(1 + 64 + 0.5**6)
    # ((x - 1) / 2)^2 averaged over the 4 pixels: (0 + 2.25 + 0.0625 + 0.25) / 4
    assert alpha_loss(2.0, center=1.0, scale=2.0)(x, None).item() == pytest.approx(2.5625 / 4)


def test_box_loss_is_zero_inside_and_quadratic_outside():
    x = torch.tensor([[[[0.0, 1.0], [1.5, -1.0]]]])
    # outside by 0.5 (above 1) and 1.0 (below 0); range 1; mean over 4 pixels
    assert box_loss(0.0, 1.0)(x, None).item() == pytest.approx((0.25 + 1.0) / 4)
    assert box_loss(0.0, 1.0)(x.clamp(0, 1), None).item() == 0.0
    assert box_loss(-math.inf, math.inf)(x, None).item() == 0.0


def test_feature_error():
    phi0 = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert feature_error(phi0, phi0).tolist() == [0.0, 0.0]
    assert feature_error(torch.zeros_like(phi0), phi0).tolist() == [1.0, 1.0]
    phi = torch.tensor([[3.0, 5.0], [0.0, 0.0]])
    assert feature_error(phi, phi0).tolist() == pytest.approx([1 / 25, 1.0])
    with pytest.raises(ValueError, match="all zero"):
        feature_error(phi, torch.zeros_like(phi0))


def test_objectives_add_scale_and_subtract():
    x = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    phi = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    target = torch.randn(3, 4, generator=torch.Generator().manual_seed(2))
    tv, al, fl = tv_loss(), alpha_loss(2.0), feature_loss(target)
    combined = fl + 0.5 * tv - al * 2 + 1.0
    expected = fl(x, phi) + 0.5 * tv(x, phi) - 2 * al(x, phi) + 1.0
    assert torch.allclose(combined(x, phi), expected)
    assert torch.allclose(sum([tv, al])(x, phi), tv(x, phi) + al(x, phi))
    assert torch.allclose((-tv)(x, phi), -tv(x, phi))
    assert "tv_loss" in repr(combined)


def test_plain_callables_compose_and_scalars_are_spread_over_the_batch():
    x = torch.ones(4, 1, 2, 2)
    per_image = as_objective(lambda x, f: x.flatten(1).sum(1))
    total = Objective(lambda x, f: x.sum())  # a batch total: spread so that the batch sum is unchanged
    assert per_image(x, None).tolist() == [4.0] * 4
    assert total(x, None).tolist() == [4.0] * 4
    assert (tv_loss() + (lambda x, f: x.flatten(1).sum(1)))(x, None).tolist() == [4.0] * 4
    with pytest.raises(ValueError, match="one value per image"):
        Objective(lambda x, f: x.flatten(1))(x, None)
    with pytest.raises(TypeError):
        as_objective(3)
