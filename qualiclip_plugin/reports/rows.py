"""A FiftyOne dataset or view -> rows for :mod:`qualiclip.report.html` (the HTML builder).

Reads the score field a scoring run wrote (``<field>``, ``<field>_<pair>``, ``<field>_error``,
see :mod:`qualiclip_plugin.scoring.writing`) with bulk ``values()`` calls, and the breakdown keys:

* ``tags``: the sample tags;
* ``split``: a string field named ``split`` when there is one (else splits kept as tags show
  up under ``tags``);
* every label field of type Classification, Classifications, Detections or Polylines: the label
  values each sample holds.

On a video dataset each row is a video (the scoring run's video layout): its score is the
per-video ``<field>`` (mean of the sampled frames), with ``<field>_p10`` / ``<field>_min`` as
summaries, the worst of ``<field>_segments`` as its segment, and its worst sampled frames from
``frames.<field>`` (frame numbers 1-based, timestamps from the video's frame rate when its
metadata is computed, else from the decoded frame).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import fiftyone as fo

from qualiclip.files import atomic_write
from qualiclip.prompts import PAIR_NAMES
from qualiclip.report.data import NO_GROUP, FrameRow, ReportRow
from qualiclip.report.html import ReportConfig, write_report

#: Label types whose ``label`` values make a breakdown, and the list attribute holding them.
_LABEL_LISTS = {
    fo.Classification: None,
    fo.Classifications: "classifications",
    fo.Detections: "detections",
    fo.Polylines: "polylines",
}


def _dataset_name(collection: fo.core.collections.SampleCollection) -> str:
    # Views carry ``dataset_name``; a Dataset only has ``name``.
    return getattr(collection, "dataset_name", None) or collection.name


def default_group_fields(collection: fo.core.collections.SampleCollection) -> list[str]:
    """Breakdown keys the collection has: ``tags`` if any sample is tagged, ``split`` if it is a
    string field, and label fields of the types in the module docstring, in schema order."""
    schema = collection.get_field_schema()
    keys = []
    if collection.count_sample_tags():
        keys.append("tags")
    if isinstance(schema.get("split"), fo.StringField):
        keys.append("split")
    for name, field in schema.items():
        doc_type = getattr(field, "document_type", None)
        if isinstance(field, fo.EmbeddedDocumentField) and doc_type in _LABEL_LISTS:
            keys.append(name)
    return keys


def _group_values(collection, key: str, schema: dict) -> list[tuple[str, ...]]:
    """One tuple of group values per sample (``(NO_GROUP,)`` when it has none)."""
    if key == "tags":
        raw = collection.values("tags")
    elif key in schema and getattr(schema[key], "document_type", None) in _LABEL_LISTS:
        attr = _LABEL_LISTS[schema[key].document_type]
        raw = collection.values(f"{key}.label" if attr is None else f"{key}.{attr}.label")
    else:
        raw = collection.values(key)
    out = []
    for value in raw:
        if value is None:
            values: tuple[str, ...] = ()
        elif isinstance(value, (list, tuple)):
            values = tuple(dict.fromkeys(str(v) for v in value if v is not None))
        else:
            values = (str(value),)
        out.append(values or (NO_GROUP,))
    return out


def rows_from_collection(
    collection: fo.core.collections.SampleCollection,
    field: str = "quality",
    group_by: Sequence[str] | None = None,
    worst_frames: int = 3,
) -> list[ReportRow]:
    """One :class:`ReportRow` per sample of ``collection`` (dataset or view); on a video
    collection one per video, with its ``worst_frames`` lowest-scored frames (module
    docstring).

    Args:
        field: the score field; ``<field>_<pair>`` and ``<field>_error`` are read when present.
            For ``apply_model(..., label_field=field)`` with pair scores, the score is read
            from ``<field>_score``.
        group_by: breakdown keys (``"tags"``, a field name, a label field); ``None`` picks
            :func:`default_group_fields`.

    Raises:
        ValueError: ``field`` is not a field of the collection.
    """
    schema = collection.get_field_schema()
    score_field = field
    if field not in schema and f"{field}_score" in schema:
        # apply_model(pair_scores=True) layout: <label>_score, <label>_<pair>, <label>_error
        score_field = f"{field}_score"
    if score_field not in schema:
        raise ValueError(f"{_dataset_name(collection)!r} has no field {field!r}; score it first")
    keys = default_group_fields(collection) if group_by is None else list(group_by)
    unknown = [k for k in keys if k != "tags" and k not in schema]
    if unknown:
        raise ValueError(f"no such field(s) to break down by: {', '.join(unknown)}")

    paths = collection.values("filepath")
    scores = collection.values(score_field)
    pairs = {p: collection.values(f"{field}_{p}") for p in PAIR_NAMES
             if f"{field}_{p}" in schema}
    errors = (collection.values(f"{field}_error") if f"{field}_error" in schema
              else [None] * len(paths))
    groups = {k: _group_values(collection, k, schema) for k in keys}
    videos = _video_parts(collection, field, schema, worst_frames) \
        if collection.media_type == "video" else None
    rows = []
    for i, path in enumerate(paths):
        score = scores[i]
        if score is not None and not math.isfinite(score):
            score = None  # NaN / inf: not a score
        extra = {} if videos is None else {name: part[i] for name, part in videos.items()}
        rows.append(ReportRow(
            path=path,
            score=None if score is None else float(score),
            pair_scores={p: float(v[i]) for p, v in pairs.items() if v[i] is not None},
            groups={k: g[i] for k, g in groups.items()},
            error=errors[i] or (f"no {field} value" if score is None else None),
            **extra,
        ))
    return rows


#: The per-video summaries a video scoring run writes beside ``<field>`` (the mean).
_VIDEO_SUMMARIES = ("p10", "min")


def _video_parts(collection, field: str, schema: dict, worst_frames: int
                 ) -> dict[str, list]:
    """Per video of ``collection``: ``frames`` (its ``worst_frames`` lowest-scored sampled
    frames, :class:`FrameRow`), ``summaries`` (p10, min) and ``segment`` (the worst of
    ``<field>_segments``: first frame, last frame, mean). Bulk ``values()`` calls only."""
    count = collection.count()
    frame_numbers = collection.values("frames.frame_number")
    frame_scores = (collection.values(f"frames.{field}")
                    if collection.has_frame_field(field) else [[]] * count)
    rates = collection.values("metadata.frame_rate") if "metadata" in schema else [None] * count
    summaries = {s: collection.values(f"{field}_{s}") for s in _VIDEO_SUMMARIES
                 if f"{field}_{s}" in schema}
    segments = (collection.values(f"{field}_segments.detections")
                if f"{field}_segments" in schema else [None] * count)
    frames, summary, worst_segment = [], [], []
    for i in range(count):
        rate = rates[i]
        scored = sorted((float(s), n) for n, s in zip(frame_numbers[i] or [],
                                                      frame_scores[i] or [], strict=False)
                        if s is not None and math.isfinite(s))
        frames.append(tuple(
            FrameRow(frame=n, index=n - 1, score=s,
                     timestamp=(n - 1) / rate if rate else None)  # frame 1 is shown at 0 s
            for s, n in scored[:worst_frames]))
        summary.append({s: float(v[i]) for s, v in summaries.items()
                        if v[i] is not None and math.isfinite(v[i])})
        found = [d for d in segments[i] or [] if d is not None and d.confidence is not None
                 and d.support]
        low = min(found, key=lambda d: d.confidence, default=None)
        worst_segment.append(None if low is None else
                             (int(low.support[0]), int(low.support[1]), float(low.confidence)))
    return {"frames": frames, "summaries": summary, "segment": worst_segment}


def write_collection_report(
    collection: fo.core.collections.SampleCollection,
    output: str | Path,
    field: str = "quality",
    group_by: Sequence[str] | None = None,
    config: ReportConfig | None = None,
) -> Path:
    """Write the HTML report of ``collection``'s ``field`` to ``output``; returns the path.

    The file is written beside ``output`` under a fresh temporary name and then renamed over
    it: a reader never sees half a report, and a symlink at ``output`` is replaced, not
    followed.
    """
    from dataclasses import replace

    config = config or ReportConfig()
    rows = rows_from_collection(collection, field=field, group_by=group_by,
                                worst_frames=config.worst_frames)
    if collection.media_type == "video":
        config = replace(config, unit="videos")
    if not config.source:
        what = "videos" if config.unit == "videos" else "samples"
        config = replace(config, source=f"dataset {_dataset_name(collection)!r}, field {field!r}, "
                                        f"{len(rows)} {what}")
    return atomic_write(output, lambda tmp: write_report(rows, tmp, config))
