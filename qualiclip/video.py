"""Per-frame quality of video files: :func:`iter_video_scores`, :func:`score_video`.

Design (why each piece is there):

* **Decoding with PyAV** (FFmpeg's libraries; the ``video`` extra), imported only here, so the
  library and its image path never load it. Measured against OpenCV (benchmarks/RESULTS.md,
  "Video files"): OpenCV decoded every frame of a 720p H.264 file faster (332 vs 189 frames/s
  to RGB), but PyAV gives each frame's exact presentation timestamp, per-packet errors and the
  choice of which frames to convert to RGB (only the sampled ones), and with sampling the
  decode overhead was already 14 % of the model's time; so PyAV.
* **Streamed**: frames are decoded in a background thread into a small bounded queue (FFmpeg
  releases the GIL, so decoding overlaps the model) and only the sampled frames are converted to
  pixels; the frames then go through the images' inference core (same-size buckets, the pixel
  budget, the out-of-memory split, the non-finite rule), so memory is flat in video length.
* **Sampling by timestamp**: with ``fps=f`` the frame shown at each time ``k / f`` s (k = 0, 1,
  ...) after the first frame is scored: frame ``n`` is taken when its timestamp is the first at
  or after a target time. Timestamps are exact fractions of the stream's time base, so 1 fps on a
  30 fps file takes frames 0, 30, 60 ... with no rounding drift. ``fps=None`` scores every frame.
* **One bad file or frame costs nothing else**: a video that cannot be opened, has no video
  stream or stops decoding gives a result with ``.error``; a packet that fails to decode gives
  an error result at that point and decoding goes on with the next packet.
* **Same pixels as images**: each frame goes through :func:`qualiclip.images.load_image` (RGB
  uint8, ``max_side`` antialiased), so a frame exported as a PNG and scored as an image gets the
  same score.
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from qualiclip.constants import DEFAULT_BATCH_SIZE, MIN_SIDE, VIDEO_EXTENSIONS
from qualiclip.images import load_image, read_error_text, short_name
from qualiclip.inference import BatchScorer, DecodedImage
from qualiclip.model import QualiCLIP

#: What to install for video files (the one line a caller shows when PyAV is missing).
VIDEO_EXTRA_HINT = 'scoring videos needs PyAV: pip install "qualiclip[video]"'
#: Default length of the worst segment, in seconds.
DEFAULT_SEGMENT_SECONDS = 3.0


class VideoDecoderMissing(ImportError):
    """PyAV is not installed; the message says what to install."""


def is_video(path: str | os.PathLike) -> bool:
    """True when ``path`` is named like a video file (:data:`VIDEO_EXTENSIONS`)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def require_av() -> Any:
    """The ``av`` module, or :class:`VideoDecoderMissing` with the install hint."""
    try:
        import av
    except ImportError as exc:
        raise VideoDecoderMissing(VIDEO_EXTRA_HINT) from exc
    return av


@dataclass
class FrameScore:
    """The score of one sampled frame (or one error of a video).

    Attributes:
        path: the video file.
        frame: the frame's number in presentation order, 0-based (``None`` for an error of the
            whole file).
        timestamp: when the frame is shown, in seconds from the stream's start (its own
            presentation timestamp); ``None`` when unknown.
        score: overall quality in [0, 1] (higher is better); ``None`` when ``error`` is set.
        pair_scores: pair name -> score in [0, 1], in ``PAIR_NAMES`` order; empty on error.
        width, height: the frame's own size (before ``max_side``).
        error: why there is no score, else ``None``.
    """

    path: str
    frame: int | None = None
    timestamp: float | None = None
    score: float | None = None
    pair_scores: dict[str, float] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    error: str | None = None

    def to_row(self, pair_names: Sequence[str]) -> dict[str, Any]:
        """Flat record: path, frame, timestamp, score, one column per pair, width, height,
        error."""
        row: dict[str, Any] = {"path": self.path, "frame": self.frame,
                               "timestamp": self.timestamp, "score": self.score}
        for name in pair_names:
            row[name] = self.pair_scores.get(name)
        row.update(width=self.width, height=self.height, error=self.error)
        return row


@dataclass
class VideoSummary:
    """One video's quality over its sampled frames.

    Attributes:
        path: the video file.
        frames: frames scored; ``failed``: error results (frames or the whole file).
        mean, p10, min: of the frames' scores, in [0, 1] (``p10``: the 10th percentile, linear
            interpolation as ``numpy.percentile``); ``None`` when no frame was scored.
        worst_start, worst_end: timestamps (s) of the first and last sampled frame of the worst
            segment: the window of ``segment_seconds`` (from a sampled frame's time, end
            excluded) with the lowest mean score; the whole video when it is shorter.
        worst_mean: that window's mean score.
        error: the first error met, else ``None``.
    """

    path: str
    frames: int = 0
    failed: int = 0
    mean: float | None = None
    p10: float | None = None
    min: float | None = None
    worst_start: float | None = None
    worst_end: float | None = None
    worst_mean: float | None = None
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        """Flat record with the attributes above as columns."""
        return dict(self.__dict__)


def tenth_percentile(ascending: Sequence[float]) -> float:
    """The 10th percentile of values sorted ascending (at least one), interpolated linearly
    between the two nearest ranks as ``numpy.percentile``'s default ("linear") does."""
    rank = 0.1 * (len(ascending) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ascending) - 1)
    return ascending[low] + (ascending[high] - ascending[low]) * (rank - low)


def summarize(results: Iterable[FrameScore],
              segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> VideoSummary:
    """Aggregate one video's :class:`FrameScore` results (in time order) into a summary."""
    results = list(results)
    if not results:
        raise ValueError("summarize needs at least one result")
    if not segment_seconds > 0:
        raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
    summary = VideoSummary(results[0].path)
    scored = [(r.timestamp if r.timestamp is not None else float(i), r.score)
              for i, r in enumerate(results) if r.score is not None]
    summary.failed = len(results) - len(scored)
    summary.error = next((r.error for r in results if r.error), None)
    summary.frames = len(scored)
    if not scored:
        return summary
    values = sorted(score for _, score in scored)
    summary.mean = math.fsum(values) / len(values)
    summary.min = values[0]
    summary.p10 = tenth_percentile(values)
    best: tuple[float, int, int] | None = None
    end = 0
    for start, (t0, _) in enumerate(scored):  # two pointers: window [t0, t0 + segment)
        end = max(end, start)
        while end + 1 < len(scored) and scored[end + 1][0] < t0 + segment_seconds - 1e-9:
            end += 1
        window = [s for _, s in scored[start:end + 1]]
        mean = math.fsum(window) / len(window)
        if best is None or mean < best[0] - 1e-12:
            best = (mean, start, end)
        if end == len(scored) - 1:
            break  # later windows are suffixes of this one, each shorter than a segment
    mean, start, end = best
    summary.worst_start, summary.worst_end, summary.worst_mean = (scored[start][0],
                                                                  scored[end][0], mean)
    return summary


@dataclass
class _Frame:
    """A sampled frame handed from the decoding thread: pixels or an error."""

    path: str
    frame: int | None
    timestamp: float | None
    pixels: Any = None  # (H, W, 3) uint8 numpy array
    error: str | None = None


def _fps_fraction(fps: float | None) -> Fraction | None:
    if fps is None:
        return None
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number of frames per second or None (every "
                         f"frame), got {fps!r}")
    return Fraction(str(fps))


def iter_frames(path: str | os.PathLike, fps: float | None = 1.0) -> Iterator[_Frame]:
    """Decode ``path`` and yield its sampled frames as ``(H, W, 3)`` uint8 RGB arrays, in
    presentation order, each with its frame number and timestamp; failures are yielded as
    frames with ``error`` (never raised), after which decoding goes on where it can."""
    av = require_av()
    name = os.fspath(path)
    rate = _fps_fraction(fps)
    try:
        container = av.open(name)
    except Exception as exc:  # noqa: BLE001 - whatever FFmpeg says stays with this file
        yield _Frame(name, None, None, error=f"{short_name(name)}: cannot open as a video "
                                                 f"({_reason(exc, name)})")
        return
    with container:
        if not container.streams.video:
            yield _Frame(name, None, None, error=f"{short_name(name)}: no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # FFmpeg's frame threads: several frames decoded at once
        time_base = stream.time_base
        guessed_rate = stream.average_rate or stream.guessed_rate
        number = -1
        first: Fraction | None = None
        next_target = Fraction(0)
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - a broken container: stop this file
                yield _Frame(name, number + 1 if number >= 0 else None, None,
                             error=f"{short_name(name)}: decoding stopped after frame {number} "
                                   f"({_reason(exc, name)})")
                return
            try:
                frames = packet.decode()
            except Exception as exc:  # noqa: BLE001 - one bad packet: note it, go on
                yield _Frame(name, number + 1, None,
                             error=f"{short_name(name)}: a packet after frame {number} could "
                                   f"not be decoded ({_reason(exc, name)})")
                continue
            for frame in frames:
                number += 1
                if frame.pts is not None and time_base is not None:
                    when = Fraction(frame.pts) * time_base
                elif guessed_rate:
                    when = Fraction(number) / Fraction(guessed_rate)
                else:
                    when = None
                if first is None:
                    first = when if when is not None else Fraction(0)
                if rate is not None and when is not None:
                    since = when - first
                    if since < next_target:
                        continue
                    # The next target after this frame's time (targets skipped by a gap are
                    # not made up with later frames).
                    next_target = (math.floor(since * rate) + 1) / rate
                try:
                    pixels = frame.to_ndarray(format="rgb24")
                except Exception as exc:  # noqa: BLE001
                    yield _Frame(name, number, _seconds(when),
                                 error=f"{short_name(name)}: frame {number}: "
                                       f"{_reason(exc, name)}")
                    continue
                yield _Frame(name, number, _seconds(when), pixels=pixels)
    if number < 0:
        yield _Frame(name, None, None, error=f"{short_name(name)}: no decodable frames")


def _seconds(when: Fraction | None) -> float | None:
    return None if when is None else float(when)


def _reason(exc: BaseException, name: str) -> str:
    """FFmpeg's reason on one line, without the errno and path PyAV adds around it (the row
    carries the path already)."""
    text = getattr(exc, "strerror", None) or str(exc)
    text = text.replace(f": '{name}'", "").replace(name, short_name(name))
    return " ".join(text.split()) or type(exc).__name__


def _prefetched(items: Iterator[_Frame], depth: int) -> Iterator[_Frame]:
    """``items`` produced by a background thread, at most ``depth`` ahead of the consumer."""
    done = object()
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            buffer.put(exc)
            return
        buffer.put(done)

    thread = threading.Thread(target=produce, name="qualiclip-video-decode", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def _sampled(paths: Sequence[str | os.PathLike], fps: float | None) -> Iterator[_Frame]:
    for path in paths:
        yield from iter_frames(path, fps)


def iter_video_scores(
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    model: QualiCLIP | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    fps: float | None = 1.0,
    batch_size: int | None = None,
    max_side: int | None = None,
    precision: str = "auto",
    backend: str | None = None,
    max_batch_pixels: int | None = None,
    progress: bool = False,
    scorer: BatchScorer | None = None,
) -> Iterator[FrameScore]:
    """Score the sampled frames of each video, yielding one :class:`FrameScore` per frame (and
    per error), videos in the given order, frames in presentation order.

    Args:
        paths: one video file or several.
        model, weights, device, precision, backend: as :func:`qualiclip.iter_scores`.
        fps: frames per second to sample (default 1: the frames shown at 0 s, 1 s, 2 s ...);
            ``None`` scores every frame.
        batch_size, max_batch_pixels: batch bounds, as for images (frames of one video share a
            size, so batches are full).
        max_side: cap the longer side (antialiased); ``None`` = native resolution.
        scorer: a ready :class:`~qualiclip.inference.BatchScorer` (then ``model`` and the
            precision arguments are not used).

    Raises:
        VideoDecoderMissing: PyAV is not installed (``pip install "qualiclip[video]"``).
        ValueError: a bad ``fps``, ``batch_size`` or ``max_side``.
    """
    from qualiclip.scoring import (
        _in_input_order,
        _prepare,
        _scored,
        _scorer,
        default_max_batch_pixels,
    )
    from qualiclip.size_buckets import SizeBuckets

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    _fps_fraction(fps)
    batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_side is not None and max_side < MIN_SIDE:
        raise ValueError(f"max_side must be >= {MIN_SIDE} px (or None), got {max_side}")
    require_av()
    if scorer is None:
        model, _ = _prepare(model, weights, device)
        scorer = _scorer(model, precision, backend, progress)
    buckets = SizeBuckets(batch_size,
                          max_batch_pixels or default_max_batch_pixels(scorer.device))
    # Where each in-flight index came from; entries leave as their results do (flat memory).
    origin: dict[int, _Frame] = {}

    def decoded() -> Iterator[DecodedImage]:
        for index, item in enumerate(_prefetched(_sampled(paths, fps), depth=2 * batch_size)):
            origin[index] = item
            if item.error is not None:
                yield DecodedImage(index, item.path, None, error=item.error)
                continue
            try:
                image = load_image(item.pixels, max_side=max_side, as_uint8=True)
            except Exception as exc:  # noqa: BLE001 - e.g. a zero-size frame
                yield DecodedImage(index, item.path, None,
                                   error=read_error_text(item.path, exc))
                continue
            item.pixels = None  # the tensor below is what stays alive
            yield DecodedImage(index, item.path, image.tensor, image.width, image.height)

    from tqdm.auto import tqdm

    with tqdm(unit="frame", desc="Scoring frames", disable=not progress) as bar:
        for result in _in_input_order(_scored(decoded(), scorer, buckets)):
            item = origin.pop(result.index)
            bar.update(1)
            yield FrameScore(item.path, item.frame, item.timestamp, result.score,
                             result.pair_scores, result.width, result.height, result.error)


@dataclass
class VideoScores:
    """:func:`score_video`'s answer: ``frames`` (one :class:`FrameScore` each, errors included)
    and their ``summary``."""

    frames: list[FrameScore]
    summary: VideoSummary


def score_video(path: str | os.PathLike, model: QualiCLIP | None = None,
                fps: float | None = 1.0,
                segment_seconds: float = DEFAULT_SEGMENT_SECONDS,
                **kwargs: Any) -> VideoScores:
    """Score one video's sampled frames and summarise them (:func:`summarize`).

    ``kwargs`` are :func:`iter_video_scores`'s (``weights``, ``device``, ``max_side``,
    ``precision``, ``batch_size`` ...). The frames are kept in memory; for long videos iterate
    :func:`iter_video_scores` instead (one small record per frame either way, no pixels).
    """
    frames = list(iter_video_scores([path], model=model, fps=fps, **kwargs))
    return VideoScores(frames, summarize(frames, segment_seconds))


def summaries(results: Iterable[FrameScore],
              segment_seconds: float = DEFAULT_SEGMENT_SECONDS
              ) -> Iterator[tuple[FrameScore, VideoSummary | None]]:
    """Pass ``results`` (as :func:`iter_video_scores` yields them) through, each paired with
    the finished summary of a video when it is that video's last result, else ``None``. Keeps
    one video's scores (floats, not pixels) at a time."""
    current: list[FrameScore] = []
    pending: FrameScore | None = None
    for result in results:
        if pending is not None:
            if result.path != pending.path:
                current.append(pending)
                yield pending, summarize(current, segment_seconds)
                current = []
            else:
                current.append(pending)
                yield pending, None
        pending = result
    if pending is not None:
        current.append(pending)
        yield pending, summarize(current, segment_seconds)
