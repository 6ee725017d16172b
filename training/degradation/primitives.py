"""Building blocks shared by the distortion groups: randomness drawn from the call's generator,
the pixel-size scale of an image, depthwise filtering and Gaussian blur.

Images are ``(N, 3, H, W)`` float tensors (any device); see :mod:`.distortions` for the contract
every distortion follows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Reference side (px) for distortions defined in pixels: sizes scale with ``min(H, W) / 224``.
REFERENCE_SIDE = 224


def uniform(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) values of ``shape``, on ``generator``'s device."""
    return torch.rand(shape, generator=generator, device=generator.device)


def shared_normal(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One noise field ``(1, C, H, W)`` shared by the ``N`` images, so the crops of a pair are
    degraded identically."""
    shape = (1, *x.shape[1:])
    return torch.randn(shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def side_scale(x: torch.Tensor) -> float:
    """``min(H, W) / REFERENCE_SIDE``: how much a size given in px at 224 px grows on ``x``."""
    return min(x.shape[-2:]) / REFERENCE_SIDE


def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filtering of each channel with ``kernel`` ``(kh, kw)`` (odd sizes), replicate
    padding so the borders do not darken and any image size works."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = kernel.to(x.device, x.dtype).expand(c, 1, kh, kw)
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    return F.conv2d(padded, weight, groups=c)


def gaussian_filter(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur, window ``2 radius + 1`` wide. KADID's default radius is
    ``ceil(2 sigma)``: its windows are cut at 2 sigma, not 3 (a weaker blur at large sigma)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(2 * sigma)) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    return filter2d(filter2d(x, k1.view(1, -1)), k1.view(-1, 1))
