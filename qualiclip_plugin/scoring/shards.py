"""Split a prepared run into delegated shards, one operation per sample-ID range.

Each shard is queued with only a plan token (see :mod:`.plans`); its request, ID range and the
claim it works under are stored server-side, so a form can never supply them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from qualiclip_plugin import OPERATOR_URI
from qualiclip_plugin.scoring import claims, plans

#: Queued shards keep the field claimed this long before they start (a worker may be busy).
QUEUED_CLAIM_S = 24 * 3600.0
LABEL = "Compute image quality (QualiCLIP)"
NOTE = ("Flags are not applied by shards: when all shards are done, run the operator again on "
        "the same target with overwrite off to flag")


def plan_shards(todo: Any, num_shards: int) -> list[tuple[str, str | None]]:
    """Split ``todo`` into at most ``num_shards`` contiguous sample-ID ranges ``[lo, hi)``.

    ObjectId hex strings sort like the IDs themselves, so each range is one indexed ``_id``
    match; ranges of equal sample counts, the last open-ended.
    """
    ids = sorted(todo.values("id"))
    if not ids:
        return []
    size = math.ceil(len(ids) / num_shards)
    starts = ids[::size]
    return [(lo, starts[i + 1] if i + 1 < len(starts) else None) for i, lo in enumerate(starts)]


def queue_shards(run, view, delegation_target: str | None = None,
                 trusted: bool = False) -> dict[str, Any]:
    """Queue the shards of a prepared :class:`~qualiclip_plugin.scoring.runner.ScoringRun`.

    The field is claimed for all shards together (the last shard releases it), and old scores
    that an overwrite with new settings replaces are cleared here, once: shards do not re-check
    the whole target.

    Args:
        view: the target (a dataset, a view or a selection), as ``ctx.target_view()`` gives it.
        trusted: queued by a trusted Python caller (see :func:`.plans.store`).
    Returns:
        the run's summary plus ``queued_shards``, ``operation_ids`` and a ``note``.
    """
    request = run.request
    bounds = plan_shards(run.todo, request.num_shards)
    if not bounds:
        return {**run.summary, "queued_shards": 0, "operation_ids": [], "note": NOTE}
    claims.claim(run.dataset, request.field, run.claim_owner,
                 label=f"{len(bounds)} queued shards into '{request.field}'",
                 lifetime_s=QUEUED_CLAIM_S)
    claims.expect_shards(run.dataset, request.field, run.claim_owner, len(bounds))
    ids = []
    try:
        run.clear_replaced_scores()
        for index, (lo, hi) in enumerate(bounds):
            shard = dataclasses.replace(request, shard_index=index, num_shards=len(bounds),
                                        shard_bounds=(lo, hi))
            token = plans.store(run.dataset, shard, claim_owner=run.claim_owner,
                                trusted=trusted)
            ids.append(operation_id(queue_plan(run.dataset, view, token, delegation_target)))
    except BaseException:
        # Shards already queued still run (they renew the claim); the field is not held
        # for the ones that never will.
        claims.expect_shards(run.dataset, request.field, run.claim_owner, len(ids))
        if not ids:
            claims.release(run.dataset, request.field, run.claim_owner)
        raise
    return {**run.summary, "queued_shards": len(bounds), "operation_ids": ids, "note": NOTE}


def queue_plan(dataset, view, token: str, delegation_target: str | None = None) -> Any:
    """Queue one delegated operation that carries out the plan ``token``; binds the token to
    it (see :func:`.plans.bind`) and returns the queued operation's record.

    Queued directly in FiftyOne's delegated-operation queue, with the dataset named and the
    target serialized as a view: ``foo.execute_operator`` reads the dataset only from a view
    (the App's whole-dataset target, ``ctx.target_view()``, is the dataset itself, which
    queued an operation with no dataset), and inside an App execution it returns an unfinished
    asyncio task instead of the queued operation.
    """
    from fiftyone.operators.delegated import DelegatedOperationService
    from fiftyone.operators.executor import ExecutionContext

    request_params = dict(dataset_name=dataset.name, dataset_id=str(dataset._doc.id),
                          view=view.view()._serialize(),
                          params={"plan": token, "delegate": True},
                          delegation_target=delegation_target,
                          delegated=True)  # what FiftyOne sets on the requests it queues
    operation = DelegatedOperationService().queue_operation(
        operator=OPERATOR_URI, label=LABEL, delegation_target=delegation_target,
        context=ExecutionContext(request_params=request_params).serialize())
    plans.bind(token, operation.id)
    return operation


def operation_id(result: Any) -> str:
    """The ID of a queued operation's record (a document or its dict)."""
    op_id = getattr(result, "id", None)
    if op_id is None and isinstance(result, dict):
        op_id = result.get("id") or result.get("_id")
    return str(op_id)
