"""Run plans: validated requests stored for the delegated operations that carry them out.

A queued operation's params are visible and replayable, so they carry only an unguessable plan
token; the request itself (already checked by the caller's rules: the App policy, or a trusted
Python caller) and internal details such as a shard's sample-ID range live in FiftyOne's
database in :data:`COLLECTION`. A form can therefore never hand an operator shard bounds or a
path the policy would refuse.
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


def _collection():
    import fiftyone.core.odm as foodm

    return foodm.get_db_conn()[COLLECTION]


def store(dataset, request: ScoreRequest, claim_owner: str | None = None) -> str:
    """Save ``request`` for ``dataset``; returns the token to pass as the ``plan`` param."""
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    collection = _collection()
    collection.delete_many({"created": {"$lt": now - dt.timedelta(days=KEEP_DAYS)}})
    token = secrets.token_hex(16)
    collection.insert_one({"_id": token, "dataset_id": str(dataset._doc.id),
                           "request": request.to_params(), "claim_owner": claim_owner,
                           "created": now})
    return token


def load(dataset, token: Any) -> Plan:
    """The plan ``token`` names for ``dataset``.

    Raises:
        RequestError: no such plan for this dataset (a typed or stale token).
    """
    doc = _collection().find_one({"_id": str(token)}) if isinstance(token, str) else None
    if doc is None or doc["dataset_id"] != str(dataset._doc.id):
        raise RequestError("this run's plan is unknown on this server (it may have been queued "
                           "for another dataset or expired); start the run again")
    return Plan(token=doc["_id"], dataset_id=doc["dataset_id"],
                request=ScoreRequest.from_params(doc["request"]),
                claim_owner=doc.get("claim_owner"))


def check_persistent(dataset) -> None:
    """Delegated work runs in another process, which can only open persistent datasets."""
    if dataset is not None and not dataset.persistent:
        raise RequestError(
            f"dataset '{dataset.name}' is not persistent, so a background worker cannot open "
            "it: set `dataset.persistent = True`, or run immediately (delegate off, 1 shard)")
