"""Each distortion type is as strong as ARNIQA's at every level, and its ladder is monotone.

Strength = mean PSNR / SSIM against the pristine crop over four natural photos
(:mod:`tests.training.strength`); the expected numbers were measured from ARNIQA's own code
(:mod:`tests.training.arniqa_reference`). Tolerance: PSNR within 3 dB or both above 35 dB, SSIM
within 0.10. A type that silently gets stronger or weaker fails here.
"""

from __future__ import annotations

import pytest
import torch
from qualiclip_train.degradation.distortions import DISTORTIONS
from qualiclip_train.degradation.ladders import apply_level

from tests.training.arniqa_reference import REFERENCE
from tests.training.strength import photo_set, psnr, ssim

PSNR_TOLERANCE_DB = 3.0
PSNR_INDISTINCT_DB = 35.0  # above this both are near-invisible: the exact dB do not matter
SSIM_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return photo_set()


def test_reference_covers_every_type():
    assert list(REFERENCE) == list(DISTORTIONS)


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_strength_matches_arniqa(name, photos):
    d = DISTORTIONS[name]
    ref_psnr, ref_ssim = REFERENCE[name]
    problems = []
    for level in range(1, 6):
        y = d.apply(photos, level, torch.Generator().manual_seed(level))
        p = float(psnr(photos, y).clamp(max=100).mean())
        s = float(ssim(photos, y).mean())
        close_psnr = (abs(p - ref_psnr[level - 1]) <= PSNR_TOLERANCE_DB
                      or min(p, ref_psnr[level - 1]) > PSNR_INDISTINCT_DB)
        if not close_psnr or abs(s - ref_ssim[level - 1]) > SSIM_TOLERANCE:
            problems.append(f"L{level}: PSNR {p:.1f} (ARNIQA {ref_psnr[level - 1]:.1f}), "
                            f"SSIM {s:.3f} (ARNIQA {ref_ssim[level - 1]:.3f})")
    assert not problems, f"{name}: " + "; ".join(problems)


def _contrast(x: torch.Tensor) -> torch.Tensor:
    return x.std(dim=(1, 2, 3))


# (type, statistic, +1 if it must rise / -1 if it must fall at every published level).
DIRECTIONS = [
    ("brighten", lambda x: x.mean(dim=(1, 2, 3)), +1),
    ("darken", lambda x: x.mean(dim=(1, 2, 3)), -1),
    ("nonlinear_contrast", _contrast, -1),  # ARNIQA squashes the tones: contrast falls
    ("over_sharpen", _contrast, +1),
]


@pytest.mark.parametrize(("name", "stat", "sign"), DIRECTIONS, ids=[d[0] for d in DIRECTIONS])
def test_direction_of_change(name, stat, sign, photos):
    for level in range(1, 6):
        y = DISTORTIONS[name].apply(photos, level, torch.Generator().manual_seed(0))
        assert (sign * (stat(y) - stat(photos)) > 0).all(), (name, level)


def test_linear_contrast_sides(photos):
    """Above its neutral value (-0.2) linear contrast raises contrast, below it lowers it, and
    at the neutral value it is the identity."""
    d = DISTORTIONS["linear_contrast"]
    g = torch.Generator()
    assert torch.allclose(d.fn(photos, d.neutral, g), photos, atol=1e-5)
    for value in (0.0, 0.15, 0.3):
        assert (_contrast(d.fn(photos, value, g)) > _contrast(photos)).all(), value
    for value in (-0.4, -0.6):
        assert (_contrast(d.fn(photos, value, g)) < _contrast(photos)).all(), value


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_ladder_is_monotone_on_photos(name, photos):
    """Along the monotone ladder (either side for the sign-alternating types) every level lowers
    the mean PSNR; allowance 0.1 dB for random parts."""
    for sign in ((1, -1) if DISTORTIONS[name].signed else (1,)):
        means = []
        for level in range(1, 6):
            y = apply_level(photos, name, level, torch.Generator().manual_seed(3), sign=sign)
            means.append(float(psnr(photos, y).clamp(max=100).mean()))
        assert all(b < a + 0.1 for a, b in zip(means, means[1:])), (name, sign, means)
        assert means[-1] < means[0] - 1, (name, sign, means)
