"""The numbers behind a quality report: rows of scores in, summaries out.

Pure functions on :class:`ReportRow` lists, so the HTML builder (:mod:`qualiclip.report.html`), the
CSV path (``qualiclip report scores.csv``) and the FiftyOne path (``qualiclip_plugin.reports.rows``)
share one definition of "worst", "flagged" and "group".
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from qualiclip.files import from_spreadsheet_safe
from qualiclip.prompts import PAIR_NAMES

#: Group value for rows that have none (e.g. an untagged sample).
NO_GROUP = "(none)"


@dataclass(frozen=True)
class FrameRow:
    """One scored frame of a video in a report (a video's worst frames).

    Attributes:
        frame: the frame number as the caller shows it (FiftyOne's are 1-based).
        index: the frame's position in presentation order, 0-based: the frame the report
            decodes for the thumbnail (``qualiclip.video`` numbers frames the same way).
        score: the frame's quality in [0, 1].
        timestamp: when the frame is shown, in seconds; ``None`` when unknown (the report
            then takes it from the decoded frame).
    """

    frame: int
    index: int
    score: float
    timestamp: float | None = None


@dataclass(frozen=True)
class ReportRow:
    """One image (or video) in a report.

    Attributes:
        path: image file path (used for the thumbnail and as the name shown).
        score: overall quality in [0, 1], ``None`` when the image could not be scored.
        pair_scores: per prompt pair scores in [0, 1], keyed by pair name.
        groups: breakdown keys -> the values this row belongs to, e.g.
            ``{"split": ("train",), "tags": ("a", "b")}``; a row may be in several groups.
        error: why the image was not scored, else ``None``.
        frames: for a video, its worst scored frames, lowest score first (``score`` is then
            the video's summary, e.g. the mean of its sampled frames); empty for an image.
        summaries: for a video, other per-video numbers shown beside it (e.g. ``{"p10": ..,
            "min": ..}``), each in [0, 1].
        segment: for a video, its worst segment ``(first frame, last frame, mean score)``.
    """

    path: str
    score: float | None
    pair_scores: dict[str, float] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    error: str | None = None
    frames: tuple[FrameRow, ...] = ()
    summaries: dict[str, float] = field(default_factory=dict)
    segment: tuple[int, int, float] | None = None


def _float_or_none(text: str | None) -> float | None:
    if text is None or text.strip() == "":
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # NaN / inf: not a score


def read_scores_csv(
    path: str | os.PathLike, group_by: Sequence[str] = (), separator: str = ";",
    worst_frames: int = 3,
) -> list[ReportRow]:
    """Read a ``qualiclip score`` CSV (columns ``path, score, <pairs>, width, height, error``,
    and ``frame, timestamp`` when it scored videos).

    Args:
        path: the CSV file.
        group_by: extra columns to break scores down by (e.g. a ``split`` column you added).
        separator: splits a group cell into several values (``"a;b"`` -> ``a`` and ``b``).
        worst_frames: how many of a video's lowest-scored frames its row keeps.

    Relative image paths are taken relative to the CSV's folder when they do not exist relative
    to the working directory. The frame rows of a video (a ``frame`` cell) become one row for
    that video (:func:`video_rows`); a video that could not be opened is one error row.
    """
    path = Path(path)
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as handle:  # tolerate Excel's BOM
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("path", "score", *group_by) if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        pair_columns = [c for c in columns if c in PAIR_NAMES]
        frames: dict[str, list[tuple[dict, ReportRow]]] = {}
        place: dict[str, int] = {}
        for record in reader:
            # Cells `qualiclip score` protected from spreadsheet formulas lose their quote.
            record = {k: from_spreadsheet_safe(v) if isinstance(v, str) else v
                      for k, v in record.items()}
            image = Path(record["path"])
            if not image.is_absolute() and not image.exists():
                image = path.parent / image
            pairs = {c: _float_or_none(record[c]) for c in pair_columns}
            groups = {
                key: tuple(v.strip() for v in (record[key] or "").split(separator) if v.strip())
                or (NO_GROUP,)
                for key in group_by
            }
            row = ReportRow(
                path=str(image),
                score=_float_or_none(record["score"]),
                pair_scores={k: v for k, v in pairs.items() if v is not None},
                groups=groups,
                error=(record.get("error") or None),
            )
            if (record.get("frame") or "").strip():
                if str(image) not in frames:
                    place[str(image)] = len(rows)
                    rows.append(row)  # its place in the report's order; replaced below
                frames.setdefault(str(image), []).append((record, row))
            else:
                rows.append(row)
    for video, found in frames.items():
        rows[place[video]] = video_rows(video, found, worst_frames)
    return rows


def video_rows(video: str, frames: Sequence[tuple[dict, ReportRow]], worst_frames: int
               ) -> ReportRow:
    """One video's report row from its frame rows of a ``qualiclip score`` CSV (the CSV
    ``record`` and the row read from it, in time order): the score is the mean of its scored
    frames, ``summaries`` their p10 and min (as ``qualiclip.video.summarize`` computes them),
    ``frames`` the ``worst_frames`` lowest (frame numbers 0-based, as the CSV has them)."""
    from qualiclip.video import tenth_percentile  # a CSV with videos only (loads torch)

    scored = [(row.score, int(record["frame"]), _float_or_none(record.get("timestamp")))
              for record, row in frames if row.score is not None]
    errors = [row.error for _, row in frames if row.error]
    first = frames[0][1]
    if not scored:
        return replace(first, score=None, pair_scores={},
                       error=errors[0] if errors else "no frame could be scored")
    values = sorted(score for score, _, _ in scored)
    worst = sorted(scored, key=lambda s: (s[0], s[1]))[:worst_frames]
    return replace(
        first, score=math.fsum(values) / len(values), pair_scores={}, error=None,
        summaries={"p10": tenth_percentile(values), "min": values[0]},
        frames=tuple(FrameRow(frame=n, index=n, score=s, timestamp=t) for s, n, t in worst))


def scored(rows: Sequence[ReportRow]) -> list[ReportRow]:
    """The rows that have a score."""
    return [r for r in rows if r.score is not None]


def histogram(rows: Sequence[ReportRow], bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Counts of scores in ``bins`` equal bins over [0, 1] -> ``(counts (bins,), edges (bins+1,))``.

    The range is fixed to [0, 1] so reports of different datasets compare bin for bin; a score
    outside it (not from QualiCLIP) is counted in the nearest end bin, so counts add up.
    """
    values = np.clip(np.array([r.score for r in scored(rows)], dtype=np.float64), 0.0, 1.0)
    return np.histogram(values, bins=bins, range=(0.0, 1.0))


def extremes(rows: Sequence[ReportRow], n: int) -> tuple[list[ReportRow], list[ReportRow]]:
    """``(worst, best)``: the ``n`` lowest scores ascending and the ``n`` highest descending.

    The two lists never share an image. With fewer than ``2 n`` scored rows, the scored rows are
    split instead: worst gets the lower ``ceil(k / 2)`` of the ``k``, best the rest (so a single
    image is "worst" only). Ties are broken by path so the order is reproducible.
    """
    ascending = sorted(scored(rows), key=lambda r: (r.score, r.path))
    n_worst = max(0, min(n, math.ceil(len(ascending) / 2)))
    n_best = max(0, min(n, len(ascending) - n_worst))
    # Best comes from what worst did not take: with ties at the boundary, ranking all rows by
    # (-score, path) could pick an image worst already holds.
    best = sorted(ascending[n_worst:], key=lambda r: (-r.score, r.path))
    return ascending[:n_worst], best[:n_best]


@dataclass(frozen=True)
class GroupStats:
    """Scores of one group value: ``count`` scored rows, their mean / median / min, and how
    many are below the flag threshold."""

    key: str
    value: str
    count: int
    mean: float
    median: float
    minimum: float
    flagged: int


def group_stats(rows: Sequence[ReportRow], threshold: float) -> dict[str, list[GroupStats]]:
    """Per breakdown key, one :class:`GroupStats` per value, ordered by mean score ascending
    (worst groups first). A row with several values (tags) counts in each."""
    members: dict[str, dict[str, list[float]]] = {}
    for row in scored(rows):
        for key, values in row.groups.items():
            for value in values:
                members.setdefault(key, {}).setdefault(value, []).append(row.score)
    out: dict[str, list[GroupStats]] = {}
    for key, by_value in members.items():
        stats = [
            GroupStats(key=key, value=value, count=len(s), mean=float(np.mean(s)),
                       median=float(np.median(s)), minimum=float(np.min(s)),
                       flagged=int(np.sum(np.asarray(s) < threshold)))
            for value, s in by_value.items()
        ]
        out[key] = sorted(stats, key=lambda g: (g.mean, g.value))
    return out


def flag_counts(rows: Sequence[ReportRow], threshold: float) -> dict[str, int]:
    """Counts for the report's summary table.

    Keys: ``images``, ``scored``, ``failed`` (not scored), ``flagged`` (score below
    ``threshold``), and ``low_<pair>`` (that pair's score below ``threshold``) for each pair.
    """
    ok = scored(rows)
    counts = {
        "images": len(rows),
        "scored": len(ok),
        "failed": len(rows) - len(ok),
        "flagged": sum(1 for r in ok if r.score < threshold),
    }
    pair_names = [p for p in PAIR_NAMES if any(p in r.pair_scores for r in ok)]
    pair_names += sorted({p for r in ok for p in r.pair_scores} - set(PAIR_NAMES))
    for pair in pair_names:
        counts[f"low_{pair}"] = sum(
            1 for r in ok if pair in r.pair_scores and r.pair_scores[pair] < threshold
        )
    return counts
