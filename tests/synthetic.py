"""Smooth synthetic images and their noisy copies, shared by the quality-map tests
(tests/qualiclip) and the sensitivity tests (tests/training); the ``probe_model`` fixture built
from them is in tests/conftest.py; and sets of degraded photo files for the calibration tests
(tests/qualiclip/test_calibrate.py and the plugin's)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def smooth_image(seed: int, size: int = 256) -> torch.Tensor:
    """(1, 3, size, size) in [0, 1]: random colours on a coarse grid, bicubic-smoothed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, max(1, size // 32), max(1, size // 32), generator=g)
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def add_noise(x: torch.Tensor, seed: int, sigma: float = 0.3) -> torch.Tensor:
    """``x`` plus Gaussian noise of std ``sigma``, clamped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(1, 3, H, W)``; ``sigma`` < 0.3 leaves it as is."""
    if sigma < 0.3:
        return x
    r = int(3 * sigma) + 1
    t = torch.arange(-r, r + 1).float()
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k / k.sum()).repeat(3, 1, 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(3, 1, 1, -1), groups=3)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(3, 1, -1, 1), groups=3)


def degraded_set(folder: Path, n: int, seed: int) -> list[tuple[Path, float, float]]:
    """``n`` PNGs of 96x96 with independent noise (std 0..0.2) and blur (sigma 0..2.5):
    ``(path, noise, blur)`` each."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        noise = 0.2 * float(torch.rand(1, generator=g))
        sigma = 2.5 * float(torch.rand(1, generator=g))
        x = blur(smooth_image(seed * 1000 + i, 96), sigma)
        x = (x + noise * torch.randn(x.shape, generator=g)).clamp(0, 1)
        path = folder / f"img_{i:03d}.png"
        pixels = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(path)
        out.append((path, noise, sigma))
    return out
