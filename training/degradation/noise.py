"""The ``noise`` group: white noise (RGB and YCbCr), impulse (salt and pepper) and
multiplicative (speckle) noise.

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1]; the ``N`` images get the same noise field.
"""

from __future__ import annotations

import math

import torch
from qualiclip_train.degradation.colorspaces import rgb_to_ycbcr, ycbcr_to_rgb
from qualiclip_train.degradation.primitives import shared_normal, uniform


def white_noise(x: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``variance`` on each RGB channel."""
    return (x + math.sqrt(variance) * shared_normal(x, generator)).clamp(0, 1)


def white_noise_ycbcr(x: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``variance`` on each of Y, Cb and Cr (equal std, as ARNIQA;
    back in RGB the chroma noise makes it about as strong as ``white_noise`` at 3x the variance)."""
    ycc = rgb_to_ycbcr(x) + math.sqrt(variance) * shared_normal(x, generator)
    return ycbcr_to_rgb(ycc).clamp(0, 1)


def impulse_noise(x: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper per channel value: a fraction ``density`` of the values set to 0 or 1
    (half each), so most hit pixels turn a saturated colour rather than black or white."""
    u = uniform(generator, 1, *x.shape[1:]).to(x.device)
    out = torch.where(u < density / 2, torch.zeros_like(x), x)
    return torch.where((u >= density / 2) & (u < density), torch.ones_like(x), out)


def multiplicative_noise(x: torch.Tensor, variance: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Speckle: ``x + x * n`` with ``n`` Gaussian of ``variance``."""
    return (x * (1 + math.sqrt(variance) * shared_normal(x, generator))).clamp(0, 1)
