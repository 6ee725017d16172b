"""What the "Image quality" panel shows and does, as functions of a dataset view.

Every number is a database aggregation (``count``, ``bounds``, ``histogram_values``), never a
loop over samples, so the panel stays fast on large views (``benchmarks/bench_panel.py``).
Values coming from the App (field, attribute, range, threshold) are checked here against what
the plugin's run records say exists: the panel only reads score fields the plugin wrote and only
writes a tag the plugin owns.

On a video dataset the panel works on the videos: a scoring run writes each sampled frame's
score into ``frames.<field>`` and the per-video summaries beside it (``<field>``: the mean of the
sampled frames, ``<field>_p10``, ``<field>_min``, and the worst segments as
``<field>_segments`` TemporalDetections), so every aggregation here runs on those sample-level
summaries unchanged, the attribute choice becomes the summary choice (mean / p10 / min), and
"worst segments" shows the segments as clips (:func:`segments_view`).

Saved thresholds live in the panel's execution store of the dataset
(:func:`~qualiclip_plugin.trust.protection.panel_store`; one entry per score path), tied to the
field's run by the weights SHA-256 of its record: a threshold saved for scores made with other
weights is not shown once the field was re-scored with new weights.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from typing import Any

from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.protection import panel_store
from qualiclip_plugin.trust.request import DEFAULT_FLAG_TAG, RequestError, parse_float

DEFAULT_BINS = 25
#: The default threshold before one is saved: this quantile of the view's scores (the 10%
#: lowest fall below it), so it always sits among the scores.
DEFAULT_QUANTILE = 0.1
MAX_EXTREMES = 1000
#: The attribute choice meaning the overall score (``<field>`` itself; on videos the mean of
#: the sampled frames).
OVERALL = "overall"
#: The other per-video summaries a video scoring run writes (``<field>_<summary>``), offered in
#: place of the attribute scores, which a video run writes per frame only.
VIDEO_SUMMARIES = ("p10", "min")
#: The label of a video's worst segments, and the field suffix holding them.
SEGMENTS_SUFFIX = "_segments"


class PanelError(ValueError):
    """A panel request that cannot be carried out; the message is shown as it is."""


@dataclass(frozen=True)
class ScoreSource:
    """A score field the plugin recorded, with what the panel needs from its run record."""

    field: str
    attributes: tuple[str, ...]
    flag_tag: str | None
    weights_sha256: str | None
    #: Scores of videos: ``attributes`` are per-video summaries, the samples are videos.
    video: bool = False
    #: A video run's attribute scores, written per frame (``frames.<field>_<attribute>``).
    frame_attributes: tuple[str, ...] = ()
    #: Read in a frames view (``to_frames``) of the videos: the samples are frames.
    frames_view: bool = False

    @property
    def unit(self) -> str:
        """What the samples are, for the panel's texts: ``"frames"``, ``"videos"`` or
        ``"samples"``."""
        return "frames" if self.frames_view else "videos" if self.video else "samples"

    @property
    def segments(self) -> str:
        """The field holding the worst segments of the videos (``<field>_segments``)."""
        return self.field + SEGMENTS_SUFFIX

    def path(self, attribute: str | None) -> str:
        """The field holding ``attribute``'s scores (``OVERALL``/``None``: the score)."""
        if attribute in (None, "", OVERALL):
            return self.field
        if attribute not in self.attributes:
            raise PanelError(f"'{attribute}' is not an attribute score of '{self.field}'")
        return f"{self.field}_{attribute}"


@dataclass(frozen=True)
class Counts:
    total: int
    scored: int
    errors: int

    @property
    def unscored(self) -> int:
        return max(0, self.total - self.scored - self.errors)


def sources(dataset) -> dict[str, ScoreSource]:
    """The score fields the plugin's runs recorded on ``dataset``, by field name."""
    found = {}
    video = dataset.media_type == "video"
    schema = dataset.get_field_schema() if video else {}
    for record in provenance.all_recorded(dataset):
        field = record.get("field")
        if not field:
            continue
        options = record.get("options") or {}
        attributes = tuple(record.get("pair_names") or ()) if options.get("pair_scores", True) \
            else ()
        frame_attributes = attributes if video else ()
        if video:
            # Attribute scores of a video run are per frame (frames.<field>_<attr>): the
            # choices on videos are the summaries the run wrote per video.
            attributes = tuple(s for s in VIDEO_SUMMARIES if f"{field}_{s}" in schema) + \
                tuple(a for a in attributes if f"{field}_{a}" in schema)
        found[field] = ScoreSource(field=field, attributes=attributes,
                                   flag_tag=options.get("flag_tag"),
                                   weights_sha256=record.get("weights_sha256"), video=video,
                                   frame_attributes=frame_attributes)
    return found


def for_view(src: ScoreSource, view) -> ScoreSource:
    """``src`` as ``view`` holds it: in a frames view (``to_frames``) of a video dataset the
    samples are frames, ``<field>`` is each frame's score and the choices are the attribute
    scores of the frames (the per-video summaries are not there); elsewhere ``src`` itself."""
    if not (src.video and getattr(view, "_is_frames", False)):
        return src
    schema = view.get_field_schema()
    return replace(src, video=False, frames_view=True, attributes=tuple(
        a for a in src.frame_attributes if f"{src.field}_{a}" in schema))


def source(dataset, field: Any) -> ScoreSource:
    """The recorded source named ``field`` (an App value: checked)."""
    known = sources(dataset)
    if not isinstance(field, str) or field not in known:
        raise PanelError(f"'{field}' is not a QualiCLIP score field of this dataset"
                         if known else "this dataset has no QualiCLIP scores yet: score it "
                         "first (the 'Score unscored samples' button)")
    return known[field]


def counts(view, field: str) -> Counts:
    """Scored / failed / total samples of ``view`` for score ``field``."""
    # Three counts rather than one facet of Count(field)s: measured ~3x faster on 100k samples
    # (benchmarks/bench_panel.py).
    return Counts(total=view.count(), scored=view.exists(field).count(),
                  errors=view.exists(f"{field}_error").count())


def counts_view(view, field: str, which: str):
    """The samples of ``view`` that are ``scored``, ``unscored`` or ``errors``."""
    from fiftyone import ViewField as F

    if which == "scored":
        return view.exists(field)
    if which == "errors":
        return view.exists(f"{field}_error")
    if which == "unscored":
        return view.match(~F(field).exists() & ~F(f"{field}_error").exists())
    raise PanelError(f"unknown count '{which}'")


def histogram(view, path: str, bins: int = DEFAULT_BINS) -> dict[str, list[float]] | None:
    """``{"edges": [bins + 1], "counts": [bins]}`` of ``path`` over ``view``; ``None`` when no
    sample of the view has a score. Bins are ``[edge, next edge)`` and span the view's own
    range, the highest score included (a single value gets a 0.01-wide bin).

    Two database passes: the bounds, then one group-by of each score's bin number (FiftyOne's
    ``histogram_values`` took ~7x longer on 100k samples).
    """
    import fiftyone as fo
    from fiftyone import ViewField as F

    low, high = view.aggregate(fo.Bounds(path))
    if low is None:
        return None
    if high - low < 1e-9:
        low, high = low - 0.005, high + 0.005
    high += (high - low) * 1e-6  # half-open bins: the highest score falls in the last one
    width = (high - low) / bins
    per_bin = view.aggregate(fo.CountValues(path, expr=((F() - low) / width).floor()))
    counts_ = [0] * bins
    for index, count in per_bin.items():
        if index is not None:  # samples without a score
            counts_[min(bins - 1, max(0, int(index)))] += count
    return {"edges": [low + i * width for i in range(bins)] + [high], "counts": counts_}


def default_threshold(hist: dict[str, list[float]] | None,
                      quantile: float = DEFAULT_QUANTILE) -> float | None:
    """The threshold shown before one is saved: the ``quantile`` (0.1: the 10th percentile) of
    the view's scores, read off :func:`histogram`'s bins (linear within a bin, no further
    database pass). Always inside the scores' range, unlike any constant; ``None`` without
    scores."""
    if not hist or not sum(hist["counts"]):
        return None
    edges, counts = hist["edges"], hist["counts"]
    target = quantile * sum(counts)
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= target:
            return edges[i] + (edges[i + 1] - edges[i]) * (target - seen) / count
        seen += count
    return edges[-1]


def range_view(view, path: str, low: Any, high: Any, include_high: bool = False):
    """Samples of ``view`` whose ``path`` is in ``[low, high)`` (``]`` when ``include_high``,
    for the last bin)."""
    from fiftyone import ViewField as F

    low, high = _number(low, "range start"), _number(high, "range end")
    if high < low:
        low, high = high, low
    upper = F(path) <= high if include_high else F(path) < high
    return view.exists(path).match((F(path) >= low) & upper)


def extremes(view, path: str, n: Any, worst: bool):
    """The ``n`` lowest (``worst``) or highest scores of ``view``, in that order."""
    n = int(_number(n, "N"))
    if not 1 <= n <= MAX_EXTREMES:
        raise PanelError(f"N must be between 1 and {MAX_EXTREMES}")
    return view.exists(path).sort_by(path, reverse=not worst).limit(n)


def segments_view(view, src: ScoreSource, n: Any):
    """The ``n`` worst segments of the videos of ``view`` as clips (FiftyOne's clips view of
    ``<field>_segments``), lowest segment mean first: opening one in the App plays that
    segment."""
    if not src.video:
        raise PanelError("worst segments exist for videos only; this dataset holds images")
    n = int(_number(n, "N"))
    if not 1 <= n <= MAX_EXTREMES:
        raise PanelError(f"N must be between 1 and {MAX_EXTREMES}")
    segments = src.segments
    if segments not in view.get_field_schema():
        raise PanelError(f"'{src.field}' has no worst segments ('{segments}'): score the videos "
                         "again with this version of the plugin")
    # The other sample fields come along (FiftyOne's clips hold only the clip field by
    # default): the panel keeps drawing the videos' summaries while the clips are shown.
    clips = view.exists(segments).to_clips(segments, other_fields=True)
    return clips.sort_by(f"{segments}.confidence", create_index=False).limit(n)


def below(view, path: str, threshold: Any):
    """Samples of ``view`` scored below ``threshold`` (unscored samples are not below)."""
    from fiftyone import ViewField as F

    return view.exists(path).match(F(path) < check_threshold(threshold))


def check_threshold(value: Any) -> float:
    value = _number(value, "threshold")
    if not 0.0 <= value <= 1.0:
        raise PanelError("the threshold must be between 0 and 1 (scores are probabilities)")
    return value


# --- saved thresholds and reviewed state ------------------------------------------------------
def saved_threshold(dataset, src: ScoreSource, path: str) -> dict[str, Any] | None:
    """``{"threshold", "reviewed", "saved"}`` saved for ``path``, or ``None`` (none saved, or
    saved for scores made with other weights)."""
    entry = panel_store(dataset).get(f"threshold:{path}")
    if not isinstance(entry, dict) or entry.get("weights_sha256") != src.weights_sha256:
        return None
    return entry


def save_threshold(dataset, src: ScoreSource, path: str, threshold: Any) -> dict[str, Any]:
    """Save ``threshold`` for ``path``; a new value starts unreviewed."""
    threshold = check_threshold(threshold)
    old = saved_threshold(dataset, src, path) or {}
    entry = {"threshold": threshold, "weights_sha256": src.weights_sha256,
             "reviewed": bool(old.get("reviewed")) and old.get("threshold") == threshold,
             "saved": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    panel_store(dataset).set(f"threshold:{path}", entry)
    return entry


def set_reviewed(dataset, src: ScoreSource, path: str, reviewed: bool) -> dict[str, Any]:
    """Mark the saved threshold of ``path`` reviewed (or not)."""
    entry = saved_threshold(dataset, src, path)
    if entry is None:
        raise PanelError("save a threshold first: the reviewed state belongs to a saved "
                         "threshold")
    entry = {**entry, "reviewed": bool(reviewed)}
    panel_store(dataset).set(f"threshold:{path}", entry)
    return entry


def reset_threshold(dataset, path: str) -> None:
    """Forget the saved threshold (and its reviewed state) of ``path``."""
    panel_store(dataset).delete(f"threshold:{path}")


# --- tags ---------------------------------------------------------------------------------------
def panel_tag(dataset, src: ScoreSource) -> str:
    """The tag the panel writes for ``src``: the run's flag tag, else ``low_quality``.

    Raises:
        PanelError: that tag is the user's (:func:`~qualiclip_plugin.trust.protection.
            check_tag`, the rule every writer of tags follows).
    """
    tag = src.flag_tag or DEFAULT_FLAG_TAG
    try:
        protection.check_tag(dataset, tag)
    except RequestError:
        raise PanelError(f"tag '{tag}' is already used on this dataset and was not set by "
                         "QualiCLIP; the panel leaves it untouched (score with another flag "
                         "tag to tag from here)") from None
    return tag


def check_taggable(target) -> None:
    """Refuse tagging in a generated view (clips, frames, patches: e.g. the panel's worst
    segments): its samples are not the dataset's, so a tag would land nowhere."""
    if getattr(target, "_is_generated", False):
        raise PanelError("the grid shows clips, frames or patches, not the dataset's samples: "
                         "press 'Back to my view', then tag")


def tag_below(dataset, target, path: str, threshold: Any, tag: str) -> int:
    """Tag the samples of ``target`` below ``threshold`` with the plugin's ``tag``; returns
    how many are below. Samples that had the tag already keep it as the user's."""
    check_taggable(target)
    matched = below(target, path, threshold)
    protection.add_tag(dataset, matched, tag)
    return matched.count()


def untag(target, tag: str) -> int:
    """Remove the plugin's ``tag`` from the samples of ``target`` it tagged (a user's own
    ``tag`` stays); returns how many lost it."""
    check_taggable(target)
    return protection.remove_tag(target._dataset, target, tag)


def _number(value: Any, what: str) -> float:
    """A finite number from the panel (the request parser's rule), as a :class:`PanelError`."""
    try:
        number = parse_float(value, what)
    except RequestError as exc:
        raise PanelError(str(exc)) from None
    if number is None:
        raise PanelError(f"{what} must be a number")
    return number
