"""The ``color`` group: colour diffusion, colour shift and saturation (HSV and Lab).

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1], the ``N`` images sharing the random parameters. Pixel sizes
are ARNIQA's at a 224 px crop and scale with the image side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from qualiclip_train.degradation.colorspaces import lab_to_rgb, luma, rgb_to_lab
from qualiclip_train.degradation.primitives import gaussian_filter, side_scale, uniform


def color_diffusion(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Colour bleeding: the Lab a, b channels blurred (sigma ``1.5 amount + 2`` px) *and* scaled by
    ``amount`` -- so from level 2 on this is as much an over-saturation as a bleed (ARNIQA)."""
    lab = rgb_to_lab(x.float())
    ab = gaussian_filter(lab[:, 1:], (1.5 * amount + 2) * side_scale(x)) * amount
    return lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1)).to(x.dtype)


def color_shift(x: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Mis-registered green channel: shifted by ``shift`` px (rounded per axis) towards a random
    direction of the lower-right quadrant, replicate edges, blended in where the image has edges:
    the weight is the luma gradient magnitude blurred (sigma 4 px) and min-max normalised.

    (ARNIQA's percentile clamp of the weight compares against sort *indices* and so leaves it
    unchanged; we leave it out, which is the same result.)
    """
    a = uniform(generator, 2).cpu().double()
    s = shift * side_scale(x)
    dy, dx = (torch.round(a / a.norm().clamp(min=1e-12) * s)).long().tolist()
    h, w = x.shape[-2:]
    g = x[:, 1:2]
    # Shift with replicate edges: pad, then crop the window displaced by (dy, dx).
    pad = F.pad(g, (dx, 0, dy, 0), mode="replicate") if dx or dy else g
    shifted = pad[..., :h, :w]
    gray = luma(x)
    gy = (F.pad(gray, (0, 0, 1, 1), mode="replicate").diff(dim=-2)[..., 1:, :]
          + F.pad(gray, (0, 0, 1, 1), mode="replicate").diff(dim=-2)[..., :-1, :]) / 2
    gx = (F.pad(gray, (1, 1, 0, 0), mode="replicate").diff(dim=-1)[..., 1:]
          + F.pad(gray, (1, 1, 0, 0), mode="replicate").diff(dim=-1)[..., :-1]) / 2
    edges = gaussian_filter((gx ** 2 + gy ** 2).sqrt(), 4.0)
    lo = edges.amin(dim=(-2, -1), keepdim=True)
    hi = edges.amax(dim=(-2, -1), keepdim=True)
    weight = (edges - lo) / (hi - lo).clamp(min=1e-12)
    g = g * (1 - weight) + shifted * weight
    return torch.cat([x[:, :1], g, x[:, 2:]], dim=1).clamp(0, 1)


def saturation_hsv(x: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Scale HSV saturation by ``factor`` (1 = identity, 0 = grey, < 0 over-shoots).

    Exact in RGB: with V = max channel, each channel is ``V - S * V * g(hue)``, so scaling S is
    ``V + factor * (c - V)``.
    """
    v = x.amax(dim=1, keepdim=True)
    return (v + factor * (x - v)).clamp(0, 1)


def saturation_lab(x: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    """Scale the Lab a, b channels by ``factor`` (> 1 over-saturates)."""
    lab = rgb_to_lab(x.float())
    lab = torch.cat([lab[:, :1], lab[:, 1:] * factor], dim=1)
    return lab_to_rgb(lab).to(x.dtype)
