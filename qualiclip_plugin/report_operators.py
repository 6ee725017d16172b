"""Operators that explain low scores: ``write_quality_report`` and ``compute_quality_maps``.

Each only turns App input into a call of :func:`qualiclip_plugin.report.write_collection_report`
or :func:`qualiclip_plugin.quality_map_writing.write_quality_maps`. Empty inputs (the App sends
``None`` or ``""`` for a cleared box) take the form's defaults; bad input raises
:class:`~qualiclip_plugin.request.RequestError` before anything is written. Top-level imports are
FiftyOne's operator API (and the torch-free request checks) only: this module is imported when
the App starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin.operators import ICON
from qualiclip_plugin.request import (
    DEFAULT_WEIGHTS,
    MIN_MAX_SIDE,
    RequestError,
    _check_field_name,
    _float,
    _int,
    _is_registered_or_url,
)

REPORT_OPERATOR = "write_quality_report"
MAPS_OPERATOR = "compute_quality_maps"
DEFAULT_SCORE_FIELD = "quality"
DEFAULT_MAP_FIELD = "quality_map"
DEFAULT_N = 12
DEFAULT_THRESHOLD = 0.5


class WriteQualityReport(foo.Operator):
    """Write a self-contained HTML report of a score field for the target view."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=REPORT_OPERATOR,
            label="Write quality report (QualiCLIP)",
            description="HTML report: histogram, worst/best images, breakdown, flag counts",
            icon=ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("field", default=DEFAULT_SCORE_FIELD, label="Score field",
                   description="Written by 'Compute image quality'; <field>_<attribute> fields "
                               "are shown too when present")
        inputs.str("output", required=True, label="Output HTML file",
                   description="Path on the machine running the operator, e.g. "
                               "/data/reports/quality.html")
        inputs.int("n", default=DEFAULT_N, min=1, label="Worst / best images to show")
        inputs.float("threshold", default=DEFAULT_THRESHOLD, min=0, max=1,
                     label="Flag scores below")
        inputs.list("group_by", types.String(), label="Break down by",
                    description="'tags', a field or a label field; empty = tags, split and "
                                "every label field found")
        return types.Property(inputs, view=types.View(label="Write quality report"))

    def execute(self, ctx) -> dict[str, Any]:
        from qualiclip.report import ReportConfig
        from qualiclip_plugin.report import write_collection_report

        p = _given(ctx.params)
        n = _int(p.get("n"), "n", DEFAULT_N, minimum=1)
        threshold = _float(p.get("threshold"), "threshold")
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        if not 0 <= threshold <= 1:
            raise RequestError(f"threshold must be in [0, 1] (scores are), got {threshold}")
        output = str(p.get("output") or "").strip()
        if not output:
            raise RequestError("output: give the path of the HTML file to write, e.g. "
                               "/data/reports/quality.html")
        output_path = Path(os.path.expanduser(output))
        if output_path.is_dir():
            raise RequestError(f"output {output!r} is a folder; give a file path, e.g. "
                               f"{output_path / 'quality.html'}")
        group_by = p.get("group_by") or None
        if isinstance(group_by, str):
            group_by = [group_by]
        # A missing field or group raises here, before the file is written.
        path = write_collection_report(ctx.target_view(), output_path,
                                       field=p.get("field") or DEFAULT_SCORE_FIELD,
                                       group_by=group_by,
                                       config=ReportConfig(n=n, threshold=threshold))
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
            icon=ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            execute_as_generator=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("field", default=DEFAULT_MAP_FIELD, label="Heatmap field",
                   description="Local score in [0, 1] per ~32 px cell, higher = better; for "
                               "comparing regions of one image, not a calibrated measurement")
        inputs.str("weights", default=DEFAULT_WEIGHTS, label="Weights",
                   description="'qualiclip' (official, CC BY-NC 4.0) or a local .pth")
        inputs.str("device", default="", label="Device", description="empty = CUDA if available")
        inputs.int("max_side", label="Max side (px)",
                   description=f"Downscale larger images first (at least {MIN_MAX_SIDE}); "
                               "empty = native resolution")
        return types.Property(inputs, view=types.View(label="Compute quality maps"))

    def execute(self, ctx):
        from qualiclip_plugin.quality_map_writing import write_quality_maps

        target, model, field, max_side = _maps_request(ctx)  # every refusal: before any write
        steps = write_quality_maps(target, model, field=field, max_side=max_side)
        for progress, label in steps:
            if ctx.delegated:
                ctx.set_progress(progress=progress, label=label)
            else:
                yield ctx.trigger("set_progress", dict(progress=progress, label=label))
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")


def _maps_request(ctx) -> tuple[Any, Any, str, int | None]:
    """Check ``compute_quality_maps``' input and load the model: ``(target, model, field,
    max_side)``; raises :class:`RequestError` with what to change."""
    import fiftyone as fo

    from qualiclip_plugin.model_cache import get_model

    p = _given(ctx.params)
    field = str(p.get("field") or DEFAULT_MAP_FIELD).strip()
    _check_field_name(field, "field")
    weights = str(p.get("weights") or DEFAULT_WEIGHTS).strip()
    if not _is_registered_or_url(weights):
        weights = os.path.expanduser(weights)
        if not os.path.isfile(weights):
            raise RequestError(f"weights {weights!r}: no such file. Give 'qualiclip' (official "
                               "weights) or the path of a .pth checkpoint readable by the "
                               "machine that runs the operator")
    max_side = _int(p.get("max_side"), "max_side", None, minimum=0) or None
    if max_side is not None and max_side < MIN_MAX_SIDE:
        raise RequestError(f"max_side must be at least {MIN_MAX_SIDE} px (or empty for native "
                           f"resolution), got {max_side}")
    dataset = ctx.dataset
    if dataset.media_type not in ("image", None):
        raise RequestError(f"dataset '{dataset.name}' holds {dataset.media_type} samples; "
                           "quality maps are computed for images")
    target = ctx.target_view()
    if getattr(target, "_is_generated", False):
        raise RequestError("the target is a generated view (patches, frames or clips); run on "
                           "the dataset or on a view of its samples")
    if target.count() == 0:
        raise RequestError("the target holds no samples: nothing to map (check the target "
                           "choice, the current view or the selection)")
    existing = dataset.get_field(field)
    if existing is not None and getattr(existing, "document_type", None) is not fo.Heatmap:
        raise RequestError(f"field {field!r} already holds {type(existing).__name__} values, "
                           "not quality maps; choose another field name")
    try:
        model = get_model(weights, p.get("device") or None)
    except Exception as exc:  # missing file, bad checkpoint, offline download, bad device
        raise RequestError(f"cannot load weights {weights!r}: {exc}") from exc
    return target, model, field, max_side


def _given(params: dict[str, Any] | None) -> dict[str, Any]:
    """Params with the App's empty values (``None``, ``""``) dropped, so defaults apply."""
    return {k: v for k, v in (params or {}).items() if v is not None and v != ""}
