"""How a score field was made, recorded with FiftyOne's runs API.

One run per score field, key ``qualiclip_<field>``, on the dataset. Its config holds what makes
two scores comparable (weights SHA-256, preprocessing, precision) plus context (weights name,
package version, date, options). A run that would mix scores made with other settings into the
same field is refused before anything is written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import fiftyone as fo

from qualiclip_plugin.trust.errors import RequestError

RUN_KEY_PREFIX = "qualiclip_"
#: Config entries that must match for two scores to be comparable (device and library versions
#: are recorded but not compared: they do not change the scores beyond float rounding).
#: ``fps`` and ``segment_seconds`` are recorded by video runs only (``None`` elsewhere): one
#: field's per-video summaries all come from one sampling rate and one segment length.
COMPARABLE_KEYS = ("weights_sha256", "max_side", "precision", "pair_names", "fps",
                   "segment_seconds")


def run_key(field: str) -> str:
    """The run key recording how ``field`` was made."""
    return RUN_KEY_PREFIX + field


def describe_run(field: str, weights_info: dict[str, str], preprocessing: dict[str, Any],
                 pair_names: list[str], options: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable provenance of a scoring run into ``field``.

    ``preprocessing`` is :meth:`qualiclip.inference.Preprocessing.describe`'s record.
    """
    import qualiclip

    return {
        "method": "qualiclip",
        "field": field,
        "weights_name": weights_info.get("name"),
        "weights_sha256": weights_info.get("sha256"),
        "weights_format": weights_info.get("format"),
        "max_side": preprocessing.get("max_side"),
        "precision": preprocessing.get("precision"),
        "pair_names": list(pair_names),
        "preprocessing": _jsonable(preprocessing),
        "qualiclip_version": qualiclip.__version__,
        "fiftyone_version": fo.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "options": _jsonable(options),
    }


def recorded(dataset: fo.Dataset, field: str) -> dict[str, Any] | None:
    """The provenance recorded for ``field``, or ``None``."""
    return _run_record(dataset, run_key(field))


def all_recorded(dataset: fo.Dataset) -> list[dict[str, Any]]:
    """The provenance of every score field this plugin recorded on ``dataset``."""
    return _run_records(dataset, RUN_KEY_PREFIX)


def _run_record(dataset: fo.Dataset, key: str) -> dict[str, Any] | None:
    """The public settings of the run ``key`` (plus its ``method``), or ``None``."""
    if not dataset.has_run(key):
        return None
    config = dataset.get_run_info(key).config
    return {k: v for k, v in vars(config).items() if not k.startswith("_")} | {
        "method": config.method}


def _run_records(dataset: fo.Dataset, prefix: str) -> list[dict[str, Any]]:
    """The records of every run whose key starts with ``prefix``."""
    return [record for key in dataset.list_runs() if key.startswith(prefix)
            for record in [_run_record(dataset, key)] if record is not None]


def incompatibility(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """Why scores made as ``old`` and as ``new`` are not comparable, or ``None`` if they are."""
    if old is None:
        return None
    diffs = [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in COMPARABLE_KEYS
             if old.get(key) != new.get(key)]
    return "; ".join(diffs) or None


def mixing_refusal(field: str, count: int | None, why: str) -> ValueError:
    """The refusal for writing into ``field`` scores made differently (``why``)."""
    held = f"{count} scores" if count is not None else "scores"
    return RequestError(
        f"field '{field}' holds {held} made with other settings ({why}); mixing them would "
        "make scores look comparable when they are not. Write to a new field, or set "
        "overwrite on a target that covers all of them")


def settings_mismatch(old: dict[str, Any], request: Any) -> str | None:
    """What differs between the recorded run ``old`` and a not-yet-loaded ``request``
    (a :class:`~qualiclip_plugin.trust.request.ScoreRequest`): weights, max side, an explicit
    precision. The exact check (weights SHA-256, resolved precision) runs before scoring."""
    diffs = []
    if old.get("weights_name") != request.weights:
        diffs.append(f"weights: {weights_label(old.get('weights_name'))!r} -> "
                     f"{weights_label(request.weights)!r}")
    if old.get("max_side") != request.max_side:
        diffs.append(f"max_side: {old.get('max_side')!r} -> {request.max_side!r}")
    if request.precision != "auto" and old.get("precision") != request.precision:
        diffs.append(f"precision: {old.get('precision')!r} -> {request.precision!r}")
    if (old.get("options") or {}).get("video"):  # image runs record no sampling
        diffs.extend(f"{key}: {old.get(key)!r} -> {getattr(request, key)!r}"
                     for key in ("fps", "segment_seconds")
                     if old.get(key) != getattr(request, key))
    return "; ".join(diffs) or None


def weights_label(weights: Any) -> Any:
    """Registered names as they are, checkpoint paths by file name: App users need not see
    server folders."""
    return weights.replace("\\", "/").rsplit("/", 1)[-1] if isinstance(weights, str) else weights


def record(dataset: fo.Dataset, description: dict[str, Any]) -> None:
    """Register (or replace) the run describing ``description['field']``."""
    config = dataset.init_run(**description)
    dataset.register_run(run_key(description["field"]), config, overwrite=True)


def save_summary(dataset: fo.Dataset, field: str, summary: dict[str, Any]) -> None:
    """Attach the last run's summary (counts, mean) to the field's run."""
    key = run_key(field)
    results = dataset.init_run_results(key, summary=_jsonable(summary))
    dataset.save_run_results(key, results, overwrite=True)


def load_summary(dataset: fo.Dataset, field: str) -> dict[str, Any]:
    """The summary stored by the last run into ``field`` (empty if none)."""
    key = run_key(field)
    if not dataset.has_run(key):
        return {}
    results = dataset.load_run_results(key, cache=False)
    if results is None:
        return {}
    return dict(getattr(results, "summary", None) or {})


# --- quality maps ------------------------------------------------------------------------------
#: Quality-map runs are recorded under their own prefix: ``qualiclip_`` + a field name is a
#: scoring run, and no score field name can make ``qualiclipmap_...`` (``_`` comes first).
MAPS_KEY_PREFIX = "qualiclipmap_"


def maps_run_key(field: str) -> str:
    """The run key recording how the heatmaps in ``field`` were made."""
    return MAPS_KEY_PREFIX + field


def describe_maps_run(field: str, weights_info: dict[str, str],
                      max_side: int | None) -> dict[str, Any]:
    """The JSON-serialisable record of a quality-maps run into ``field`` (and
    ``<field>_error``): the weights that made the maps and the settings."""
    import qualiclip

    return {
        "method": "qualiclip_maps",
        "field": field,
        "error_field": f"{field}_error",
        "weights_name": weights_info.get("name"),
        "weights_sha256": weights_info.get("sha256"),
        "weights_format": weights_info.get("format"),
        "max_side": max_side,
        "qualiclip_version": qualiclip.__version__,
        "fiftyone_version": fo.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def record_maps(dataset: fo.Dataset, description: dict[str, Any]) -> None:
    """Register (or replace) the run describing the maps in ``description['field']``."""
    config = dataset.init_run(**description)
    dataset.register_run(maps_run_key(description["field"]), config, overwrite=True)


def maps_recorded(dataset: fo.Dataset, field: str) -> dict[str, Any] | None:
    """The record of the quality-maps run into ``field``, or ``None``."""
    return _run_record(dataset, maps_run_key(field))


def all_maps_recorded(dataset: fo.Dataset) -> list[dict[str, Any]]:
    """The records of every quality-maps run of this plugin on ``dataset``."""
    return _run_records(dataset, MAPS_KEY_PREFIX)


# --- ratings ----------------------------------------------------------------------------------
#: Ratings fields (written from the "Image quality" panel) are recorded under their own prefix,
#: which neither ``qualiclip_`` nor ``qualiclipmap_`` lists.
RATINGS_KEY_PREFIX = "qualiclipratings_"
#: What a rating is: stars 1-5, higher = better; the panel's quick labels are the ends.
RATING_SCALE = "1-5 (higher = better; good = 5, bad = 1)"


def ratings_run_key(field: str) -> str:
    """The run key recording that the plugin owns the ratings in ``field``."""
    return RATINGS_KEY_PREFIX + field


def describe_ratings(field: str) -> dict[str, Any]:
    """The record of a ratings field: what its values mean and when it was made."""
    import qualiclip

    return {"method": "qualiclip_ratings", "field": field, "scale": RATING_SCALE,
            "qualiclip_version": qualiclip.__version__, "fiftyone_version": fo.__version__,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def record_ratings(dataset: fo.Dataset, field: str) -> None:
    """Register the ratings field ``field`` as the plugin's (kept if already recorded)."""
    if dataset.has_run(ratings_run_key(field)):
        return
    config = dataset.init_run(**describe_ratings(field))
    dataset.register_run(ratings_run_key(field), config)


def ratings_recorded(dataset: fo.Dataset, field: str) -> dict[str, Any] | None:
    """The record of the ratings field ``field``, or ``None``."""
    return _run_record(dataset, ratings_run_key(field))


def all_ratings_recorded(dataset: fo.Dataset) -> list[dict[str, Any]]:
    """The records of every ratings field of this plugin on ``dataset``."""
    return _run_records(dataset, RATINGS_KEY_PREFIX)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
