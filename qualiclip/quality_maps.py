"""Quality maps: where in an image QualiCLIP's prompts see poor quality.

A quality map scores each cell of the backbone's final feature map with the same prompts and the
same formula as the global score (:meth:`qualiclip.model.QualiCLIP.quality_map`): one cell covers
about 32 x 32 input pixels, but its receptive field is much larger, so a defect bleeds into
neighbouring cells.

What it is: a **local score** for comparing regions *of one image*; low cells are where the
"Bad photo." / "Blurry image." / ... side of the prompt pairs wins. What it is not: a calibrated
measurement. Cell values are not on the scale of the global score (the global embedding is an
attention-weighted mix of the cell embeddings, so the global score is not the mean of the map),
and the model was trained on whole-image crops, never on regions.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qualiclip.model import QualiCLIP

#: Things :func:`compute_quality_maps` accepts: a path, or a ``(3, H, W)`` tensor in [0, 1].
Source = str | os.PathLike | torch.Tensor


@dataclass(frozen=True)
class QualityMap:
    """One image's quality map.

    Attributes:
        path: the source path (``None`` for a tensor source).
        map: ``(h, w)`` float32 in [0, 1], higher is better; ``None`` when ``error`` is set.
        width, height: size in pixels of the image the map was computed on (after ``max_side``).
        error: why the image has no map (unreadable, out of memory, or a map holding NaN /
            inf, which is never shown as quality), else ``None``.
    """

    path: str | None
    map: np.ndarray | None
    width: int
    height: int
    error: str | None = None


def quality_map(model: QualiCLIP, image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` RGB in [0, 1] -> ``(h, w)`` float32 in [0, 1], ``h, w ~ H/32, W/32``."""
    device = model.prompt_features.device
    with torch.inference_mode():
        qmap = model.quality_map(image.unsqueeze(0).to(device=device, dtype=torch.float32))
    return qmap[0].float().cpu().numpy()


def iter_quality_maps(
    sources: Iterable[Source], model: QualiCLIP, max_side: int | None = None
) -> Iterator[QualityMap]:
    """Yield one :class:`QualityMap` per source, in order, one image at a time.

    Images run at native resolution, as in scoring (sizes differ, so no batching); ``max_side``
    downscales larger images first, to bound memory. Unreadable files, and images too large for
    the device's memory, give a result with ``error`` set instead of raising, so one bad file
    does not stop a dataset. A map with a NaN / inf cell is an error too (the same rule and text
    as for scores: :func:`qualiclip.inference.nonfinite_error`).
    """
    from qualiclip.images import ImageReadError, load_image, short_name
    from qualiclip.inference import is_out_of_memory, nonfinite_error

    for source in sources:
        if isinstance(source, torch.Tensor):
            tensor, path = source, None
        else:
            path = os.fspath(source)
            try:
                loaded = load_image(path, max_side=max_side)
            except ImageReadError as exc:
                yield QualityMap(path=path, map=None, width=0, height=0, error=str(exc))
                continue
            tensor = loaded.float_tensor()
        height, width = int(tensor.shape[-2]), int(tensor.shape[-1])
        try:
            qmap = quality_map(model, tensor)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            # One huge image must not stop the others.
            yield QualityMap(path=path, map=None, width=width, height=height,
                             error=f"{short_name(path or 'image')}: out of memory at "
                                   f"{width}x{height}; use max_side")
            continue
        error = nonfinite_error(path or "image", torch.from_numpy(qmap), tensor)
        yield QualityMap(path=path, map=None if error else qmap, width=width, height=height,
                         error=error)


def compute_quality_maps(
    sources: Iterable[Source], model: QualiCLIP, max_side: int | None = None
) -> list[QualityMap]:
    """List form of :func:`iter_quality_maps`."""
    return list(iter_quality_maps(sources, model, max_side=max_side))


def upsample_map(qmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` map -> ``(H, W)`` for ``size = (W, H)``, bilinear, still in [0, 1]."""
    from PIL import Image

    image = Image.fromarray(np.asarray(qmap, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.BILINEAR), dtype=np.float32).clip(0.0, 1.0)


def overlay(image: Any, qmap: np.ndarray, alpha: float = 0.45, cmap: str = "RdYlGn"):
    """Blend a quality map over an image, for people to look at.

    Args:
        image: a PIL image or an ``(H, W, 3)`` uint8 array.
        qmap: ``(h, w)`` in [0, 1]; stretched to the image (bilinear).
        alpha: map opacity in [0, 1].
        cmap: matplotlib colormap; the default shows low quality red, high green.

    Returns:
        An RGB PIL image the size of ``image``.
    """
    from matplotlib import colormaps
    from PIL import Image

    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = base.convert("RGB")
    colors = colormaps[cmap](upsample_map(qmap, base.size))[..., :3]
    blended = (1 - alpha) * (np.asarray(base, dtype=np.float32) / 255) + alpha * colors
    return Image.fromarray((blended.clip(0, 1) * 255).round().astype(np.uint8))
