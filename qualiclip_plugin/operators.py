"""The ``compute_image_quality`` operator: App form and Python call -> :class:`ScoringRun`.

This module only translates input (form, params, execution mode) into a run and reports back;
scoring lives in :mod:`qualiclip`, writing in :mod:`qualiclip_plugin.writing`. Top-level imports
are FiftyOne's operator API only: this is imported when the App starts.
"""

from __future__ import annotations

import copy
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin import OPERATOR_NAME
from qualiclip_plugin.request import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FIELD,
    DEFAULT_FLAG_TAG,
    DEFAULT_WEIGHTS,
    FLAG_MODES,
    IMMEDIATE_MAX_SAMPLES,
    PRECISIONS,
    RequestError,
    parse_request,
)

#: Operator icon, relative to the plugin folder (the one holding ``fiftyone.yml``). Both layouts
#: carry the file: ``assets/icon.svg`` at the repository root and in ``qualiclip_plugin/``.
ICON = "/assets/icon.svg"

_SUMMARY_FIELDS = (
    ("scored", "Scored in this run"),
    ("skipped", "Skipped (already scored)"),
    ("failed", "Failed (see the error field)"),
    ("mean", "Mean score over the target"),
    ("flagged", "Flagged as low quality"),
    ("queued_shards", "Delegated shards queued"),
)


class ComputeImageQuality(foo.Operator):
    """Score images with QualiCLIP and write ``<field>`` (plus attributes, errors, flags)."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=OPERATOR_NAME,
            label="Compute image quality (QualiCLIP)",
            description="Score image quality; flag and tag the worst images",
            icon=ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            execute_as_generator=True,  # live progress for immediate runs
        )

    # --- execution mode --------------------------------------------------------------------
    def resolve_delegation(self, ctx) -> bool | None:
        """The form's "delegate" (default: on above :data:`IMMEDIATE_MAX_SAMPLES` samples).

        True forces delegation server-side whichever button was pressed; False/None leave it
        to the button (the App's Schedule, or ``request_delegation``).
        """
        delegate = ctx.params.get("delegate")
        if delegate is None:
            return True if _target_size(ctx) > IMMEDIATE_MAX_SAMPLES else None
        return bool(delegate)

    def resolve_execution_options(self, ctx) -> foo.ExecutionOptions:
        # Both modes stay allowed whatever the form says: with the App's default settings (no
        # orchestrator registered, legacy orchestrators off) an operator that allows only
        # delegated execution gets no run button at all. The Execute button still queues the
        # run when "delegate" is on, because resolve_delegation forces it.
        return foo.ExecutionOptions(allow_immediate_execution=True,
                                    allow_delegated_execution=True,
                                    default_choice_to_delegated=bool(self.resolve_delegation(ctx)))

    # --- form ------------------------------------------------------------------------------
    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        inputs.view_target(ctx)
        size = _target_size(ctx)
        field = ctx.params.get("field") or DEFAULT_FIELD
        inputs.str("field", default=DEFAULT_FIELD, label="Output field",
                   description="Float field for the score (higher = better). Also written: "
                               f"{field}_error, and {field}_<attribute> when asked")
        inputs.str("weights", default=DEFAULT_WEIGHTS, label="Weights",
                   description="'qualiclip' (official, CC BY-NC 4.0) or the path of a "
                               "fine-tuned .pth checkpoint on the machine running the operator")
        inputs.str("device", default="", label="Device",
                   description="e.g. cuda, cuda:1, cpu; empty = CUDA if available")
        inputs.int("batch_size", default=DEFAULT_BATCH_SIZE, min=1, label="Batch size")
        inputs.int("max_side", label="Max side (px)",
                   description="Downscale images whose longer side exceeds this; empty = native "
                               "resolution (the official protocol)")
        inputs.enum("precision", list(PRECISIONS), default="auto", label="Precision",
                    view=types.DropdownView())
        inputs.bool("pair_scores", default=True, label="Store the 7 attribute scores",
                    description="good photo, sharp image, sharp edges, high resolution, "
                                "noise-free, high quality, good picture")
        inputs.bool("overwrite", default=False, label="Overwrite existing scores",
                    description="Off: samples that already have a score are skipped (resume)")

        mode_choices = types.RadioGroup()
        mode_choices.add_choice("none", label="Don't flag")
        mode_choices.add_choice("percent", label="Worst N percent of the target")
        mode_choices.add_choice("threshold", label="Score below a threshold")
        inputs.enum("flag_mode", list(FLAG_MODES), default="none", label="Flag low quality",
                    view=mode_choices)
        mode = ctx.params.get("flag_mode") or "none"
        if mode == "percent":
            inputs.float("flag_percent", default=10.0, min=0, max=100, required=True,
                         label="Percent to flag")
        elif mode == "threshold":
            inputs.float("flag_threshold", default=0.5, min=0, max=1, required=True,
                         label="Flag scores below")
        if mode != "none":
            inputs.str("flag_field", default=f"{field}_flagged", label="Flag field (boolean)")
            inputs.str("flag_tag", default=DEFAULT_FLAG_TAG, label="Tag for flagged samples")
            inputs.str("flag_view", default="", label="Save flagged samples as view (optional)")

        inputs.bool("delegate", default=size > IMMEDIATE_MAX_SAMPLES,
                    label="Run in the background (delegated)",
                    description=f"Default on above {IMMEDIATE_MAX_SAMPLES} samples. Needs a "
                                "worker: `fiftyone delegated launch`")
        delegating = bool(ctx.params.get("delegate", size > IMMEDIATE_MAX_SAMPLES))
        if delegating:
            inputs.int("num_shards", default=1, min=1, label="Shards",
                       description="Split into N delegated operations so N workers score "
                                   "together")
        try:
            request = parse_request(ctx.params)
            if delegating or request.num_shards > 1:
                _check_persistent(ctx.dataset)
        except RequestError as exc:
            inputs.view("invalid", types.Error(label="Cannot run", description=str(exc)))
        else:
            inputs.view("target_size", types.Notice(label=f"{size} samples in the target"))
        return types.Property(inputs, view=types.View(label="Compute image quality"))

    # --- execution -------------------------------------------------------------------------
    def execute(self, ctx) -> Any:
        from qualiclip_plugin.runner import ScoringRun

        request = parse_request(ctx.params)
        run = ScoringRun(ctx.dataset, ctx.target_view(), request, immediate=not ctx.delegated)
        run.prepare()  # every refusal happens here, before any write
        if request.num_shards > 1 and request.shard_index is None:
            return self._queue_shards(ctx, run)
        if ctx.delegated:
            for progress, label in run.steps():
                ctx.set_progress(progress=progress, label=label)
            return run.summary
        return self._run_immediately(ctx, run)

    def _run_immediately(self, ctx, run):
        for progress, label in run.steps():
            yield ctx.trigger("set_progress", dict(progress=progress, label=label))
        yield ctx.trigger("reload_dataset")
        # The App reads `outputs` with Property.fromJSON: a Property's JSON, not an Object's.
        yield ctx.trigger("show_output", dict(outputs=types.Property(_summary_outputs()).to_json(),
                                              results=run.summary))

    def _queue_shards(self, ctx, run) -> dict[str, Any]:
        """Queue one delegated operation per sample-ID range of the samples still to score."""
        from fiftyone.operators.delegated import DelegatedOperationService

        from qualiclip_plugin.runner import plan_shards

        bounds = plan_shards(run._todo, run.request.num_shards)
        # Shards do not re-check the whole target, so old scores that an overwrite with new
        # settings replaces are cleared here, once, before any shard writes.
        run.clear_replaced_scores()
        service = DelegatedOperationService()
        ids = []
        for index, (lo, hi) in enumerate(bounds):
            request_params = copy.deepcopy(ctx.request_params)
            request_params.pop("run_doc", None)
            request_params["delegated"] = True
            request_params["params"] = {**copy.deepcopy(ctx.params), "delegate": True,
                                        "shard_index": index, "num_shards": len(bounds),
                                        "shard_bounds": [lo, hi]}
            op = service.queue_operation(
                operator=self.uri, delegation_target=ctx.delegation_target,
                label=f"QualiCLIP -> {run.request.field} (shard {index + 1}/{len(bounds)})",
                context={"request_params": request_params})
            ids.append(str(op.id))
        return {**run.summary, "queued_shards": len(bounds), "operation_ids": ids,
                "note": "Flags are not applied by shards: when all shards are done, run the "
                        "operator again on the same target with overwrite off to flag"}

    def resolve_output(self, ctx) -> types.Property:
        return types.Property(_summary_outputs(), view=types.View(label="Image quality"))

    # --- Python ----------------------------------------------------------------------------
    def __call__(self, sample_collection, field: str = DEFAULT_FIELD,
                 weights: str = DEFAULT_WEIGHTS, device: str | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int | None = None,
                 max_side: int | None = None, precision: str = "auto", pair_scores: bool = True,
                 overwrite: bool = False, flag_percent: float | None = None,
                 flag_threshold: float | None = None, flag_field: str | None = None,
                 flag_tag: str | None = DEFAULT_FLAG_TAG, flag_view: str | None = None,
                 num_shards: int = 1, delegate: bool = False,
                 chunk_size: int | None = None) -> dict[str, Any]:
        """Score ``sample_collection`` from Python; same parameters as the App form.

        Immediate runs return the summary (also stored with the field's run); ``delegate=True``
        queues the work for ``fiftyone delegated launch`` and returns the queued operation.
        """
        params = dict(field=field, weights=str(weights), device=device, batch_size=batch_size,
                      num_workers=num_workers, max_side=max_side, precision=precision,
                      pair_scores=pair_scores, overwrite=overwrite, flag_percent=flag_percent,
                      flag_threshold=flag_threshold, flag_field=flag_field, flag_tag=flag_tag,
                      flag_view=flag_view, num_shards=num_shards, delegate=delegate,
                      chunk_size=chunk_size)
        view = sample_collection.view()
        if delegate or num_shards > 1:
            _check_persistent(view._root_dataset)
        result = foo.execute_operator(self.uri, ctx=dict(view=view, params=params),
                                      request_delegation=delegate)
        if delegate or isinstance(result.result, dict):
            return result.result
        from qualiclip_plugin import provenance

        return provenance.load_summary(view._root_dataset, field)


def _check_persistent(dataset) -> None:
    """Delegated work runs in another process, which can only open persistent datasets."""
    if dataset is not None and not dataset.persistent:
        raise RequestError(
            f"dataset '{dataset.name}' is not persistent, so a background worker cannot open "
            "it: set `dataset.persistent = True`, or run immediately (delegate off, 1 shard)")


def _target_size(ctx) -> int:
    try:
        return ctx.target_view().count()
    except Exception:  # a form must render even when the view cannot be resolved yet
        return 0


def _summary_outputs() -> types.Object:
    outputs = types.Object()
    for name, label in _SUMMARY_FIELDS:
        if name == "mean":
            outputs.float(name, label=label)
        else:
            outputs.int(name, label=label)
    outputs.str("field", label="Score field")
    outputs.str("note", label="Note")
    return outputs
