"""One writer per score field: a run claims ``(dataset, field)`` before its first write.

Two runs writing one field at once would interleave scores and leave a run record describing
only one of them. Claims live in FiftyOne's database beside the datasets' run records, in the
collection :data:`COLLECTION`, one document per dataset and field; taking one is a single atomic
insert or conditional update, so two App users pressing Execute together cannot both win.

A claim expires when its run makes no progress for :func:`timeout_seconds`
(``QUALICLIP_CLAIM_TIMEOUT``, default 30 minutes): a run killed mid-way blocks the field only
that long. Running runs refresh their claim after every written chunk. The timeout is read when
a claim is judged, not when it was taken, so an admin who shortens it after a crash frees the
field at once; only claims given an explicit lifetime (queued shards) keep their own.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
from typing import Any

from qualiclip_plugin.trust.request import RequestError

COLLECTION = "qualiclip_field_claims"
TIMEOUT_ENV = "QUALICLIP_CLAIM_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0


class FieldBusyError(RequestError):
    """Another run is writing the field."""


def timeout_seconds() -> float:
    """Seconds without progress after which a claim may be taken over."""
    try:
        return max(1.0, float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def new_owner() -> str:
    """An unguessable claim owner id."""
    return secrets.token_hex(16)


def shared_owner(dataset, request_params: dict[str, Any], group: Any = None) -> str:
    """One owner for the parts of one run that FiftyOne Enterprise executes side by side:
    derived from the dataset, the request and, when FiftyOne names it, the parent operation,
    so every part computes the same one and no other run does."""
    import hashlib
    import json

    text = json.dumps([str(dataset._doc.id), request_params, str(group)], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _collection():
    import fiftyone.core.odm as foodm

    return foodm.get_db_conn()[COLLECTION]


def _key(dataset, field: str) -> str:
    return f"{dataset._doc.id}:{field}"


def _now() -> dt.datetime:
    # Naive UTC: what pymongo hands back for stored datetimes.
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def holder(dataset, field: str) -> dict[str, Any] | None:
    """The live claim on ``field`` (``owner``, ``label``, ``started``, ``heartbeat``) or
    ``None`` when free or expired."""
    doc = _collection().find_one({"_id": _key(dataset, field)})
    if doc is None or _expired(doc, _now()):
        return None
    return doc


def _expired(doc: dict[str, Any], now: dt.datetime) -> bool:
    """The rule of :func:`_expired_query`, for one document."""
    if doc.get("fixed_lifetime"):
        return doc["expires"] < now
    return doc["heartbeat"] < now - dt.timedelta(seconds=timeout_seconds())


def _expired_query(now: dt.datetime) -> list[dict[str, Any]]:
    """Claims that may be taken over: an explicit lifetime that ran out, or no progress for
    the timeout in force now."""
    return [{"fixed_lifetime": True, "expires": {"$lt": now}},
            {"fixed_lifetime": {"$ne": True},
             "heartbeat": {"$lt": now - dt.timedelta(seconds=timeout_seconds())}}]


def check_free(dataset, field: str, owner: str | None = None) -> None:
    """Refuse when a run other than ``owner`` holds a live claim on ``field``.

    Raises:
        FieldBusyError: saying who holds it and since when.
    """
    held = holder(dataset, field)
    if held is not None and held["owner"] != owner:
        raise FieldBusyError(busy_message(field, held))


def busy_message(field: str, doc: dict[str, Any]) -> str:
    """A sentence for App users about the run holding ``field``."""
    age = _minutes(_now() - doc["started"])
    quiet = _minutes(_now() - doc["heartbeat"])
    return (f"field '{field}' is being written by another run ({doc.get('label') or 'QualiCLIP'}, "
            f"started {age} ago, last progress {quiet} ago): wait for it to finish, or write to "
            f"another field. A run that was stopped releases the field after "
            f"{_minutes(dt.timedelta(seconds=timeout_seconds()))} without progress")


def claim(dataset, field: str, owner: str, label: str = "",
          lifetime_s: float | None = None, shards: int | None = None) -> None:
    """Take (or renew) the claim on ``field`` for ``owner``.

    Args:
        lifetime_s: how long the claim holds without renewal (default :func:`timeout_seconds`);
            sharded runs give their queued shards longer.
        shards: when the claim is new, how many parts share it (see :func:`finish_shard`);
            parts that start later only renew it.
    Raises:
        FieldBusyError: another owner holds a live claim.
    """
    from pymongo.errors import DuplicateKeyError

    now = _now()
    expires = now + dt.timedelta(seconds=lifetime_s or timeout_seconds())
    key = _key(dataset, field)
    collection = _collection()
    renewed = collection.find_one_and_update(
        {"_id": key, "$or": [{"owner": owner}, *_expired_query(now)]},
        {"$set": {"owner": owner, "heartbeat": now, "expires": expires, "label": label,
                  "fixed_lifetime": lifetime_s is not None}})
    if renewed is not None:
        if renewed.get("owner") != owner:  # took over an expired claim: a new start
            collection.update_one({"_id": key}, {"$set": {"started": now}})
        return
    try:
        collection.insert_one({"_id": key, "owner": owner, "label": label, "started": now,
                               "heartbeat": now, "expires": expires,
                               "fixed_lifetime": lifetime_s is not None,
                               **({"pending_shards": shards} if shards else {})})
    except DuplicateKeyError:
        doc = collection.find_one({"_id": key}) or {"started": now, "heartbeat": now}
        raise FieldBusyError(busy_message(field, doc)) from None


def refresh(dataset, field: str, owner: str) -> None:
    """Renew ``owner``'s claim after progress (no-op if it was lost)."""
    now = _now()
    _collection().update_one(
        {"_id": _key(dataset, field), "owner": owner},
        {"$set": {"heartbeat": now,
                  "expires": now + dt.timedelta(seconds=timeout_seconds())}})


def release(dataset, field: str, owner: str) -> None:
    """Give up ``owner``'s claim (no-op if another owner holds it now)."""
    _collection().delete_one({"_id": _key(dataset, field), "owner": owner})


def expect_shards(dataset, field: str, owner: str, count: int) -> None:
    """Record that ``count`` queued shards share ``owner``'s claim; the last one to finish
    releases it (see :func:`finish_shard`)."""
    _collection().update_one({"_id": _key(dataset, field), "owner": owner},
                             {"$set": {"pending_shards": count}})


def finish_shard(dataset, field: str, owner: str) -> None:
    """One shard of ``owner`` is done (or gave up); the last one releases the claim."""
    doc = _collection().find_one_and_update(
        {"_id": _key(dataset, field), "owner": owner}, {"$inc": {"pending_shards": -1}},
        return_document=True)
    if doc is not None and doc.get("pending_shards", 0) <= 0:
        release(dataset, field, owner)


def _minutes(delta: dt.timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    return "under a minute" if minutes == 0 else f"{minutes} min"
