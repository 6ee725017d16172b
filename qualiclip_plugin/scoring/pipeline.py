"""One scoring request's checks, in one order: parse -> policy -> ownership -> claim.

Every way a scoring request reaches a run goes through :func:`check`, once per execution:

* the App (and any ``foo.execute_operator`` call): the operator's ``resolve_input`` calls it
  with the form's values and the server's :class:`~qualiclip_plugin.trust.policy.AppPolicy`;
  a refusal is the form's inline "Cannot run" box, and ``execute`` reuses the same result
  instead of checking (or building the form) again;
* a delegated worker: the same call on the queued params, so a request is checked again where
  it runs (the policy or the field may have changed since it was queued); a queued plan is taken
  here, once (:func:`.plans.take`);
* trusted Python callers (:mod:`qualiclip_plugin.api`): ``policy=None``.

What needs the loaded model (the weights' SHA-256 against the field's record, the resolved
precision and backend) is checked by :meth:`~qualiclip_plugin.scoring.runner.ScoringRun.prepare`
afterwards, still before any write. Nothing here imports torch: forms call it on every edit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from qualiclip.prompts import PAIR_NAMES  # torch-free
from qualiclip_plugin.scoring import claims, plans, writing
from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.policy import AppPolicy, check_weights, weights_unavailable
from qualiclip_plugin.trust.request import RequestError, ScoreRequest, parse_request

#: The params a queued operation carries besides its plan token: nothing else may come with a
#: plan, so a replay cannot change the field, the weights or the settings it was made for.
PLAN_PARAMS = ("plan", "delegate")


@dataclass(frozen=True)
class Checked:
    """A request that passed every check that needs no model."""

    request: ScoreRequest
    #: The queued plan this execution carries out (taken, in a worker), else ``None``.
    plan: plans.Plan | None = None
    #: The field's run record before this run (``{}`` when none).
    last: dict[str, Any] = field(default_factory=dict)

    @property
    def claim_owner(self) -> str | None:
        """The claim a plan's run works under (its queuing run's), else ``None``."""
        return self.plan.claim_owner if self.plan is not None else None


def check(dataset, params: dict[str, Any], policy: AppPolicy | None, *, delegating: bool,
          stage: str = "run", operation_id: Any = None) -> Checked:
    """All model-free checks of one scoring request, in order; raises :class:`RequestError`.

    Args:
        params: the request as given (a form's values with its defaults), or ``{"plan": ...}``.
        policy: the App policy; ``None`` for trusted Python callers.
        delegating: the run will execute in a background worker (the dataset must persist).
        stage: for a plan: ``"queue"`` (being queued: the token must be unused), ``"worker"``
            (executing in the delegated operation ``operation_id``: the token is taken) or
            ``"run"`` (an immediate execution: plans are refused, they run only in workers).
    """
    # 1. parse (a plan is the request it was made for, taken once in its worker)
    plan = _plan(dataset, params, stage, operation_id) if params.get("plan") else None
    try:
        request = plan.request if plan is not None else parse_request(params, policy)
        # 2. policy: what the server allows (checked again in workers, for queued plans too)
        if plan is not None and policy is not None and not plan.trusted:
            check_weights(request.weights, policy)
        why = weights_unavailable(request.weights, policy) if policy is not None else None
        if why:
            raise RequestError(why)
        if delegating or plan is not None or request.num_shards > 1:
            plans.check_persistent(dataset)
        # 3. ownership: which fields and tags the run may write
        last = _recorded(dataset, request.field)
        layout = writing.FieldLayout.for_field(
            request.field, PAIR_NAMES if request.pair_scores else (), request.flag_field,
            video=dataset.media_type == "video")
        # A shard's queuing run checked the whole target's ownership; shards check types only.
        protection.check_writable(dataset, layout, request,
                                  ownership=request.shard_index is None)
        if policy is not None and plan is None:
            # The App's early view of mixing (names and settings; the exact check, by the
            # weights' SHA-256, needs the model and runs in ScoringRun.prepare).
            mismatch = provenance.settings_mismatch(last, request) if last else None
            if mismatch and not request.overwrite and dataset.exists(request.field).count():
                raise provenance.mixing_refusal(request.field, None, mismatch)
        # 4. claim: no other run writes the field; a plan's run must still hold its claim
        _check_claim(dataset, request, plan)
    except RequestError:
        if plan is not None and stage == "worker":
            release_part(dataset, plan)  # this shard will not run: it does not hold the field
        raise
    return Checked(request=request, plan=plan, last=last)


def release_part(dataset, plan: plans.Plan) -> None:
    """A taken shard plan that will not run gives back its part of the shared claim."""
    if plan.claim_owner is not None and plan.request.shard_index is not None:
        claims.finish_shard(dataset, plan.request.field, plan.claim_owner)


def _plan(dataset, params: dict[str, Any], stage: str, operation_id: Any) -> plans.Plan:
    extra = sorted(k for k, v in params.items()
                   if k not in PLAN_PARAMS and v not in (None, "") and k in _REQUEST_KEYS)
    if extra:
        raise RequestError(f"a queued run's plan cannot be changed ({', '.join(extra)} given "
                           "with it); start a new run instead")
    token = params["plan"]
    if stage == "worker":
        return plans.take(dataset, token, operation_id)
    plan = plans.load(dataset, token)
    if stage != "queue":
        raise RequestError("a queued run's plan runs only in a background worker; start a new "
                           "run instead")
    return plan


def _check_claim(dataset, request: ScoreRequest, plan: plans.Plan | None) -> None:
    owner = plan.claim_owner if plan is not None else None
    claims.check_free(dataset, request.field, owner)
    if owner is not None and request.shard_index is not None:
        held = claims.holder(dataset, request.field)
        if held is None or held["owner"] != owner:
            raise RequestError(f"the sharded run this shard belongs to has ended (the field "
                               f"'{request.field}' is no longer held for it); start the run "
                               "again")


def _recorded(dataset, field_name: str) -> dict[str, Any]:
    try:
        return provenance.recorded(dataset, field_name) or {}
    except Exception:  # a form must render even if a record cannot be read
        return {}


#: Keys that describe a scoring request (a plan's params may carry none of them).
_REQUEST_KEYS = frozenset(ScoreRequest.__dataclass_fields__) | {"flag_mode"}
