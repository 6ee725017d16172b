"""The "Image quality" panel: a score histogram of the current view and what to do with it.

The panel translates App events into calls of :mod:`.data` and App operations
(``set_view``, ``prompt``); it computes nothing itself, and its view (the types tree and the
histogram's Plotly figure) is built by :mod:`.view`. Every value the App sends (field,
attribute, clicked range, threshold, N) is untrusted and checked there; problems are shown in the
panel as one sentence. Top-level imports are FiftyOne's operator API only: this module is
imported when the App starts.
"""

from __future__ import annotations

import logging
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from qualiclip_plugin import OPERATOR_URI
from qualiclip_plugin.calibration.panel import RatingHandlers, count_ratings
from qualiclip_plugin.panel import data as panel_data
from qualiclip_plugin.panel import state as selection_state
from qualiclip_plugin.panel.data import PanelError
from qualiclip_plugin.panel.state import Selection, input_name
from qualiclip_plugin.panel.view import DEFAULT_N, build_view, histogram_bars
from qualiclip_plugin.trust.request import DEFAULT_FIELD, IMMEDIATE_MAX_SAMPLES
from qualiclip_plugin.trust.views import ViewRefused, view_from_state, view_state

logger = logging.getLogger(__name__)
#: "Leave this part of the selection as it is" for :meth:`ImageQualityPanel._settle`.
_KEEP = object()

PANEL_NAME = "image_quality"
PANEL_LABEL = "Image quality"
ICON = "/assets/icon.svg"


class ImageQualityPanel(RatingHandlers, foo.Panel):
    """Histogram, counts, worst/best, threshold (save, reset, reviewed), tagging, scoring;
    ratings for calibration (:class:`~qualiclip_plugin.calibration.panel.RatingHandlers`)."""

    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name=PANEL_NAME, label=PANEL_LABEL, icon=ICON,
            help_markdown="QualiCLIP scores of the current view: click a bar to show its "
                          "samples, save a threshold, tag the samples below it; rate samples "
                          "and calibrate QualiCLIP to your ratings")

    # --- events ---------------------------------------------------------------------------------
    def on_load(self, ctx) -> None:
        self._guarded(ctx, self._settle, reload_threshold=True)

    def on_change_view(self, ctx) -> None:
        def changed(ctx):
            if not self._panel_set_this_view(ctx):
                ctx.panel.state.base_view = None  # the user's own new view: Back returns here
            self._settle(ctx)
        self._guarded(ctx, changed)

    def on_change_selected(self, ctx) -> None:
        ctx.panel.state.selected_count = len(ctx.selected or [])

    def on_change_field(self, ctx) -> None:
        if self._changed(ctx, "field"):
            self._guarded(ctx, self._settle, field=ctx.params.get("value"), attribute=None,
                          reload_threshold=True)

    def on_change_attribute(self, ctx) -> None:
        if self._changed(ctx, "attribute"):
            self._guarded(ctx, self._settle, attribute=ctx.params.get("value"),
                          reload_threshold=True)

    def on_change_threshold(self, ctx) -> None:
        if self._changed(ctx, "threshold"):
            self._guarded(ctx, self._settle, threshold=ctx.params.get("value"))

    def refresh(self, ctx) -> None:
        """Re-read the dataset: samples and runs added since the panel opened show up."""
        self._guarded(ctx, self._settle, reload_threshold=True, reload_dataset=True)

    def on_bar_click(self, ctx) -> None:
        def show(ctx):
            low, high = (ctx.params.get("range") or [None, None])[:2]
            self._show_range(ctx, low, high)
        self._guarded(ctx, show)

    def on_bars_selected(self, ctx) -> None:
        def show(ctx):
            edges = ctx.panel.state.edges or []
            picked = [p.get("idx") for p in ctx.params.get("data") or [] if isinstance(p, dict)]
            picked = [i for i in picked if isinstance(i, int) and 0 <= i < len(edges) - 1]
            if picked:
                self._show_range(ctx, edges[min(picked)], edges[max(picked) + 1])
        self._guarded(ctx, show)

    def show_scored(self, ctx) -> None:
        self._guarded(ctx, self._show_count, which="scored")

    def show_unscored(self, ctx) -> None:
        self._guarded(ctx, self._show_count, which="unscored")

    def show_errors(self, ctx) -> None:
        self._guarded(ctx, self._show_count, which="errors")

    def show_worst(self, ctx) -> None:
        self._guarded(ctx, self._show_extremes, worst=True)

    def show_best(self, ctx) -> None:
        self._guarded(ctx, self._show_extremes, worst=False)

    def show_segments(self, ctx) -> None:
        self._guarded(ctx, self._show_segments)

    def back_to_view(self, ctx) -> None:
        self._guarded(ctx, self._restore_view)

    def save_threshold(self, ctx) -> None:
        def save(ctx):
            src, path = self._source(ctx)
            entry = panel_data.save_threshold(ctx.dataset, src, path, self._threshold(ctx))
            self._settle(ctx, threshold=entry["threshold"])
            self._set_saved(ctx, entry)
            self._say(ctx, f"Saved threshold {entry['threshold']:.6g} for '{path}'")
        self._guarded(ctx, save)

    def reset_threshold(self, ctx) -> None:
        def reset(ctx):
            _, path = self._source(ctx)
            panel_data.reset_threshold(ctx.dataset, path)
            self._settle(ctx, reload_threshold=True)  # the data's default again
            self._say(ctx, f"Threshold of '{path}' reset")
        self._guarded(ctx, reset)

    def toggle_reviewed(self, ctx) -> None:
        def toggle(ctx):
            src, path = self._source(ctx)
            entry = panel_data.saved_threshold(ctx.dataset, src, path) or {}
            entry = panel_data.set_reviewed(ctx.dataset, src, path, not entry.get("reviewed"))
            self._set_saved(ctx, entry)
        self._guarded(ctx, toggle)

    def tag_below(self, ctx) -> None:
        def tag(ctx):
            src, path = self._source(ctx)
            tag = panel_data.panel_tag(ctx.dataset, src)
            threshold = panel_data.check_threshold(self._threshold(ctx))
            count = panel_data.tag_below(ctx.dataset, self._scope(ctx), path, threshold, tag)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Tagged {count} {src.unit} below {threshold:.6g} with '{tag}'")
        self._guarded(ctx, tag)

    def untag(self, ctx) -> None:
        def remove(ctx):
            src, _ = self._source(ctx)
            tag = panel_data.panel_tag(ctx.dataset, src)
            count = panel_data.untag(self._scope(ctx), tag)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Removed '{tag}' from {count} {src.unit}")
        self._guarded(ctx, remove)

    def score_unscored(self, ctx) -> None:
        """Open the scoring form for the current view, resuming (overwrite off); delegated by
        default when more samples are unscored than an immediate run takes."""
        field = selection_state.load(ctx).field or DEFAULT_FIELD
        unscored = ctx.panel.state.unscored or 0
        ctx.prompt(OPERATOR_URI, params={"field": field, "overwrite": False,
                                         "delegate": unscored > IMMEDIATE_MAX_SAMPLES},
                   on_success=self.on_scored)

    def on_scored(self, ctx) -> None:
        self._guarded(ctx, self._settle, reload_threshold=True, reload_dataset=True)

    @staticmethod
    def _changed(ctx, what: str) -> bool:
        """Whether an input event asks for a change: it comes from the ``what`` input drawn for
        the current selection (inputs drawn for an earlier one report their old values when
        redrawn) and holds a new value (redrawn inputs repeat theirs)."""
        current = selection_state.load(ctx)
        if ctx.params.get("path") != input_name(current, what):
            return False
        value = ctx.params.get("value")
        if what == "threshold":
            return not current.same_threshold(value)
        return value != getattr(current, what)

    # --- work ----------------------------------------------------------------------------------
    def _settle(self, ctx, field: Any = _KEEP, attribute: Any = _KEEP, threshold: Any = _KEEP,
                reload_threshold: bool = False, reload_dataset: bool = False) -> None:
        """The one update path of the panel's selection (:mod:`.state`): apply the requested
        changes to ``state.current``, settle what they imply (a field that no longer exists,
        the threshold of a new field) and recompute what the panel shows of the view."""
        state = ctx.panel.state
        if reload_dataset:
            ctx.dataset.reload()  # runs and samples added by other processes
        current = selection_state.load(ctx)
        field = current.field if field is _KEEP else field
        attribute = current.attribute if attribute is _KEEP else attribute
        known = panel_data.sources(ctx.dataset)
        _put(state, {"selected_count": len(ctx.selected or []), "fields": sorted(known)})
        count_ratings(ctx)  # ratings need no scores: counted before the early return below
        if not known:
            selection_state.save(ctx, Selection())
            state.total = ctx.view.count()
            state.unscored = state.total
            ctx.panel.data.histogram = []
            self._say(ctx, "No QualiCLIP scores on this dataset yet: 'Score unscored samples' "
                           "opens the scoring form")
            return
        if field not in known:
            field = DEFAULT_FIELD if DEFAULT_FIELD in known else sorted(known)[0]
            reload_threshold = True
        src = panel_data.for_view(known[field], ctx.view)  # a frames view holds frames
        # The panel's own worst-segments view holds clips of the videos (same summaries).
        unit = "clips" if getattr(ctx.view, "_is_clips", False) else src.unit
        _put(state, {"attributes": [panel_data.OVERALL, *src.attributes], "unit": unit,
                     "video": src.video})
        if attribute not in state.attributes:
            attribute = panel_data.OVERALL
        path = src.path(attribute)
        hist = panel_data.histogram(ctx.view, path)
        if threshold is not _KEEP:
            threshold = panel_data.check_threshold(threshold)
        elif reload_threshold or current.threshold is None or \
                (field, attribute) != (current.field, current.attribute):
            entry = panel_data.saved_threshold(ctx.dataset, src, path)
            self._set_saved(ctx, entry)
            threshold = entry["threshold"] if entry else panel_data.default_threshold(hist)
        else:
            threshold = current.threshold
        settled = Selection(field=field, attribute=attribute, threshold=threshold)
        selection_state.save(ctx, settled)
        counts = panel_data.counts(ctx.view, src.field)
        # What the inputs and texts show; only values that differ from the browser's copy are
        # sent (every state change redraws the panel, and a redraw re-fires the App's context
        # events).
        _put(state, {input_name(settled, "field"): field,
                     input_name(settled, "attribute"): attribute,
                     input_name(settled, "threshold"): threshold,
                     "total": counts.total, "scored": counts.scored, "errors": counts.errors,
                     "unscored": counts.unscored, "edges": hist["edges"] if hist else [],
                     "below": None if threshold is None else
                     panel_data.below(ctx.view, path, threshold).count()})
        ctx.panel.data.histogram = histogram_bars(hist, unit) if hist else []

    def _show_range(self, ctx, low: Any, high: Any) -> None:
        src, path = self._source(ctx)
        edges = ctx.panel.state.edges or []
        last = bool(edges) and _close(high, edges[-1])
        base = self._base_view(ctx)
        view = panel_data.range_view(base, path, low, high, include_high=last)
        self._set_view(ctx, view)
        self._say(ctx, f"Showing {path} in [{float(low):.6g}, {float(high):.6g}"
                       f"{']' if last else ')'}: {view.count()} {src.unit}")

    def _show_count(self, ctx, which: str) -> None:
        src, _ = self._source(ctx)
        view = panel_data.counts_view(self._base_view(ctx), src.field, which)
        self._set_view(ctx, view)
        self._say(ctx, f"Showing the {which.replace('errors', 'failed')} {src.unit}")

    def _show_extremes(self, ctx, worst: bool) -> None:
        _, path = self._source(ctx)
        n = ctx.panel.state.n or DEFAULT_N
        view = panel_data.extremes(self._base_view(ctx), path, n, worst)
        self._set_view(ctx, view)
        self._say(ctx, f"Showing the {int(float(n))} {'lowest' if worst else 'highest'} "
                       f"'{path}' scores")

    def _show_segments(self, ctx) -> None:
        """The worst segments of the videos as clips, lowest segment mean first (opening one
        in the App plays that segment)."""
        src, _ = self._source(ctx)
        n = ctx.panel.state.n or DEFAULT_N
        view = panel_data.segments_view(self._base_view(ctx), src, n)
        self._set_view(ctx, view)
        self._say(ctx, f"Showing the {view.count()} worst segments ('{src.segments}'), lowest "
                       "mean first: open one to play it")

    def _set_view(self, ctx, view) -> None:
        """Show ``view`` in the grid and remember it was the panel's (see
        :meth:`_panel_set_this_view`)."""
        ctx.panel.state.panel_view = _stages_key(view._serialize())
        ctx.ops.set_view(view)

    def _panel_set_this_view(self, ctx) -> bool:
        """Whether the App's view (its view bar) is the one the panel set last."""
        last = ctx.panel.state.panel_view
        return last is not None and last == _stages_key(ctx.request_params.get("view"))

    def _base_view(self, ctx):
        """The view the panel's own selections narrow: the user's view before the first one
        (its view bar or saved view, kept in the panel state, so repeated clicks do not narrow
        each other). The App's grid sort and sidebar filters are not part of it: the App
        keeps applying them on top, and copying them into the view bar would stack them."""
        state = ctx.panel.state
        if state.base_view is None:
            state.base_view = view_state(ctx.dataset, ctx.request_params.get("view"),
                                         ctx.request_params.get("view_name"))
        try:
            return view_from_state(ctx.dataset, state.base_view)
        except ViewRefused as exc:
            state.base_view = None
            raise PanelError(f"{exc}; the grid is left as it is") from None

    def _restore_view(self, ctx) -> None:
        state = ctx.panel.state
        kept = state.base_view
        state.base_view = None
        state.panel_view = None
        self._say(ctx, "")
        if kept is None:
            return  # the panel has not changed the view
        try:
            view = view_from_state(ctx.dataset, kept)
        except ViewRefused as exc:
            ctx.ops.clear_view()
            raise PanelError(f"{exc}; showing the whole dataset") from None
        if isinstance(kept, dict) and kept.get("name"):
            ctx.ops.set_view(name=kept["name"])
        elif len(view._stages):
            ctx.ops.set_view(view)
        else:
            ctx.ops.clear_view()

    def _source(self, ctx):
        current = selection_state.load(ctx)
        src = panel_data.for_view(panel_data.source(ctx.dataset, current.field), ctx.view)
        return src, src.path(current.attribute)

    def _scope(self, ctx):
        scope = ctx.panel.state.scope or "view"
        if scope == "selected":
            if not ctx.selected:
                raise PanelError("no samples are selected: select some in the grid, or apply "
                                 "to the current view")
            return ctx.view.select(ctx.selected)
        return ctx.view

    @staticmethod
    def _threshold(ctx) -> Any:
        threshold = selection_state.load(ctx).threshold
        if threshold is None:
            raise PanelError("no threshold yet: the view has no scores")
        return threshold

    @staticmethod
    def _set_saved(ctx, entry: dict | None) -> None:
        _put(ctx.panel.state, {"saved": entry and {"threshold": entry["threshold"],
                                                   "reviewed": bool(entry.get("reviewed")),
                                                   "saved": entry.get("saved")}})

    @staticmethod
    def _say(ctx, message: str) -> None:
        ctx.panel.state.message = message

    def _guarded(self, ctx, work, **kwargs) -> None:
        """Run ``work``; a refusal or failure becomes the panel's message, never a traceback."""
        try:
            work(ctx, **kwargs)
        except PanelError as exc:
            self._say(ctx, f"⚠ {exc}")
        except Exception as exc:  # the database, a view that no longer resolves...
            logger.exception("Image quality panel")
            self._say(ctx, f"⚠ {type(exc).__name__}: {str(exc)[:200]} (details in the App "
                           "server's log)")

    # --- layout --------------------------------------------------------------------------------
    def render(self, ctx) -> types.Property:
        return build_view(self, ctx.panel.state, selection_state.load(ctx))


def _close(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return False


def _put(state, values: dict[str, Any]) -> None:
    """Set the ``values`` that differ from what ``state`` (the browser's copy) holds."""
    changed = {k: v for k, v in values.items() if state.get(k) != v}
    if changed:
        state.set(changed)


def _stages_key(stages: Any) -> Any:
    """``stages`` without the ``_uuid`` the App adds or drops, for comparing views."""
    if not isinstance(stages, list):
        return []
    return [{k: v for k, v in stage.items() if k != "_uuid"} if isinstance(stage, dict)
            else stage for stage in stages]
