"""The ``sharpness_contrast`` group: over-sharpening, linear contrast and ("non-linear") contrast
reduction.

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1] (none of them is random).
"""

from __future__ import annotations

import torch
from qualiclip_train.degradation.colorspaces import lab_to_rgb, rgb_to_lab
from qualiclip_train.degradation.primitives import gaussian_filter


def over_sharpen(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Unsharp mask of Lab lightness: ``L + amount (L - blur(L))`` with a wide blur (sigma 6 px,
    13 x 13 window, as ARNIQA), so it brightens halos around every edge, not just the finest."""
    lab = rgb_to_lab(x.float())
    lightness = lab[:, :1]
    lightness = lightness + amount * (lightness - gaussian_filter(lightness, 6.0, radius=6))
    return lab_to_rgb(torch.cat([lightness, lab[:, 1:]], dim=1)).to(x.dtype)


def _not_a_knot_curve(x: torch.Tensor, knots_x: tuple[float, ...],
                      knots_y: tuple[float, ...]) -> torch.Tensor:
    """Tone curve: the cubic spline with not-a-knot ends (MATLAB ``spline``, which KADID uses)
    through ``(knots_x, knots_y)``, evaluated on ``x`` and clamped to [0, 1]."""
    from scipy.interpolate import CubicSpline

    spline = CubicSpline(knots_x, knots_y, bc_type="not-a-knot")
    coefs = torch.as_tensor(spline.c.T, dtype=x.dtype, device=x.device)  # (pieces, 4), x^3 first
    breaks = torch.as_tensor(knots_x, dtype=x.dtype, device=x.device)
    piece = torch.bucketize(x, breaks[1:-1])  # x on a break belongs to the piece on its left
    t = x - breaks[piece]
    c = coefs[piece]
    y = ((c[..., 0] * t + c[..., 1]) * t + c[..., 2]) * t + c[..., 3]
    return y.clamp(0, 1)


def linear_contrast(x: torch.Tensor, change: float, generator: torch.Generator) -> torch.Tensor:
    """Contrast tone curve: a spline through (0, 0), (0.3, 0.25 - change / 4), (0.5, 0.5),
    (0.7, 0.75 + change / 4), (1, 1). Note the neutral value is ``change = -0.2`` (knots on the
    diagonal), not 0: above it contrast rises, below it falls."""
    knots_y = (0.0, 0.25 - change / 4, 0.5, 0.75 + change / 4, 1.0)
    return _not_a_knot_curve(x, (0.0, 0.3, 0.5, 0.7, 1.0), knots_y)


def nonlinear_contrast(x: torch.Tensor, spread: float, generator: torch.Generator) -> torch.Tensor:
    """Squash the tones linearly into [0.5 - ``spread``, 0.5 + ``spread``]: contrast *falls* as
    the parameter shrinks (KADID's name notwithstanding, ARNIQA's curve is a straight line)."""
    return (0.5 + 2 * spread * (x.clamp(0, 1) - 0.5)).clamp(0, 1)
