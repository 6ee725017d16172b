"""The "Image quality" panel's view: the types tree the App draws from the panel state (score
field and attribute, histogram, counts, worst / best, threshold, tagging, messages) and the
Plotly figure of the histogram.

Everything here is a pure function of the panel state; the inputs and buttons call the event
handlers of the :class:`~qualiclip_plugin.panel.ImageQualityPanel` passed in. Top-level imports
are FiftyOne's operator types only: this module is imported when the App starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import fiftyone.operators.types as types

from qualiclip_plugin.calibration.panel import rating_section
from qualiclip_plugin.panel.state import Selection, input_name

if TYPE_CHECKING:
    from qualiclip_plugin.panel.operator import ImageQualityPanel

DEFAULT_N = 20
SCOPES = ("view", "selected")
#: The slider moves in steps no coarser than this fraction of the scores' spread.
SLIDER_STEPS = 200


def build_view(handlers: ImageQualityPanel, state, current: Selection) -> types.Property:
    """The panel's types tree for ``state`` (``ctx.panel.state``) and the ``current``
    selection (:func:`.state.load`); the histogram's data is ``ctx.panel.data.histogram``
    (:func:`histogram_bars`)."""
    panel = types.Object()
    fields = state.fields or []
    if fields:
        # Inputs sit at the top level, named after the selection they are drawn for: their
        # values are the panel state of that name, which the panel's settle step writes
        # (panel/state.py).
        panel.enum(input_name(current, "field"), fields, default=current.field,
                   label="Score field", view=types.DropdownView(),
                   on_change=handlers.on_change_field)
        panel.enum(input_name(current, "attribute"), state.attributes or [],
                   default=current.attribute,
                   label="Per-video score (overall: mean of the scored frames; p10; min)"
                   if state.video else "Score (overall or one attribute)",
                   view=types.DropdownView(),
                   on_change=handlers.on_change_attribute)
        panel.plot("histogram", layout=_layout(state, current), config={"displayModeBar": False},
                   on_click=handlers.on_bar_click, on_selected=handlers.on_bars_selected,
                   height=280, space=4)
        count = panel.h_stack("counts", align_x="left", gap=1)
        count.btn("scored", label=f"Scored: {state.scored or 0}",
                  on_click=handlers.show_scored, variant="outlined")
        count.btn("unscored", label=f"Not scored: {state.unscored or 0}",
                  on_click=handlers.show_unscored, variant="outlined")
        count.btn("errors", label=f"Errors: {state.errors or 0}",
                  on_click=handlers.show_errors, variant="outlined")
        panel.int("n", default=state.n or DEFAULT_N, min=1, max=1000,
                  label="N (worst / best)")
        ranks = panel.h_stack("ranks", align_x="left", gap=1)
        ranks.btn("worst", label="Worst N", on_click=handlers.show_worst, variant="outlined")
        ranks.btn("best", label="Best N", on_click=handlers.show_best, variant="outlined")
        if state.video:
            ranks.btn("segments", label="Worst segments", on_click=handlers.show_segments,
                      variant="outlined")
        ranks.btn("back", label="Back to my view", on_click=handlers.back_to_view,
                  variant="outlined")
        if current.threshold is not None:
            # Only once the panel settled one (saved, else from the data): the App reports a
            # slider's first value as a change, so no stand-in value is ever drawn.
            _threshold_slider(panel, handlers, state, current)
        saved = panel.h_stack("saved_row", align_x="left", gap=1)
        saved.btn("save", label="Save threshold", on_click=handlers.save_threshold,
                  variant="contained")
        saved.btn("reset", label="Reset", on_click=handlers.reset_threshold,
                  variant="outlined")
        reviewed = bool(state.saved and state.saved.get("reviewed"))
        saved.btn("reviewed", label="Reviewed ✓" if reviewed else "Mark reviewed",
                  on_click=handlers.toggle_reviewed, variant="outlined")
        panel.md(_saved_text(state), name="saved_text")
        scope = types.RadioGroup(orientation="horizontal")
        scope.add_choice("view", label="Current view")
        scope.add_choice("selected",
                         label=f"Selected {state.unit or 'samples'} "
                               f"({state.selected_count or 0})")
        panel.enum("scope", list(SCOPES), default=state.scope or "view", view=scope,
                   label="Tag or untag")
        tags = panel.h_stack("tags", align_x="left", gap=1)
        tags.btn("tag_below", label="Tag below threshold", on_click=handlers.tag_below,
                 variant="contained")
        tags.btn("untag", label="Untag", on_click=handlers.untag, variant="outlined")
    rating_section(panel, handlers, state)
    actions = panel.h_stack("actions", align_x="left", gap=1)
    actions.btn("score_unscored", label="Score unscored samples",
                on_click=handlers.score_unscored, variant="outlined")
    actions.btn("refresh", label="Refresh", on_click=handlers.refresh, variant="outlined")
    if state.message:
        panel.md(state.message, name="message")
    return types.Property(panel, view=types.GridView(orientation="vertical", gap=2,
                                                     padding=2))


def _threshold_slider(panel: types.Object, handlers: ImageQualityPanel, state,
                      current: Selection) -> None:
    """The threshold slider (spanning the view's scores) and the count below it; one input
    per field and attribute (:func:`.state.input_name`)."""
    threshold = current.threshold
    edges = state.edges or []
    low, high = _slider_range(edges, threshold)
    panel.float(input_name(current, "threshold"), default=threshold, min=low, max=high,
                label="Threshold",
                view=types.SliderView(data=threshold, step=_slider_step(edges, low, high)),
                on_change=handlers.on_change_threshold)
    below = "?" if state.below is None else state.below
    panel.md(f"{below} of {state.scored or 0} scored {state.unit or 'samples'} in the view are "
             "below "
             f"{threshold:.6g}", name="below_text")


def histogram_bars(hist: dict[str, list], unit: str = "samples") -> list[dict[str, Any]]:
    """The Plotly bar trace of :func:`.panel_data.histogram`'s ``{"edges", "counts"}``: one bar
    per bin, as wide as the bin; ``unit`` names what is counted (``"samples"``, ``"videos"``)."""
    edges, counts = hist["edges"], hist["counts"]
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    return [{"type": "bar", "name": "scores", "x": edges[:-1], "y": counts, "width": widths,
             "offset": 0, "marker": {"color": "rgb(255, 109, 5)"},
             "hovertemplate": f"%{{x:.4g}}: %{{y}} {unit}<extra></extra>"}]


def _layout(state, current: Selection) -> dict[str, Any]:
    path = current.field if current.attribute in (None, "overall") else \
        f"{current.field}_{current.attribute}"
    threshold = current.threshold
    shapes = [] if threshold is None else [
        {"type": "line", "x0": threshold, "x1": threshold, "y0": 0, "y1": 1, "yref": "paper",
         "line": {"color": "#d62728", "width": 2}}]
    xaxis: dict[str, Any] = {
        "title": {"text": f"{path} ({state.total or 0} {state.unit or 'samples'} in the view)",
                  "standoff": 4},
        "automargin": True}
    edges = state.edges or []
    if edges:
        # The axis spans the bars, whatever the threshold: a threshold line outside the scores
        # (a saved one after a bar click narrowed the view) must not squeeze the bars into
        # hairlines that cannot be clicked; the line is then simply off the plot.
        pad = (edges[-1] - edges[0]) * 0.02
        xaxis["range"] = [edges[0] - pad, edges[-1] + pad]
        xaxis["autorange"] = False
    # Bottom margin for the tick labels and the axis title, so the title never reaches the
    # count buttons drawn under the plot.
    return {"xaxis": xaxis,
            "yaxis": {"title": {"text": state.unit or "samples"}, "automargin": True},
            "bargap": 0.05, "dragmode": "select",
            "margin": {"t": 8, "l": 48, "b": 64, "r": 8}, "shapes": shapes}


def _slider_step(edges: list[float], low: float, high: float) -> float:
    """A step finer than the scores' spread (and than the slider's span) / SLIDER_STEPS."""
    spread = (edges[-1] - edges[0]) if len(edges) > 1 else (high - low)
    return max(min(high - low, spread or (high - low)) / SLIDER_STEPS, 1e-9)


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
