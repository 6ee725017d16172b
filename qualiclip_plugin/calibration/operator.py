"""The ``calibrate_to_ratings`` operator ("Calibrate to my ratings"): the ratings given in the
"Image quality" panel -> :func:`qualiclip.calibrate.calibrate` -> a calibrated checkpoint in the
server's weights folder, which the scoring form then lists.

Thin like the scoring operator: every check is :func:`.request.check` (the trust layer's rules),
made once per execution in ``resolve_input`` (the form's inline "Cannot run" box) and again in a
delegated worker; the work is :func:`run_calibration`. When cross-validation shows no gain,
nothing is written and the result says so. Top-level imports are FiftyOne's operator API and the
plugin's torch-free modules: this module is imported when the App starts.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin.calibration import request as calibration_request
from qualiclip_plugin.calibration.ratings import DEFAULT_RATINGS_FIELD
from qualiclip_plugin.calibration.request import (
    DEFAULT_FOLDS,
    DEFAULT_STEPS,
    IMMEDIATE_MAX_CPU_STEPS,
    IMMEDIATE_MAX_RATINGS,
    MAX_FOLDS,
    MAX_STEPS,
    Checked,
)
from qualiclip_plugin.scoring import forms
from qualiclip_plugin.scoring.forms import ICON
from qualiclip_plugin.trust import protection
from qualiclip_plugin.trust.policy import CALIBRATED_FOLDER, AppPolicy
from qualiclip_plugin.trust.request import RequestError, given

logger = logging.getLogger(__name__)

CALIBRATE_OPERATOR = "calibrate_to_ratings"
CALIBRATE_LABEL = "Calibrate to my ratings"
#: The rows of the result: ``(key, label)``; the table is markdown.
RESULT_LABELS = (("verdict", "Result"), ("checkpoint", "Checkpoint written"),
                 ("next", "Next"), ("error", "Not run"))


class CalibrateToRatings(foo.Operator):
    """Learn the prompt context from the dataset's ratings; write the checkpoint if it helps."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=CALIBRATE_OPERATOR,
            label=CALIBRATE_LABEL,
            description="Fit QualiCLIP's prompts to the ratings given in the Image quality "
                        "panel; cross-validated, written only when it helps",
            icon=ICON,
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            execute_as_generator=True,
        )

    def resolve_delegation(self, ctx) -> bool | None:
        """The form's "delegate" (default:
        :func:`~qualiclip_plugin.calibration.request.delegate_by_default`)."""
        delegate = ctx.params.get("delegate")
        if delegate is None:
            return True if calibration_request.delegate_by_default(_rating_count(ctx),
                                                                   ctx.params) else None
        return bool(delegate)

    def resolve_execution_options(self, ctx) -> foo.ExecutionOptions:
        # Both modes stay allowed (see the scoring operator: an operator allowing only
        # delegation gets no run button in a default App).
        return foo.ExecutionOptions(allow_immediate_execution=True,
                                    allow_delegated_execution=True,
                                    default_choice_to_delegated=bool(
                                        self.resolve_delegation(ctx)))

    def resolve_input(self, ctx) -> types.Property:
        return _checked_form(ctx)[0]

    def execute(self, ctx) -> Any:
        outcome = _checked_form(ctx)[1]
        if ctx.delegated:
            return _run_in_worker(ctx, outcome)
        return self._run_immediately(ctx, outcome)

    def _run_immediately(self, ctx, outcome: Checked | str):
        if isinstance(outcome, str):  # refused (FiftyOne's validation normally stops it first)
            yield ctx.trigger("show_output", forms.show_error(outcome))
            return
        yield ctx.trigger("set_progress", dict(
            progress=0.0, label=f"Calibrating to {len(outcome.ratings)} ratings: embedding the "
                                f"images, then {outcome.request.folds} cross-validation fits "
                                "and a final one"))
        try:
            result = run_calibration(ctx.dataset, outcome)
        except RequestError as exc:
            yield ctx.trigger("show_output", forms.show_error(str(exc)))
            return
        except Exception as exc:  # a bug or the database: one sentence, details in the log
            logger.exception("QualiCLIP calibration failed")
            yield ctx.trigger("show_output", forms.show_error(
                f"Calibration stopped: {type(exc).__name__}: {str(exc)[:300]}; nothing was "
                "written (details are in the App server's log)", title="Stopped"))
            return
        yield ctx.trigger("show_output", show_result(result))

    def resolve_output(self, ctx) -> types.Property | None:
        results = ctx.results if isinstance(ctx.results, dict) else {}
        if not results:
            return None
        return types.Property(_result_outputs(results),
                              view=types.View(label=CALIBRATE_LABEL))


# --- the work -------------------------------------------------------------------------------
def run_calibration(dataset, checked: Checked) -> dict[str, Any]:
    """Calibrate on ``checked``'s ratings; write the checkpoint only when cross-validation
    shows a gain. Returns the result rows (``verdict``, ``table`` as markdown, ``checkpoint``
    when written).

    Raises:
        RequestError: an unreadable rated image, weights without a text tower, or a file put at
            the checkpoint's place since the form was checked; nothing was written.
    """
    from qualiclip.calibrate import CalibrationError, calibrate

    request, output = checked.request, checked.output
    output.parent.mkdir(parents=True, exist_ok=True)
    # Written under a hidden name (the weights list skips hidden files) and moved into place
    # only after the ownership check is made again: the form's check may be minutes old.
    partial = output.parent / f".{output.stem}.{uuid.uuid4().hex[:8]}.partial"
    try:
        report = calibrate(
            checked.ratings, request.weights, partial, folds=request.folds,
            steps=request.steps,
            provenance={"source": "qualiclip_plugin", "dataset": dataset.name,
                        "ratings_field": request.ratings_field})
        if report.written is not None:
            protection.calibrated_file(AppPolicy.current(), request.name, request.overwrite)
            os.replace(partial, output)
            protection.remember_written_file(
                output, dataset=dataset.name, ratings_field=request.ratings_field,
                base_sha256=report.base_sha256, n_ratings=report.n_ratings)
    except CalibrationError as exc:
        raise RequestError(str(exc)) from None
    finally:
        partial.unlink(missing_ok=True)
    result = {"verdict": _verdict(report), "table": markdown_table(report),
              "n_ratings": report.n_ratings}
    if report.improved:
        result["checkpoint"] = f"{CALIBRATED_FOLDER}/{output.name}"
        result["next"] = (f"Choose '{CALIBRATED_FOLDER}/{output.name} (checkpoint)' in the "
                          "Weights list of 'Compute image quality (QualiCLIP)'")
    return result


def _verdict(report) -> str:
    gain = report.after["srcc"] - report.before["srcc"]
    if report.improved:
        return (f"Calibration beats the base model on held-out images: mean SRCC "
                f"{report.before['srcc']:.3f} -> {report.after['srcc']:.3f} ({gain:+.3f}), "
                f"{report.n_ratings} ratings of {report.n_images} images")
    return (f"Calibration does not beat the base model on held-out images (mean SRCC "
            f"{report.before['srcc']:.3f} -> {report.after['srcc']:.3f}, {gain:+.3f}; needs "
            f"{report.min_gain:+.3f}): no checkpoint was written, keep scoring with the base "
            "weights")


def markdown_table(report) -> str:
    """The cross-validated before/after table (:meth:`CalibrationReport.table`) as markdown."""
    rows = ["| fold | held-out images | SRCC before | SRCC after | PLCC before | PLCC after |",
            "|---:|---:|---:|---:|---:|---:|"]
    for i, fold in enumerate(report.folds, start=1):
        rows.append(f"| {i} | {fold['n_test']} | {fold['before']['srcc']:.3f} | "
                    f"{fold['after']['srcc']:.3f} | {fold['before']['plcc']:.3f} | "
                    f"{fold['after']['plcc']:.3f} |")
    rows.append(f"| **mean** | {report.n_images} | {report.before['srcc']:.3f} | "
                f"**{report.after['srcc']:.3f}** | {report.before['plcc']:.3f} | "
                f"{report.after['plcc']:.3f} |")
    return "\n".join(rows)


def _result_outputs(results: dict[str, Any]) -> types.Object:
    outputs = types.Object()
    for key, label in RESULT_LABELS[:1]:
        if results.get(key):
            outputs.str(key, label=label)
    if results.get("table"):
        outputs.str("table", label="Cross-validation (held-out images only)",
                    view=types.MarkdownView(read_only=True))
    for key, label in RESULT_LABELS[1:]:
        if results.get(key):
            outputs.str(key, label=label)
    return outputs


def show_result(result: dict[str, Any]) -> dict[str, Any]:
    """``show_output`` params for the result dialog: verdict, table, checkpoint, next step."""
    outputs = _result_outputs(result)
    values = {k: v for k, v in result.items() if k in outputs.properties}
    return dict(outputs=types.Property(outputs).to_json(), results=values)


def _run_in_worker(ctx, outcome: Checked | str) -> dict[str, Any]:
    """A delegated worker's run; a refusal fails the operation with its one sentence (a
    raised exception would store a traceback with server paths)."""
    try:
        if isinstance(outcome, str):
            raise RequestError(outcome)
        ctx.set_progress(progress=0.0, label=f"Calibrating to {len(outcome.ratings)} ratings")
        return run_calibration(ctx.dataset, outcome)
    except RequestError as exc:
        message = str(exc)
    except Exception as exc:  # a bug or the database: one sentence, details in the log
        logger.exception("QualiCLIP calibration failed in a delegated worker")
        message = (f"Calibration stopped: {type(exc).__name__}: {str(exc)[:300]}; nothing "
                   "was written")
    _fail_operation(ctx, message)
    return {"error": message}


def _fail_operation(ctx, message: str) -> None:
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionResult

    operation_id = (ctx.request_params.get("run_doc")
                    or getattr(ctx, "_delegated_operation_id", None))
    if operation_id is None:
        raise RequestError(message)
    DelegatedOperationService().set_failed(doc_id=operation_id,
                                           result=ExecutionResult(error=message))


# --- the form -------------------------------------------------------------------------------
#: Each execution's form and outcome, built once by ``resolve_input`` and reused by ``execute``.
_OUTCOMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checked_form(ctx) -> tuple[types.Property, Checked | str]:
    cached = _OUTCOMES.get(ctx)
    if cached is not None:
        return cached
    policy = AppPolicy.current()
    inputs = types.Object()
    params = given(ctx.params)
    field = str(params.get("ratings_field") or DEFAULT_RATINGS_FIELD)
    count = _rating_count(ctx)
    inputs.str("ratings_field", default=DEFAULT_RATINGS_FIELD, label="Ratings field",
               description="The field the Image quality panel rates into")
    forms.notice(inputs, "rating_count", f"{count} ratings in '{field}' on this dataset")
    weights = forms.weights_input(inputs, ctx.params, policy, None, label="Base weights")
    inputs.str("name", default=calibration_request.default_name(ctx.dataset.name, field),
               label="Checkpoint name",
               description=f"Saved as {CALIBRATED_FOLDER}/<name>.pth in the server's weights "
                           "folder, then offered in the scoring form's Weights list")
    inputs.bool("overwrite", default=False, label="Replace my earlier checkpoint",
                description="Only a checkpoint this plugin wrote can be replaced")
    inputs.int("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS, label="Steps per fit",
               description="Optimisation steps of each fit (one per fold, and a final one "
                           "on all ratings); fewer is faster")
    inputs.int("folds", default=DEFAULT_FOLDS, min=2, max=MAX_FOLDS,
               label="Cross-validation folds")
    inputs.bool("delegate",
                default=calibration_request.delegate_by_default(count, ctx.params),
                label="Run in the background (delegated)",
                description=f"Default on above {IMMEDIATE_MAX_RATINGS} ratings, and without a "
                            f"GPU above {IMMEDIATE_MAX_CPU_STEPS} steps in all (steps x "
                            "(folds + 1)): the App waits at most 10 minutes for a run in the "
                            "App itself")
    forms.notice(inputs, "delegation_help", forms.DELEGATION_HELP)
    if not weights:
        outcome: Checked | str = forms.NO_WEIGHTS
    else:
        try:
            outcome = calibration_request.check(
                ctx.dataset, forms.with_defaults(inputs, ctx.params), policy)
        except RequestError as exc:
            outcome = str(exc)
    if isinstance(outcome, str):
        if not ctx.delegated:
            forms.cannot_run(inputs, outcome)
    else:
        forms.notice(inputs, "output_note",
                     f"Writes {CALIBRATED_FOLDER}/{outcome.output.name} only if it beats the "
                     "base weights in cross-validation")
    form = types.Property(inputs, view=types.View(label=CALIBRATE_LABEL))
    _OUTCOMES[ctx] = (form, outcome)
    return form, outcome


def _rating_count(ctx) -> int:
    return calibration_request.rating_count(ctx.dataset, ctx.params)
