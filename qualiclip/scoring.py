"""Scoring many images fast, in input order, without falling over: ``score_images``.

Design (why each piece is there):

* **Streaming**: :func:`iter_scores` yields results as they are ready; decoded images never
  accumulate beyond a few batches, so memory is flat in the number of images.
* **Decoding in DataLoader workers** overlaps JPEG decoding with the model.
* **Batches of identical size only** (:class:`~qualiclip.size_buckets.SizeBuckets`): padding
  would change the scores (the attention pool sees every position). A bucket runs when it is
  full, when it holds the oldest waiting image for too long (so results keep flowing in order),
  or at the end.
* **A pixel budget** bounds a batch (``batch_size`` images and ``max_batch_pixels`` pixels), so a
  folder of 50 MP photos runs one at a time instead of running out of memory; an out-of-memory
  error still splits the batch (:class:`~qualiclip.inference.BatchScorer`).
* **One bad file costs nothing else**: decoding errors are caught per image in the worker and
  come back as results with ``.error``; so do non-finite outputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from qualiclip.constants import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCH_PIXELS_CPU,
    DEFAULT_MAX_BATCH_PIXELS_CUDA,
    MIN_SIDE,
)
from qualiclip.images import ImageReadError, ImageSource, source_name
from qualiclip.inference import (
    BatchScorer,
    DecodedImage,
    ImageScore,
    default_num_workers,
    make_scorer,
    read_image,
)
from qualiclip.model import QualiCLIP
from qualiclip.size_buckets import SizeBuckets


def default_max_batch_pixels(device: torch.device) -> int:
    """The pixel budget of one batch on ``device`` (see :mod:`qualiclip.constants`)."""
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

    @classmethod
    def of(cls, scored: ImageScore, pair_names: Sequence[str]) -> ScoreResult:
        """The result for one of :class:`~qualiclip.inference.BatchScorer`'s outputs."""
        image = scored.image
        result = cls(image.index, image.name, width=image.width, height=image.height,
                     error=scored.error or image.error)
        if scored.pair_scores is not None and result.error is None:
            result.score = scored.score
            result.pair_scores = dict(zip(pair_names, scored.pair_scores.tolist()))
        return result

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


class _DecodeDataset(Dataset):
    """Decodes one source per item (:func:`~qualiclip.inference.read_image`, which never
    raises, so a worker never dies).

    With ``jpeg_bytes``, JPEG files (at native resolution) come back undecoded, their tensor a
    1-D uint8 tensor of file bytes, for the GPU's JPEG decoder in the main process.
    """

    def __init__(self, sources: Sequence[ImageSource], max_side: int | None,
                 jpeg_bytes: bool = False) -> None:
        self.sources = sources
        self.max_side = max_side
        self.jpeg_bytes = jpeg_bytes and max_side is None

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> DecodedImage:
        source = self.sources[index]
        if self.jpeg_bytes and isinstance(source, (str, os.PathLike)):
            from qualiclip.gpu_jpeg import read_jpeg_bytes

            data = read_jpeg_bytes(source)
            if data is not None:
                return DecodedImage(index, source_name(source, index), data)
        return read_image(source, index, self.max_side)


def _keep_as_is(item: Any) -> Any:
    return item


def _decode_on_device(image: DecodedImage, device: torch.device) -> DecodedImage:
    """Undecoded JPEG bytes (a 1-D tensor) -> pixels, decoded on ``device``."""
    from qualiclip.gpu_jpeg import decode_jpeg_on_gpu

    try:
        tensor = decode_jpeg_on_gpu(image.tensor, image.name, device)
    except ImageReadError as exc:
        return DecodedImage(image.index, image.name, None, error=str(exc))
    height, width = tensor.shape[-2:]
    return DecodedImage(image.index, image.name, tensor, int(width), int(height))


def _prepare(model: QualiCLIP | None, weights: Any, device: Any) -> tuple[QualiCLIP, torch.device]:
    if model is None:
        from qualiclip.loading import load_model

        model = load_model(weights, device=device)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, next(model.parameters()).device


def _worker_count(sources: Sequence[ImageSource], num_workers: int | None,
                  device: torch.device) -> int:
    workers = (default_num_workers(len(sources), device) if num_workers is None
               else int(num_workers))
    if workers and any(isinstance(src, torch.Tensor) and src.device.type != "cpu"
                       for src in sources):
        # Worker processes cannot touch CUDA memory (forked workers fail on it), and the
        # images are already decoded: read them in this process.
        return 0
    if num_workers is None and not any(isinstance(src, (str, os.PathLike)) for src in sources):
        return 0  # in-memory images only: nothing to decode, pickling them costs more
    return workers


def _decoded(sources: Sequence[ImageSource], max_side: int | None, workers: int,
             gpu_jpeg: bool, device: torch.device) -> Iterator[DecodedImage]:
    """The sources decoded in input order (in ``workers`` processes)."""
    loader = DataLoader(
        _DecodeDataset(sources, max_side, jpeg_bytes=gpu_jpeg), batch_size=None, shuffle=False,
        num_workers=workers, collate_fn=_keep_as_is, pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )
    for image in loader:
        if image.tensor is not None and image.tensor.ndim == 1:  # undecoded JPEG bytes
            image = _decode_on_device(image, device)
        yield image


def iter_scores(
    sources: Sequence[ImageSource],
    model: QualiCLIP | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_side: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    max_batch_pixels: int | None = None,
    gpu_jpeg: bool = False,
    backend: str | None = None,
) -> Iterator[ScoreResult]:
    """Score ``sources`` lazily, yielding one :class:`ScoreResult` per input, in input order.

    Args:
        sources: paths, PIL images, numpy arrays or ``(3, H, W)`` tensors in [0, 1].
        model: a loaded model (else ``weights`` is loaded on ``device``).
        weights: registered name, checkpoint path or URL; ``None`` (default):
            ``$QUALICLIP_WEIGHTS`` if set, else the official weights (see
            :func:`~qualiclip.load_model`).
        batch_size: most images per batch (default 32); ``max_batch_pixels`` also bounds it
            (default 2**23 px on CUDA, 2**19 px on CPU; a single larger image still runs).
        num_workers: decoding processes (default: half the cores; none for < 16 images or
            for a CPU model on <= 2 cores).
        max_side: cap the longer side (antialiased); ``None`` = native resolution (official).
        precision: ``"auto"`` (fp16 AMP on CUDA, bf16 on CPUs with native bf16, else fp32),
            ``"fp32"`` (exact), ``"fp16"``, ``"bf16"``.
        gpu_jpeg: on CUDA, decode JPEGs with the GPU's decoder (nvJPEG) instead of PIL in the
            workers; its IDCT differs slightly from libjpeg's, so scores move by ~1e-3.
        backend: what runs the image tower: ``"auto"`` (default: the model's ``backend`` from
            :func:`~qualiclip.load_model`, else the fastest exact option on the device: an
            installed CPU runtime for fp32 on the CPU, else torch), ``"torch"``,
            or ``"onnxruntime"`` (CPU, fp32; the ``cpu-fast`` extra).
    """
    sources = list(sources)
    model, dev = _prepare(model, weights, device)
    scorer = _scorer(model, precision, backend, progress)
    yield from _iter_with(scorer, sources, batch_size, num_workers, max_side, progress,
                          max_batch_pixels, gpu_jpeg and dev.type == "cuda")


def _scorer(model: QualiCLIP, precision: str, backend: str | None,
            progress: bool) -> BatchScorer:
    if backend is None:
        backend = getattr(model, "backend", None) or "auto"
    return make_scorer(model, precision=precision, backend=backend, progress=progress)


def _iter_with(scorer: BatchScorer, sources: list, batch_size: int | None,
               num_workers: int | None, max_side: int | None, progress: bool,
               max_batch_pixels: int | None, gpu_jpeg: bool) -> Iterator[ScoreResult]:
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"max_side must be >= {MIN_SIDE} px (or None), got {max_side}")
    dev = scorer.device
    buckets = SizeBuckets(batch_size, max_batch_pixels or default_max_batch_pixels(dev))
    decoded = _decoded(sources, max_side, _worker_count(sources, num_workers, dev), gpu_jpeg,
                       dev)
    from tqdm.auto import tqdm

    with tqdm(total=len(sources), unit="img", desc="Scoring", disable=not progress) as bar:
        for result in _in_input_order(_scored(decoded, scorer, buckets)):
            bar.update(1)
            yield result


def _scored(decoded: Iterator[DecodedImage], scorer: BatchScorer,
            buckets: SizeBuckets) -> Iterator[ScoreResult]:
    """Results in the order their batches finish: each decoded image joins its size bucket,
    and the batches that become ready (full, or overdue) run at once."""
    def run(batches: list[list[DecodedImage]]) -> Iterator[ScoreResult]:
        for batch in batches:
            for scored in scorer.score(batch):
                yield ScoreResult.of(scored, scorer.pair_names)

    for image in decoded:
        if image.tensor is None:
            yield ScoreResult.of(ImageScore(image), scorer.pair_names)
        else:
            yield from run(buckets.add(image))
        yield from run(buckets.overdue(image.index))
    yield from run(buckets.drain())


def score_decoded(images: Iterable[DecodedImage], scorer: BatchScorer,
                  batch_size: int | None = None,
                  max_batch_pixels: int | None = None) -> Iterator[ScoreResult]:
    """Score already-decoded images (:func:`~qualiclip.inference.read_image` results, errors
    included) in their ``index`` order, batched by size exactly as :func:`iter_scores` batches
    them. For engines that decode elsewhere (``qualiclip.ray``'s actors get their images from
    Ray Data); ``index`` must count 0, 1, 2 ... over ``images``."""
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    buckets = SizeBuckets(batch_size, max_batch_pixels or default_max_batch_pixels(scorer.device))
    yield from _in_input_order(_scored(iter(images), scorer, buckets))


def _in_input_order(results: Iterator[ScoreResult]) -> Iterator[ScoreResult]:
    """Hold back results until all earlier inputs' results are out."""
    waiting: dict[int, ScoreResult] = {}
    next_index = 0
    for result in results:
        waiting[result.index] = result
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1


def score_images(
    sources: Sequence[ImageSource],
    model: QualiCLIP | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    max_side: int | None = None,
    precision: str = "auto",
    progress: bool = True,
    max_batch_pixels: int | None = None,
    gpu_jpeg: bool = False,
    backend: str | None = None,
) -> ScoreResults:
    """Score ``sources`` and return all results (input order) with ``.preprocessing``.

    See :func:`iter_scores` for the arguments; this collects its results.
    """
    model, dev = _prepare(model, weights, device)
    scorer = _scorer(model, precision, backend, progress)
    gpu_jpeg = gpu_jpeg and dev.type == "cuda"
    results = list(_iter_with(scorer, list(sources), batch_size, num_workers, max_side,
                              progress, max_batch_pixels, gpu_jpeg))
    setup = scorer.preprocessing(max_side, "nvJPEG (GPU)" if gpu_jpeg else "PIL")
    return ScoreResults(results, setup.describe(model.weights_info))
