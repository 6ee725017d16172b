"""The 24 synthetic distortions of KADID-10k / ARNIQA (docs/method.md, "Degradations"), in torch.

Every distortion is one small function ``fn(x, value, generator) -> x`` where

* ``x`` is ``(N, 3, H, W)`` float RGB in [0, 1] (any device; the ``N`` images get the *same*
  random parameters, which is how the two crops of a pair are degraded identically),
* ``value`` is the distortion's own parameter (sigma, quality, variance, ...),
* ``generator`` is a ``torch.Generator`` on ``x``'s device, the only source of randomness,

and returns a new ``(N, 3, H, W)`` tensor of the same dtype, clamped to [0, 1]. All run on the
tensor's device except JPEG 2000 (PIL, CPU) and JPEG on CPU tensors.

The functions live in one module per group (:data:`GROUPS`): :mod:`.blur`, :mod:`.color`,
:mod:`.compression`, :mod:`.noise`, :mod:`.brightness`, :mod:`.spatial` and
:mod:`.sharpness_contrast`, on the building blocks of :mod:`.primitives` (randomness, pixel
scale, filtering) and :mod:`.colorspaces` (Lab, YCbCr). This module is the table and the public
entry point; it re-exports the 24 functions, :func:`rgb_to_lab`, :func:`lab_to_rgb` and
:data:`REFERENCE_SIDE`.

:data:`DISTORTIONS` is the single table: name -> :class:`Distortion` (group, the five level values
of the table in docs/method.md, the function). Use it like::

    from qualiclip_train.degradation.distortions import DISTORTIONS
    g = torch.Generator().manual_seed(0)
    y = DISTORTIONS["gaussian_blur"].apply(x, level=3, generator=g)   # level 1..5

For monotone ladders (sign-alternating types ordered by magnitude) and compositions, see
:mod:`training.degradation.ladders`.

What each parameter does follows ARNIQA's implementation (miccunifi/ARNIQA,
``utils/distortions.py``), which is what QualiCLIP trained on; the code of these modules is
written from those definitions, not copied. Each type matches ARNIQA's strength per level (mean
PSNR / SSIM on 224 px photo crops; ``tests/training/test_distortion_strength.py``); the two places
where ARNIQA has a plain defect and we keep the intent instead are listed in
``docs/distortions.md``. Sizes in pixels (shifts, patches, blocks, jitter) are ARNIQA's at a 224 px
crop and scale with the image side, so a distortion looks equally strong at any crop size; the blur
kernels keep ARNIQA's absolute sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from qualiclip_train.degradation.blur import gaussian_blur, lens_blur, motion_blur
from qualiclip_train.degradation.brightness import brighten, darken, mean_shift
from qualiclip_train.degradation.color import (
    color_diffusion,
    color_shift,
    saturation_hsv,
    saturation_lab,
)
from qualiclip_train.degradation.colorspaces import lab_to_rgb, rgb_to_lab
from qualiclip_train.degradation.compression import jpeg, jpeg2000
from qualiclip_train.degradation.noise import (
    impulse_noise,
    multiplicative_noise,
    white_noise,
    white_noise_ycbcr,
)
from qualiclip_train.degradation.primitives import REFERENCE_SIDE
from qualiclip_train.degradation.sharpness_contrast import (
    linear_contrast,
    nonlinear_contrast,
    over_sharpen,
)
from qualiclip_train.degradation.spatial import (
    color_blocks,
    jitter,
    non_eccentricity,
    pixelate,
    quantization,
)

__all__ = [
    "DISTORTIONS", "GROUPS", "REFERENCE_SIDE", "Distortion", "DistortionFn", "apply_value",
    "lab_to_rgb", "rgb_to_lab",
    "gaussian_blur", "lens_blur", "motion_blur",
    "color_diffusion", "color_shift", "saturation_hsv", "saturation_lab",
    "jpeg2000", "jpeg",
    "white_noise", "white_noise_ycbcr", "impulse_noise", "multiplicative_noise",
    "brighten", "darken", "mean_shift",
    "jitter", "non_eccentricity", "pixelate", "quantization", "color_blocks",
    "over_sharpen", "linear_contrast", "nonlinear_contrast",
]

DistortionFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Distortion:
    """One distortion type.

    Attributes:
        name: identifier, e.g. ``"gaussian_blur"``.
        group: one of :data:`GROUPS`.
        values: the parameter at levels 1..5 (docs/method.md), as published.
        fn: ``(x (N, 3, H, W) in [0, 1], value, generator) -> (N, 3, H, W) in [0, 1]``.
        signed: the published values alternate either side of ``neutral`` (mean shift, linear
            contrast); ladders order them by distance from it, with one side per image (see
            :mod:`training.degradation.ladders`).
        neutral: the parameter that leaves the image unchanged (signed types only). Linear
            contrast's is -0.2, not 0: its curve's knots lie on the diagonal there.
    """

    name: str
    group: str
    values: tuple[float, float, float, float, float]
    fn: DistortionFn
    signed: bool = False
    neutral: float = 0.0

    def apply(self, x: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
        """Apply at published ``level`` 1..5. ``x`` ``(N, 3, H, W)`` or ``(3, H, W)`` in [0, 1]."""
        if not 1 <= level <= 5:
            raise ValueError(f"level must be 1..5, got {level}")
        return apply_value(self, x, self.values[level - 1], generator)


def apply_value(d: Distortion, x: torch.Tensor, value: float,
                generator: torch.Generator) -> torch.Tensor:
    """Apply ``d`` with parameter ``value``; accepts ``(3, H, W)`` or ``(N, 3, H, W)``."""
    if x.ndim == 3:
        return d.fn(x.unsqueeze(0), value, generator)[0]
    return d.fn(x, value, generator)


_TABLE: tuple[Distortion, ...] = (
    Distortion("gaussian_blur", "blur", (0.1, 0.5, 1, 2, 5), gaussian_blur),
    Distortion("lens_blur", "blur", (1, 2, 4, 6, 8), lens_blur),
    Distortion("motion_blur", "blur", (1, 2, 4, 6, 10), motion_blur),
    Distortion("color_diffusion", "color", (1, 3, 6, 8, 12), color_diffusion),
    Distortion("color_shift", "color", (1, 3, 6, 8, 12), color_shift),
    Distortion("saturation_hsv", "color", (0.4, 0.2, 0.1, 0, -0.4), saturation_hsv),
    Distortion("saturation_lab", "color", (1, 2, 3, 6, 9), saturation_lab),
    Distortion("jpeg2000", "compression", (16, 32, 45, 120, 170), jpeg2000),
    Distortion("jpeg", "compression", (43, 36, 24, 7, 4), jpeg),
    Distortion("white_noise", "noise", (0.001, 0.002, 0.003, 0.005, 0.01), white_noise),
    Distortion("white_noise_ycbcr", "noise", (0.0001, 0.0005, 0.001, 0.002, 0.003),
               white_noise_ycbcr),
    Distortion("impulse_noise", "noise", (0.001, 0.005, 0.01, 0.02, 0.03), impulse_noise),
    Distortion("multiplicative_noise", "noise", (0.001, 0.005, 0.01, 0.02, 0.05),
               multiplicative_noise),
    Distortion("brighten", "brightness", (0.1, 0.2, 0.4, 0.7, 1.1), brighten),
    Distortion("darken", "brightness", (0.05, 0.1, 0.2, 0.4, 0.8), darken),
    Distortion("mean_shift", "brightness", (0, 0.08, -0.08, 0.15, -0.15), mean_shift,
               signed=True),
    Distortion("jitter", "spatial", (0.05, 0.1, 0.2, 0.5, 1), jitter),
    Distortion("non_eccentricity", "spatial", (20, 40, 60, 80, 100), non_eccentricity),
    Distortion("pixelate", "spatial", (0.01, 0.05, 0.1, 0.2, 0.5), pixelate),
    Distortion("quantization", "spatial", (20, 16, 13, 10, 7), quantization),
    Distortion("color_blocks", "spatial", (2, 4, 6, 8, 10), color_blocks),
    Distortion("over_sharpen", "sharpness_contrast", (1, 2, 3, 6, 12), over_sharpen),
    Distortion("linear_contrast", "sharpness_contrast", (0, 0.15, -0.4, 0.3, -0.6),
               linear_contrast, signed=True, neutral=-0.2),
    Distortion("nonlinear_contrast", "sharpness_contrast", (0.4, 0.3, 0.2, 0.1, 0.05),
               nonlinear_contrast),
)

#: The single table: name -> :class:`Distortion`, in docs/method.md's order.
DISTORTIONS: dict[str, Distortion] = {d.name: d for d in _TABLE}
#: The 7 groups, in table order.
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(d.group for d in _TABLE))
