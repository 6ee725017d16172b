"""How strong a distortion is: mean PSNR / SSIM against the pristine image on a fixed photo set.

The photo set is four natural photos shipped inside scikit-image (a dependency of FiftyOne, so
always installed; no download): ``astronaut``, ``coffee``, ``chelsea`` and ``rocket``, one
224 x 224 crop each (the training crop size), at fixed places chosen to hold both texture and
flat areas. The same helpers measured the reference numbers in
:mod:`tests.training.arniqa_reference`, so ours and ARNIQA's are compared on equal terms.
"""

from __future__ import annotations

import torch

#: (skimage.data function, top, left) of each 224 px crop.
PHOTOS: tuple[tuple[str, int, int], ...] = (
    ("astronaut", 40, 150),
    ("coffee", 120, 180),
    ("chelsea", 40, 110),
    ("rocket", 150, 250),
)
CROP = 224


def photo_set() -> torch.Tensor:
    """The fixed photos as ``(4, 3, 224, 224)`` float32 RGB in [0, 1] (8-bit values)."""
    import skimage.data

    crops = []
    for name, top, left in PHOTOS:
        arr = getattr(skimage.data, name)()[top:top + CROP, left:left + CROP, :3]
        crops.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255)
    return torch.stack(crops)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of ``(N, 3, H, W)`` images in [0, 1], one value per image (capped at 100 dB
    so an identity does not give inf)."""
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return 10 * torch.log10(1 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range
    1) of ``(N, 3, H, W)`` images in [0, 1], averaged over channels and valid positions; one
    value per image."""
    t = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-t ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    h, w = x.shape[-2:]
    x, y = x.float(), y.float()

    def band(n: int) -> torch.Tensor:
        """``(n, n - 10)``: column j holds the window at rows j..j+10 ('valid' filtering)."""
        m = torch.zeros(n, n - 10)
        for j in range(n - 10):
            m[j:j + 11, j] = g
        return m

    # The window is separable: two matrix products, much faster on a CPU than a 2-D conv.
    bh, bw = band(h), band(w)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return bh.t() @ z @ bw

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
