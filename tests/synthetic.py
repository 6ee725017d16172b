"""Shared by the report tests: smooth synthetic images and a tiny model given a constructed
clean-vs-noisy prompt direction (see ``test_quality_maps`` for why that is a fair test model)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F


def smooth_image(seed: int, size: int = 256) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]: random colours on a coarse grid, bicubic-smoothed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, max(1, size // 32), max(1, size // 32), generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def add_noise(x: torch.Tensor, seed: int, sigma: float = 0.3) -> torch.Tensor:
    """``x`` plus Gaussian noise of std ``sigma``, clamped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


@pytest.fixture()
def probe_model(tiny_model):
    """The tiny random model with its 7 prompt pairs all replaced by one direction: from the
    mean global embedding of noisy calibration images to that of their clean originals
    (positive prompt = the clean side). A linear probe, fitted on other images than any test's."""
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        clean = torch.cat([smooth_image(s) for s in range(8)])
        noisy = torch.cat([add_noise(smooth_image(s), 100 + s) for s in range(8)])
        e_clean = F.normalize(model.image_features(clean), dim=-1).mean(0)
        e_noisy = F.normalize(model.image_features(noisy), dim=-1).mean(0)
        direction = F.normalize(e_clean - e_noisy, dim=0)
        model.prompt_features.copy_(torch.stack([direction, -direction] * 7))
    return model
