"""The "Image quality" panel's selection: one owner, one update path.

The panel's state lives in the browser and comes back with every event, not always the latest
copy (the App's context events can carry the state of an earlier render), and the App's inputs
write their own values into it and report them again whenever they are redrawn (a dropdown its
value, a slider the value it held before a redraw). So the selection the panel works on
(score field, attribute, threshold) is owned by the server: kept per panel in the panel's
execution store (:func:`load` / :func:`save`; ``state.current`` is the browser's copy, used
only when the store has none), and only
:meth:`ImageQualityPanel._settle <qualiclip_plugin.panel.operator.ImageQualityPanel>` writes it:

* every input is named after the selection it was drawn for (:func:`input_name`), and an
  event is taken only from the input of the current selection: a dropdown or slider drawn for
  the previous field (whose component the App keeps, with its old value) cannot write that
  value back;
* an input event that repeats the current value changes nothing (no state write, no query);
* the threshold comes from the saved one, else from the data (:func:`.data.default_threshold`).

Imports no torch: this module is imported when the App starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from qualiclip_plugin.trust.protection import panel_store

#: Threshold values closer than this are the same value (a slider reports floats that went
#: through JSON and its own step).
SAME_THRESHOLD = 1e-9
#: How long a panel's selection is kept after its last change (seconds): a closed panel's
#: entry goes away by itself.
SELECTION_TTL = 7 * 24 * 3600


@dataclass(frozen=True)
class Selection:
    """What the panel shows: score ``field``, ``attribute`` (``"overall"`` or one attribute
    score), ``threshold`` in [0, 1] (``None`` before the data gave one)."""

    field: str | None = None
    attribute: str | None = None
    threshold: float | None = None

    @classmethod
    def of(cls, state) -> Selection:
        """The selection the panel last settled (``state.current``). The values came back from
        the browser: the panel checks field and attribute against its run records and the
        threshold's range before using them."""
        return cls.of_dict(state.current if isinstance(state.current, dict) else {})

    @classmethod
    def of_dict(cls, current: dict[str, Any]) -> Selection:
        threshold = current.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
                or not math.isfinite(threshold):
            threshold = None
        field, attribute = current.get("field"), current.get("attribute")
        return cls(field=field if isinstance(field, str) else None,
                   attribute=attribute if isinstance(attribute, str) else None,
                   threshold=threshold)

    def same_threshold(self, value: Any) -> bool:
        try:
            return self.threshold is not None and \
                abs(float(value) - self.threshold) < SAME_THRESHOLD
        except (TypeError, ValueError):
            return False

    def to_state(self) -> dict[str, Any]:
        return asdict(self)


def _key(ctx) -> str | None:
    panel_id = getattr(ctx.panel, "id", None) if ctx.panel else None
    return f"selection:{str(panel_id)[:100]}" if panel_id else None


def load(ctx) -> Selection:
    """The selection the panel last settled: the server's copy, else the browser's."""
    key = _key(ctx)
    stored = panel_store(ctx.dataset).get(key) if key else None
    if isinstance(stored, dict):
        return Selection.of_dict(stored)
    return Selection.of(ctx.panel.state)


def save(ctx, selection: Selection) -> None:
    """Record ``selection`` as the panel's (server copy, and the browser's ``state.current``)."""
    key = _key(ctx)
    if key:
        panel_store(ctx.dataset).set_cache(key, selection.to_state(), ttl=SELECTION_TTL)
    if ctx.panel.state.current != selection.to_state():
        ctx.panel.state.current = selection.to_state()


#: The inputs of the selection, and the parts of it each one's name carries.
INPUTS = {"field": ("field",), "attribute": ("field", "attribute"),
          "threshold": ("field", "attribute")}


def input_name(selection: Selection, what: str) -> str:
    """The name (path in the panel state) of the ``what`` input (``"field"``, ``"attribute"``
    or ``"threshold"``) drawn for ``selection``."""
    key = "__".join(str(getattr(selection, part)) for part in INPUTS[what])
    return f"{what}__" + re.sub(r"[^A-Za-z0-9_]", "_", key)
