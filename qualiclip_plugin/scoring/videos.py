"""Scoring the videos of a video dataset: frames sampled and scored by :mod:`qualiclip.video`
(PyAV, streamed), written per video.

Fields (docs/plugin.md, "Video datasets"), for a run into ``<field>``:

* ``frames.<field>``: each sampled frame's score (FiftyOne frame numbers are 1-based: the
  library's frame 0 is ``frame_number`` 1); ``frames.<field>_<attribute>`` when attribute scores
  are asked for; ``frames.<field>_error`` for a frame that could not be decoded or scored;
* ``<field>``: the mean of the video's frame scores, ``<field>_min``, ``<field>_p10``, and
  ``<field>_segments`` (``fo.TemporalDetections``: the worst segment, label
  :data:`SEGMENT_LABEL`, ``support`` its first and last sampled frame numbers, ``confidence`` its
  mean score), so the App's player jumps to it;
* a video with no scored frame (undecodable): ``<field>_error`` only.

Granularity of writes and resume: one video. A video's frames are saved first, every
``chunk_size`` frames (memory holds one video's frame scores, floats, plus one chunk of frame
documents), then its summary, ``<field>`` last. A run stopped inside a video leaves it without a
summary, so a rerun with overwrite off scores that video again from its start (its earlier frame
values cleared first, so no frame is left from the stopped attempt) and never decodes a video
whose summary was written.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any

import fiftyone as fo

from qualiclip_plugin.scoring import claims
from qualiclip_plugin.scoring.writing import FRAMES, FieldLayout, clear_fields, count_values

#: Label of the worst-segment ``TemporalDetection``.
SEGMENT_LABEL = "low quality"


def score_and_write(run: Any) -> Generator[tuple[float, str], None, tuple[int, int, int]]:
    """Score the videos ``run.todo`` holds (a prepared
    :class:`~qualiclip_plugin.scoring.runner.ScoringRun`) one at a time and write each;
    yields ``(fraction, label)`` after each video; returns ``(videos to do, written, failed)``
    and adds ``frames_scored`` (frames with a score, this run) to ``run.summary``."""
    from qualiclip.inference import make_scorer
    from qualiclip.video import iter_video_scores

    req, layout = run.request, run.layout
    ids, paths = run.todo.values(["id", "filepath"])
    n = len(ids)
    yield 0.0, f"Scoring {n} videos ({run.summary['target'] - n} already scored)"
    # One scorer for all videos: a runtime backend exports the model once, not once a video.
    scorer = make_scorer(run.model, precision=run.precision, backend=run.backend,
                         progress=False)
    failed = frames_scored = 0
    for done, (sample_id, path) in enumerate(zip(ids, paths, strict=True), start=1):
        results = iter_video_scores([path], scorer=scorer, fps=req.fps,
                                    batch_size=req.batch_size, max_side=req.max_side)
        scored = write_video(run.dataset, sample_id, results, layout, req.segment_seconds,
                             req.chunk_size)
        frames_scored += scored
        failed += scored == 0
        claims.refresh(run.dataset, req.field, run.claim_owner)
        yield done / max(n, 1), f"Scored {done}/{n} videos ({failed} failed)"
    run.summary["frames_scored"] = frames_scored
    return n, n, failed


def write_video(dataset: fo.Dataset, sample_id: str, results: Iterable[Any],
                layout: FieldLayout, segment_seconds: float, chunk_size: int) -> int:
    """Write one video's frame results (``qualiclip.video.FrameScore``, in time order) into
    its frames, then its summary; returns the number of frames scored (0: the video failed,
    and only ``<field>_error`` is set)."""
    from qualiclip.video import summarize

    video = dataset.select(sample_id)
    frame_fields = [layout.frame_score, layout.frame_error,
                    *(name for name in layout.pairs.values() if name.startswith(FRAMES))]
    if any(count_values(video, name) for name in frame_fields[:2]):
        # An overwrite, or an attempt stopped inside this video: no frame keeps an old value
        # (a frame sampled before need not be sampled now).
        clear_fields(video, frame_fields)
    sample = dataset[sample_id]
    kept: list[Any] = []
    pending = 0
    for result in results:
        kept.append(result)
        if result.frame is None:
            continue  # an error of the whole file: the sample's error field says it
        frame = sample.frames[result.frame + 1]  # FiftyOne numbers frames from 1
        _set_frame(frame, result, layout)
        pending += 1
        if pending >= chunk_size:
            sample.save()
            pending = 0
    if pending:
        sample.save()

    summary = summarize(kept, segment_seconds) if kept else None
    if summary is None or summary.mean is None:
        error = (summary.error if summary is not None else None) or "no frame could be scored"
        values: dict[str, Any] = {layout.score: None, layout.min: None, layout.p10: None,
                                  layout.segments: None, layout.error: error}
    else:
        values = {layout.score: summary.mean, layout.min: summary.min, layout.p10: summary.p10,
                  layout.segments: _segments(kept, summary), layout.error: None}
    # The mean goes last: it is what marks the video done for a resumed run.
    for name in (layout.error, layout.min, layout.p10, layout.segments, layout.score):
        sample[name] = values[name]
    sample.save()
    return 0 if summary is None else summary.frames


def _set_frame(frame: Any, result: Any, layout: FieldLayout) -> None:
    failed = result.error is not None or result.score is None
    frame[layout.frame_score[len(FRAMES):]] = None if failed else float(result.score)
    frame[layout.frame_error[len(FRAMES):]] = (
        (result.error or "no score returned") if failed else None)
    for pair, name in layout.pairs.items():
        value = None if failed else result.pair_scores.get(pair)
        frame[name[len(FRAMES):]] = None if value is None else float(value)


def _segments(results: Sequence[Any], summary: Any) -> fo.TemporalDetections:
    """The worst segment as FiftyOne frame numbers: ``summarize`` reports its first and last
    sampled frames by time (a frame without a timestamp by its position, as there)."""
    frame_at = {(r.timestamp if r.timestamp is not None else float(i)): r.frame
                for i, r in enumerate(results) if r.score is not None}
    first, last = frame_at[summary.worst_start] + 1, frame_at[summary.worst_end] + 1
    return fo.TemporalDetections(detections=[fo.TemporalDetection(
        label=SEGMENT_LABEL, support=[first, last], confidence=float(summary.worst_mean))])
