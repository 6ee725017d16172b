"""The ``write_quality_report`` operator: a self-contained HTML report of a score field.

It only turns App input into one call (:func:`.rows.write_collection_report`) under the App
policy (:mod:`qualiclip_plugin.trust.policy`): the report goes into the dataset's report folder
under a name the plugin completes, and replaces an earlier report only when asked
(:func:`qualiclip_plugin.trust.protection.report_file`). The threshold defaults to the one saved
(and reviewed) for that score in the "Image quality" panel. Input checks run in
``resolve_input`` (the form's inline "Cannot run" box); empty inputs take the form's defaults.
Top-level imports are FiftyOne's operator API and the plugin's torch-free modules only: this
module is imported when the App starts.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin.panel import data as panel_data
from qualiclip_plugin.scoring import forms
from qualiclip_plugin.scoring.forms import ICON
from qualiclip_plugin.trust import protection
from qualiclip_plugin.trust.policy import AppPolicy
from qualiclip_plugin.trust.request import (
    RequestError,
    check_field_name,
    given,
    parse_float,
    parse_int,
)

REPORT_OPERATOR = "write_quality_report"
DEFAULT_SCORE_FIELD = "quality"
DEFAULT_N = 12
MAX_N = 500
DEFAULT_THRESHOLD = 0.5


class WriteQualityReport(foo.Operator):
    """Write a self-contained HTML report of a score field for the target view."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=REPORT_OPERATOR,
            label="Write quality report (QualiCLIP)",
            description="HTML report: histogram, worst/best images (videos: with their worst "
                        "frames), breakdown, flag counts",
            icon=ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        field = given(ctx.params).get("field") or DEFAULT_SCORE_FIELD
        inputs.str("field", default=DEFAULT_SCORE_FIELD, label="Score field",
                   description="Written by 'Compute image quality'; <field>_<attribute> fields "
                               "are shown too when present")
        inputs.str("name", default=f"{field}-report", label="Report name",
                   description="Saved as <name>.html in this dataset's report folder on the "
                               "server; a link to open it in a new tab follows the run")
        inputs.bool("overwrite", default=False, label="Replace an existing report",
                    description="Off: a report name already used for this dataset is refused")
        inputs.int("n", default=DEFAULT_N, min=1, max=MAX_N,
                   label="Worst / best images (or videos) to show")
        saved = _saved_threshold(ctx.dataset, field)
        if saved is None:
            default = DEFAULT_THRESHOLD
            where = f"no threshold is saved for '{field}' in the Image quality panel"
        else:
            default = saved[0]
            where = (f"the threshold saved for '{field}' in the Image quality panel"
                     f"{'' if saved[1] else ' (not reviewed yet)'}")
        inputs.float("threshold", default=default, min=0, max=1, label="Flag scores below",
                     description=f"Default {default:.6g}: {where}")
        inputs.list("group_by", types.String(), label="Break down by",
                    description="'tags', a field or a label field; empty = tags, split and "
                                "every label field found")
        try:
            _report_request(ctx)
        except RequestError as exc:
            forms.cannot_run(inputs, str(exc))
        return types.Property(inputs, view=types.View(label="Write quality report"))

    def execute(self, ctx) -> dict[str, Any]:
        from qualiclip_plugin.reports.rows import write_collection_report  # torch: run time only

        request = _report_request(ctx)  # checked by the form; again here for direct calls
        path = write_collection_report(ctx.target_view(), request["path"],
                                       field=request["field"], group_by=request["group_by"],
                                       config=request["config"])
        href = "/media?" + urllib.parse.urlencode({"filepath": str(path)})
        return {"report": path.name, "folder": str(path.parent), "href": href}

    def resolve_output(self, ctx) -> types.Property | None:
        results = ctx.results if isinstance(ctx.results, dict) else {}
        if not results.get("href"):
            return None
        outputs = types.Object()
        outputs.str("report", label="Report written")
        # A new tab: the report must not replace the App the user is working in.
        outputs.view("open", types.LinkView(label=f"Open {results['report']} in a new tab",
                                            href=results["href"], new_window=True))
        return types.Property(outputs, view=types.View(label="Quality report"))


def _report_request(ctx) -> dict[str, Any]:
    """Check the report form: ``path``, ``field``, ``group_by``, ``config``; raises
    :class:`RequestError` with what to change."""
    from qualiclip.report.html import ReportConfig  # loads torch: not at App start

    p = given(ctx.params)
    field = str(p.get("field") or DEFAULT_SCORE_FIELD).strip()
    check_field_name(field, "field")
    n = parse_int(p.get("n"), "n", DEFAULT_N, minimum=1, maximum=MAX_N)
    threshold = parse_float(p.get("threshold"), "threshold")
    if threshold is None:  # the form's default, for callers that send only some params
        saved = _saved_threshold(ctx.dataset, field)
        threshold = DEFAULT_THRESHOLD if saved is None else saved[0]
    if not 0 <= threshold <= 1:
        raise RequestError(f"threshold must be in [0, 1] (scores are), got {threshold}")
    group_by = p.get("group_by") or None
    if isinstance(group_by, str):
        group_by = [group_by]
    schema = ctx.dataset.get_field_schema(flat=True)
    if field not in schema and f"{field}_score" not in schema:
        raise RequestError(f"the dataset has no field '{field}': score it first with "
                           "'Compute image quality'")
    unknown = [g for g in group_by or () if g != "tags" and g not in schema]
    if unknown:
        raise RequestError(f"no such field(s) to break down by: {', '.join(map(str, unknown))}")
    if ctx.target_view().count() == 0:
        raise RequestError("the target holds no samples: nothing to report")
    path = protection.report_file(AppPolicy.current(), ctx.dataset,
                                  str(p.get("name") or f"{field}-report"),
                                  overwrite=bool(p.get("overwrite", False)))
    return {"path": path, "field": field, "group_by": group_by,
            "config": ReportConfig(n=n, threshold=threshold)}



def _saved_threshold(dataset, field: str) -> tuple[float, bool] | None:
    """``(threshold, reviewed)`` saved for score ``field`` in the panel, or ``None`` (none
    saved, saved for scores made with other weights, or not a field the plugin recorded)."""
    try:
        source = panel_data.sources(dataset).get(field)
        entry = panel_data.saved_threshold(dataset, source, field) if source else None
    except Exception:  # a form must render even if the panel's store cannot be read
        return None
    if entry is None:
        return None
    return float(entry["threshold"]), bool(entry.get("reviewed"))
