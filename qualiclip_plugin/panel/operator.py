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
from qualiclip_plugin.panel import data as panel_data
from qualiclip_plugin.panel.data import PanelError
from qualiclip_plugin.panel.view import DEFAULT_N, DEFAULT_THRESHOLD, build_view, histogram_bars
from qualiclip_plugin.trust.request import DEFAULT_FIELD, IMMEDIATE_MAX_SAMPLES

logger = logging.getLogger(__name__)

PANEL_NAME = "image_quality"
PANEL_LABEL = "Image quality"
ICON = "/assets/icon.svg"


class ImageQualityPanel(foo.Panel):
    """Histogram, counts, worst/best, threshold (save, reset, reviewed), tagging, scoring."""

    @property
    def config(self) -> foo.PanelConfig:
        return foo.PanelConfig(
            name=PANEL_NAME, label=PANEL_LABEL, icon=ICON,
            help_markdown="QualiCLIP scores of the current view: click a bar to show its "
                          "samples, save a threshold, tag the samples below it")

    # --- events ---------------------------------------------------------------------------------
    def on_load(self, ctx) -> None:
        self._guarded(ctx, self._refresh, reload_threshold=True)

    def on_change_view(self, ctx) -> None:
        self._guarded(ctx, self._refresh)

    def on_change_selected(self, ctx) -> None:
        ctx.panel.state.selected_count = len(ctx.selected or [])

    def on_change_field(self, ctx) -> None:
        ctx.panel.state.field = ctx.params.get("value")
        ctx.panel.state.attribute = None
        self._guarded(ctx, self._refresh, reload_threshold=True)

    def on_change_attribute(self, ctx) -> None:
        ctx.panel.state.attribute = ctx.params.get("value")
        self._guarded(ctx, self._refresh, reload_threshold=True)

    def on_change_threshold(self, ctx) -> None:
        def count_below(ctx):
            _, path = self._source(ctx)
            ctx.panel.state.below = panel_data.below(ctx.view, path, self._threshold(ctx)).count()
        ctx.panel.state.threshold = ctx.params.get("value")
        self._guarded(ctx, count_below)

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

    def back_to_view(self, ctx) -> None:
        self._guarded(ctx, self._restore_view)

    def save_threshold(self, ctx) -> None:
        def save(ctx):
            src, path = self._source(ctx)
            entry = panel_data.save_threshold(ctx.dataset, src, path, self._threshold(ctx))
            self._set_saved(ctx, entry)
            self._say(ctx, f"Saved threshold {entry['threshold']:.6g} for '{path}'")
        self._guarded(ctx, save)

    def reset_threshold(self, ctx) -> None:
        def reset(ctx):
            _, path = self._source(ctx)
            panel_data.reset_threshold(ctx.dataset, path)
            self._set_saved(ctx, None)
            ctx.panel.state.threshold = DEFAULT_THRESHOLD
            self._refresh(ctx)
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
            self._say(ctx, f"Tagged {count} samples below {threshold:.6g} with '{tag}'")
        self._guarded(ctx, tag)

    def untag(self, ctx) -> None:
        def remove(ctx):
            src, _ = self._source(ctx)
            tag = panel_data.panel_tag(ctx.dataset, src)
            count = panel_data.untag(self._scope(ctx), tag)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Removed '{tag}' from {count} samples")
        self._guarded(ctx, remove)

    def score_unscored(self, ctx) -> None:
        """Open the scoring form for the current view, resuming (overwrite off); delegated by
        default when more samples are unscored than an immediate run takes."""
        field = ctx.panel.state.field or DEFAULT_FIELD
        unscored = ctx.panel.state.unscored or 0
        ctx.prompt(OPERATOR_URI, params={"field": field, "overwrite": False,
                                         "delegate": unscored > IMMEDIATE_MAX_SAMPLES},
                   on_success=self.on_scored)

    def on_scored(self, ctx) -> None:
        self._guarded(ctx, self._refresh, reload_threshold=True)

    # --- work ----------------------------------------------------------------------------------
    def _refresh(self, ctx, reload_threshold: bool = False) -> None:
        state = ctx.panel.state
        state.selected_count = len(ctx.selected or [])
        known = panel_data.sources(ctx.dataset)
        state.fields = sorted(known)
        if not known:
            state.field = None
            state.total = ctx.view.count()
            state.unscored = state.total
            ctx.panel.data.histogram = []
            self._say(ctx, "No QualiCLIP scores on this dataset yet: 'Score unscored samples' "
                           "opens the scoring form")
            return
        if state.field not in known:
            state.field = "quality" if "quality" in known else sorted(known)[0]
            reload_threshold = True
        src = known[state.field]
        state.attributes = [panel_data.OVERALL, *src.attributes]
        if state.attribute not in state.attributes:
            state.attribute = panel_data.OVERALL
        path = src.path(state.attribute)
        if reload_threshold:
            entry = panel_data.saved_threshold(ctx.dataset, src, path)
            self._set_saved(ctx, entry)
            state.threshold = entry["threshold"] if entry else DEFAULT_THRESHOLD
        counts = panel_data.counts(ctx.view, src.field)
        state.total, state.scored = counts.total, counts.scored
        state.errors, state.unscored = counts.errors, counts.unscored
        hist = panel_data.histogram(ctx.view, path)
        state.edges = hist["edges"] if hist else []
        ctx.panel.data.histogram = histogram_bars(hist) if hist else []
        try:
            state.below = panel_data.below(ctx.view, path, state.threshold).count()
        except panel_data.PanelError:
            state.below = None

    def _show_range(self, ctx, low: Any, high: Any) -> None:
        _, path = self._source(ctx)
        edges = ctx.panel.state.edges or []
        last = bool(edges) and _close(high, edges[-1])
        base = self._base_view(ctx)
        view = panel_data.range_view(base, path, low, high, include_high=last)
        ctx.ops.set_view(view)
        self._say(ctx, f"Showing {path} in [{float(low):.6g}, {float(high):.6g}"
                       f"{']' if last else ')'}: {view.count()} samples")

    def _show_count(self, ctx, which: str) -> None:
        src, _ = self._source(ctx)
        view = panel_data.counts_view(self._base_view(ctx), src.field, which)
        ctx.ops.set_view(view)
        self._say(ctx, f"Showing the {which.replace('errors', 'failed')} samples")

    def _show_extremes(self, ctx, worst: bool) -> None:
        _, path = self._source(ctx)
        n = ctx.panel.state.n or DEFAULT_N
        view = panel_data.extremes(self._base_view(ctx), path, n, worst)
        ctx.ops.set_view(view)
        self._say(ctx, f"Showing the {int(float(n))} {'lowest' if worst else 'highest'} "
                       f"'{path}' scores")

    def _base_view(self, ctx):
        """The view the panel's own selections narrow: the user's view before the first one
        (kept in the panel state, so repeated clicks do not narrow each other)."""
        stages = ctx.panel.state.base_view
        if stages is None:
            ctx.panel.state.base_view = ctx.view._serialize()
            return ctx.view
        return _build_view(ctx.dataset, stages)

    def _restore_view(self, ctx) -> None:
        stages = ctx.panel.state.base_view
        ctx.panel.state.base_view = None
        if stages:
            ctx.ops.set_view(_build_view(ctx.dataset, stages))
        else:
            ctx.ops.clear_view()
        self._say(ctx, "")

    def _source(self, ctx):
        src = panel_data.source(ctx.dataset, ctx.panel.state.field)
        return src, src.path(ctx.panel.state.attribute)

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
        value = ctx.panel.state.threshold
        return DEFAULT_THRESHOLD if value is None else value

    @staticmethod
    def _set_saved(ctx, entry: dict | None) -> None:
        ctx.panel.state.saved = entry and {"threshold": entry["threshold"],
                                           "reviewed": bool(entry.get("reviewed")),
                                           "saved": entry.get("saved")}

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
        return build_view(self, ctx.panel.state)


def _close(a: Any, b: Any) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return False


def _build_view(dataset, stages: Any):
    """The view the panel state describes. The state comes back from the browser, so a raw
    ``Mongo`` pipeline stage (which could write with ``$out``/``$merge``) is never run."""
    import fiftyone.core.view as fov

    if not isinstance(stages, list) or any(
            not isinstance(stage, dict) or str(stage.get("_cls", "")).endswith(".Mongo")
            for stage in stages):
        return dataset.view()
    try:
        return fov.DatasetView._build(dataset, stages)
    except Exception:  # a stale or hand-edited state: fall back to the whole dataset
        return dataset.view()
