"""Shared helpers for the training tests: small pristine folders of generated images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import make_image


def textured_image(size: int = 96, seed: int = 0) -> torch.Tensor:
    """``(1, 3, size, size)`` in [0.1, 0.9]: gradients, hard edges and fine texture, so blurs,
    noise, colour and tone changes all have something to act on."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    checker = ((torch.arange(size).view(-1, 1) // 7 + torch.arange(size).view(1, -1) // 7) % 2)
    base = torch.stack([xx, yy, 0.5 * checker.float() + 0.25 * xx])
    texture = 0.1 * torch.rand(3, size, size, generator=g)
    return (0.1 + 0.7 * base + texture).clamp(0.1, 0.9)[None]


def write_pristine(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        size = (96 + 8 * (i % 4), 80 + 4 * (i % 3))
        make_image(folder / f"img_{i}.{'png' if i % 2 else 'jpg'}", size=size, seed=seed + i)
    return folder


@pytest.fixture()
def pristine_dir(tmp_path) -> Path:
    return write_pristine(tmp_path / "pristine", 10)


def scene_image(path: Path, size: tuple[int, int] = (112, 96), seed: int = 0) -> Path:
    """Write a varied synthetic 'photo': a colour gradient sky, random rectangles and discs with
    sharp edges, and fine texture, so every distortion type changes it visibly."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    top, bottom = rng.uniform(0.2, 0.9, 3), rng.uniform(0.1, 0.8, 3)
    img = top * (1 - yy[..., None]) + bottom * yy[..., None]
    for _ in range(rng.integers(4, 9)):
        color = rng.uniform(0, 1, 3)
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
        if rng.uniform() < 0.5:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1))
        else:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r ** 2
        img[mask] = color
    img = img + 0.04 * np.sin(xx[..., None] * rng.uniform(40, 90)) + rng.normal(0, 0.01, img.shape)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8")).save(path)
    return path


def write_scenes(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene_image(folder / f"scene_{i:03d}.png", size=(112 + 8 * (i % 3), 96), seed=seed + i)
    return folder


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per process: on a small shared CI machine, OpenMP threads spinning
    against other processes made these tests up to 100x slower; the data-loader worker gives
    the parallelism instead. Restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
