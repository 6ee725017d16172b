"""Smooth synthetic images and their noisy copies, shared by the quality-map tests
(tests/qualiclip) and the sensitivity tests (tests/training); the ``probe_model`` fixture built
from them is in tests/conftest.py."""

from __future__ import annotations

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
