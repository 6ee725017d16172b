"""The ``brightness`` group: brighten, darken and mean shift.

Every function follows the contract of :mod:`.distortions`: ``fn(x, value, generator) -> x`` on
``(N, 3, H, W)`` float RGB in [0, 1] (none of them is random).
"""

from __future__ import annotations

import torch
from qualiclip_train.degradation.colorspaces import lab_to_rgb, rgb_to_lab


def _bend(x: torch.Tensor, amount: float) -> torch.Tensor:
    """KADID's one-knot tone curve: the quadratic through (0, 0), (0.5, 0.5 + amount / 2) and
    (1, 1), i.e. ``x + 2 amount x (1 - x)``, clamped to [0, 1]. ``amount > 0`` brightens."""
    return (x + 2 * amount * x * (1 - x)).clamp(0, 1)


def brighten(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Brighten with the curve ``x + 2 amount x (1 - x)``: two parts applied to R, G, B and one
    part applied to Lab lightness (which keeps hue), averaged."""
    lab = rgb_to_lab(x.float())
    lightness = _bend(lab[:, :1] / 100, amount) * 100
    via_lab = lab_to_rgb(torch.cat([lightness, lab[:, 1:]], dim=1)).to(x.dtype)
    return ((2 * _bend(x, amount) + via_lab) / 3).clamp(0, 1)


def darken(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Darken R, G, B with the curve ``x - 2 amount x (1 - x)`` (clamped at 0: from amount 0.25
    on, the shadows go black)."""
    return _bend(x, -amount)


def mean_shift(x: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Add ``shift`` to every pixel (signed)."""
    return (x + shift).clamp(0, 1)
