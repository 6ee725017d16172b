"""The ``spatial`` group: jitter, non-eccentricity (moved patches), pixelate, quantization and
colour blocks.

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1], the ``N`` images sharing the random parameters. Sizes in
pixels (jitter, patches, blocks) are ARNIQA's at a 224 px crop and scale with the image side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from qualiclip_train.degradation.primitives import side_scale, uniform


def jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel scatter, five times over: each round every pixel is resampled (bilinear, replicate
    edges) from an offset drawn per pixel and axis from N(0, ``amount``\u00b2) px (at 224 px)."""
    n, _, h, w = x.shape
    sigma = amount * side_scale(x)
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device, dtype=torch.float32),
                            torch.arange(w, device=x.device, dtype=torch.float32), indexing="ij")
    out = x.float()
    for _ in range(5):
        offsets = torch.randn((h, w, 2), generator=generator,
                              device=generator.device).to(x.device) * sigma
        gx = (xs - offsets[..., 0]) / max(w - 1, 1) * 2 - 1
        gy = (ys - offsets[..., 1]) / max(h - 1, 1) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).expand(n, h, w, 2)
        out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
    return out.to(x.dtype).clamp(0, 1)


def non_eccentricity(x: torch.Tensor, count: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` patches of 16 px (at 224 px), taken at least 16 px inside the border, pasted up to
    8 px away in x and y, one after the other (later patches may copy earlier pastes)."""
    _, _, h, w = x.shape
    p = max(2, round(16 * side_scale(x)))
    margin = p  # ARNIQA's "radius": sources stay this far from the border, moves are +-margin/2
    out = x.clone()
    k = int(round(count))
    if h < p + 2 * margin or w < p + 2 * margin or k <= 0:
        return out
    u = uniform(generator, k, 4).cpu()
    for sy, sx, oy, ox in u.tolist():
        y0 = margin + round(sy * (h - p - 2 * margin))
        x0 = margin + round(sx * (w - p - 2 * margin))
        y1, x1 = y0 + round((oy - 0.5) * margin), x0 + round((ox - 0.5) * margin)
        out[..., y1:y1 + p, x1:x1 + p] = out[..., y0:y0 + p, x0:x0 + p].clone()
    return out


def pixelate(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Nearest-neighbour downscale to ``0.95 - strength ** 0.6`` of the size (0.89 at level 1,
    0.29 at level 5), then nearest-neighbour upscale back."""
    h, w = x.shape[-2:]
    z = 0.95 - strength ** 0.6
    small = (max(1, int(h * z)), max(1, int(w * z)))
    return F.interpolate(F.interpolate(x, size=small, mode="nearest"), size=(h, w),
                         mode="nearest")


def quantization(x: torch.Tensor, levels: float, generator: torch.Generator) -> torch.Tensor:
    """Posterise: each channel value falls into one of ``levels`` equal bins of [0, 255] (a
    value of exactly 0 into a bin of its own), and the bin indices are min-max stretched to
    [0, 1] over the image -- so besides banding, the tones shift (KADID's ``imquantize`` +
    ``mapmm``)."""
    n = max(2, int(round(levels)))
    edges = torch.tensor([0] + [math.floor(255 * i / n) for i in range(1, n)],
                         dtype=x.dtype, device=x.device)
    index = torch.bucketize(x * 255, edges).to(x.dtype)
    lo = index.amin(dim=(1, 2, 3), keepdim=True)
    hi = index.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(hi > lo, (index - lo) / (hi - lo).clamp(min=1), x)


def color_blocks(x: torch.Tensor, count: float, generator: torch.Generator) -> torch.Tensor:
    """``count`` blocks of 32 px (at 224 px) of random uniform colour pasted at random places."""
    _, _, h, w = x.shape
    p = max(2, round(32 * side_scale(x)))
    out = x.clone()
    k = int(round(count))
    if k <= 0:
        return out
    u = uniform(generator, k, 5).to(x.device)
    pos = u[:, :2].cpu()
    for i in range(k):
        y0 = int(pos[i, 0] * max(h - p, 0))
        x0 = int(pos[i, 1] * max(w - p, 0))
        out[..., y0:y0 + p, x0:x0 + p] = u[i, 2:].to(x.dtype).view(1, 3, 1, 1)
    return out
