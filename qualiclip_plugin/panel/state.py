"""The "Image quality" panel's selection: one owner, one update path.

The panel's state lives in the browser and comes back with every event, and the App's inputs
write their own values into it and report them again whenever they are redrawn (a dropdown its
value, a slider the value it held before a redraw). So the selection the panel works on
(score field, attribute, threshold) is kept apart from the inputs, under ``state.current``, and
only :meth:`ImageQualityPanel._settle <qualiclip_plugin.panel.operator.ImageQualityPanel>`
writes it:

* an input event that repeats the current value changes nothing (no state write, no query);
* the threshold slider is a different input for every (field, attribute) (:func:`slider_name`),
  and a value is taken only from the current one: a slider drawn for the previous field cannot
  write its old value into the new field's threshold;
* the threshold comes from the saved one, else from the data (:func:`.data.default_threshold`).

Top-level imports are the standard library only: this module is imported when the App starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

#: Threshold values closer than this are the same value (a slider reports floats that went
#: through JSON and its own step).
SAME_THRESHOLD = 1e-9


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
        current = state.current if isinstance(state.current, dict) else {}
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


def slider_name(selection: Selection) -> str:
    """The threshold slider's input name (its path in the panel state) for ``selection``'s
    field and attribute."""
    key = f"{selection.field}__{selection.attribute}"
    return "threshold__" + re.sub(r"[^A-Za-z0-9_]", "_", key)
