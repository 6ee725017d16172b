"""Compositions and monotone ladders."""

from __future__ import annotations

import pytest
import torch
from qualiclip_train.degradation.distortions import DISTORTIONS
from qualiclip_train.degradation.ladders import (
    apply_ladder,
    apply_level,
    ladder_value,
    sample_ladder,
    single_ladder,
)

from tests.training.conftest import textured_image


def test_sample_ladder_distinct_groups_and_deterministic():
    for seed in range(50):
        ladder = sample_ladder(torch.Generator().manual_seed(seed), max_distortions=4)
        groups = [DISTORTIONS[n].group for n in ladder.names]
        assert 1 <= len(ladder.names) <= 4
        assert len(set(groups)) == len(groups)
        assert ladder == sample_ladder(torch.Generator().manual_seed(seed), max_distortions=4)
    sizes = {len(sample_ladder(torch.Generator().manual_seed(s)).names) for s in range(100)}
    assert sizes == {1, 2, 3, 4}
    assert all(len(sample_ladder(torch.Generator().manual_seed(s), 1).names) == 1
               for s in range(20))


@pytest.mark.parametrize("levels", [2, 3, 5, 7])
@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_ladder_values_are_monotone(name, levels):
    d = DISTORTIONS[name]
    values = [ladder_value(d, lv, levels, sign=-1) for lv in range(1, levels + 1)]
    ends = (ladder_value(d, 1, 5), ladder_value(d, 5, 5))
    if d.signed:  # ordered by distance from the neutral value, all on the side asked for
        mags = [abs(v - d.neutral) for v in values]
        assert all(b > a for a, b in zip(mags, mags[1:], strict=False))
        assert all(v < d.neutral for v in values)
        assert values[-1] == pytest.approx(min(d.values))  # ends at the farthest published one
    else:
        diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
        assert all(x > 0 for x in diffs) or all(x < 0 for x in diffs)
        assert (values[0], values[-1]) == pytest.approx(ends)
    if levels == 5 and not d.signed:
        assert tuple(values) == pytest.approx(d.values)


def test_signed_ladder_magnitudes():
    mean_shift = DISTORTIONS["mean_shift"]
    assert [ladder_value(mean_shift, lv, 5, +1) for lv in range(1, 6)] == pytest.approx(
        [0.03, 0.06, 0.09, 0.12, 0.15])
    # Linear contrast is neutral at -0.2: 0.1 steps up to 0.3, 0.08 steps down to -0.6.
    contrast = DISTORTIONS["linear_contrast"]
    assert [ladder_value(contrast, lv, 5, +1) for lv in range(1, 6)] == pytest.approx(
        [-0.1, 0.0, 0.1, 0.2, 0.3])
    assert [ladder_value(contrast, lv, 5, -1) for lv in range(1, 6)] == pytest.approx(
        [-0.28, -0.36, -0.44, -0.52, -0.6])


def test_apply_ladder_shape_and_replay():
    x = textured_image(64).repeat(2, 1, 1, 1)
    ladder = sample_ladder(torch.Generator().manual_seed(3))
    ys = apply_ladder(x, ladder, levels=5)
    assert ys.shape == (5, 2, 3, 64, 64)
    assert torch.equal(ys, apply_ladder(x, ladder, levels=5))
    assert torch.equal(ys[:, 0], ys[:, 1])  # both crops degraded identically


def test_single_type_ladder_matches_apply_level():
    x = textured_image(48)
    ladder = single_ladder("white_noise", seed=9)
    ys = apply_ladder(x, ladder, levels=5)
    expected = apply_level(x, "white_noise", 3, torch.Generator().manual_seed(9))
    assert torch.equal(ys[2], expected)


def test_spearman_with_levels():
    from qualiclip_train.evaluation import spearman_with_levels

    assert spearman_with_levels(torch.tensor([5.0, 4, 3, 2, 1])) == pytest.approx(-1)
    assert spearman_with_levels(torch.tensor([1.0, 2, 3])) == pytest.approx(1)
    assert spearman_with_levels(torch.tensor([0.5, 0.5, 0.5])) == 0.0
    # ties averaged: ranks (1.5, 1.5, 3) against (1, 2, 3) -> 0.866
    assert spearman_with_levels(torch.tensor([1.0, 1.0, 2.0])) == pytest.approx(0.8660254)
