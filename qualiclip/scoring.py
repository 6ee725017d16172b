"""The inference engine: score many images fast, in input order, without falling over.

Design (why each piece is there):

* **Streaming**: :func:`iter_scores` yields results as they are ready; decoded images never
  accumulate beyond a few batches, so memory is flat in the number of images.
* **Decoding in DataLoader workers** overlaps JPEG decoding with the model.
* **Batches of identical size only**: padding would change the scores (the attention pool sees
  every position). Decoded images wait in per-size buckets; a bucket runs when it is full, when
  it holds the oldest waiting image for too long (so results keep flowing in order), or at the end.
* **A pixel budget** bounds a batch (``batch_size`` images and ``max_batch_pixels`` pixels), so a
  folder of 50 MP photos runs one at a time instead of running out of memory; an out-of-memory
  error still splits the batch in halves down to single images.
* **One bad file costs nothing else**: decoding errors are caught per image in the worker and
  come back as results with ``.error``.
* **Non-finite is never a score**: an image whose pair scores hold NaN / inf becomes a result
  with ``.error`` saying why (:func:`nonfinite_error`); its batch mates keep their scores.
"""

from __future__ import annotations

import io
import os
import platform
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from qualiclip.images import (
    NONFINITE_PIXELS,
    ImageReadError,
    ImageSource,
    load_image,
    read_error_text,
    short_name,
    source_name,
    to_float,
)
from qualiclip.model import MIN_SIDE, QualiCLIP
from qualiclip.precision import autocast_context, resolve_precision

DEFAULT_BATCH_SIZE = 32
#: On CUDA, 2**23 px (e.g. 32 images of 512x512): peak activation memory of RN50 inference stays
#: around 2 GB in fp32, which fits small GPUs.
DEFAULT_MAX_BATCH_PIXELS_CUDA = 1 << 23
#: On CPU, 2**19 px (about ten 224x224 images, one 640x480): bigger batches were measured slower
#: (activations fall out of cache; benchmarks/RESULTS.md), smaller ones lose batching gains.
DEFAULT_MAX_BATCH_PIXELS_CPU = 1 << 19


#: Why an image with finite pixels gets no score when the model's output for it is NaN / inf.
NONFINITE_SCORE = "the model returned a non-finite score (NaN/inf): the weights may be corrupt"


def nonfinite_error(name: str, values: torch.Tensor,
                    image: torch.Tensor | None = None) -> str | None:
    """``None`` when all of one image's outputs are finite, else the error text for that image.

    Shared by every place that turns model outputs into scores (this engine, the quality maps,
    the FiftyOne model), so a NaN never passes for a score anywhere.

    Args:
        name: the image's path or name; the text leads with its base name.
        values: that image's outputs, any shape (``(P,)`` pair scores, an ``(h, w)`` map).
        image: its input, ``(3, H, W)``; looked at only when ``values`` fail, to tell NaN
            pixels (a data problem; :func:`qualiclip.images.load_image` refuses those already)
            from a model that made the NaN itself (corrupt weights, fp16 overflow).
    """
    if bool(torch.isfinite(values).all()):
        return None
    bad_pixels = (image is not None and image.is_floating_point()
                  and not bool(torch.isfinite(image).all()))
    return f"{short_name(name)}: {NONFINITE_PIXELS if bad_pixels else NONFINITE_SCORE}"


def default_max_batch_pixels(device: torch.device) -> int:
    """The pixel budget of one batch on ``device`` (see the constants above)."""
    if device.type == "cuda":
        return DEFAULT_MAX_BATCH_PIXELS_CUDA
    return DEFAULT_MAX_BATCH_PIXELS_CPU


@dataclass
class ScoreResult:
    """The score of one input.

    Attributes:
        index: position in the input sequence.
        path: the file path, or ``<ndarray #i>`` for in-memory images.
        score: overall quality in [0, 1] (higher is better); ``None`` when ``error`` is set.
        pair_scores: pair name -> score in [0, 1], in ``PAIR_NAMES`` order; empty on error.
        width, height: the image's own size (after EXIF orientation, before ``max_side``).
        error: why the image could not be scored, else ``None``.
    """

    index: int
    path: str
    score: float | None = None
    pair_scores: dict[str, float] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    error: str | None = None

    def to_row(self, pair_names: Sequence[str]) -> dict[str, Any]:
        """Flat record: path, score, one column per pair, width, height, error."""
        row: dict[str, Any] = {"path": self.path, "score": self.score}
        for name in pair_names:
            row[name] = self.pair_scores.get(name)
        row.update(width=self.width, height=self.height, error=self.error)
        return row


class ScoreResults(list):
    """A list of :class:`ScoreResult` plus ``.preprocessing``: how the scores were made."""

    preprocessing: dict[str, Any]

    def __init__(self, results: list[ScoreResult], preprocessing: dict[str, Any]) -> None:
        super().__init__(results)
        self.preprocessing = preprocessing


def describe_preprocessing(model: QualiCLIP, max_side: int | None, precision: str,
                           device: torch.device | str) -> dict[str, Any]:
    """What a score depends on, for provenance: weights, resize policy, precision, versions."""
    from qualiclip import __version__

    return {
        "weights": model.weights_info.get("name"),
        "weights_sha256": model.weights_info.get("sha256"),
        "resize": "native resolution" if max_side is None
        else f"longer side capped at {max_side} px (antialiased bilinear)",
        "max_side": max_side,
        "min_side_upscale": f"shorter side < {MIN_SIDE} px upscaled to {MIN_SIDE} (bicubic)",
        "color": "RGB; alpha over white; 16-bit / 65535; EXIF orientation applied",
        "normalization": "CLIP mean/std",
        "precision": precision,
        "device": str(device),
        "qualiclip_version": __version__,
        "torch_version": torch.__version__,
    }


_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"


class _DecodeDataset(Dataset):
    """Decodes one source per item; errors are returned, not raised, so a worker never dies.

    With ``jpeg_bytes``, JPEG files (at native resolution) are returned undecoded as a 1-D
    uint8 tensor of file bytes, for the GPU's JPEG decoder in the main process.
    """

    def __init__(self, sources: Sequence[ImageSource], max_side: int | None,
                 jpeg_bytes: bool = False) -> None:
        self.sources = sources
        self.max_side = max_side
        self.jpeg_bytes = jpeg_bytes and max_side is None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple:
        source = self.sources[index]
        name = source_name(source, index)
        if self.jpeg_bytes and isinstance(source, (str, os.PathLike)):
            data = _read_jpeg_bytes(source)
            if data is not None:
                return index, name, data, None, None, None
        try:
            image = load_image(source, max_side=self.max_side, as_uint8=True)
        except Exception as exc:  # anything a decoder throws stays with this image
            return index, name, None, None, None, read_error_text(name, exc)
        return index, name, image.tensor, image.width, image.height, None


def _read_jpeg_bytes(path: str | os.PathLike) -> torch.Tensor | None:
    """File bytes as a uint8 tensor if ``path`` is a readable JPEG, else ``None``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    if not data.startswith(_JPEG_MAGIC):
        return None
    # Hand nvJPEG only files the CPU reader would accept too, so both paths fail alike: a file
    # without its end-of-image marker (truncated) or over PIL's decompression-bomb limit goes
    # to the CPU reader, which reports it.
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


def _decode_jpeg_on_gpu(data: torch.Tensor, name: str, device: torch.device) -> torch.Tensor:
    """nvJPEG decode with EXIF orientation -> ``(3, H, W)`` uint8 on ``device``; falls back to
    the CPU reader (same conversions as everywhere else) for JPEGs nvJPEG rejects (e.g. CMYK)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device,
                           apply_exif_orientation=True)
    except RuntimeError:
        return load_image(name, as_uint8=True).tensor


def _keep_as_is(item: Any) -> Any:
    return item


def default_num_workers(n_images: int) -> int:
    """Half the cores (at most 8) for decoding; none for a handful of images, where starting
    worker processes costs more than it saves."""
    if n_images < 16:
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA / CPU allocation failures (which PyTorch raises in several types)."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


class _Engine:
    """Runs batches through the model with the chosen precision and OOM fallback."""

    def __init__(self, model: QualiCLIP, device: torch.device, precision: str) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.pair_names = tuple(model.PAIR_NAMES)
        # channels_last lets oneDNN / cuDNN pick their fastest convolution kernels.
        # Measured (benchmarks/RESULTS.md): with bf16 on CPU it is ~2x faster, with fp32 on CPU
        # slower. The weights must share the input's layout for the fast kernels to be picked.
        use_cl = precision != "fp32" or device.type == "cuda"
        self.memory_format = torch.channels_last if use_cl else torch.contiguous_format
        model.to(memory_format=self.memory_format)

    @torch.inference_mode()
    def _forward(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack([to_float(t.to(self.device, non_blocking=True)) for t in tensors])
        batch = batch.contiguous(memory_format=self.memory_format)
        with autocast_context(self.precision, self.device):
            features = self.model.image_features(batch)
        return self.model.pair_scores_from_features(features).cpu()

    def score(self, items: list[tuple]) -> list[ScoreResult]:
        """Score same-size decoded items; an OOM splits the batch down to single images."""
        try:
            pair = self._forward([item[2] for item in items])
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(items) == 1:
                index, name, _, width, height, _ = items[0]
                return [ScoreResult(index, name, width=width, height=height,
                                    error=f"{short_name(name)}: out of memory even alone; "
                                          "use max_side")]
            half = len(items) // 2
            return self.score(items[:half]) + self.score(items[half:])
        return [self._result(item, row) for item, row in zip(items, pair)]

    def _result(self, item: tuple, pair: torch.Tensor) -> ScoreResult:
        """One decoded item and its ``(P,)`` pair scores -> its result (an error if not finite)."""
        index, name, tensor, width, height, _ = item
        error = nonfinite_error(name, pair, tensor)
        if error is not None:
            return ScoreResult(index, name, width=width, height=height, error=error)
        row = pair.tolist()
        return ScoreResult(index, name, score=sum(row) / len(row),
                           pair_scores=dict(zip(self.pair_names, row)), width=width,
                           height=height)


def _prepare(model: QualiCLIP | None, weights: Any, device: Any) -> tuple[QualiCLIP, torch.device]:
    if model is None:
        from qualiclip.loading import load_model

        model = load_model(weights, device=device)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, next(model.parameters()).device


def iter_scores(
    sources: Sequence[ImageSource],
    model: QualiCLIP | None = None,
    weights: str | os.PathLike = "qualiclip",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_side: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    max_batch_pixels: int | None = None,
    gpu_jpeg: bool = False,
) -> Iterator[ScoreResult]:
    """Score ``sources`` lazily, yielding one :class:`ScoreResult` per input, in input order.

    Args:
        sources: paths, PIL images, numpy arrays or ``(3, H, W)`` tensors in [0, 1].
        model: a loaded model (else ``weights`` is loaded on ``device``).
        batch_size: most images per batch (default 32); ``max_batch_pixels`` also bounds it
            (default 2**23 px on CUDA, 2**19 px on CPU; a single larger image still runs).
        num_workers: decoding processes (default: half the cores, 0 for < 16 images).
        max_side: cap the longer side (antialiased); ``None`` = native resolution (official).
        precision: ``"auto"`` (fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32),
            ``"fp32"`` (exact), ``"fp16"``, ``"bf16"``.
        gpu_jpeg: on CUDA, decode JPEGs with the GPU's decoder (nvJPEG) instead of PIL in the
            workers; its IDCT differs slightly from libjpeg's, so scores move by ~1e-3.
    """
    sources = list(sources)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"max_side must be >= {MIN_SIDE} px (or None), got {max_side}")
    model, dev = _prepare(model, weights, device)
    if max_batch_pixels is None:
        max_batch_pixels = default_max_batch_pixels(dev)
    engine = _Engine(model, dev, resolve_precision(precision, dev))
    workers = default_num_workers(len(sources)) if num_workers is None else int(num_workers)
    if workers and any(isinstance(src, torch.Tensor) and src.device.type != "cpu"
                       for src in sources):
        # Worker processes cannot touch CUDA memory (forked workers fail on it), and the
        # images are already decoded: read them in this process.
        workers = 0
    elif num_workers is None and not any(isinstance(src, (str, os.PathLike)) for src in sources):
        workers = 0  # in-memory images only: nothing to decode, pickling them costs more
    gpu_jpeg = gpu_jpeg and dev.type == "cuda"
    loader = DataLoader(
        _DecodeDataset(sources, max_side, jpeg_bytes=gpu_jpeg), batch_size=None, shuffle=False,
        num_workers=workers, collate_fn=_keep_as_is, pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    from tqdm.auto import tqdm

    buckets = SizeBuckets(batch_size, max_batch_pixels)
    finished: dict[int, ScoreResult] = {}
    next_index = 0

    with tqdm(total=len(sources), unit="img", desc="Scoring", disable=not progress) as bar:
        def run(batches: list[list[tuple]]) -> None:
            for batch in batches:
                for result in engine.score(batch):
                    finished[result.index] = result

        def in_order() -> Iterator[ScoreResult]:
            """Hand out the finished results that continue the input order."""
            nonlocal next_index
            while next_index in finished:
                bar.update(1)
                yield finished.pop(next_index)
                next_index += 1

        for item in loader:
            index, name, tensor, width, height, error = item
            if tensor is not None and tensor.ndim == 1:  # undecoded JPEG bytes
                try:
                    tensor = _decode_jpeg_on_gpu(tensor, name, dev)
                except ImageReadError as exc:
                    tensor, error = None, str(exc)
                else:
                    height, width = tensor.shape[-2:]
                item = (index, name, tensor, width, height, error)
            if tensor is None:
                finished[index] = ScoreResult(index, name, width=width, height=height, error=error)
            else:
                run(buckets.add(item))
            run(buckets.overdue(index))
            yield from in_order()
        run(buckets.drain())
        yield from in_order()


class SizeBuckets:
    """Groups decoded images of identical shape into batches (padding would change scores).

    Items are ``(index, name, tensor (3, H, W), width, height, error)`` tuples. A bucket is
    released as a batch when it holds ``batch_size`` images or one more would exceed
    ``max_batch_pixels``; when it holds an image ``max_lag`` inputs older than the newest (so
    in-order results keep flowing to callers that write them as they come); and, oldest first,
    whenever all waiting images together exceed ``max_pending_pixels`` (default 4 batches'
    worth), which bounds memory for folders where every image has its own size.
    """

    def __init__(self, batch_size: int, max_batch_pixels: int, max_lag: int | None = None,
                 max_pending_pixels: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_batch_pixels = max_batch_pixels
        self.max_lag = 4 * batch_size if max_lag is None else max_lag
        self.max_pending_pixels = (4 * max_batch_pixels if max_pending_pixels is None
                                   else max_pending_pixels)
        self._buckets: dict[tuple, list[tuple]] = {}
        #: Pixels of all images waiting in buckets.
        self.pending_pixels = 0

    def add(self, item: tuple) -> list[list[tuple]]:
        """Queue one image; returns the batches that became ready (possibly none)."""
        key = tuple(item[2].shape)
        bucket = self._buckets.setdefault(key, [])
        bucket.append(item)
        pixels = key[-2] * key[-1]
        self.pending_pixels += pixels
        ready = []
        if len(bucket) >= self.batch_size or (len(bucket) + 1) * pixels > self.max_batch_pixels:
            ready.append(self._pop(key))
        while self.pending_pixels > self.max_pending_pixels and self._buckets:
            ready.append(self._pop(min(self._buckets, key=lambda k: self._buckets[k][0][0])))
        return ready

    def overdue(self, newest_index: int) -> list[list[tuple]]:
        """Batches of the buckets whose oldest image is ``max_lag`` inputs behind."""
        late = [k for k, b in self._buckets.items() if newest_index - b[0][0] >= self.max_lag]
        return [self._pop(k) for k in late]

    def drain(self) -> list[list[tuple]]:
        """Everything still waiting, as batches."""
        return [self._pop(k) for k in list(self._buckets)]

    def _pop(self, key: tuple) -> list[tuple]:
        batch = self._buckets.pop(key)
        self.pending_pixels -= len(batch) * key[-2] * key[-1]
        return batch


def score_images(
    sources: Sequence[ImageSource],
    model: QualiCLIP | None = None,
    weights: str | os.PathLike = "qualiclip",
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_side: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    max_batch_pixels: int | None = None,
    gpu_jpeg: bool = False,
) -> ScoreResults:
    """Score ``sources`` and return all results (input order) with ``.preprocessing``.

    See :func:`iter_scores` for the arguments; this collects its results.
    """
    model, dev = _prepare(model, weights, device)
    results = list(iter_scores(sources, model=model, batch_size=batch_size,
                               num_workers=num_workers, max_side=max_side, precision=precision,
                               progress=progress, max_batch_pixels=max_batch_pixels,
                               gpu_jpeg=gpu_jpeg))
    info = describe_preprocessing(model, max_side, resolve_precision(precision, dev), dev)
    info["machine"] = platform.machine()
    if gpu_jpeg and dev.type == "cuda":
        info["jpeg_decoder"] = "nvJPEG (GPU)"
    return ScoreResults(results, info)
