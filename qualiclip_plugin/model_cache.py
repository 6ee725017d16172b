"""One loaded model kept between operator runs.

The App server re-executes the plugin's entry module on every operator look-up, so a cache there
would be thrown away; this importable module lives as long as the process. One entry only: a
second model of a few hundred MB would be kept for nothing.
"""

from __future__ import annotations

import os
import threading
from typing import Any

_LOCK = threading.Lock()
_CACHE: dict[tuple, Any] = {}


def _key(weights: str, device: str | None) -> tuple:
    # A local checkpoint rewritten in place (a new fine-tune) must not be served stale.
    stamp: tuple = ()
    if os.path.isfile(weights):
        info = os.stat(weights)
        stamp = (os.path.realpath(weights), info.st_mtime_ns, info.st_size)
    return (weights, device, stamp)


def get_model(weights: str, device: str | None):
    """``qualiclip.load_model(weights, device)``, reusing the last model when nothing changed."""
    from qualiclip import load_model

    key = _key(weights, device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = load_model(weights, device=device, progress=False)
        return _CACHE[key]


def clear() -> None:
    """Drop the cached model (frees its memory)."""
    with _LOCK:
        _CACHE.clear()
