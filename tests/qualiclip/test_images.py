"""Every common file kind becomes RGB in [0, 1] as documented; bad files give clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from qualiclip.images import IMAGE_EXTENSIONS, ImageReadError, load_image


def _save(tmp_path, name, image, **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgb_png_roundtrip_is_exact(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    loaded = load_image(_save(tmp_path, "a.png", Image.fromarray(arr)))
    assert loaded.tensor.shape == (3, 13, 17) and loaded.tensor.dtype == torch.float32
    assert (loaded.width, loaded.height) == (17, 13)
    torch.testing.assert_close(loaded.tensor, torch.from_numpy(arr).permute(2, 0, 1) / 255.0)


def test_grey_is_replicated(tmp_path):
    loaded = load_image(_save(tmp_path, "g.png", Image.new("L", (5, 4), 51)))
    assert torch.allclose(loaded.tensor, torch.full((3, 4, 5), 0.2))


def test_alpha_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    assert torch.allclose(load_image(_save(tmp_path, "t.png", rgba)).tensor, torch.ones(3, 4, 4))
    half = Image.new("LA", (4, 4), (0, 128))
    value = load_image(_save(tmp_path, "la.png", half)).tensor
    assert torch.allclose(value, torch.full((3, 4, 4), 1 - 128 / 255), atol=1e-6)


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    path = _save(tmp_path, "p.png", image, transparency=0)
    t = load_image(path).tensor
    assert torch.allclose(t[:, 1, 1], torch.ones(3))  # transparent index -> white
    assert torch.allclose(t[:, 0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_cmyk_jpeg(tmp_path):
    path = _save(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), quality=100)
    t = load_image(path).tensor
    assert t.shape == (3, 8, 8) and t[0].mean() > 0.9 and t[1:].mean() < 0.1  # red


def test_16bit_grey_uses_full_range(tmp_path):
    arr = np.full((6, 6), 65535 // 2, dtype=np.uint16)
    path = _save(tmp_path, "d.png", Image.fromarray(arr))
    t = load_image(path).tensor
    assert torch.allclose(t, torch.full((3, 6, 6), (65535 // 2) / 65535), atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = _save(tmp_path, "r.jpg", image, exif=exif.tobytes())
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (20, 40)


def test_max_side_downscales_with_aspect_ratio(tmp_path):
    path = _save(tmp_path, "big.png", Image.new("RGB", (400, 100), (10, 200, 30)))
    loaded = load_image(path, max_side=100)
    assert loaded.tensor.shape == (3, 25, 100)
    assert (loaded.width, loaded.height) == (400, 100)  # the image's own size is reported
    assert load_image(path, max_side=1000).tensor.shape == (3, 100, 400)  # never upscaled


def test_arrays_of_each_dtype():
    u8 = np.full((4, 5, 3), 255, np.uint8)
    assert torch.allclose(load_image(u8).tensor, torch.ones(3, 4, 5))
    u16 = np.full((4, 5), 65535, np.uint16)
    assert torch.allclose(load_image(u16).tensor, torch.ones(3, 4, 5))
    f = np.full((4, 5, 3), 2.0, np.float32)
    assert torch.allclose(load_image(f).tensor, torch.ones(3, 4, 5))  # clipped
    rgba = np.zeros((4, 5, 4), np.uint8)
    assert torch.allclose(load_image(rgba).tensor, torch.ones(3, 4, 5))  # transparent -> white
    with pytest.raises(ImageReadError, match="not an image"):
        load_image(np.zeros((4, 5, 7), np.uint8))


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
])
def test_unreadable_files(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        load_image(path)
    assert "bad.jpg" in str(info.value)


def test_truncated_jpeg(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="folder"):
        load_image(tmp_path)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = _save(tmp_path, "bomb.png", Image.new("RGB", (100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="decompression-bomb"):
        load_image(path)


def test_heic_without_its_decoder_names_the_package(tmp_path):
    """HEIC files are picked up by folder scans; where PIL cannot read them the error says which
    package adds the format (pillow-heif is not installed in the test environment)."""
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("pillow-heif is installed: junk bytes would be reported differently")
    path = tmp_path / "phone.HEIC"
    path.write_bytes(b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64)
    assert path.suffix.lower() in IMAGE_EXTENSIONS
    with pytest.raises(ImageReadError, match="pip install pillow-heif") as info:
        load_image(path)
    assert "phone.HEIC" in str(info.value)


def test_rgb_png_with_a_transparent_colour_is_composited_over_white(tmp_path):
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[..., :] = (10, 20, 30)
    pixels[0, 0] = (200, 100, 50)
    Image.fromarray(pixels).save(tmp_path / "key.png", transparency=(10, 20, 30))
    tensor = load_image(tmp_path / "key.png").tensor
    assert torch.allclose(tensor[:, 1:, 1:], torch.ones(3, 5, 7))  # the keyed colour -> white
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0)


@pytest.mark.parametrize("name, make", [
    ("anim.gif", lambda p: Image.new("P", (8, 8)).save(
        p, save_all=True, append_images=[Image.new("P", (8, 8), 3)])),
    ("cut.png", lambda p: (make_png_bytes(p), p.write_bytes(p.read_bytes()[:60]))),
])
def test_files_are_closed_after_reading(tmp_path, name, make):
    """Multi-frame files and files that fail to decode leave no open handle behind."""
    import gc
    import warnings

    path = tmp_path / name
    make(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        try:
            load_image(path)
        except ImageReadError:
            pass
        gc.collect()  # an unclosed handle warns when it is collected
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def make_png_bytes(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_float_tiff_with_a_non_finite_pixel_is_refused(tmp_path, bad):
    """A float TIFF (PIL mode "F") with one NaN / inf pixel is unreadable, never a tensor
    holding NaN (which would reach the model) and never silently clipped (inf -> 1.0)."""
    pixels = np.full((8, 10), 0.5, np.float32)
    pixels[3, 4] = bad
    path = _save(tmp_path, "float.tif", Image.fromarray(pixels, mode="F"))
    assert Image.open(path).mode == "F"
    with pytest.raises(ImageReadError, match=r"non-finite pixel values \(NaN/inf\)") as info:
        load_image(path)
    assert str(info.value).startswith("float.tif: ")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_float_arrays_and_tensors_with_a_non_finite_pixel_are_refused(bad):
    pixels = np.full((8, 10, 3), 0.5, np.float32)
    pixels[1, 2, 0] = bad
    for source in (pixels, torch.from_numpy(pixels).permute(2, 0, 1)):
        with pytest.raises(ImageReadError, match="non-finite pixel values"):
            load_image(source)


def test_finite_float_tiff_is_clipped_not_refused(tmp_path):
    pixels = np.array([[-0.5, 0.25], [0.75, 2.0]], np.float32)
    tensor = load_image(_save(tmp_path, "ok.tif", Image.fromarray(pixels, mode="F"))).tensor
    assert torch.allclose(tensor[0], torch.tensor([[0.0, 0.25], [0.75, 1.0]]))


def test_error_text_is_short_and_the_full_path_is_kept(tmp_path):
    """Error texts lead with the base name (the folder is in the result's path column); the
    full path stays available on the exception."""
    folder = tmp_path / "a" / "long" / "folder"
    folder.mkdir(parents=True)
    path = folder / "broken.jpg"
    path.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert str(info.value) == "broken.jpg: not an image file PIL can read"
    assert info.value.path == str(path) and info.value.reason == "not an image file PIL can read"
    with pytest.raises(ImageReadError) as info:
        load_image(folder / "missing.png")
    assert str(info.value) == "missing.png: file not found"
