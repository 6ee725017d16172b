"""The "Image quality" panel: a score histogram of the current view and what to do with it.

The panel translates App events into calls of :mod:`.panel_data` and App operations
(``set_view``, ``prompt``); it computes nothing itself. Every value the App sends (field,
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

logger = logging.getLogger(__name__)

PANEL_NAME = "image_quality"
PANEL_LABEL = "Image quality"
ICON = "/assets/icon.svg"
DEFAULT_N = 20
DEFAULT_THRESHOLD = 0.5
SCOPES = ("view", "selected")


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
            from qualiclip_plugin import panel_data

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
            from qualiclip_plugin import panel_data

            src, path = self._source(ctx)
            entry = panel_data.save_threshold(ctx.dataset, src, path, self._threshold(ctx))
            self._set_saved(ctx, entry)
            self._say(ctx, f"Saved threshold {entry['threshold']:.6g} for '{path}'")
        self._guarded(ctx, save)

    def reset_threshold(self, ctx) -> None:
        def reset(ctx):
            from qualiclip_plugin import panel_data

            _, path = self._source(ctx)
            panel_data.reset_threshold(ctx.dataset, path)
            self._set_saved(ctx, None)
            ctx.panel.state.threshold = DEFAULT_THRESHOLD
            self._refresh(ctx)
            self._say(ctx, f"Threshold of '{path}' reset")
        self._guarded(ctx, reset)

    def toggle_reviewed(self, ctx) -> None:
        def toggle(ctx):
            from qualiclip_plugin import panel_data

            src, path = self._source(ctx)
            entry = panel_data.saved_threshold(ctx.dataset, src, path) or {}
            entry = panel_data.set_reviewed(ctx.dataset, src, path, not entry.get("reviewed"))
            self._set_saved(ctx, entry)
        self._guarded(ctx, toggle)

    def tag_below(self, ctx) -> None:
        def tag(ctx):
            from qualiclip_plugin import panel_data

            src, path = self._source(ctx)
            tag = panel_data.panel_tag(ctx.dataset, src)
            threshold = panel_data.check_threshold(self._threshold(ctx))
            count = panel_data.tag_below(ctx.dataset, self._scope(ctx), path, threshold, tag)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Tagged {count} samples below {threshold:.6g} with '{tag}'")
        self._guarded(ctx, tag)

    def untag(self, ctx) -> None:
        def remove(ctx):
            from qualiclip_plugin import panel_data

            src, _ = self._source(ctx)
            tag = panel_data.panel_tag(ctx.dataset, src)
            count = panel_data.untag(self._scope(ctx), tag)
            ctx.ops.reload_dataset()
            self._say(ctx, f"Removed '{tag}' from {count} samples")
        self._guarded(ctx, remove)

    def score_unscored(self, ctx) -> None:
        """Open the scoring form for the current view, resuming (overwrite off); delegated by
        default when more samples are unscored than an immediate run takes."""
        from qualiclip_plugin.request import DEFAULT_FIELD, IMMEDIATE_MAX_SAMPLES

        field = ctx.panel.state.field or DEFAULT_FIELD
        unscored = ctx.panel.state.unscored or 0
        ctx.prompt(OPERATOR_URI, params={"field": field, "overwrite": False,
                                         "delegate": unscored > IMMEDIATE_MAX_SAMPLES},
                   on_success=self.on_scored)

    def on_scored(self, ctx) -> None:
        self._guarded(ctx, self._refresh, reload_threshold=True)

    # --- work ----------------------------------------------------------------------------------
    def _refresh(self, ctx, reload_threshold: bool = False) -> None:
        from qualiclip_plugin import panel_data

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
        ctx.panel.data.histogram = _bars(hist) if hist else []
        try:
            state.below = panel_data.below(ctx.view, path, state.threshold).count()
        except panel_data.PanelError:
            state.below = None

    def _show_range(self, ctx, low: Any, high: Any) -> None:
        from qualiclip_plugin import panel_data

        _, path = self._source(ctx)
        edges = ctx.panel.state.edges or []
        last = bool(edges) and _close(high, edges[-1])
        base = self._base_view(ctx)
        view = panel_data.range_view(base, path, low, high, include_high=last)
        ctx.ops.set_view(view)
        self._say(ctx, f"Showing {path} in [{float(low):.6g}, {float(high):.6g}"
                       f"{']' if last else ')'}: {view.count()} samples")

    def _show_count(self, ctx, which: str) -> None:
        from qualiclip_plugin import panel_data

        src, _ = self._source(ctx)
        view = panel_data.counts_view(self._base_view(ctx), src.field, which)
        ctx.ops.set_view(view)
        self._say(ctx, f"Showing the {which.replace('errors', 'failed')} samples")

    def _show_extremes(self, ctx, worst: bool) -> None:
        from qualiclip_plugin import panel_data

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
        from qualiclip_plugin import panel_data

        src = panel_data.source(ctx.dataset, ctx.panel.state.field)
        return src, src.path(ctx.panel.state.attribute)

    def _scope(self, ctx):
        scope = ctx.panel.state.scope or "view"
        if scope == "selected":
            if not ctx.selected:
                from qualiclip_plugin.panel_data import PanelError

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
        from qualiclip_plugin.panel_data import PanelError

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
        state = ctx.panel.state
        panel = types.Object()
        fields = state.fields or []
        if fields:
            # Inputs sit at the top level: their values are the panel state of the same name.
            panel.enum("field", fields, default=state.field, label="Score field",
                       view=types.DropdownView(), on_change=self.on_change_field)
            panel.enum("attribute", state.attributes or [], default=state.attribute,
                       label="Score (overall or one attribute)", view=types.DropdownView(),
                       on_change=self.on_change_attribute)
            panel.plot("histogram", layout=_layout(state), config={"displayModeBar": False},
                       on_click=self.on_bar_click, on_selected=self.on_bars_selected,
                       height=280, space=4)
            count = panel.h_stack("counts", align_x="left", gap=1)
            count.btn("scored", label=f"Scored: {state.scored or 0}",
                      on_click=self.show_scored, variant="outlined")
            count.btn("unscored", label=f"Not scored: {state.unscored or 0}",
                      on_click=self.show_unscored, variant="outlined")
            count.btn("errors", label=f"Errors: {state.errors or 0}",
                      on_click=self.show_errors, variant="outlined")
            panel.int("n", default=state.n or DEFAULT_N, min=1, max=1000,
                      label="N (worst / best)")
            ranks = panel.h_stack("ranks", align_x="left", gap=1)
            ranks.btn("worst", label="Worst N", on_click=self.show_worst, variant="outlined")
            ranks.btn("best", label="Best N", on_click=self.show_best, variant="outlined")
            ranks.btn("back", label="Back to my view", on_click=self.back_to_view,
                      variant="outlined")
            threshold = state.threshold if state.threshold is not None else DEFAULT_THRESHOLD
            low, high = _slider_range(state.edges or [], threshold)
            panel.float("threshold", default=threshold, min=low, max=high, label="Threshold",
                        view=types.SliderView(data=threshold, step=(high - low) / 200),
                        on_change=self.on_change_threshold)
            below = "?" if state.below is None else state.below
            panel.md(f"{below} of {state.scored or 0} scored samples in the view are below "
                     f"{threshold:.6g}", name="below_text")
            saved = panel.h_stack("saved_row", align_x="left", gap=1)
            saved.btn("save", label="Save threshold", on_click=self.save_threshold,
                      variant="contained")
            saved.btn("reset", label="Reset", on_click=self.reset_threshold,
                      variant="outlined")
            reviewed = bool(state.saved and state.saved.get("reviewed"))
            saved.btn("reviewed", label="Reviewed ✓" if reviewed else "Mark reviewed",
                      on_click=self.toggle_reviewed, variant="outlined")
            panel.md(_saved_text(state), name="saved_text")
            scope = types.RadioGroup(orientation="horizontal")
            scope.add_choice("view", label="Current view")
            scope.add_choice("selected",
                             label=f"Selected samples ({state.selected_count or 0})")
            panel.enum("scope", list(SCOPES), default=state.scope or "view", view=scope,
                       label="Tag or untag")
            tags = panel.h_stack("tags", align_x="left", gap=1)
            tags.btn("tag_below", label="Tag below threshold", on_click=self.tag_below,
                     variant="contained")
            tags.btn("untag", label="Untag", on_click=self.untag, variant="outlined")
        panel.btn("score_unscored", label="Score unscored samples",
                  on_click=self.score_unscored, variant="outlined")
        if state.message:
            panel.md(state.message, name="message")
        return types.Property(panel, view=types.GridView(orientation="vertical", gap=2,
                                                         padding=2))


def _bars(hist: dict[str, list]) -> list[dict[str, Any]]:
    edges, counts = hist["edges"], hist["counts"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    return [{"type": "bar", "name": "scores", "x": edges[:-1], "y": counts, "width": widths,
             "offset": 0, "marker": {"color": "rgb(255, 109, 5)"},
             "hovertemplate": "%{x:.4g}: %{y} samples<extra></extra>"}]


def _layout(state) -> dict[str, Any]:
    threshold = state.threshold if state.threshold is not None else DEFAULT_THRESHOLD
    path = state.field if state.attribute in (None, "overall") else \
        f"{state.field}_{state.attribute}"
    return {"xaxis": {"title": {"text": f"{path} ({state.total or 0} samples in the view)"}},
            "yaxis": {"title": {"text": "samples"}}, "bargap": 0.05, "dragmode": "select",
            "margin": {"t": 8, "l": 40, "b": 40, "r": 8},
            "shapes": [{"type": "line", "x0": threshold, "x1": threshold, "y0": 0, "y1": 1,
                        "yref": "paper", "line": {"color": "#d62728", "width": 2}}]}


def _slider_range(edges: list[float], threshold: float) -> tuple[float, float]:
    """The slider spans the view's scores (and the threshold), not all of [0, 1]: scores of
    one dataset often sit in a narrow band."""
    if not edges:
        return 0.0, 1.0
    low, high = min(edges[0], threshold), max(edges[-1], threshold)
    pad = (high - low) * 0.02 or 0.01
    return max(0.0, low - pad), min(1.0, high + pad)


def _saved_text(state) -> str:
    saved = state.saved
    if not saved:
        return "No saved threshold for this score."
    status = "reviewed" if saved.get("reviewed") else "not reviewed yet"
    return (f"Saved threshold **{saved['threshold']:.6g}** ({status}; saved "
            f"{saved.get('saved')})")


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
