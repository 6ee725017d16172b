"""Ratings a user gives in the "Image quality" panel, stored in a field the plugin owns.

A rating is a float on the 1-5 scale (higher = better); the panel's quick labels are its ends
(good = 5, bad = 1), so good/bad labels and stars mix on one scale. The field is the plugin's by
the one ownership rule (:func:`~qualiclip_plugin.trust.protection.check_ratings_field`): it is
recorded (:func:`~qualiclip_plugin.trust.provenance.record_ratings`) before the first write, and
a user's own field of that name, or another run's, is refused. Clearing a rating sets it to
``None`` (the sample is unrated again). Imports no torch.
"""

from __future__ import annotations

from typing import Any

from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.request import RequestError, check_field_name

DEFAULT_RATINGS_FIELD = "quality_rating"
#: What each rating button writes: stars, and the quick labels at the ends of the scale.
RATING_VALUES = {"good": 5.0, "bad": 1.0, "1": 1.0, "2": 2.0, "3": 3.0, "4": 4.0, "5": 5.0}


def rating_value(value: Any) -> float:
    """A rating from the App (``"good"``, ``"bad"``, 1-5) -> its float on the 1-5 scale.

    Raises:
        RequestError: anything else.
    """
    key = str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and float(value).is_integer() else str(value).strip().lower()
    if key not in RATING_VALUES:
        raise RequestError(f"rating {str(value)[:20]!r} is not one of good, bad, 1, 2, 3, 4, 5")
    return RATING_VALUES[key]


def check_ratings_target(dataset, target, field: Any) -> str:
    """Refuse rating ``target`` (a view of ``dataset``) into ``field`` unless the panel may:
    a plain field name, a field that is the plugin's ratings or new (the ownership rule), of
    float type, on image samples of a non-generated view. Returns the field name.

    Raises:
        RequestError: one sentence naming the field or the view, and what to do.
    """
    import fiftyone as fo

    field = str(field or DEFAULT_RATINGS_FIELD).strip()
    check_field_name(field, "ratings field")
    if getattr(target, "_is_generated", False):
        raise RequestError("the current view is a generated view (patches, frames or clips); "
                           "rate samples of the dataset or of a view of its samples")
    if dataset.media_type not in ("image", None):
        raise RequestError(f"dataset '{dataset.name}' holds {dataset.media_type} samples; "
                           "ratings for calibration are given to images")
    protection.check_ratings_field(dataset, field)
    existing = dataset.get_field(field)
    if existing is not None and not isinstance(existing, fo.FloatField):
        raise RequestError(f"ratings field '{field}' holds {type(existing).__name__} values, "
                           "not ratings; choose another ratings field name")
    return field


def rate(dataset, target, field: Any, value: Any) -> int:
    """Give every sample of ``target`` the rating ``value`` in ``field``; returns how many.

    The field is recorded as the plugin's before the first write (a run stopped half-way
    still owns what it wrote).
    """
    rating = rating_value(value)
    field = check_ratings_target(dataset, target, field)
    count = target.count()
    if count == 0:
        raise RequestError("no samples to rate: select some in the grid, or rate the current "
                           "view")
    provenance.record_ratings(dataset, field)
    if dataset.get_field(field) is None:
        dataset.add_sample_field(field, _float_field())
    target.set_values(field, [rating] * count)
    return count


def clear(dataset, target, field: Any) -> int:
    """Remove the ratings of the samples of ``target`` from ``field``; returns how many had
    one. Only the plugin's ratings field is touched (the ownership rule)."""
    field = check_ratings_target(dataset, target, field)
    if provenance.ratings_recorded(dataset, field) is None:
        return 0  # nothing rated into it yet (and a user's field was refused above)
    rated_ = target.exists(field)
    count = rated_.count()
    if count:
        rated_.set_values(field, [None] * count)
    return count


def count(view, field: str) -> int:
    """How many samples of ``view`` have a rating in ``field`` (0 when it does not exist)."""
    if view._dataset.get_field(field) is None:
        return 0
    return view.exists(field).count()


def ratings_of(dataset, field: str) -> list[tuple[str, float]]:
    """``(filepath, rating)`` of every rated sample of ``dataset`` (the calibration input)."""
    rated_ = dataset.exists(field)
    return list(zip(rated_.values("filepath"), rated_.values(field)))


def _float_field():
    import fiftyone as fo

    return fo.FloatField
