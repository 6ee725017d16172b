"""Browser state -> view: the one way the plugin turns view stages that came from the browser
(panel state, an operator's params) into a :class:`fiftyone.core.view.DatasetView`.

FiftyOne's own rebuild (``DatasetView._build`` / ``ViewStage._from_dict``) imports whatever class
path a stage's ``_cls`` names and runs its constructor, and a ``Mongo`` stage or a raw operator
nested in an expression (``$lookup``, ``$unionWith``, ``$out``, ``$merge``, ``$where``,
``$function``, ...) reads other collections, writes, or runs JavaScript in the database. Here:

* a stage's ``_cls`` is only looked up in :data:`ALLOWED_STAGES` (FiftyOne's read-only stages
  that work on the view's own samples), never imported; its keyword names must be that
  stage's own parameters;
* no value anywhere inside a stage may hold a raw aggregation stage or a JavaScript operator
  (:data:`FORBIDDEN_OPERATORS`) or another class path (``_cls``);
* stages are built on the dataset the request is about; a state recorded on another dataset is
  refused, and stages that would read another dataset (``Concat``) are not in the list;
* stages that would create a database index while being added (``SortBy``, ``GroupBy``,
  ``GeoWithin``) are built with ``create_index=False``: building a view only reads.

A refusal is a :class:`ViewRefused` with one sentence; callers show it and fall back (the
panel keeps the grid as it is, or shows the whole dataset). Imports no torch.
"""

from __future__ import annotations

from typing import Any

import fiftyone.core.stages as fos

from qualiclip_plugin.trust.errors import RequestError

#: The stages a browser may name, by the ``_cls`` FiftyOne serializes them with. Left out on
#: purpose: ``Mongo`` (raw pipeline), ``Concat`` (another view's pipeline, possibly another
#: dataset), ``Flatten`` (nested serialized stages), ``GeoNear`` (creates an index, reorders
#: with a raw ``$geoNear``), ``SortBySimilarity`` (loads brain runs and computes), and the
#: ``To*`` stages (they create generated datasets: writes).
ALLOWED_STAGES: dict[str, type[fos.ViewStage]] = {
    f"fiftyone.core.stages.{cls.__name__}": cls for cls in (
        fos.Exclude, fos.ExcludeBy, fos.ExcludeFields, fos.ExcludeFrames, fos.ExcludeGroups,
        fos.ExcludeGroupSlices, fos.ExcludeLabels, fos.Exists, fos.FilterField,
        fos.FilterLabels, fos.FilterKeypoints, fos.GeoWithin, fos.GroupBy, fos.Limit,
        fos.LimitLabels, fos.MapLabels, fos.MapValues, fos.Match, fos.MatchFrames,
        fos.MatchLabels, fos.MatchTags, fos.Select, fos.SelectBy, fos.SelectFields,
        fos.SelectFrames, fos.SelectGroups, fos.SelectGroupSlices, fos.SelectLabels,
        fos.SetField, fos.Shuffle, fos.Skip, fos.SortBy, fos.Take)
}

#: Operators that must not appear anywhere in a stage's values: aggregation stages that read
#: other collections or write ($lookup, $unionWith, $out, $merge, ...), server-side JavaScript
#: ($where, $function, $accumulator) and stages that report on the server itself.
FORBIDDEN_OPERATORS = frozenset({
    "$lookup", "$graphLookup", "$unionWith", "$out", "$merge", "$facet", "$documents",
    "$function", "$accumulator", "$where", "$currentOp", "$listSessions",
    "$listLocalSessions", "$collStats", "$indexStats", "$planCacheStats", "$changeStream",
    "$listSearchIndexes", "$search", "$searchMeta", "$vectorSearch", "$listSampledQueries",
    "$shardedDataDistribution", "$querySettings", "$geoNear",
})

#: More stages than a person builds in the view bar, and deeper nesting than any FiftyOne
#: expression: refused before walking further (a crafted state could be huge).
MAX_STAGES = 100
MAX_DEPTH = 64


class ViewRefused(RequestError):
    """Browser view state the plugin will not build; the message is one sentence."""


def view_state(dataset, stages: Any = None, name: Any = None) -> dict[str, Any]:
    """What the panel keeps to return to a view later: ``{"dataset_id", "name"}`` for a saved
    view, else ``{"dataset_id", "stages"}`` (the App's view-bar stages, as the browser sent
    them: they are checked by :func:`view_from_state` when used, not here)."""
    state: dict[str, Any] = {"dataset_id": str(dataset._doc.id)}
    if name:
        state["name"] = name
    else:
        state["stages"] = stages or []
    return state


def view_from_state(dataset, state: Any):
    """The view ``state`` (from :func:`view_state`, sent back by the browser) describes on
    ``dataset``.

    Raises:
        ViewRefused: the state names another dataset, an unknown saved view, or stages
            :func:`build_view` refuses.
    """
    if not isinstance(state, dict) or state.get("dataset_id") != str(dataset._doc.id):
        raise ViewRefused("the kept view is not a view of this dataset (it names another "
                          "dataset, or is not a view)")
    name = state.get("name")
    if name is not None:
        if not isinstance(name, str) or not dataset.has_saved_view(name):
            raise ViewRefused(f"there is no saved view '{str(name)[:100]}' on this dataset")
        return dataset.load_saved_view(name)
    return build_view(dataset, state.get("stages"))


def build_view(dataset, stages: Any):
    """``dataset`` narrowed by ``stages``, serialized view stages (``[{"_cls", "kwargs"}]``)
    from the browser; ``None`` or ``[]`` is the whole dataset.

    Raises:
        ViewRefused: a stage outside :data:`ALLOWED_STAGES`, a forbidden operator or class
            path in a value, unknown keyword names, or a stage that does not apply to
            ``dataset``. Nothing is imported, and no stage of a refused list is built.
    """
    if stages is None:
        return dataset.view()
    if not isinstance(stages, list):
        raise ViewRefused("a view must be a list of view stages")
    if len(stages) > MAX_STAGES:
        raise ViewRefused(f"a view of more than {MAX_STAGES} stages is not built from the "
                          "browser")
    # Every stage is checked before the first is built: a refused list builds nothing.
    checked = [_checked_stage(index, stage) for index, stage in enumerate(stages)]
    view = dataset.view()
    for index, (cls, kwargs) in enumerate(checked):
        try:
            view = view.add_stage(cls(**kwargs))
        except Exception as exc:  # a stage that does not fit this dataset (missing field...)
            reason = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise ViewRefused(f"view stage {index + 1} ({cls.__name__}) does not apply to this "
                              f"dataset: {reason}") from None
    return view


def _checked_stage(index: int, stage: Any) -> tuple[type[fos.ViewStage], dict[str, Any]]:
    """The allowed class and keyword arguments of one serialized stage."""
    where = f"view stage {index + 1}"
    if not isinstance(stage, dict):
        raise ViewRefused(f"{where} is not a serialized view stage")
    cls = ALLOWED_STAGES.get(stage.get("_cls")) if isinstance(stage.get("_cls"), str) else None
    if cls is None:
        name = str(stage.get("_cls"))[:100]
        raise ViewRefused(f"{where} ({name}) is not one of the FiftyOne view stages the plugin "
                          "builds from the browser")
    pairs = stage.get("kwargs", [])
    if not isinstance(pairs, list) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str)
            for p in pairs):
        raise ViewRefused(f"{where} ({cls.__name__}) has malformed arguments")
    kwargs = dict(pairs)
    allowed = {param["name"] for param in cls._params()}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ViewRefused(f"{where} ({cls.__name__}) has unknown arguments: "
                          f"{', '.join(n[:50] for n in unknown[:5])}")
    problem = _forbidden(kwargs, 0)
    if problem:
        raise ViewRefused(f"{where} ({cls.__name__}) holds {problem}, which the plugin never "
                          "runs from the browser")
    if "create_index" in allowed:
        kwargs["create_index"] = False
    return cls, kwargs


def _forbidden(value: Any, depth: int) -> str | None:
    """What in ``value`` (JSON-like) must not run: a forbidden operator, a class path, or
    nesting deeper than :data:`MAX_DEPTH`; ``None`` when nothing."""
    if depth > MAX_DEPTH:
        return "nesting deeper than any FiftyOne expression"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return "a non-text key"
            if key in FORBIDDEN_OPERATORS:
                return f"the raw operator '{key}'"
            if key == "_cls":
                return "a class path"
            problem = _forbidden(item, depth + 1)
            if problem:
                return problem
    elif isinstance(value, (list, tuple)):
        for item in value:
            problem = _forbidden(item, depth + 1)
            if problem:
                return problem
    return None
