"""JPEG decoding on the GPU (nvJPEG), for ``score_images(..., gpu_jpeg=True)`` on CUDA.

Workers hand the main process a JPEG's undecoded bytes (a 1-D uint8 tensor) instead of pixels;
the main process decodes them on the device. Anything nvJPEG might treat differently from the
CPU reader goes to the CPU reader instead, so both paths fail alike.
"""

from __future__ import annotations

import io
import os

import torch
from PIL import Image

from qualiclip.images import load_image

_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"


def read_jpeg_bytes(path: str | os.PathLike) -> torch.Tensor | None:
    """File bytes as a 1-D uint8 tensor if ``path`` is a readable JPEG, else ``None``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if not data.startswith(_JPEG_MAGIC):
        return None
    # Hand nvJPEG only files the CPU reader would accept too: a file without its end-of-image
    # marker (truncated) or over PIL's decompression-bomb limit goes to the CPU reader, which
    # reports it.
    if not data.rstrip(b"\x00\r\n ").endswith(_JPEG_END):
        return None
    try:
        with Image.open(io.BytesIO(data)) as header:  # parses the header only
            width, height = header.size
    except Exception:  # noqa: BLE001 - anything odd: let the CPU reader say what it is
        return None
    if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_jpeg_on_gpu(data: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """nvJPEG decode with EXIF orientation -> ``(3, H, W)`` uint8 on ``device``; falls back to
    the CPU reader (same conversions as everywhere else) for JPEGs nvJPEG rejects (e.g. CMYK)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                           apply_exif_orientation=True)
    except RuntimeError:
        return load_image(name, as_uint8=True).tensor
