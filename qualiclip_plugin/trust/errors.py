"""The one error type a refused request raises, below both :mod:`.request` and :mod:`.policy`
(each raises it, and the request parser calls the policy)."""

from __future__ import annotations


class RequestError(ValueError):
    """A request refused before any write; the message says what to change."""
