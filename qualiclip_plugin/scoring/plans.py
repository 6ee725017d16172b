"""Run plans: validated requests stored for the delegated operations that carry them out.

A queued operation's params are visible and replayable, so they carry only an unguessable plan
token; the request itself (already checked by the caller's rules: the App policy, or a trusted
Python caller) and internal details such as a shard's sample-ID range live in FiftyOne's
database in :data:`COLLECTION`. A form can therefore never hand an operator shard bounds or a
path the policy would refuse.

A token is good for one execution only: it is bound to the delegated operation it was queued as
(:func:`bind`), taken once by that operation's worker (:func:`take`), and carries the request
(field, weights, settings) it was made for, which the params cannot change. A shard's token
also ends with its run: once the claim it was queued under is released or taken over, the
token is refused (checked by :mod:`.pipeline`). A replay therefore never scores twice, never
writes other weights' scores into a field and never releases a claim early.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from qualiclip_plugin.trust.request import RequestError, ScoreRequest

COLLECTION = "qualiclip_run_plans"
#: Plans older than this are deleted when new ones are stored.
KEEP_DAYS = 30


@dataclass(frozen=True)
class Plan:
    """A stored request for one operation on one dataset."""

    token: str
    dataset_id: str
    request: ScoreRequest
    claim_owner: str | None = None
    #: Stored by a trusted Python caller (no App policy applied when it was made).
    trusted: bool = False


def _collection():
    import fiftyone.core.odm as foodm

    return foodm.get_db_conn()[COLLECTION]


UNKNOWN = ("this run's plan is unknown on this server (it may have been queued for another "
           "dataset or expired); start the run again")
USED = ("this run's plan has already been used (a queued run executes once); start the run "
        "again")


def store(dataset, request: ScoreRequest, claim_owner: str | None = None,
          trusted: bool = False) -> str:
    """Save ``request`` for ``dataset``; returns the token to pass as the ``plan`` param.
    ``trusted``: made by a Python caller, so workers do not apply the App policy to it."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    collection = _collection()
    collection.delete_many({"created": {"$lt": now - dt.timedelta(days=KEEP_DAYS)}})
    token = secrets.token_hex(16)
    collection.insert_one({"_id": token, "dataset_id": str(dataset._doc.id),
                           "request": request.to_params(), "claim_owner": claim_owner,
                           "trusted": trusted, "operation_id": None, "used": None,
                           "created": now})
    return token


def bind(token: str, operation_id: Any) -> None:
    """Bind ``token`` to the delegated operation it was queued as: only that one may take it."""
    _collection().update_one({"_id": token, "operation_id": None},
                             {"$set": {"operation_id": str(operation_id)}})


def load(dataset, token: Any) -> Plan:
    """The plan ``token`` names for ``dataset``, not yet used (for checks before queuing).

    Raises:
        RequestError: no such plan for this dataset (a typed or stale token), or used.
    """
    doc = _find(dataset, token)
    if doc.get("used") or doc.get("operation_id"):
        raise RequestError(USED)
    return _plan(doc)


def take(dataset, token: Any, operation_id: Any) -> Plan:
    """Use the plan ``token`` names, once, in the delegated operation ``operation_id``.

    Atomic: of two workers given one token, one gets it. A token bound to another operation
    (a replay queued as a new operation) or used before is refused.

    Raises:
        RequestError: unknown, bound to another operation, or used.
    """
    _find(dataset, token)  # unknown and other datasets' tokens: one message
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    doc = _collection().find_one_and_update(
        {"_id": token, "used": None,
         "operation_id": {"$in": [None, str(operation_id)] if operation_id else [None]}},
        {"$set": {"used": now, "operation_id": str(operation_id)}}, return_document=True)
    if doc is None:
        raise RequestError(USED)
    return _plan(doc)


def _find(dataset, token: Any) -> dict[str, Any]:
    doc = _collection().find_one({"_id": token}) if isinstance(token, str) else None
    if doc is None or doc["dataset_id"] != str(dataset._doc.id):
        raise RequestError(UNKNOWN)
    return doc


def _plan(doc: dict[str, Any]) -> Plan:
    return Plan(token=doc["_id"], dataset_id=doc["dataset_id"],
                request=ScoreRequest.from_params(doc["request"]),
                claim_owner=doc.get("claim_owner"), trusted=bool(doc.get("trusted")))


def check_persistent(dataset) -> None:
    """Delegated work runs in another process, which can only open persistent datasets."""
    if dataset is not None and getattr(dataset, "_is_frames", False):
        raise RequestError(
            "a frames view is scored in the frames dataset FiftyOne generated for it, which a "
            "background worker cannot open: run immediately (delegate off, 1 shard), or score "
            "the video dataset itself in the background")
    if dataset is not None and not dataset.persistent:
        raise RequestError(
            f"dataset '{dataset.name}' is not persistent, so a background worker cannot open "
            "it: set `dataset.persistent = True`, or run immediately (delegate off, 1 shard)")
