"""The ``blur`` group: Gaussian, lens (defocus) and motion blur.

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1], the ``N`` images sharing the random parameters. The kernels
keep ARNIQA's absolute sizes (they do not scale with the image side).
"""

from __future__ import annotations

import math

import torch
from qualiclip_train.degradation.primitives import filter2d, gaussian_filter, uniform


def gaussian_blur(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` px (window cut at 2 sigma)."""
    return gaussian_filter(x, sigma).clamp(0, 1)


def lens_blur(x: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """Defocus: convolution with an anti-aliased disk of ``radius`` px."""
    r = math.ceil(radius)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    dist = (t.view(-1, 1) ** 2 + t.view(1, -1) ** 2).sqrt()
    kernel = (radius + 0.5 - dist).clamp(0, 1)
    return filter2d(x, kernel / kernel.sum()).clamp(0, 1)


def motion_blur(x: torch.Tensor, length: float, generator: torch.Generator) -> torch.Tensor:
    """Linear motion over ``length`` px at a random whole-degree angle in [0, 180] (one per call).

    Like MATLAB's ``fspecial('motion')``: a segment whose end pixels are ``length - 1`` apart, each
    kernel pixel weighted by ``1 - distance to the segment`` -- so length 1 is the identity.
    """
    angle = math.radians(int(uniform(generator, 1) * 181))
    half = (length - 1) / 2
    r = max(1, math.ceil(half))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    dx, dy = math.cos(angle), -math.sin(angle)  # image rows grow downwards
    along = xx * dx + yy * dy
    across = (-xx * dy + yy * dx).abs()
    beyond = (along.abs() - half).clamp(min=0)
    kernel = (1 - (across ** 2 + beyond ** 2).sqrt()).clamp(min=0)
    return filter2d(x, kernel / kernel.sum()).clamp(0, 1)
