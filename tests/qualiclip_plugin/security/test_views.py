"""Browser state -> view: the panel (and any operator taking a view from params) builds views
only from FiftyOne's own read-only stages, by name from an allowlist
(:mod:`qualiclip_plugin.trust.views`): no class path from the request is imported, no raw
aggregation stage nested anywhere runs, nothing from another dataset is read, and "Back to my
view" restores the user's view exactly.

Panel events run through the panel's real handlers with a real execution context (what the
App's panel request reaches); what the panel hands back to the App is read from the context's
triggered operations.
"""

from __future__ import annotations

import json
import sys
import uuid

import pytest

from tests.qualiclip_plugin.test_operator import _params

MATCH = "fiftyone.core.stages.Match"
CONCAT = "fiftyone.core.stages.Concat"
MONGO = "fiftyone.core.stages.Mongo"


@pytest.fixture()
def scored(make_dataset, tiny_checkpoint):
    """The test images scored by the plugin into ``quality``."""
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset()
    compute_image_quality(dataset, **_params(tiny_checkpoint))
    return dataset


@pytest.fixture()
def probe_module(tmp_path, monkeypatch):
    """A module on ``sys.path`` whose import, and whose class's construction, each leave a file
    behind: ``(module name, marker folder)``."""
    name = f"qualiclip_probe_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(tmp_path)!r}, 'imported').touch()\n"
        "class Boom:\n"
        "    def __init__(self, **kwargs):\n"
        f"        pathlib.Path({str(tmp_path)!r}, 'constructed').touch()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path
    sys.modules.pop(name, None)


def panel_event(dataset, method: str, state: dict, view: list | None = None,
                extended: dict | None = None, view_name: str | None = None, **params):
    """Run the panel's ``method`` as the App's panel request would; returns the context
    (``ctx.panel.state``, ``ctx.executor._requests``: what the panel asks the App to do)."""
    from fiftyone.operators.executor import ExecutionContext, Executor

    from qualiclip_plugin.panel.operator import ImageQualityPanel

    request = {"dataset_name": dataset.name, "view": view or [], "extended": extended,
               "view_name": view_name,
               "params": {"panel_id": "panel-under-test", "panel_state": state, **params}}
    ctx = ExecutionContext(request_params=request, executor=Executor())
    getattr(ImageQualityPanel(), method)(ctx)
    return ctx


def handed_to_app(ctx) -> list[tuple[str, dict]]:
    """The App operations the panel triggered: ``[(name, params)]``."""
    return [(r.operator_uri, r.params or {}) for r in ctx.executor._requests]


def shown_views(ctx) -> list:
    """The views the panel asked the App to show (``set_view``'s stages); ``clear_view`` is
    ``[]``."""
    shown = []
    for name, params in handed_to_app(ctx):
        if name.endswith("set_view"):
            shown.append(params["view"] if "view" in params else params.get("name"))
        elif name.endswith("clear_view"):
            shown.append([])
    return shown


def _settled_state(dataset) -> dict:
    """The panel state after it opened on ``dataset`` (as the browser sends it back)."""
    return panel_event(dataset, "on_load", {}).panel.state._data


def _stage(cls: str, **kwargs) -> dict:
    return {"_cls": cls, "kwargs": [[k, v] for k, v in kwargs.items()]}


# --- class paths ------------------------------------------------------------------------------
def test_class_paths_from_the_browser_are_never_imported(scored, probe_module, tmp_path):
    """A ``_cls`` naming any class (a module of the server, ``subprocess.Popen``) is refused by
    name: the module is not imported, nothing is constructed, nothing runs."""
    from qualiclip_plugin.trust.views import ViewRefused, build_view, view_state

    module, markers = probe_module
    ran = tmp_path / "popen_ran"
    hostile = [
        [_stage(f"{module}.Boom")],
        [_stage("subprocess.Popen", args=["touch", str(ran)])],
        [_stage("fiftyone.core.stages.Limit", limit=2), _stage(f"{module}.Boom")],
        [_stage("os.system", command=f"touch {ran}")],
    ]
    settled = _settled_state(scored)
    for stages in hostile:
        with pytest.raises(ViewRefused, match="not one of the FiftyOne view stages"):
            build_view(scored, stages)
        # the panel keeps the user's view in the browser; a crafted one comes back, as the
        # panel keeps it or as a bare list of stages
        for kept in (view_state(scored, stages), stages):
            for event in ("back_to_view", "show_worst"):
                ctx = panel_event(scored, event, {**settled, "n": 3, "base_view": kept})
                assert module not in sys.modules, (event, stages)
                assert not (markers / "imported").exists(), (event, stages)
                assert not ran.exists(), (event, stages)
                # nothing shown, or the whole dataset, and one sentence why
                assert shown_views(ctx) in ([], [[]]), (event, stages)
                assert ctx.panel.state.message.startswith("⚠"), (event, stages)
    assert not (markers / "imported").exists() and not (markers / "constructed").exists()


def test_keyword_names_and_nested_class_paths_are_refused(scored, probe_module):
    from qualiclip_plugin.trust.views import ViewRefused, build_view

    module, markers = probe_module
    for stages in (
            [_stage("fiftyone.core.stages.Limit", limit=2, _cls=f"{module}.Boom")],
            [_stage(MATCH, filter={"a": {"_cls": f"{module}.Boom", "kwargs": []}})],
            [{"_cls": "fiftyone.core.stages.Limit", "kwargs": "limit=2"}],
            "not a list", [3]):
        with pytest.raises(ViewRefused):
            build_view(scored, stages)
    assert module not in sys.modules and not (markers / "imported").exists()


# --- raw aggregation stages, however deep ----------------------------------------------------
def _hostile_pipelines(other_collection: str) -> list[list[dict]]:
    """Stage lists that pass a check of top-level ``Mongo`` stages only."""
    lookup = {"$lookup": {"from": other_collection, "pipeline": [], "as": "stolen"}}
    return [
        [_stage(MONGO, pipeline=[lookup])],
        [_stage(MONGO, pipeline=[{"$limit": 1}, {"$out": "qualiclip_stolen"}])],
        # inside a Match expression
        [_stage(MATCH, filter={"$expr": {"$function": {
            "body": "function() { return true }", "args": [], "lang": "js"}}})],
        [_stage(MATCH, filter={"$and": [{"filepath": {"$exists": True}},
                                        {"$where": "function() { return true }"}]})],
        [_stage(MATCH, filter={"$expr": {"$and": [True, {"$gt": [
            {"$size": {"$ifNull": [lookup, []]}}, -1]}]}})],
        # inside a Concat's nested pipeline (a view of the same dataset with a $lookup)
        [_stage(CONCAT, samples={"dataset_id": "<same>", "stages": [
            _stage(MONGO, pipeline=[lookup])]})],
        [_stage("fiftyone.core.stages.SortBy", field_or_expr={"$accumulator": {}})],
        [_stage("fiftyone.core.stages.SetField", field="x", expr={"$unionWith": {
            "coll": other_collection}})],
        [_stage("fiftyone.core.stages.GroupBy", field_or_expr="filepath",
                match_expr={"$merge": {"into": "qualiclip_stolen"}})],
        [_stage("fiftyone.core.stages.FilterLabels", field="x",
                filter={"$graphLookup": {"from": other_collection}})],
    ]


def test_raw_stages_nested_anywhere_never_run(scored, make_dataset):
    import fiftyone as fo
    import fiftyone.core.odm as foodm

    from qualiclip_plugin.trust.views import ViewRefused, build_view, view_state

    other = make_dataset()
    other.add_sample_field("secret", fo.StringField)
    other.set_values("secret", ["do not read"] * len(other))
    same = str(scored._doc.id)
    state = _settled_state(scored)
    for stages in _hostile_pipelines(other._sample_collection_name):
        stages = json.loads(json.dumps(stages).replace("<same>", same))
        with pytest.raises(ViewRefused):
            build_view(scored, stages)
        # the view the panel keeps comes back from the browser: as the panel keeps it, and
        # as a bare list of stages
        for kept in (view_state(scored, stages), stages):
            for event in ("back_to_view", "show_worst", "show_scored"):
                ctx = panel_event(scored, event, {**state, "n": 3, "base_view": kept})
                handed = json.dumps(shown_views(ctx))
                for operator in ("$lookup", "$out", "$function", "$where", "$accumulator",
                                 "$unionWith", "$merge", "$graphLookup", "Concat", "Mongo"):
                    assert operator not in handed, (event, stages)
                assert ctx.panel.state.message.startswith("⚠"), (event, stages)
    assert "qualiclip_stolen" not in foodm.get_db_conn().list_collection_names()


def test_a_view_kept_for_another_dataset_is_not_built_here(scored, make_dataset):
    """The panel's kept view names its dataset; a state from another dataset (or one whose
    stages read another dataset) is refused instead of being built here."""
    from qualiclip_plugin.trust.views import ViewRefused, build_view, view_from_state, view_state

    other = make_dataset()
    kept = view_state(other, other.limit(2)._serialize())
    with pytest.raises(ViewRefused, match="not a view of this dataset"):
        view_from_state(scored, kept)
    with pytest.raises(ViewRefused):
        build_view(scored, other.concat(other.limit(1))._serialize())
    with pytest.raises(ViewRefused, match="no saved view"):
        view_from_state(scored, {"dataset_id": str(scored._doc.id), "name": "../../etc"})
    ctx = panel_event(scored, "back_to_view", {**_settled_state(scored), "base_view": kept})
    assert shown_views(ctx) == [[]]
    assert "not a view of this dataset" in ctx.panel.state.message


# --- what still works -------------------------------------------------------------------------
def test_ordinary_views_round_trip_without_writing(scored):
    """The stages people put in the view bar build the same view; building one creates no
    index (SortBy's default would)."""
    from fiftyone import ViewField as F

    from qualiclip_plugin.trust.views import build_view

    views = [scored.view(), scored.limit(3),
             scored.exists("quality").match(F("quality") > 0.3).sort_by("quality").skip(1),
             scored.match_tags("x", bool=False).select_fields("quality").take(4, seed=1),
             scored.exclude(scored.first().id).sort_by(F("quality") * -1)]
    indexes = sorted(scored.list_indexes())
    for view in views:
        rebuilt = build_view(scored, json.loads(json.dumps(view._serialize())))
        assert rebuilt.values("id") == view.values("id")
    assert sorted(scored.list_indexes()) == indexes
    assert len(build_view(scored, None)) == len(build_view(scored, [])) == len(scored)


def test_back_restores_the_users_view_exactly(scored):
    """The grid's sort (the App's extended SortBy) and sidebar filters are the App's, applied
    on top: "Back to my view" hands back the view bar's stages only, after several of the
    panel's own views, with no SortBy stacked into it."""
    from fiftyone import ViewField as F

    users = scored.match(F("quality") > 0).limit(10)
    stages = json.loads(json.dumps(users._serialize()))
    grid_sort = {"fiftyone.core.stages.SortBy": {"field_or_expr": "quality", "reverse": True}}
    state = _settled_state(scored)
    ctx = None
    for event in ("show_worst", "show_best", "show_scored"):
        # the App sends the panel's last view back in the view bar after the first one
        view = stages if ctx is None else shown_views(ctx)[-1]
        ctx = panel_event(scored, event, {**state, "n": 2}, view=view, extended=grid_sort)
        state = ctx.panel.state._data
        assert len(shown_views(ctx)) == 1
    ctx = panel_event(scored, "back_to_view", state, view=shown_views(ctx)[-1],
                      extended=grid_sort)
    (back,) = shown_views(ctx)
    strip = [{k: v for k, v in s.items() if k != "_uuid"} for s in back]
    assert strip == [{k: v for k, v in s.items() if k != "_uuid"} for s in stages]
    assert not any(s["_cls"].endswith("SortBy") for s in back)


def test_a_saved_view_is_restored_by_name(scored):
    scored.save_view("mine", scored.limit(4))
    state = {**_settled_state(scored), "n": 2}
    ctx = panel_event(scored, "show_worst", state, view_name="mine")
    ctx = panel_event(scored, "back_to_view", ctx.panel.state._data, view=shown_views(ctx)[-1])
    assert shown_views(ctx) == ["mine"]
