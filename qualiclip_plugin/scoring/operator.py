"""The ``compute_image_quality`` operator: App form -> policy-checked request -> one run.

Thin by design: parsing and policy live in :mod:`qualiclip_plugin.trust.request` /
:mod:`qualiclip_plugin.trust.policy`, form pieces in :mod:`.forms`, the work in
:class:`~qualiclip_plugin.scoring.runner.ScoringRun`, shard queuing in :mod:`.shards`, and trusted
Python callers use :mod:`qualiclip_plugin.api`. Every execution of this operator
follows the server's App policy, however it was started. Top-level imports are FiftyOne's
operator API only: this is imported when the App starts.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin import OPERATOR_NAME
from qualiclip_plugin.api import compute_image_quality
from qualiclip_plugin.scoring import claims, forms, pipeline
from qualiclip_plugin.scoring.forms import ICON
from qualiclip_plugin.scoring.runner import ScoringRun, first_sentence, scored_dataset
from qualiclip_plugin.scoring.shards import queue_shards
from qualiclip_plugin.trust import provenance
from qualiclip_plugin.trust.policy import AppPolicy
from qualiclip_plugin.trust.request import (
    BACKENDS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FIELD,
    DEFAULT_FLAG_TAG,
    DEFAULT_FPS,
    DEFAULT_SEGMENT_SECONDS,
    FLAG_MODES,
    IMMEDIATE_MAX_SAMPLES,
    MAX_BATCH_SIZE,
    MAX_SHARDS,
    PRECISIONS,
    RequestError,
    given,
)

logger = logging.getLogger(__name__)


SUMMARY_LABELS = (
    ("field", "Score field"),
    ("scored", "Scored in this run"),
    ("frames_scored", "Video frames scored in this run"),
    ("skipped", "Skipped (already scored)"),
    ("failed", "Failed (see the error field)"),
    ("mean", "Mean score over the target"),
    ("flagged", "Flagged as low quality"),
    ("flag_cutoff", "Highest flagged score"),
    ("queued_shards", "Delegated shards queued"),
    ("note", "Note"),
)


#: Fewest samples worth a distributed task: each task loads the model (up to a minute on a
#: fresh worker) before it scores, so smaller slices spend more time loading than scoring.
MIN_SAMPLES_PER_TASK = 1000
#: Samples per task Enterprise is advised to use (a few minutes on one GPU).
RECOMMENDED_SAMPLES_PER_TASK = 10000


def distributed_task_bounds(size: int) -> dict[str, int] | None:
    """``min/max/recommended_distributed_tasks`` for a delegated run over ``size`` samples, or
    ``None`` when the target is too small to be worth splitting (fewer than two tasks of
    :data:`MIN_SAMPLES_PER_TASK`). At most :data:`MAX_SHARDS` tasks, like the form's shards."""
    most = min(MAX_SHARDS, size // MIN_SAMPLES_PER_TASK)
    if most < 2:
        return None
    advised = min(most, max(2, -(-size // RECOMMENDED_SAMPLES_PER_TASK)))
    return {"min_distributed_tasks": 2, "max_distributed_tasks": most,
            "recommended_distributed_tasks": advised}


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
            # FiftyOne Enterprise 2.11+ may split a delegated run into tasks, each executing
            # this operator on a slice of the target (``ctx.target_view()``); open-source
            # FiftyOne ignores it (its own sharding is the form's "Shards").
            allow_distributed_execution=True,
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
            return True if _delegate_by_default(ctx, _target_size(ctx)) else None
        return bool(delegate)

    def resolve_execution_options(self, ctx) -> foo.ExecutionOptions:
        # Both modes stay allowed whatever the form says: with the App's default settings (no
        # orchestrator registered, legacy orchestrators off) an operator that allows only
        # delegated execution gets no run button at all. The Execute button still queues the
        # run when "delegate" is on, because resolve_delegation forces it.
        delegate = bool(self.resolve_delegation(ctx))
        bounds = distributed_task_bounds(_target_size(ctx)) if delegate else None
        return foo.ExecutionOptions(allow_immediate_execution=True,
                                    allow_delegated_execution=True,
                                    default_choice_to_delegated=delegate,
                                    allow_distributed_execution=bounds is not None,
                                    **(bounds or {}))

    # --- form ------------------------------------------------------------------------------
    def resolve_input(self, ctx) -> types.Property:
        """The form, with the request pipeline's answer inline (see :func:`_checked_form`).
        In a delegated worker a refusal is not marked invalid (FiftyOne would store its own
        traceback): ``execute`` stores the one sentence instead."""
        return _checked_form(ctx)[0]

    # --- execution -------------------------------------------------------------------------
    def execute(self, ctx) -> Any:
        outcome = _checked_form(ctx)[1]  # this execution's checks, made by resolve_input
        if ctx.delegated:
            return _run_in_worker(ctx, outcome)
        return self._run_immediately(ctx, outcome)

    def _run_immediately(self, ctx, outcome: pipeline.Checked | str):
        if isinstance(outcome, str):  # refused (FiftyOne's validation normally stops it first)
            yield ctx.trigger("show_output", forms.show_error(outcome))
            return
        yield _progress(ctx, 0.0, "Loading the QualiCLIP model (the first run on this server "
                                  "takes up to a minute)")
        try:
            run, summary = _start(ctx, outcome)
            if summary is None:
                for progress, label in run.steps():
                    yield _progress(ctx, progress, label)
                summary = run.summary
        except RequestError as exc:
            yield ctx.trigger("show_output", forms.show_error(str(exc)))
            return
        except Exception as exc:  # a bug or the database: one sentence here, details in the log
            logger.exception("QualiCLIP scoring failed")
            yield ctx.trigger("reload_dataset")
            yield ctx.trigger("show_output", forms.show_error(
                f"Scoring stopped: {type(exc).__name__}: {str(exc)[:300]}. Scores already "
                "written are kept; run again with overwrite off to continue (details are in "
                "the App server's log)", title="Stopped"))
            return
        yield ctx.trigger("reload_dataset")
        yield ctx.trigger("show_output", forms.show_result(summary, SUMMARY_LABELS))

    def resolve_output(self, ctx) -> types.Property | None:
        results = ctx.results if isinstance(ctx.results, dict) else {}
        outputs = types.Object()
        for name, label in SUMMARY_LABELS:
            if results.get(name) is not None:
                outputs.str(name, label=label)
        if not outputs.properties:
            return None  # nothing to show: no dialog of empty rows
        return types.Property(outputs, view=types.View(label="Image quality"))

    # --- Python ----------------------------------------------------------------------------
    def __call__(self, sample_collection, **kwargs) -> dict[str, Any]:
        """Score ``sample_collection`` from Python: :func:`qualiclip_plugin.api.
        compute_image_quality` (trusted, so not bound by the App policy)."""
        return compute_image_quality(sample_collection, **kwargs)


#: Each execution's form and pipeline outcome, built once by ``resolve_input`` and reused by
#: ``execute`` of the same execution (FiftyOne passes both the same context object).
_OUTCOMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checked_form(ctx) -> tuple[types.Property, pipeline.Checked | str]:
    """``(form, outcome)`` for this execution: the outcome is the request pipeline's
    :class:`~qualiclip_plugin.scoring.pipeline.Checked` or its one-sentence refusal.
    Computed once per context: the pipeline runs once per execution."""
    cached = _OUTCOMES.get(ctx)
    if cached is not None:
        return cached
    policy = AppPolicy.current()
    inputs = types.Object()
    if ctx.params.get("plan"):  # a queued run: the pipeline takes its stored request
        stage = ("worker" if ctx.delegated else
                 "queue" if ctx.requesting_delegated_execution else "run")
        outcome = _outcome(_dataset(ctx), ctx.params, policy, delegating=True, stage=stage,
                           operation_id=_operation_id(ctx))
        form = types.Property(inputs)
    else:
        form, outcome = _scoring_form(ctx, inputs, policy)
    if isinstance(outcome, str) and not ctx.delegated:
        forms.cannot_run(inputs, outcome)
    _OUTCOMES[ctx] = (form, outcome)
    return form, outcome


def _outcome(dataset, params: dict[str, Any], policy: AppPolicy, **kwargs
             ) -> pipeline.Checked | str:
    try:
        return pipeline.check(dataset, params, policy, **kwargs)
    except RequestError as exc:
        return str(exc)


def _scoring_form(ctx, inputs: types.Object, policy: AppPolicy
                  ) -> tuple[types.Property, pipeline.Checked | str]:
    """The scoring form; its values (defaults included) go through the pipeline."""
    inputs.view_target(ctx)
    size = _target_size(ctx)
    params = given(ctx.params)
    field = params.get("field") or DEFAULT_FIELD
    dataset = _dataset(ctx)
    last = _recorded(dataset, field)
    options = last.get("options") or {}

    def chosen(name: str, recorded: Any, allowed: Any = None) -> Any:
        # A value the user has chosen stays the default: a default that follows the typed
        # field's record would make the App reset Weights, Precision, ... on each keystroke.
        value = params.get(name)
        if value is not None and (allowed is None or value in allowed):
            return value
        return recorded

    inputs.str("field", default=DEFAULT_FIELD, label="Output field",
               description="Float field for the score (higher = better). Also written: "
                           f"{field}_error, and {field}_<attribute> when asked")
    weights = forms.weights_input(inputs, ctx.params, policy, last.get("weights_name"))
    inputs.str("device", default="", label="Device",
               description="cpu, cuda or cuda:N; empty = CUDA if available")
    inputs.int("batch_size",
               default=chosen("batch_size", options.get("batch_size") or DEFAULT_BATCH_SIZE),
               min=1, max=MAX_BATCH_SIZE, label="Batch size")
    inputs.int("max_side", default=chosen("max_side", last.get("max_side")),
               label="Max side (px)",
               description="Downscale images whose longer side exceeds this; empty = native "
                           "resolution (the official protocol)")
    recorded_precision = last.get("precision") if last.get("precision") in PRECISIONS else "auto"
    inputs.enum("precision", list(PRECISIONS),
                default=chosen("precision", recorded_precision, PRECISIONS),
                label="Precision", view=types.DropdownView())
    recorded_backend = options.get("backend") if options.get("backend") in BACKENDS else "auto"
    inputs.enum("backend", list(BACKENDS), default=chosen("backend", recorded_backend, BACKENDS),
                label="Backend", view=types.DropdownView(),
                description="What runs the model: auto = ONNX Runtime for exact fp32 on "
                            "the CPU when the server has it (same scores, 1.1-1.6x as "
                            "fast as torch in our measurements), else torch")
    inputs.bool("pair_scores", default=chosen("pair_scores", options.get("pair_scores", True)),
                label="Store the 7 attribute scores",
                description="good photo, sharp image, sharp edges, high resolution, "
                            "noise-free, high quality, good picture")
    inputs.bool("overwrite", default=False, label="Overwrite existing scores",
                description="Off: samples that already have a score are skipped (resume)")
    if dataset.media_type == "video":
        _video_inputs(inputs, field, {**last, **{k: params[k] for k in ("fps", "segment_seconds")
                                                 if k in params}})
    _flag_inputs(inputs, ctx.params, field, options)
    delegating = _delegate_inputs(inputs, ctx, size)

    if not weights:
        outcome: pipeline.Checked | str = forms.NO_WEIGHTS
    else:
        outcome = _outcome(dataset, _effective(inputs, ctx.params), policy,
                           delegating=delegating or bool(ctx.delegated))
    if not isinstance(outcome, str):
        forms.weights_notice(inputs, weights)
        forms.notice(inputs, "target_size", f"{size} samples in the target")
    return types.Property(inputs, view=types.View(label="Compute image quality")), outcome


def _operation_id(ctx) -> Any:
    """The delegated operation this context executes (``None`` outside a worker)."""
    return (ctx.request_params.get("run_doc")
            or getattr(ctx, "_delegated_operation_id", None))


def _run_in_worker(ctx, outcome: pipeline.Checked | str) -> dict[str, Any] | None:
    """A delegated worker's run. A refusal (or a failure) fails the operation with one
    sentence: FiftyOne would store a traceback with server paths for a raised exception."""
    try:
        if isinstance(outcome, str):
            raise RequestError(outcome)
        run, summary = _start(ctx, outcome)
        if summary is not None:
            return summary
        for progress, label in run.steps():
            ctx.set_progress(progress=progress, label=label)
        return run.summary
    except RequestError as exc:
        message = str(exc)
    except Exception as exc:  # a bug or the database: one sentence here, details in the log
        logger.exception("QualiCLIP scoring failed in a delegated worker")
        message = (f"Scoring stopped: {type(exc).__name__}: {first_sentence(exc)} Scores "
                   "already written are kept; run again with overwrite off to continue")
    _fail_operation(ctx, message)
    return {"error": message}


def _fail_operation(ctx, message: str) -> None:
    """Mark this delegated operation failed with ``message`` as its whole error text."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    operation_id = _operation_id(ctx)
    if operation_id is None:
        raise RequestError(message)
    DelegatedOperationService().set_failed(doc_id=operation_id,
                                           result=ExecutionResult(error=message))


def _start(ctx, checked: pipeline.Checked):
    """``(run, None)`` ready to score, or ``(None, summary)`` when shards were queued instead.

    Raises:
        RequestError: refused by the run's checks that need the model; nothing was written.
    """
    request, owner = checked.request, checked.claim_owner
    dataset = _dataset(ctx)
    slices = _distributed_tasks(ctx)
    if slices > 1 and owner is None:
        owner = claims.shared_owner(dataset, request.to_params(),
                                    ctx.request_params.get("parent_id")
                                    or ctx.request_params.get("delegated_operation_id"))
    run = ScoringRun(dataset, ctx.target_view(), request, immediate=not ctx.delegated,
                     claim_owner=owner, slices=slices, checked=True)
    try:
        run.prepare()  # the checks that need the model, before any write
    except RequestError:
        if checked.plan is not None:
            pipeline.release_part(dataset, checked.plan)
        raise
    if request.num_shards > 1 and request.shard_index is None:
        return None, queue_shards(run, ctx.target_view(), ctx.delegation_target)
    return run, None


def _distributed_tasks(ctx) -> int:
    """How many tasks FiftyOne Enterprise split this delegated run into (1 elsewhere)."""
    try:
        return max(1, int(getattr(ctx, "num_distributed_tasks", 0) or 0))
    except (TypeError, ValueError):
        return 1


def _effective(form, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the form's defaults; a caller that gives ``flag_percent`` or
    ``flag_threshold`` without the App's ``flag_mode`` radio gets no "don't flag" default."""
    effective = forms.with_defaults(form, params)
    if "flag_mode" not in params:
        effective.pop("flag_mode", None)
    return effective


def _progress(ctx, progress: float, label: str):
    return ctx.trigger("set_progress", dict(progress=progress, label=label))


def _flag_inputs(inputs: types.Object, params: dict, field: str, options: dict) -> None:
    mode_choices = types.RadioGroup()
    mode_choices.add_choice("none", label="Don't flag")
    mode_choices.add_choice("percent", label="Worst N percent of the target")
    mode_choices.add_choice("threshold", label="Score below a threshold")
    inputs.enum("flag_mode", list(FLAG_MODES), default="none", label="Flag low quality",
                view=mode_choices)
    mode = params.get("flag_mode") or "none"
    if mode == "percent":
        inputs.float("flag_percent", default=options.get("flag_percent") or 10.0, min=0,
                     max=100, required=True, label="Percent to flag")
    elif mode == "threshold":
        inputs.float("flag_threshold", default=options.get("flag_threshold") or 0.5, min=0,
                     max=1, required=True, label="Flag scores below")
    if mode != "none":
        inputs.str("flag_field", default=options.get("flag_field") or f"{field}_flagged",
                   label="Flag field (boolean)")
        inputs.str("flag_tag", default=options.get("flag_tag") or DEFAULT_FLAG_TAG,
                   label="Tag for flagged samples")
        inputs.str("flag_view", default="", label="Save flagged samples as view (optional)")


def _delegate_by_default(ctx, size: int) -> bool:
    """Large targets run in the background, except frames views: their generated dataset
    cannot be opened by a worker (:func:`~qualiclip_plugin.scoring.plans.check_persistent`)."""
    return size > IMMEDIATE_MAX_SAMPLES and not getattr(_dataset(ctx), "_is_frames", False)


def _delegate_inputs(inputs: types.Object, ctx, size: int) -> bool:
    default = _delegate_by_default(ctx, size)
    inputs.bool("delegate", default=default, label="Run in the background (delegated)",
                description=f"Default on above {IMMEDIATE_MAX_SAMPLES} samples (not for "
                            "frames views)")
    delegating = bool(ctx.params.get("delegate", default))
    if delegating:
        inputs.int("num_shards", default=1, min=1, max=MAX_SHARDS, label="Shards",
                   description="Split into N delegated operations so N workers score together")
    # Also for the App's Schedule button, which queues whatever "delegate" says.
    forms.notice(inputs, "delegation_help", forms.DELEGATION_HELP)
    return delegating


def _recorded(dataset, field: str) -> dict[str, Any]:
    try:
        return provenance.recorded(dataset, field) or {}
    except Exception:  # a form must render even if a record cannot be read
        return {}


def _dataset(ctx):
    """The dataset the run writes into (:func:`~qualiclip_plugin.scoring.runner.scored_dataset`:
    the frames dataset of a ``to_frames`` view, else the App's dataset)."""
    try:
        return scored_dataset(ctx.target_view())
    except Exception:  # a form must render even when the view cannot be resolved yet
        return ctx.dataset


def _video_inputs(inputs: types.Object, field: str, last: dict) -> None:
    """The options of video datasets: frames sampled per second, the worst segment's length
    (defaults: the values given, else the field's last run's)."""
    fps = last.get("fps", DEFAULT_FPS)  # a number recorded, or the text a form holds
    inputs.str("fps", default="all" if fps is None else fps if isinstance(fps, str) else
               f"{fps:g}",
               label="Frames per second",
               description="Frames of each video to score per second; 'all' = every frame. "
                           f"Written: frames.{field} (and frames.{field}_<attribute>), and per "
                           f"video {field} (mean), {field}_min, {field}_p10, {field}_segments")
    inputs.float("segment_seconds",
                 default=last.get("segment_seconds") or DEFAULT_SEGMENT_SECONDS, min=0,
                 label="Worst segment (s)",
                 description="Length of the worst segment each video reports "
                             f"({field}_segments: the App's player jumps to it)")


def _target_size(ctx) -> int:
    try:
        return ctx.target_view().count()
    except Exception:  # a form must render even when the view cannot be resolved yet
        return 0
