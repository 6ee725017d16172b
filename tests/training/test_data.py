"""Pristine folder reading, crops and the resumable sampler."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from qualiclip_train.data import (
    PristineCrops,
    StepBatchSampler,
    find_images,
    fit_min_side,
    load_rgb,
    overlapping_crops,
    readable_images,
    split_holdout,
)

from tests.conftest import make_image


def test_find_images_recursive_all_formats(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name, fmt in [("x.jpg", "JPEG"), ("a/y.PNG", "PNG"), ("a/b/z.webp", "WEBP"),
                      ("a/b/w.tiff", "TIFF"), ("a/v.bmp", "BMP")]:
        Image.new("RGB", (40, 30), (10, 200, 30)).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("not an image")
    found = find_images(tmp_path)
    assert len(found) == 5
    assert all(load_rgb(p).shape == (3, 30, 40) for p in found)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert load_rgb(tmp_path / "rot.jpg").shape == (3, 60, 20)


def test_unreadable_files_skipped_with_one_warning(tmp_path):
    good = [make_image(tmp_path / f"ok{i}.png", seed=i) for i in range(3)]
    (tmp_path / "bad1.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "bad2.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="skipping 2 unreadable"):
        kept = readable_images(find_images(tmp_path))
    assert sorted(kept) == sorted(good)


def test_small_images_are_upscaled_and_crops_overlap():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    big = fit_min_side(image, 64)
    assert min(big.shape[-2:]) == 64 and big.dtype == torch.uint8
    crops = overlapping_crops(fit_min_side(torch.zeros(3, 300, 300, dtype=torch.uint8), 64), 64,
                              torch.Generator().manual_seed(0))
    assert crops.shape == (2, 3, 64, 64)


def test_crop_offset_is_at_most_half_a_crop():
    # A coordinate image: each pixel stores its own (y, x), so the crops reveal their origins.
    yy, xx = torch.meshgrid(torch.arange(200), torch.arange(200), indexing="ij")
    coords = torch.stack([yy, xx, xx]).to(torch.int64)
    for seed in range(20):
        a, b = overlapping_crops(coords, 64, torch.Generator().manual_seed(seed))
        dy, dx = abs(int(a[0, 0, 0] - b[0, 0, 0])), abs(int(a[1, 0, 0] - b[1, 0, 0]))
        assert dy <= 32 and dx <= 32


def test_dataset_item_and_determinism(tmp_path):
    paths = [make_image(tmp_path / f"{i}.png", size=(50, 40), seed=i) for i in range(3)]
    ds = PristineCrops(paths, 48)
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert a["crops"].shape == (2, 3, 48, 48) and a["crops"].dtype == torch.uint8
    assert torch.equal(a["crops"], b["crops"]) and int(a["ladder_seed"]) == int(b["ladder_seed"])
    degraded = PristineCrops(paths, 48, levels=3)[(1, 123)]["degraded"]
    assert degraded.shape == (2, 3, 3, 48, 48) and degraded.dtype == torch.uint8


def test_sampler_resume_and_sharding():
    full = list(StepBatchSampler(10, 3, seed=4, start=0, stop=8))
    assert list(StepBatchSampler(10, 3, seed=4, start=5, stop=8)) == full[5:]
    epoch0 = [i for batch in full[:3] for i, _ in batch][:10]
    assert sorted(epoch0[:9]) == sorted(set(epoch0[:9]))  # a permutation, no repeats
    r0 = list(StepBatchSampler(10, 2, seed=4, start=0, stop=3, rank=0, world_size=2))
    r1 = list(StepBatchSampler(10, 2, seed=4, start=0, stop=3, rank=1, world_size=2))
    single = list(StepBatchSampler(10, 4, seed=4, start=0, stop=3))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == single


def test_split_holdout():
    paths = [f"p{i}" for i in range(10)]
    train, held = split_holdout(paths, 3, seed=0)
    assert len(held) == 3 and set(train) | set(held) == set(paths) and not set(train) & set(held)
    assert split_holdout(paths, 3, seed=0) == (train, held)
    assert split_holdout(["only"], 3, seed=0) == (["only"], ["only"])


def test_load_rgb_matches_the_scoring_reader_for_16_bit_and_alpha(tmp_path):
    """Training reads pristine images exactly as scoring does (to 8 bits): 16-bit grey is scaled
    by 65535, not clipped to white, and transparency is composited over white."""
    import numpy as np

    from qualiclip.images import load_image

    grey16 = np.full((20, 30), 20000, dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")
    deep = load_rgb(tmp_path / "deep.png")
    assert deep.dtype == torch.uint8 and deep.shape == (3, 20, 30)
    assert int(deep.min()) == int(deep.max()) == round(20000 / 65535 * 255)  # 78, not 255

    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red at alpha 128/255 over white -> (227, 127, 127)
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "half.png")
    half = load_rgb(tmp_path / "half.png")
    expected = load_image(tmp_path / "half.png").tensor.mul(255).round().to(torch.uint8)
    assert torch.equal(half, expected)
    assert half[:, 0, 0].tolist() == [227, 127, 127]
