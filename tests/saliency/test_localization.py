"""Localization scores against hand-computed cases, brute-force pair counting and scipy's Mann-Whitney U."""

from __future__ import annotations

import math

import pytest
import scipy.stats
import torch

from netvis.saliency.localization import (
    energy_inside,
    localization_scores,
    mask_auc,
    mean_score,
    pointing_game,
)


def brute_auc(values: torch.Tensor, labels: torch.Tensor) -> float:
    """P(pos > neg) + 0.5 P(pos == neg) by counting every pair."""
    pos, neg = values[labels].tolist(), values[~labels].tolist()
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


def brute_pointing(m: torch.Tensor, mask: torch.Tensor, tol: float) -> float:
    h, w = m.shape
    peak = m.max()
    tops = [(i, j) for i in range(h) for j in range(w) if m[i, j] == peak]
    points = [(i, j) for i in range(h) for j in range(w) if mask[i, j]]
    hit = sum(any(math.hypot(i - a, j - b) <= tol + 1e-9 for a, b in points) for i, j in tops)
    return hit / len(tops)


def test_pointing_game_hand_cases():
    m = torch.zeros(2, 5, 5)
    m[0, 2, 2] = 1.0  # on the mask
    m[1, 0, 4] = 1.0  # far from it
    mask = torch.zeros(2, 5, 5, dtype=torch.bool)
    mask[:, 2, 2] = True
    assert pointing_game(m, mask).tolist() == [1.0, 0.0]
    # tolerance: (0, 4) is sqrt(4 + 4) = 2.83 px from (2, 2)
    assert pointing_game(m, mask, tolerance=2.8).tolist() == [1.0, 0.0]
    assert pointing_game(m, mask, tolerance=2.9).tolist() == [1.0, 1.0]


def test_pointing_ties_and_empty_masks():
    m = torch.zeros(1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :1] = True  # a quarter of the pixels
    assert pointing_game(m, mask).item() == pytest.approx(0.25)  # a constant map: the area share
    assert math.isnan(pointing_game(m, torch.zeros_like(mask)).item())


def test_pointing_matches_brute_force_with_tolerance():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        m = torch.randint(0, 4, (7, 9), generator=g).float()  # many ties
        mask = torch.rand(7, 9, generator=g) > 0.85
        if not mask.any():
            continue
        for tol in (0, 1, 1.5, 3):
            got = pointing_game(m[None], mask[None], tolerance=tol).item()
            assert got == pytest.approx(brute_pointing(m, mask, tol))


def test_valid_region_restricts_the_peak():
    m = torch.zeros(1, 4, 4)
    m[0, 0, 0] = 5.0  # the peak sits outside the valid region
    m[0, 2, 2] = 1.0
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, 2, 2] = True
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0, 0] = False
    assert pointing_game(m, mask).item() == 0.0
    assert pointing_game(m, mask, valid=valid).item() == 1.0
    assert energy_inside(m, mask, valid=valid).item() == pytest.approx(1.0)


def test_energy_hand_case():
    m = torch.tensor([[[3.0, 1.0, -4.0], [2.0, 0.0, 2.0]]])
    mask = torch.tensor([[[True, False, True], [True, False, False]]])
    # positive mass 3 + 1 + 2 + 2 = 8, inside 3 + 2 (the -4 counts nothing)
    assert energy_inside(m, mask).item() == pytest.approx(5 / 8)
    assert math.isnan(energy_inside(-m.abs(), mask).item())  # no positive mass
    assert math.isnan(energy_inside(m, torch.zeros_like(mask)).item())


def test_auc_matches_brute_force_and_scipy():
    stats = scipy.stats
    g = torch.Generator().manual_seed(1)
    maps = torch.randint(0, 6, (6, 8, 8), generator=g).float()  # ties
    maps[3] = torch.rand(8, 8, generator=g)
    masks = torch.rand(6, 8, 8, generator=g) > 0.7
    got = mask_auc(maps, masks)
    for n in range(6):
        v, lab = maps[n].flatten(), masks[n].flatten()
        assert got[n].item() == pytest.approx(brute_auc(v, lab), abs=1e-12)
        u = stats.mannwhitneyu(v[lab].numpy(), v[~lab].numpy(), alternative="two-sided").statistic
        assert got[n].item() == pytest.approx(u / (int(lab.sum()) * int((~lab).sum())), abs=1e-12)


def test_auc_extremes():
    mask = torch.zeros(1, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    m = mask.float()
    assert mask_auc(m, mask).item() == 1.0
    assert mask_auc(-m, mask).item() == 0.0
    assert mask_auc(torch.zeros(1, 3, 3), mask).item() == 0.5
    assert math.isnan(mask_auc(m, torch.ones_like(mask)).item())
    assert math.isnan(mask_auc(m, torch.zeros_like(mask)).item())


def test_random_maps_score_chance():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(200, 16, 16, generator=g)
    masks = torch.zeros(200, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 4:8] = True  # 1/16 of the pixels
    s = localization_scores(maps, masks, tolerance=1)
    assert abs(mean_score(s["auc"]) - 0.5) < 0.02
    assert abs(mean_score(s["energy"]) - 1 / 16) < 0.01
    assert abs(mean_score(s["pointing"]) - 1 / 16) < 0.05
    assert mean_score(s["pointing_tolerance"]) > mean_score(s["pointing"])


def test_inputs_untouched_and_errors():
    m = torch.rand(2, 4, 4)
    mask = torch.rand(2, 4, 4) > 0.5
    before = (m.clone(), mask.clone())
    localization_scores(m, mask, tolerance=2)
    assert torch.equal(m, before[0]) and torch.equal(mask, before[1])
    with pytest.raises(ValueError, match="bool"):
        pointing_game(m, mask.float())
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mask_auc(m, mask[:, :3])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(m, mask, tolerance=-1)
    with pytest.raises(ValueError, match="NaN"):
        energy_inside(torch.full((1, 4, 4), math.nan), mask[:1])
    assert math.isnan(mean_score(torch.tensor([math.nan])))
    assert mean_score(torch.tensor([1.0, math.nan, 0.0])) == 0.5
