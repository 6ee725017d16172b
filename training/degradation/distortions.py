"""The 24 synthetic distortions of KADID-10k / ARNIQA (method.md section 5), reimplemented in torch.

Every distortion is one small function ``fn(x, value, generator) -> x`` where

* ``x`` is ``(N, 3, H, W)`` float RGB in [0, 1] (any device; the ``N`` images get the *same*
  random parameters, which is how the two crops of a pair are degraded identically),
* ``value`` is the distortion's own parameter (sigma, quality, variance, ...),
* ``generator`` is a ``torch.Generator`` on ``x``'s device, the only source of randomness,

and returns a new ``(N, 3, H, W)`` tensor of the same dtype, clamped to [0, 1]. All run on the
tensor's device except JPEG 2000 (PIL, CPU) and JPEG on CPU tensors.

:data:`DISTORTIONS` is the single table: name -> :class:`Distortion` (group, the five level values
of the table in method.md, the function). Use it like::

    from training.distortions import DISTORTIONS
    g = torch.Generator().manual_seed(0)
    y = DISTORTIONS["gaussian_blur"].apply(x, level=3, generator=g)   # level 1..5

For monotone ladders (sign-alternating types ordered by magnitude) and compositions, see
:mod:`training.ladders`.

What each parameter does follows ARNIQA's implementation (miccunifi/ARNIQA,
``utils/distortions.py``), which is what QualiCLIP trained on; the code here is written from those
definitions, not copied. Each type matches ARNIQA's strength per level (mean PSNR / SSIM on 224 px
photo crops; ``tests/training/test_distortion_strength.py``); the two places where ARNIQA has a
plain defect and we keep the intent instead are listed in ``docs/distortions.md``. Sizes in pixels
(shifts, patches, blocks, jitter) are ARNIQA's at a 224 px crop and scale with the image side, so a
distortion looks equally strong at any crop size; the blur kernels keep ARNIQA's absolute sizes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Reference side (px) for distortions defined in pixels: sizes scale with ``min(H, W) / 224``.
REFERENCE_SIDE = 224

DistortionFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


# --- helpers ----------------------------------------------------------------------------------
def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def _randn_like(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One noise field ``(1, C, H, W)`` shared by the ``N`` images, so the crops of a pair are
    degraded identically."""
    shape = (1, *x.shape[1:])
    return torch.randn(shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def _scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / REFERENCE_SIDE


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filtering of each channel with ``kernel`` ``(kh, kw)`` (odd sizes), replicate
    padding so the borders do not darken and any image size works."""
    kh, kw = kernel.shape
    c = x.shape[1]
    weight = kernel.to(x.device, x.dtype).expand(c, 1, kh, kw)
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    return F.conv2d(padded, weight, groups=c)


def _gaussian_blur(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur, window ``2 radius + 1`` wide. KADID's default radius is
    ``ceil(2 sigma)``: its windows are cut at 2 sigma, not 3 (a weaker blur at large sigma)."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(2 * sigma)) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = k1 / k1.sum()
    return _filter(_filter(x, k1.view(1, -1)), k1.view(-1, 1))


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


# sRGB (D65) <-> CIE Lab, so chroma edits do not touch lightness.
_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]])
_WHITE = torch.tensor([0.950456, 1.0, 1.088754])


def rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` sRGB in [0, 1] -> Lab (L in [0, 100], a, b roughly [-128, 127])."""
    lin = torch.where(x > 0.04045, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = torch.einsum("ij,njhw->nihw", _RGB2XYZ.to(x), lin) / _WHITE.to(x).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                        200 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; output clamped to [0, 1]."""
    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    xyz = torch.where(f > 0.206893, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * _WHITE.to(lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2XYZ).to(lab), xyz).clamp(0, 1)
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055,
                      12.92 * lin)
    return rgb.clamp(0, 1)


def _rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    y = _luma(x)
    return torch.cat([y, (x[:, 2:3] - y) * 0.564 + 0.5, (x[:, 0:1] - y) * 0.713 + 0.5], dim=1)


def _ycbcr_to_rgb(x: torch.Tensor) -> torch.Tensor:
    y, cb, cr = x[:, 0:1], x[:, 1:2] - 0.5, x[:, 2:3] - 0.5
    r = y + 1.403 * cr
    g = y - 0.344 * cb - 0.714 * cr
    b = y + 1.773 * cb
    return torch.cat([r, g, b], dim=1)


def _bend(x: torch.Tensor, amount: float) -> torch.Tensor:
    """KADID's one-knot tone curve: the quadratic through (0, 0), (0.5, 0.5 + amount / 2) and
    (1, 1), i.e. ``x + 2 amount x (1 - x)``, clamped to [0, 1]. ``amount > 0`` brightens."""
    return (x + 2 * amount * x * (1 - x)).clamp(0, 1)


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


# --- blur -------------------------------------------------------------------------------------
def gaussian_blur(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """Gaussian blur with standard deviation ``sigma`` px (window cut at 2 sigma)."""
    return _gaussian_blur(x, sigma).clamp(0, 1)


def lens_blur(x: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """Defocus: convolution with an anti-aliased disk of ``radius`` px."""
    r = math.ceil(radius)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    dist = (t.view(-1, 1) ** 2 + t.view(1, -1) ** 2).sqrt()
    kernel = (radius + 0.5 - dist).clamp(0, 1)
    return _filter(x, kernel / kernel.sum()).clamp(0, 1)


def motion_blur(x: torch.Tensor, length: float, generator: torch.Generator) -> torch.Tensor:
    """Linear motion over ``length`` px at a random whole-degree angle in [0, 180] (one per call).

    Like MATLAB's ``fspecial('motion')``: a segment whose end pixels are ``length - 1`` apart, each
    kernel pixel weighted by ``1 - distance to the segment`` -- so length 1 is the identity.
    """
    angle = math.radians(int(_rand(generator, 1) * 181))
    half = (length - 1) / 2
    r = max(1, math.ceil(half))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    dx, dy = math.cos(angle), -math.sin(angle)  # image rows grow downwards
    along = xx * dx + yy * dy
    across = (-xx * dy + yy * dx).abs()
    beyond = (along.abs() - half).clamp(min=0)
    kernel = (1 - (across ** 2 + beyond ** 2).sqrt()).clamp(min=0)
    return _filter(x, kernel / kernel.sum()).clamp(0, 1)


# --- color ------------------------------------------------------------------------------------
def color_diffusion(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Colour bleeding: the Lab a, b channels blurred (sigma ``1.5 amount + 2`` px) *and* scaled by
    ``amount`` -- so from level 2 on this is as much an over-saturation as a bleed (ARNIQA)."""
    lab = rgb_to_lab(x.float())
    ab = _gaussian_blur(lab[:, 1:], (1.5 * amount + 2) * _scale(x)) * amount
    return lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1)).to(x.dtype)


def color_shift(x: torch.Tensor, shift: float, generator: torch.Generator) -> torch.Tensor:
    """Mis-registered green channel: shifted by ``shift`` px (rounded per axis) towards a random
    direction of the lower-right quadrant, replicate edges, blended in where the image has edges:
    the weight is the luma gradient magnitude blurred (sigma 4 px) and min-max normalised.

    (ARNIQA's percentile clamp of the weight compares against sort *indices* and so leaves it
    unchanged; we leave it out, which is the same result.)
    """
    a = _rand(generator, 2).cpu().double()
    s = shift * _scale(x)
    dy, dx = (torch.round(a / a.norm().clamp(min=1e-12) * s)).long().tolist()
    h, w = x.shape[-2:]
    g = x[:, 1:2]
    # Shift with replicate edges: pad, then crop the window displaced by (dy, dx).
    pad = F.pad(g, (dx, 0, dy, 0), mode="replicate") if dx or dy else g
    shifted = pad[..., :h, :w]
    gray = _luma(x)
    gy = (F.pad(gray, (0, 0, 1, 1), mode="replicate").diff(dim=-2)[..., 1:, :]
          + F.pad(gray, (0, 0, 1, 1), mode="replicate").diff(dim=-2)[..., :-1, :]) / 2
    gx = (F.pad(gray, (1, 1, 0, 0), mode="replicate").diff(dim=-1)[..., 1:]
          + F.pad(gray, (1, 1, 0, 0), mode="replicate").diff(dim=-1)[..., :-1]) / 2
    edges = _gaussian_blur((gx ** 2 + gy ** 2).sqrt(), 4.0)
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


# --- compression ------------------------------------------------------------------------------
def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.float() * 255).round().clamp(0, 255).to(torch.uint8)


def _pil_codec(x: torch.Tensor, **save_args: object) -> torch.Tensor:
    """Encode and decode every image of ``x`` with PIL (CPU), back on ``x``'s device."""
    import numpy as np
    from PIL import Image

    out = []
    for img in _to_uint8(x).cpu():
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, **save_args)
        buf.seek(0)
        with Image.open(buf) as decoded:
            arr = np.asarray(decoded.convert("RGB")).copy()
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    return (torch.stack(out).to(x.device, torch.float32) / 255).to(x.dtype)


def jpeg2000(x: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """JPEG 2000 at compression ratio ``ratio`` (PIL / OpenJPEG; runs on the CPU). Uses the
    irreversible 9/7 wavelet, the standard lossy mode (as MATLAB's ``imwrite`` does for a
    compression ratio), which is also about 15% faster than the reversible 5/3 one."""
    return _pil_codec(x, format="JPEG2000", quality_mode="rates",
                      quality_layers=[float(ratio)], irreversible=True)


def jpeg(x: torch.Tensor, quality: float, generator: torch.Generator) -> torch.Tensor:
    """JPEG at ``quality``: nvjpeg (torchvision) for CUDA tensors, PIL / libjpeg on the CPU."""
    q = int(round(quality))
    if x.device.type == "cuda":
        from torchvision.io import decode_jpeg, encode_jpeg

        try:
            encoded = [e.cpu() for e in encode_jpeg(list(_to_uint8(x)), quality=q)]
            decoded = decode_jpeg(encoded, device=x.device)
            return (torch.stack(decoded).float() / 255).to(x.dtype)
        except (RuntimeError, ValueError):  # no GPU JPEG codec in this build: use the CPU
            pass
    return _pil_codec(x, format="JPEG", quality=q)


# --- noise ------------------------------------------------------------------------------------
def white_noise(x: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``variance`` on each RGB channel."""
    return (x + math.sqrt(variance) * _randn_like(x, generator)).clamp(0, 1)


def white_noise_ycbcr(x: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of ``variance`` on each of Y, Cb and Cr (equal std, as ARNIQA;
    back in RGB the chroma noise makes it about as strong as ``white_noise`` at 3x the variance)."""
    ycc = _rgb_to_ycbcr(x) + math.sqrt(variance) * _randn_like(x, generator)
    return _ycbcr_to_rgb(ycc).clamp(0, 1)


def impulse_noise(x: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """Salt and pepper per channel value: a fraction ``density`` of the values set to 0 or 1
    (half each), so most hit pixels turn a saturated colour rather than black or white."""
    u = _rand(generator, 1, *x.shape[1:]).to(x.device)
    out = torch.where(u < density / 2, torch.zeros_like(x), x)
    return torch.where((u >= density / 2) & (u < density), torch.ones_like(x), out)


def multiplicative_noise(x: torch.Tensor, variance: float,
                         generator: torch.Generator) -> torch.Tensor:
    """Speckle: ``x + x * n`` with ``n`` Gaussian of ``variance``."""
    return (x * (1 + math.sqrt(variance) * _randn_like(x, generator))).clamp(0, 1)


# --- brightness -------------------------------------------------------------------------------
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


# --- spatial ----------------------------------------------------------------------------------
def jitter(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Pixel scatter, five times over: each round every pixel is resampled (bilinear, replicate
    edges) from an offset drawn per pixel and axis from N(0, ``amount``\u00b2) px (at 224 px)."""
    n, _, h, w = x.shape
    sigma = amount * _scale(x)
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
    p = max(2, round(16 * _scale(x)))
    margin = p  # ARNIQA's "radius": sources stay this far from the border, moves are +-margin/2
    out = x.clone()
    k = int(round(count))
    if h < p + 2 * margin or w < p + 2 * margin or k <= 0:
        return out
    u = _rand(generator, k, 4).cpu()
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
    p = max(2, round(32 * _scale(x)))
    out = x.clone()
    k = int(round(count))
    if k <= 0:
        return out
    u = _rand(generator, k, 5).to(x.device)
    pos = u[:, :2].cpu()
    for i in range(k):
        y0 = int(pos[i, 0] * max(h - p, 0))
        x0 = int(pos[i, 1] * max(w - p, 0))
        out[..., y0:y0 + p, x0:x0 + p] = u[i, 2:].to(x.dtype).view(1, 3, 1, 1)
    return out


# --- sharpness and contrast -------------------------------------------------------------------
def over_sharpen(x: torch.Tensor, amount: float, generator: torch.Generator) -> torch.Tensor:
    """Unsharp mask of Lab lightness: ``L + amount (L - blur(L))`` with a wide blur (sigma 6 px,
    13 x 13 window, as ARNIQA), so it brightens halos around every edge, not just the finest."""
    lab = rgb_to_lab(x.float())
    lightness = lab[:, :1]
    lightness = lightness + amount * (lightness - _gaussian_blur(lightness, 6.0, radius=6))
    return lab_to_rgb(torch.cat([lightness, lab[:, 1:]], dim=1)).to(x.dtype)


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


# --- the table --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distortion:
    """One distortion type.

    Attributes:
        name: identifier, e.g. ``"gaussian_blur"``.
        group: one of :data:`GROUPS`.
        values: the parameter at levels 1..5 (method.md section 5), as published.
        fn: ``(x (N, 3, H, W) in [0, 1], value, generator) -> (N, 3, H, W) in [0, 1]``.
        signed: the published values alternate either side of ``neutral`` (mean shift, linear
            contrast); ladders order them by distance from it, with one side per image (see
            :mod:`training.ladders`).
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

#: The single table: name -> :class:`Distortion`, in method.md order.
DISTORTIONS: dict[str, Distortion] = {d.name: d for d in _TABLE}
#: The 7 groups, in table order.
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(d.group for d in _TABLE))
