"""Pristine images -> pairs of overlapping crops, with a deterministic, resumable order.

* :func:`find_images` lists a folder recursively (every common format), :func:`load_rgb` reads one
  image EXIF-aware; :func:`readable_images` drops unreadable files with one warning and a count.
* :class:`PristineCrops` returns, for a ``(index, draw_seed)`` key, two overlapping crops of one
  image (``(2, 3, C, C)`` uint8) and a ladder seed; with ``levels`` set, also the degraded ladder
  ``(2, L, 3, C, C)`` uint8, computed in the worker. Otherwise the trainer degrades on the
  training device (:mod:`training.degradation.ladders`).
* :class:`StepBatchSampler` yields the keys of micro-batch ``k, k+1, ...`` for one process: the
  order is a pure function of ``(seed, k, rank)``, so a resumed run sees exactly the batches the
  killed run would have seen.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from qualiclip.files import image_files
from qualiclip.images import load_image, register_optional_openers
from qualiclip.model import upscale_to_min_side

log = logging.getLogger(__name__)


def find_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted (so the split is reproducible)."""
    return image_files(folder, recursive=True)


def load_rgb(path: str | Path) -> torch.Tensor:
    """Read an image as ``(3, H, W)`` uint8 RGB with the library's reader.

    Same conversions as scoring (:mod:`qualiclip.images`): EXIF orientation, transparency over
    white, 16-bit scaled by 65535; high-bit-depth images are rounded to 8 bits here because the
    degradations work on uint8.

    Raises:
        qualiclip.images.ImageReadError: missing, unreadable or corrupt file.
    """
    tensor = load_image(path, as_uint8=True).tensor
    if tensor.dtype != torch.uint8:  # 16-bit, float and composited-alpha images come as float
        tensor = tensor.mul(255.0).round_().to(torch.uint8)
    return tensor


def readable_images(paths: list[Path]) -> list[Path]:
    """Keep the files whose header PIL can parse; warn once with the count of the others."""
    from PIL import Image

    register_optional_openers()  # HEIC/AVIF headers parse only with pillow-heif registered
    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018 - parsing the header is the check
            good.append(path)
        except Exception:  # PIL raises many types for foreign or corrupt files
            bad.append(path)
    if bad:
        warnings.warn(f"skipping {len(bad)} unreadable image file(s) out of {len(paths)} "
                      f"(e.g. {bad[0]})", stacklevel=2)
    return good


def load_held_out(paths: list[Path]) -> list[torch.Tensor]:
    """Read the held-out images as ``(3, H, W)`` uint8, skipping (with a warning each) those
    whose header parsed but whose pixels do not decode (a truncated file, say).

    Raises:
        ValueError: none of them could be read.
    """
    images = []
    for path in paths:
        try:
            images.append(load_rgb(path))
        except Exception as exc:  # corrupt data: evaluate on the others
            log.warning("skipping unreadable held-out image %s (%s)", path, exc)
    if paths and not images:
        raise ValueError(f"none of the {len(paths)} held-out images could be read")
    return images


def pristine_fingerprint(root: str | Path, paths: list[Path]) -> dict[str, list[int]]:
    """``{path relative to root: [size in bytes, modification time in ns]}`` of ``paths``: cheap
    (no file is read), and it changes when a file is replaced or edited."""
    base = Path(root).expanduser()
    out = {}
    for path in paths:
        st = path.stat()
        out[path.relative_to(base).as_posix()] = [st.st_size, st.st_mtime_ns]
    return out


def pristine_differences(before: dict[str, list[int]], now: dict[str, list[int]],
                         shown: int = 5) -> list[str]:
    """``["added 2: a.jpg, b.jpg", "removed 1: ...", "changed 1: ..."]`` between two
    :func:`pristine_fingerprint` results; empty when the sets are the same."""
    groups = (("added", sorted(now.keys() - before.keys())),
              ("removed", sorted(before.keys() - now.keys())),
              ("changed", sorted(k for k in now.keys() & before.keys()
                                 if list(now[k]) != list(before[k]))))
    lines = []
    for label, names in groups:
        if names:
            more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
            lines.append(f"{label} {len(names)}: {', '.join(names[:shown])}{more}")
    return lines


def split_holdout(paths: list[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """``(train, held_out)``: ``count`` images held out at random (seeded). With fewer than
    two images nothing can be held out, so the evaluation reuses the training image."""
    if len(paths) < 2 or count == 0:
        return list(paths), list(paths[: max(1, count)] if count else [])
    count = min(count, len(paths) // 2)
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:count])
    train = sorted(order[count:])
    return [paths[i] for i in train], [paths[i] for i in held]


def fit_min_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """``(3, H, W)`` uint8: upscale (bicubic, aspect kept) so the shorter side is >= ``side``."""
    if min(image.shape[-2:]) >= side:
        return image
    # The scoring model's own upscale, on the 0..255 scale (crops stay uint8 until degraded).
    up = upscale_to_min_side(image[None].float(), side, max_value=255.0)
    return up[0].round().to(torch.uint8)


def overlapping_crops(image: torch.Tensor, crop: int, generator: torch.Generator) -> torch.Tensor:
    """Two ``crop x crop`` crops of ``(3, H, W)`` (sides >= ``crop``); the second is the first
    shifted by up to half a crop in each direction [ours], clamped inside the image.

    Returns:
        ``(2, 3, crop, crop)``, same dtype.
    """
    h, w = image.shape[-2:]
    r = torch.rand(4, generator=generator).tolist()
    y0, x0 = int(r[0] * (h - crop + 1)), int(r[1] * (w - crop + 1))
    half = crop // 2
    y1 = min(max(y0 + int((r[2] * 2 - 1) * half), 0), h - crop)
    x1 = min(max(x0 + int((r[3] * 2 - 1) * half), 0), w - crop)
    return torch.stack([image[:, y0:y0 + crop, x0:x0 + crop], image[:, y1:y1 + crop, x1:x1 + crop]])


class PristineCrops(Dataset):
    """Keys ``(index, draw_seed)`` -> ``{"crops": (2, 3, C, C) uint8, "ladder_seed": int}``.

    A file that fails to decode is replaced by the next one (logged), so a corrupt image found
    late never stops a long run.
    """

    def __init__(self, paths: list[Path], crop_size: int, levels: int | None = None,
                 max_distortions: int = 4) -> None:
        if not paths:
            raise ValueError("no readable training images")
        self.paths = list(paths)
        self.crop_size = crop_size
        #: When set, the worker also degrades the crops (CPU) and the item holds "degraded".
        self.levels = levels
        self.max_distortions = max_distortions

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw_seed = key
        g = torch.Generator().manual_seed(draw_seed)
        for attempt in range(len(self.paths)):
            path = self.paths[(index + attempt) % len(self.paths)]
            try:
                image = load_rgb(path)
                break
            except Exception as exc:  # corrupt data: skip it, keep training
                log.warning("skipping unreadable image %s (%s)", path, exc)
        else:
            raise RuntimeError("none of the training images could be decoded")
        crops = overlapping_crops(fit_min_side(image, self.crop_size), self.crop_size, g)
        ladder_seed = int(torch.randint(0, 2**62, (1,), generator=g))
        item = {"crops": crops, "ladder_seed": torch.tensor(ladder_seed)}
        if self.levels is not None:
            from qualiclip_train.degradation.ladders import apply_ladder, sample_ladder

            ladder = sample_ladder(torch.Generator().manual_seed(ladder_seed),
                                   self.max_distortions)
            degraded = apply_ladder(crops.float().div(255), ladder, self.levels)
            # uint8 halves nothing in quality (the sources are 8-bit) but quarters the IPC.
            item["degraded"] = degraded.transpose(0, 1).mul(255).round().to(torch.uint8)
        return item


class StepBatchSampler(Sampler):
    """Micro-batches of keys for one process, starting at micro-batch ``start``.

    The global stream is the concatenation of per-epoch permutations (epoch ``e`` shuffled with
    seed ``seed + e``); micro-batch ``k`` of rank ``r`` takes stream positions
    ``[(k * world + r) * B, ... + B)``. ``draw_seed`` is derived from the stream position, so a
    revisited image gets new crops and ladders each epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world_size = start, stop, rank, world_size
        self._perms: dict[int, list[int]] = {}

    def _item(self, position: int) -> tuple[int, int]:
        epoch = position // self.n
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(
                self.n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()}
        draw_seed = (self.seed * 1_000_003 + position * 7919 + 17) % (2**62)
        return self._perms[epoch][position % self.n], draw_seed

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for k in range(self.start, self.stop):
            first = (k * self.world_size + self.rank) * self.batch_size
            yield [self._item(first + i) for i in range(self.batch_size)]

    def __len__(self) -> int:
        return max(0, self.stop - self.start)
