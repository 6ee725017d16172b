"""Operators that explain low scores: ``write_quality_report`` and ``compute_quality_maps``.

Each only turns App input into a call of :func:`qualiclip_plugin.report.write_collection_report`
or :func:`qualiclip_plugin.quality_map_writing.write_quality_maps`. Top-level imports are
FiftyOne's operator API only: this module is imported when the App starts.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

REPORT_OPERATOR = "write_quality_report"
MAPS_OPERATOR = "compute_quality_maps"


class WriteQualityReport(foo.Operator):
    """Write a self-contained HTML report of a score field for the target view."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=REPORT_OPERATOR,
            label="Write quality report (QualiCLIP)",
            description="HTML report: histogram, worst/best images, breakdown, flag counts",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("field", default="quality", label="Score field",
                   description="Written by 'Compute image quality'; <field>_<attribute> fields "
                               "are shown too when present")
        inputs.str("output", required=True, label="Output HTML file",
                   description="Path on the machine running the operator, e.g. "
                               "/data/reports/quality.html")
        inputs.int("n", default=12, min=1, label="Worst / best images to show")
        inputs.float("threshold", default=0.5, min=0, max=1, label="Flag scores below")
        inputs.list("group_by", types.String(), label="Break down by",
                    description="'tags', a field or a label field; empty = tags, split and "
                                "every label field found")
        return types.Property(inputs, view=types.View(label="Write quality report"))

    def execute(self, ctx) -> dict[str, Any]:
        from qualiclip.report import ReportConfig
        from qualiclip_plugin.report import write_collection_report

        params = ctx.params
        config = ReportConfig(n=int(params.get("n") or 12),
                              threshold=float(params.get("threshold", 0.5)))
        path = write_collection_report(ctx.target_view(), params["output"],
                                       field=params.get("field") or "quality",
                                       group_by=params.get("group_by") or None, config=config)
        return {"path": str(path)}

    def resolve_output(self, ctx) -> types.Property:
        outputs = types.Object()
        outputs.str("path", label="Report written to")
        return types.Property(outputs)


class ComputeQualityMaps(foo.Operator):
    """Store a per-region quality map (``fo.Heatmap``) for every sample of the target."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=MAPS_OPERATOR,
            label="Compute quality maps (QualiCLIP)",
            description="Heatmap field: where in each image quality is poor",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            execute_as_generator=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("field", default="quality_map", label="Heatmap field",
                   description="Local score in [0, 1] per ~32 px cell, higher = better; for "
                               "comparing regions of one image, not a calibrated measurement")
        inputs.str("weights", default="qualiclip", label="Weights",
                   description="'qualiclip' (official, CC BY-NC 4.0) or a local .pth")
        inputs.str("device", default="", label="Device", description="empty = CUDA if available")
        inputs.int("max_side", label="Max side (px)",
                   description="Downscale larger images first; empty = native resolution")
        return types.Property(inputs, view=types.View(label="Compute quality maps"))

    def execute(self, ctx):
        from qualiclip_plugin.model_cache import get_model
        from qualiclip_plugin.quality_map_writing import write_quality_maps

        params = ctx.params
        model = get_model(params.get("weights") or "qualiclip", params.get("device") or None)
        steps = write_quality_maps(ctx.target_view(), model,
                                   field=params.get("field") or "quality_map",
                                   max_side=params.get("max_side") or None)
        for progress, label in steps:
            if ctx.delegated:
                ctx.set_progress(progress=progress, label=label)
            else:
                yield ctx.trigger("set_progress", dict(progress=progress, label=label))
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
