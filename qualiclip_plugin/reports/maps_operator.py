"""The ``compute_quality_maps`` operator: a per-region quality heatmap for every sample.

It only turns App input into one call (:func:`.map_writing.write_quality_maps`) under
the App policy (:mod:`qualiclip_plugin.trust.policy`): maps are made with weights the server
offers, into fields the ownership rule (:mod:`qualiclip_plugin.trust.protection`) lets the run
write, under the same one-writer claim as scoring (:mod:`qualiclip_plugin.scoring.claims`), and
each run is recorded (weights, settings) with :func:`~qualiclip_plugin.trust.provenance.
record_maps`. Input checks run in ``resolve_input`` (the form's inline "Cannot run" box). Top-level
imports are FiftyOne's operator API and the plugin's torch-free modules only: this module is
imported when the App starts.
"""

from __future__ import annotations

import logging
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin.reports.map_writing import write_quality_maps
from qualiclip_plugin.scoring import claims, forms
from qualiclip_plugin.scoring.forms import ICON
from qualiclip_plugin.scoring.runner import check_device, load_model
from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.policy import AppPolicy
from qualiclip_plugin.trust.request import (
    RequestError,
    check_field_name,
    given,
    parse_model_options,
)

logger = logging.getLogger(__name__)

MAPS_OPERATOR = "compute_quality_maps"
DEFAULT_MAP_FIELD = "quality_map"
#: Unreadable files named in a result or progress line (the error field has them all).
NAMED_FAILURES = 10


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
        policy = AppPolicy.current()
        inputs = types.Object()
        inputs.view_target(ctx)
        inputs.str("field", default=DEFAULT_MAP_FIELD, label="Heatmap field",
                   description="Local score in [0, 1] per ~32 px cell, higher = better; for "
                               "comparing regions of one image, not a calibrated measurement "
                               "(each map is shown on its own range). Unreadable images are "
                               "named in <field>_error")
        weights = forms.weights_input(inputs, ctx.params, policy, None)
        inputs.str("device", default="", label="Device", description="empty = CUDA if available")
        inputs.int("max_side", label="Max side (px)",
                   description="Downscale larger images first; empty = native resolution")
        problem = forms.weights_problem(weights, policy)
        if problem is None:
            try:
                parse_model_options(ctx.params, policy)
                _maps_target(ctx)
            except RequestError as exc:
                problem = str(exc)
        if problem:
            forms.cannot_run(inputs, problem)
        else:
            forms.weights_notice(inputs, weights)
        return types.Property(inputs, view=types.View(label="Compute quality maps"))

    def execute(self, ctx):
        try:
            target, model, field, max_side = _maps_request(ctx)  # refusals: before any write
        except RequestError as exc:
            if ctx.delegated:
                raise
            logger.warning("quality maps not computed: %s", exc)
            yield ctx.trigger("show_output", forms.show_error(str(exc)))
            return
        dataset, owner = ctx.dataset, claims.new_owner()
        try:
            claims.claim(dataset, field, owner, label=f"quality maps into '{field}'")
        except RequestError as exc:  # another run took the field since the form was checked
            if ctx.delegated:
                raise
            yield ctx.trigger("show_output", forms.show_error(str(exc)))
            return
        summary: dict[str, Any] = {}
        try:
            # Recorded before the first write: the fields are the plugin's from now on.
            provenance.record_maps(dataset, provenance.describe_maps_run(
                field, model.weights_info, max_side))
            for progress, label, so_far in write_quality_maps(target, model, field=field,
                                                              max_side=max_side):
                summary = so_far
                claims.refresh(dataset, field, owner)
                if ctx.delegated:
                    ctx.set_progress(progress=progress, label=label)
                else:
                    yield ctx.trigger("set_progress", dict(progress=progress, label=label))
        finally:
            claims.release(dataset, field, owner)
        if not ctx.delegated:
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("show_output", forms.show_result(summary, (
                ("field", "Heatmap field"), ("mapped", "Maps written"),
                ("unreadable", "Unreadable images"),
                ("unreadable_files", f"Unreadable files (first {NAMED_FAILURES})"),
                ("error_field", "Reasons in field"))))


def _maps_target(ctx) -> tuple[Any, str]:
    """The target and field of ``compute_quality_maps`` (no model): raises RequestError."""
    import fiftyone as fo

    p = given(ctx.params)
    field = str(p.get("field") or DEFAULT_MAP_FIELD).strip()
    check_field_name(field, "field")
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
    error_field = dataset.get_field(f"{field}_error")
    if error_field is not None and not isinstance(error_field, fo.StringField):
        raise RequestError(f"field '{field}_error' already holds {type(error_field).__name__} "
                           "values; choose another heatmap field name")
    protection.check_map_fields(dataset, field)  # a user's heatmaps or notes, another run's
    claims.check_free(dataset, field)
    return target, field


def _maps_request(ctx) -> tuple[Any, Any, str, int | None]:
    """Check ``compute_quality_maps``' input and load the model: ``(target, model, field,
    max_side)``; raises :class:`RequestError` with what to change."""
    options = parse_model_options(ctx.params, AppPolicy.current())
    target, field = _maps_target(ctx)
    check_device(options.device)
    return target, load_model(options.weights, options.device), field, options.max_side
