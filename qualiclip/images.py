"""Reading images into the tensors QualiCLIP scores: path / PIL image / numpy array -> RGB.

Conversions (documented contract, shared by scoring, the plugin and training):

* EXIF orientation is applied first, so the image is scored the way viewers show it.
* ``1``, ``L``: grey replicated to R, G, B.
* ``I;16*`` / ``I`` (16- or 32-bit integer grey): divided by 65535 and clipped to [0, 1].
* ``F`` (float grey): taken as already in [0, 1] and clipped; NaN / inf pixels make the image
  unreadable (:class:`ImageReadError`), never a score.
* Anything with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index, ``La``):
  composited over a **white** background, the way most viewers show it.
* ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: PIL's conversion to RGB.
* numpy arrays ``(H, W)``, ``(H, W, 1|3|4)``: ``uint8`` / 255, ``uint16`` / 65535, floats taken
  as [0, 1] and clipped (NaN / inf refused, as for ``F``), ``bool`` as 0 / 1; a 4th channel is
  alpha (white background).
* Native resolution by default (the official protocol); ``max_side`` caps the longer side with an
  antialiased bilinear downscale (aspect ratio kept). Images are never upscaled here.
* PIL's decompression-bomb guard stays on: an image over ``PIL.Image.MAX_IMAGE_PIXELS`` (about
  89 MP by default; twice that is refused outright by PIL) raises :class:`ImageReadError`.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from qualiclip.constants import IMAGE_EXTENSIONS  # noqa: F401  (re-exported)

ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]  # noqa: UP007


#: Formats PIL reads only through an extra package; named in the error when reading fails.
_PLUGIN_FORMATS = {".heic": "pillow-heif", ".heif": "pillow-heif", ".avif": "pillow-heif"}

_WHITE = 1.0


#: Why an image whose decoded pixels hold NaN or inf (e.g. a float TIFF) is not scored.
NONFINITE_PIXELS = "non-finite pixel values (NaN/inf) in the image"


def short_name(name: str) -> str:
    """The file's base name, which is what error texts lead with (the folder is noise there:
    the full path sits beside the error in every result). ``<ndarray #3>`` stays as it is."""
    return os.path.basename(os.path.normpath(name)) or name


class ImageReadError(Exception):
    """An image that cannot be read.

    ``str(error)`` is short: the file's base name, then the reason (``"broken.jpg: not an image
    file PIL can read"``). The full path is :attr:`path` (also :attr:`source`), the reason alone
    :attr:`reason`.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{short_name(source)}: {reason}")
        self.path = source
        self.source = source
        self.reason = reason


def read_error_text(name: str, exc: Exception) -> str:
    """The per-file error text for an exception raised while reading ``name``: an
    :class:`ImageReadError`'s own text, else the base name, the exception's type and text
    (whatever else a decoder throws stays with that one image)."""
    if isinstance(exc, ImageReadError):
        return str(exc)
    return f"{short_name(name)}: {exc.__class__.__name__}: {exc}"


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        tensor: ``(3, H, W)``; float32 in [0, 1], or uint8 in [0, 255] when ``as_uint8`` was
            asked and the image is 8-bit (cheaper to pass between processes).
        width, height: size after EXIF orientation, before ``max_side`` (the image's own size).
    """

    tensor: torch.Tensor
    width: int
    height: int
    path: str

    def float_tensor(self) -> torch.Tensor:
        """``(3, H, W)`` float32 in [0, 1]."""
        return to_float(self.tensor)


def to_float(tensor: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]``; float tensors pass through as float32."""
    if tensor.dtype == torch.uint8:
        return tensor.float().div_(255.0)
    return tensor.float()


def source_name(source: Any, index: int | None = None) -> str:
    """A printable name for a source: the path, or ``<array #i>`` for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    filename = getattr(source, "filename", None)
    if isinstance(source, Image.Image) and filename:
        return str(filename)
    kind = type(source).__name__
    return f"<{kind} #{index}>" if index is not None else f"<{kind}>"


def load_image(source: ImageSource, max_side: int | None = None,
               as_uint8: bool = False) -> LoadedImage:
    """Read one image as RGB at native resolution (or capped by ``max_side``).

    Raises:
        ImageReadError: missing, unreadable, truncated, empty, too large, or of an unsupported
            layout; the message names the file and says what to do where something can be done.
    """
    name = source_name(source)
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if isinstance(source, torch.Tensor):
        array: np.ndarray = source.detach().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # CHW -> HWC
        rgb = _array_to_rgb(array, name)
    elif isinstance(source, np.ndarray):
        rgb = _array_to_rgb(source, name)
    elif isinstance(source, Image.Image):
        rgb = _pil_to_rgb(ImageOps.exif_transpose(source), name)
    else:
        rgb = _pil_to_rgb(_open(name), name)
    return _loaded(rgb, name, max_side, as_uint8)


def load_image_bytes(data: bytes, name: str, max_side: int | None = None,
                     as_uint8: bool = False) -> LoadedImage:
    """Read one encoded image held in memory (a file's bytes: an object-store read, a
    WebDataset member, a Parquet cell) exactly as :func:`load_image` reads the same file from
    disk: same decoders, EXIF orientation, colour rules and decompression-bomb guard.

    Args:
        data: the encoded file (JPEG, PNG, WebP ...).
        name: the path or key it came from; error texts lead with its base name, and its
            extension chooses the install hint for formats PIL cannot read.

    Raises:
        ImageReadError: empty, not an image, truncated, too large.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")
    if not data:
        raise ImageReadError(name, "file is empty")
    register_optional_openers()
    rgb = _pil_to_rgb(_decode(io.BytesIO(data), name), name)
    return _loaded(rgb, name, max_side, as_uint8)


def _loaded(rgb: np.ndarray, name: str, max_side: int | None, as_uint8: bool) -> LoadedImage:
    """``(H, W, 3)`` pixels -> the :class:`LoadedImage` (``max_side`` applied)."""
    height, width = rgb.shape[:2]
    if height == 0 or width == 0:
        raise ImageReadError(name, "image has zero width or height")
    if not rgb.flags.writeable or not rgb.flags.c_contiguous:
        rgb = np.array(rgb, order="C")  # PIL hands out read-only views torch will not wrap
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    if max_side is not None and max(height, width) > max_side:
        tensor = downscale(to_float(tensor), max_side)
    elif not (as_uint8 and tensor.dtype == torch.uint8):
        tensor = to_float(tensor)
    return LoadedImage(tensor=tensor, width=width, height=height, path=name)


def downscale(image: torch.Tensor, max_side: int) -> torch.Tensor:
    """``(3, H, W)`` float in [0, 1] -> longer side ``max_side`` (antialiased bilinear)."""
    h, w = image.shape[-2:]
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(image[None], size=size, mode="bilinear", antialias=True,
                        align_corners=False)[0]
    return out.clamp_(0.0, 1.0)


@functools.cache
def register_optional_openers() -> None:
    """Let PIL open HEIC/HEIF/AVIF when ``pillow-heif`` is installed (once per process)."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def _missing_reason(path: Path) -> str:
    """Why ``path`` (which does not exist, following links) cannot be opened: a symlink loop,
    a symlink to nothing, or no file."""
    if not path.is_symlink():
        return "file not found"
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop (the link leads back to itself): fix or remove the link"
    return (f"broken symlink: its target {os.readlink(path)} does not exist; fix or remove "
            "the link")


def _open(name: str) -> Image.Image:
    register_optional_openers()
    path = Path(name)
    if not path.exists():
        raise ImageReadError(name, _missing_reason(path))
    if path.is_dir():
        raise ImageReadError(name, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(name, "file is empty")
    return _decode(path, name)


def _decode(file: Path | io.BytesIO, name: str) -> Image.Image:
    """Decode ``file`` (a path, or a file's bytes) with PIL, oriented and detached from it;
    every decoder failure becomes an :class:`ImageReadError` naming ``name``."""
    suffix = Path(name).suffix.lower()
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that PIL only warns; treat it as the error it
            # guards against so a huge file cannot exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(file) as opened:  # closed here, also when decoding fails
                opened.load()
                # A detached copy: multi-frame files (GIF, TIFF) would otherwise keep the file
                # open for their other frames.
                image = _oriented(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            name,
            f"refused by PIL's decompression-bomb guard ({exc}). If you trust this file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS, or downscale it first",
        ) from exc
    except Image.UnidentifiedImageError as exc:
        package = _PLUGIN_FORMATS.get(suffix)
        hint = f" (for {suffix} files, `pip install {package}`)" if package else ""
        raise ImageReadError(name, f"not an image file PIL can read{hint}") from exc
    except OSError as exc:  # truncated or corrupt data, permissions
        # A file-system error's text repeats the full path; its strerror alone says it.
        reason = (f"cannot read file ({exc.strerror})" if exc.filename and exc.strerror
                  else f"cannot decode image ({exc})")
        raise ImageReadError(name, reason) from exc
    return image


def _oriented(image: Image.Image) -> Image.Image:
    """A loaded copy of ``image`` turned by its EXIF orientation, detached from its file."""
    try:
        turned = ImageOps.exif_transpose(image)
    except Exception:  # a corrupt EXIF block must not cost the image its score
        turned = None
    return image.copy() if turned is None or turned is image else turned


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    """PIL image in any mode -> ``(H, W, 3)`` uint8, or float32 in [0, 1] for high bit depths."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    if mode == "F":
        grey = _finite_unit(np.asarray(image, dtype=np.float32), name)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA")).astype(np.float32) / 255.0
        return _composite_white(rgba)
    try:
        return np.asarray(image.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageReadError(name, f"cannot convert PIL mode {mode!r} to RGB ({exc})") from exc


def _finite_unit(values: np.ndarray, name: str) -> np.ndarray:
    """Float pixels -> the same clipped to [0, 1]; refuses NaN / inf.

    Checked before clipping, which would hide an inf as 1.0 (and keeps NaN): a broken pixel
    means broken data, and an image must not reach the model (or get a score) that way.
    """
    if not np.isfinite(values).all():
        raise ImageReadError(name, NONFINITE_PIXELS)
    return np.clip(values, 0.0, 1.0)


def _composite_white(rgba: np.ndarray) -> np.ndarray:
    alpha = rgba[..., 3:4]
    return (rgba[..., :3] * alpha + _WHITE * (1.0 - alpha)).astype(np.float32)


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageReadError(
            name, f"array of shape {array.shape} is not an image: expected (H, W), (H, W, 1), "
                  "(H, W, 3) or (H, W, 4)")
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0 if array.shape[2] == 4 else array
    elif array.dtype == np.uint16:
        values = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        values = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        values = _finite_unit(array.astype(np.float32), name)
    else:
        raise ImageReadError(name, f"unsupported array dtype {array.dtype}: use uint8, uint16 "
                                   "or float in [0, 1]")
    if values.shape[2] == 4:
        values = _composite_white(values.astype(np.float32))
    if values.shape[2] == 1:
        values = np.repeat(values, 3, axis=2)
    return values
