"""Writing scores into a dataset: field declaration, chunked bulk writes, low-quality flags.

Writes are bulk updates keyed by sample ID, one per chunk (see :func:`write_results`): orders of
magnitude faster than saving samples one by one, and a run interrupted mid-way loses at most the
chunk in flight (a rerun with ``overwrite=False`` resumes from the unscored samples).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F
from pymongo import UpdateOne

#: Field types the operator may write scores into: floats only, since bulk writes bypass
#: FiftyOne's validation and floats in an IntField break the App's range filters.
_SCORE_TYPES = (fo.FloatField,)


#: Frame fields of a video dataset are named ``frames.<name>`` in FiftyOne's paths.
FRAMES = "frames."


@dataclass(frozen=True)
class FieldLayout:
    """The sample fields one scoring run writes.

    Attributes:
        score: the quality score, float in [0, 1] (higher is better); on a video dataset the
            mean of the video's sampled frames' scores.
        error: readable reason a sample has no score (``None`` when scored).
        pairs: attribute name (``qualiclip.PAIR_NAMES``) -> field, empty unless asked for; on a
            video dataset frame fields (``frames.<score>_<attribute>``).
        flag: boolean low-quality flag, ``None`` when no flagging was asked for.
        video: a video dataset's layout: the frame fields and summary fields below exist.
    """

    score: str
    error: str
    pairs: dict[str, str] = field(default_factory=dict)
    flag: str | None = None
    video: bool = False

    @classmethod
    def for_field(cls, score: str, pair_names: Sequence[str] = (), flag: str | None = None,
                  video: bool = False) -> FieldLayout:
        prefix = FRAMES if video else ""
        return cls(score=score, error=f"{score}_error",
                   pairs={name: f"{prefix}{score}_{name}" for name in pair_names}, flag=flag,
                   video=video)

    # --- video datasets: the frames' fields and the per-video summary -----------------------
    @property
    def frame_score(self) -> str:
        """``frames.<score>``: each sampled frame's score (video layouts)."""
        return f"{FRAMES}{self.score}"

    @property
    def frame_error(self) -> str:
        """``frames.<score>_error``: why a frame has no score (video layouts)."""
        return f"{FRAMES}{self.score}_error"

    @property
    def min(self) -> str:
        """``<score>_min``: the lowest frame score of a video."""
        return f"{self.score}_min"

    @property
    def p10(self) -> str:
        """``<score>_p10``: the 10th percentile of a video's frame scores."""
        return f"{self.score}_p10"

    @property
    def segments(self) -> str:
        """``<score>_segments``: the worst segment(s), ``fo.TemporalDetections``."""
        return f"{self.score}_segments"

    def score_fields(self) -> list[str]:
        """The fields holding a score or its absence: score, error, attribute scores; on a
        video dataset also the summary fields and the frames' score and error fields."""
        if not self.video:
            return [self.score, self.error, *self.pairs.values()]
        return [self.score, self.error, self.min, self.p10, self.segments, self.frame_score,
                self.frame_error, *self.pairs.values()]

    def all_fields(self) -> list[str]:
        """Every field the run writes: :meth:`score_fields` plus the flag field, if any."""
        return self.score_fields() + ([self.flag] if self.flag else [])

    def expected_types(self) -> dict[str, tuple[type, ...]]:
        """Field name -> the field types that may already hold it."""
        types: dict[str, tuple[type, ...]] = {self.score: _SCORE_TYPES,
                                              self.error: (fo.StringField,)}
        types.update({name: _SCORE_TYPES for name in self.pairs.values()})
        if self.video:
            types.update({self.min: _SCORE_TYPES, self.p10: _SCORE_TYPES,
                          self.segments: (fo.EmbeddedDocumentField,),
                          self.frame_score: _SCORE_TYPES, self.frame_error: (fo.StringField,)})
        if self.flag:
            types[self.flag] = (fo.BooleanField,)
        return types


def flat_schema(dataset: fo.Dataset) -> dict[str, fo.Field]:
    """Every field of ``dataset`` by path: sample fields, and on a video dataset its frame
    fields as ``frames.<name>`` (FiftyOne keeps the two schemas apart)."""
    schema = dict(dataset.get_field_schema(flat=True))
    if dataset.media_type == "video":
        schema.update({FRAMES + name: value for name, value
                       in dataset.get_frame_field_schema(flat=True).items()})
    return schema


def count_values(collection: Any, name: str) -> int:
    """How many samples (or, for ``frames.<name>``, frames) of ``collection`` hold a value in
    ``name``."""
    if name.startswith(FRAMES):
        return int(collection.count(name))  # counts the frames whose value is not None
    return collection.exists(name).count()


def clear_fields(collection: Any, names: Sequence[str]) -> None:
    """Set the fields ``names`` (sample fields or ``frames.<name>``) to ``None`` on the
    samples (and frames) of ``collection``."""
    frames = [name[len(FRAMES):] for name in names if name.startswith(FRAMES)]
    samples = [name for name in names if not name.startswith(FRAMES)]
    if samples:
        collection.clear_sample_fields(samples)
    if frames:
        collection.clear_frame_fields(frames)


def schema_conflicts(dataset: fo.Dataset, layout: FieldLayout) -> list[str]:
    """Fields of ``layout`` that exist with a type the run could not write; readable lines."""
    schema = flat_schema(dataset)
    problems = []
    for name, allowed in layout.expected_types().items():
        existing = schema.get(name)
        if existing is not None and not isinstance(existing, allowed):
            wanted = " or ".join(t.__name__ for t in allowed)
            problems.append(f"field '{name}' exists as {type(existing).__name__}, not {wanted}")
        elif (isinstance(existing, fo.EmbeddedDocumentField) and name == layout.segments
              and existing.document_type is not fo.TemporalDetections):
            problems.append(f"field '{name}' holds {existing.document_type.__name__}, not "
                            "TemporalDetections")
    return problems


def declare_fields(dataset: fo.Dataset, layout: FieldLayout) -> None:
    """Add missing fields with their types, so ``None`` writes never guess a type."""
    schema = flat_schema(dataset)
    wanted = {layout.score: fo.FloatField, layout.error: fo.StringField,
              **{name: fo.FloatField for name in layout.pairs.values()}}
    if layout.flag:
        wanted[layout.flag] = fo.BooleanField
    if layout.video:
        wanted.update({layout.min: fo.FloatField, layout.p10: fo.FloatField,
                       layout.frame_score: fo.FloatField, layout.frame_error: fo.StringField})
        if layout.segments not in schema:
            dataset.add_sample_field(layout.segments, fo.EmbeddedDocumentField,
                                     embedded_doc_type=fo.TemporalDetections)
    for name, ftype in wanted.items():
        if name in schema:
            continue
        if name.startswith(FRAMES):
            dataset.add_frame_field(name[len(FRAMES):], ftype)
        else:
            dataset.add_sample_field(name, ftype)


def write_results(dataset: fo.Dataset, ids: Sequence[str], results: Sequence,
                  layout: FieldLayout) -> None:
    """Write one chunk: ``results[i]`` (a ``qualiclip.ScoreResult``) belongs to sample ``ids[i]``.

    A failed sample gets ``None`` scores and its error text; a scored one gets its scores and a
    cleared error, so a retried file does not keep a stale message.

    One bulk update per chunk sets all of a sample's fields at once: this is the operation
    ``set_values`` performs per field (``UpdateOne`` with ``$set`` and ``last_modified_at``,
    then reloading in-memory samples), issued once instead of once per field. With the 7
    attribute fields that is ~9x fewer database operations (benchmarks/RESULTS.md). Where that
    internal entry point is missing, ``set_values`` per field does the same job, slower.
    """
    if not ids:
        return
    columns: dict[str, list] = {layout.score: [], layout.error: []}
    for name in layout.pairs.values():
        columns[name] = []
    for result in results:
        failed = result.error is not None or result.score is None
        columns[layout.score].append(None if failed else float(result.score))
        columns[layout.error].append((result.error or "no score returned") if failed else None)
        for pair, name in layout.pairs.items():
            value = None if failed else result.pair_scores.get(pair)
            columns[name].append(None if value is None else float(value))
    if len(results) != len(ids):
        raise ValueError(f"{len(ids)} sample IDs for {len(results)} results")

    bulk_write = getattr(dataset, "_bulk_write", None)
    if bulk_write is None:
        for name, values in columns.items():
            dataset.set_values(name, dict(zip(ids, values)), key_field="id")
        return
    now = datetime.datetime.utcnow()
    names = list(columns)
    ops = [UpdateOne({"_id": ObjectId(sample_id)},
                     {"$set": {**{name: columns[name][i] for name in names},
                               "last_modified_at": now}})
           for i, sample_id in enumerate(ids)]
    bulk_write(ops, ids=list(ids))


def flag_count(n: int, percent: float) -> int:
    """``ceil(n * percent / 100)`` computed exactly: in floats 16.1 % of 1000 is 161.00000000000003
    and would round up to 162. ``percent`` is taken as the decimal the user typed."""
    return math.ceil(Fraction(n) * Fraction(str(percent)) / 100)


@dataclass
class FlagResult:
    flagged_ids: list[str]
    cutoff: float | None  # highest flagged score (percent mode) or the threshold


def flag_low_quality(dataset: fo.Dataset, target: fo.core.collections.SampleCollection,
                     layout: FieldLayout, percent: float | None = None,
                     threshold: float | None = None) -> FlagResult:
    """Flag the worst ``percent`` % of the target's scored samples, or those below ``threshold``.

    Percent mode flags exactly ``ceil(n * percent / 100)`` samples, ``n`` the number of scored
    samples in the target, lowest scores first (ties broken by sample order). The flag field
    becomes True for flagged samples, False for the target's other scored samples and ``None``
    for its unscored ones, so a rerun never leaves stale flags. The flag tag follows
    ``flagged_ids`` through :func:`qualiclip_plugin.trust.protection.move_tag` (the caller's:
    tags are shared with users, and only the samples the plugin tagged lose it).
    """
    if layout.flag is None:
        raise ValueError("layout has no flag field")
    scored = target.exists(layout.score)  # `F(x) < t` alone would also match missing scores
    if percent is not None:
        k = flag_count(scored.count(), percent)
        worst = scored.sort_by(layout.score).limit(k)
        flagged_ids = worst.values("id") if k else []
        cutoff = max(worst.values(layout.score)) if k else None
    else:
        flagged_ids = scored.match(F(layout.score) < threshold).values("id")
        cutoff = threshold
    scored.set_field(layout.flag, False).save(layout.flag)
    target.exists(layout.score, False).set_field(layout.flag, None).save(layout.flag)
    flagged = dataset.select(flagged_ids)
    if flagged_ids:
        flagged.set_field(layout.flag, True).save(layout.flag)
    return FlagResult(flagged_ids=list(flagged_ids), cutoff=cutoff)


#: Description of the saved views this plugin makes; only views carrying it are replaced.
FLAG_VIEW_MARK = "QualiCLIP low-quality flags"


def save_flag_view(dataset: fo.Dataset, name: str, layout: FieldLayout) -> None:
    """Save the flagged samples, worst first, as a named view (replacing one of that name that
    this plugin made; :func:`qualiclip_plugin.trust.protection.check_saved_view` is checked
    before any write)."""
    view = dataset.match(F(layout.flag) == True).sort_by(layout.score)  # noqa: E712
    dataset.save_view(name, view, overwrite=True,
                      description=f"{FLAG_VIEW_MARK} in '{layout.flag}', worst first")
