"""Each of the 24 distortions: shape, range, dtype, determinism.

Strength per level and monotone ladders: test_distortion_strength.py."""

from __future__ import annotations

import pytest
import torch
from qualiclip_train.degradation.distortions import DISTORTIONS, GROUPS, lab_to_rgb, rgb_to_lab

from tests.training.conftest import textured_image

NAMES = list(DISTORTIONS)


def test_table_is_complete():
    assert len(DISTORTIONS) == 24
    assert len(GROUPS) == 7
    assert all(len(d.values) == 5 for d in DISTORTIONS.values())
    counts = {g: sum(d.group == g for d in DISTORTIONS.values()) for g in GROUPS}
    assert counts == {"blur": 3, "color": 4, "compression": 2, "noise": 4, "brightness": 3,
                      "spatial": 5, "sharpness_contrast": 3}
    assert {n for n, d in DISTORTIONS.items() if d.signed} == {"mean_shift", "linear_contrast"}


@pytest.mark.parametrize("name", NAMES)
def test_shape_range_dtype(name):
    x = textured_image(80).repeat(2, 1, 1, 1)[:, :, :, :72]  # non-square, batch of 2
    for level in (1, 5):
        y = DISTORTIONS[name].apply(x, level, torch.Generator().manual_seed(0))
        assert y.shape == x.shape
        assert y.dtype == torch.float32
        assert torch.isfinite(y).all()
        assert y.min() >= 0 and y.max() <= 1
    single = DISTORTIONS[name].apply(x[0], 3, torch.Generator().manual_seed(0))
    assert single.shape == x[0].shape


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_generator(name):
    x = textured_image(64)
    a = DISTORTIONS[name].apply(x, 4, torch.Generator().manual_seed(5))
    b = DISTORTIONS[name].apply(x, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_same_parameters_for_every_image_of_a_batch(name):
    """The two crops of a pair are degraded identically: equal inputs give equal outputs."""
    x = textured_image(64).repeat(2, 1, 1, 1)
    y = DISTORTIONS[name].apply(x, 5, torch.Generator().manual_seed(3))
    assert torch.equal(y[0], y[1])


# Severity growing with the level is checked on natural photos, where ARNIQA's quantization
# (bins then a min-max stretch) behaves as on real crops: test_distortion_strength.py.


def test_lab_round_trip():
    x = textured_image(32)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-4)


def test_level_out_of_range():
    with pytest.raises(ValueError):
        DISTORTIONS["jpeg"].apply(textured_image(32), 6, torch.Generator())
