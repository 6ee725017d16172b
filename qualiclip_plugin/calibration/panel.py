"""The "Image quality" panel's ratings: rate the selected samples or the current view (good /
bad, 1-5 stars), clear ratings, see how many there are, and open "Calibrate to my ratings".

:class:`RatingHandlers` holds the panel's event handlers for this (the panel class inherits
them); :func:`rating_section` draws the section. The writes are :mod:`.ratings`' (the ownership
rule's checks included); problems become the panel's one-sentence message. Imports no torch.
"""

from __future__ import annotations

from typing import Any

import fiftyone.operators.types as types

from qualiclip_plugin import PLUGIN_NAME
from qualiclip_plugin.calibration import ratings
from qualiclip_plugin.calibration.operator import CALIBRATE_LABEL, CALIBRATE_OPERATOR
from qualiclip_plugin.calibration.ratings import DEFAULT_RATINGS_FIELD
from qualiclip_plugin.panel.data import PanelError
from qualiclip_plugin.trust.request import RequestError

CALIBRATE_URI = f"{PLUGIN_NAME}/{CALIBRATE_OPERATOR}"
RATE_SCOPES = ("selected", "view")
#: The rating buttons: ``(name, label, value)``.
RATING_BUTTONS = (("rate_bad", "Bad", "bad"), ("rate_1", "1", 1), ("rate_2", "2", 2),
                  ("rate_3", "3", 3), ("rate_4", "4", 4), ("rate_5", "5", 5),
                  ("rate_good", "Good", "good"))


class RatingHandlers:
    """Event handlers of the panel's ratings section (mixed into the panel class, which
    provides ``_guarded`` and ``_say``)."""

    def rate(self, ctx) -> None:
        """Rate the samples in the chosen scope with the button's ``rating``."""
        def work(ctx):
            value = ctx.params.get("rating")
            target = _rating_scope(ctx)
            count = _ratings_call(ratings.rate, ctx.dataset, target, DEFAULT_RATINGS_FIELD,
                                  value)
            count_ratings(ctx)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Rated {count} samples {_described(value)} in "
                           f"'{DEFAULT_RATINGS_FIELD}'")
        self._guarded(ctx, work)

    def clear_rating(self, ctx) -> None:
        def work(ctx):
            count = _ratings_call(ratings.clear, ctx.dataset, _rating_scope(ctx),
                                  DEFAULT_RATINGS_FIELD)
            count_ratings(ctx)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Cleared the ratings of {count} samples")
        self._guarded(ctx, work)

    def calibrate_to_ratings(self, ctx) -> None:
        """Open the "Calibrate to my ratings" form for the panel's ratings field."""
        ctx.prompt(CALIBRATE_URI, params={"ratings_field": DEFAULT_RATINGS_FIELD})


def count_ratings(ctx) -> None:
    """Put the number of ratings (dataset and current view) into the panel state."""
    total = ratings.count(ctx.dataset, DEFAULT_RATINGS_FIELD)
    in_view = ratings.count(ctx.view, DEFAULT_RATINGS_FIELD) if total else 0
    values = {"ratings_total": total, "ratings_in_view": in_view}
    changed = {k: v for k, v in values.items() if ctx.panel.state.get(k) != v}
    if changed:  # only what differs: each state change redraws the panel
        ctx.panel.state.set(changed)


def rating_section(panel: types.Object, handlers: RatingHandlers, state) -> None:
    """The ratings section of the panel's view: scope, rating buttons, count, calibrate."""
    scope = types.RadioGroup(orientation="horizontal")
    scope.add_choice("selected", label=f"Selected samples ({state.selected_count or 0})")
    scope.add_choice("view", label="Current view")
    panel.enum("rate_scope", list(RATE_SCOPES), default=state.rate_scope or "selected",
               view=scope, label="Rate (for 'Calibrate to my ratings')")
    buttons = panel.h_stack("rating_buttons", align_x="left", gap=1)
    for name, label, value in RATING_BUTTONS:
        buttons.btn(name, label=label, on_click=handlers.rate, params={"rating": value},
                    variant="outlined")
    buttons.btn("clear_rating", label="Clear rating", on_click=handlers.clear_rating,
                variant="outlined")
    total, in_view = state.ratings_total or 0, state.ratings_in_view or 0
    panel.md(f"Ratings: **{total}** in '{DEFAULT_RATINGS_FIELD}' ({in_view} in the view); "
             "calibration needs at least 20 rated images, about 50 work well",
             name="ratings_text")
    panel.btn("calibrate", label=CALIBRATE_LABEL, on_click=handlers.calibrate_to_ratings,
              variant="outlined")


def _rating_scope(ctx):
    scope = ctx.panel.state.rate_scope or "selected"
    if scope == "selected":
        if not ctx.selected:
            raise PanelError("no samples are selected: select some in the grid, or rate the "
                             "current view")
        return ctx.view.select(ctx.selected)
    if scope != "view":
        raise PanelError(f"unknown rating scope {str(scope)[:20]!r}")
    return ctx.view


def _described(value: Any) -> str:
    """``"bad (1 of 5)"``, ``"4 of 5"``: what a rating button wrote (checked by the write)."""
    stars = f"{ratings.rating_value(value):g} of 5"
    return f"{value} ({stars})" if str(value) in ("good", "bad") else stars


def _ratings_call(function, *args: Any) -> int:
    """A :mod:`.ratings` write; its refusal becomes the panel's message."""
    try:
        return function(*args)
    except RequestError as exc:
        raise PanelError(str(exc)) from None
