"""The "Image quality" panel's state in the real App: switching the score field between fields
with and without a saved threshold settles (the panel's operator calls stop), the histogram
stays clickable with no saved threshold, and "Back to my view" restores the user's view
exactly (the grid's own sort is not stacked into the view bar)."""

from __future__ import annotations

import json
import time

import pytest

#: After a change the panel may make a few operator calls (the event, and the App's context
#: events after each redraw: seen 6-9), all within SETTLE_S; then none for WATCH_S. The loop
#: this guards against made ~2 calls per second for as long as the page was open.
SETTLE_S = 8.0
WATCH_S = 6.0
MAX_CALLS = 20


@pytest.fixture()
def two_fields(app_dataset, tiny_checkpoint):
    """The App dataset scored into ``quality`` (with a saved threshold) and ``sharpness``
    (none saved)."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data

    dataset, _ = app_dataset
    for field in ("quality", "sharpness"):
        compute_image_quality(dataset, field=field, weights=str(tiny_checkpoint), device="cpu",
                              precision="fp32")
    scores = sorted(dataset.values("quality"))
    threshold = round((scores[2] + scores[3]) / 2, 6)
    panel_data.save_threshold(dataset, panel_data.source(dataset, "quality"), "quality",
                              threshold)
    return dataset, threshold


class PanelCalls:
    """The panel's operator calls the page makes (``/operators/execute`` requests naming the
    panel's URI), with the event method each one runs."""

    def __init__(self, page):
        self.calls: list[tuple[float, str]] = []
        self.bodies: list[tuple[float, str, dict]] = []
        page.on("request", self._seen)

    def _seen(self, request) -> None:
        if "/operators/execute" not in request.url or request.method != "POST":
            return
        try:
            body = json.loads(request.post_data or "{}")
        except ValueError:
            return
        params = body.get("params") or {}
        if "image_quality" in str(body.get("operator_uri", "")):
            state = params.get("panel_state") or {}
            what = (f"{params.get('__method__')}({params.get('path', '')}="
                    f"{params.get('value', '')!r}; current {state.get('current')})")
            self.calls.append((time.time(), what))
            self.bodies.append((time.time(), what, body))

    def since(self, t0: float) -> list[str]:
        return [method for t, method in self.calls if t >= t0]


def _choose_panel_field(app, label: str, value: str) -> None:
    from playwright.sync_api import expect

    row = app.quality_panel().locator(
        f"xpath=.//p[normalize-space(text())='{label}']"
        "/ancestor::div[.//*[@role='combobox']][1]").first
    row.locator(".MuiSelect-select, [role=combobox]").first.click()
    option = app.page.get_by_role("option").filter(has_text=value)
    option.first.click()
    expect(row).to_contain_text(value)


def _settles(app, calls: PanelCalls, since: float, what: str) -> None:
    """After ``what`` (at ``since``), the panel's calls stop: none in ``WATCH_S`` seconds once
    ``SETTLE_S`` have passed, and at most ``MAX_CALLS`` in all."""
    app.page.wait_for_timeout(max(0.0, since + SETTLE_S - time.time()) * 1000)
    t0 = time.time()
    app.page.wait_for_timeout(WATCH_S * 1000)
    after, made = calls.since(t0), calls.since(since)
    assert not after and len(made) <= MAX_CALLS, (
        f"the panel made {len(made)} operator calls after {what} and {len(after)} in the "
        f"{WATCH_S} s after the first {SETTLE_S} s: {made}")


def test_switching_fields_settles(app, two_fields):
    from playwright.sync_api import expect

    dataset, threshold = two_fields
    calls = PanelCalls(app.page)
    app.open_dataset(dataset.name)
    opened = time.time()
    panel = app.open_quality_panel()
    with app.step("the panel opens on 'quality' with its saved threshold and settles"):
        expect(panel).to_contain_text(f"Saved threshold {threshold:.6g}", timeout=30_000)
        _settles(app, calls, opened, "opening the panel")
    for field, saved in (("sharpness", False), ("quality", True), ("sharpness", False)):
        with app.step(f"switching to '{field}' settles"):
            since = time.time()
            _choose_panel_field(app, "Score field", field)
            expected = f"Saved threshold {threshold:.6g}" if saved else \
                "No saved threshold for this score"
            expect(panel).to_contain_text(expected, timeout=30_000)
            _settles(app, calls, since, f"switching to '{field}'")


def test_histogram_clickable_without_saved_threshold_and_back_restores_the_view(app,
                                                                                 two_fields):
    """'sharpness' has no saved threshold: its default comes from the data, so the bars keep
    their width and a clicked bar shows its samples; "Back to my view" then restores the
    user's own view (the saved view 'mine', the grid sorted by the App) exactly: the next
    panel request carries that view and no stage the panel or the grid's sort added."""
    from playwright.sync_api import expect

    from qualiclip_plugin.panel import data as panel_data

    dataset, _ = two_fields
    users = dataset.limit(7)
    dataset.save_view("mine", users)
    hist = panel_data.histogram(users, "sharpness")
    fullest = max(range(len(hist["counts"])), key=hist["counts"].__getitem__)
    assert 0 < hist["counts"][fullest] < len(users)

    calls = PanelCalls(app.page)
    with app.step("open the user's saved view 'mine' (7 samples), sorted by the grid"):
        app.page.goto(f"{app.server.url}/datasets/{dataset.name}?view=mine")
        expect(app.grid_tiles()).to_have_count(7, timeout=90_000)
        app.sort_grid_by("sharpness")
    panel = app.open_quality_panel()
    with app.step("switch to 'sharpness' (no saved threshold)"):
        _choose_panel_field(app, "Score field", "sharpness")
        expect(panel).to_contain_text("No saved threshold for this score", timeout=30_000)
        expect(panel).to_contain_text("of 7 scored samples in the view are below",
                                      timeout=30_000)
    with app.step("the bars span the axis, and clicking the fullest shows its samples"):
        axis = app.histogram().evaluate("gd => gd._fullLayout.xaxis.range")
        edges = hist["edges"]
        assert axis[1] - axis[0] < 1.5 * (edges[-1] - edges[0]), (axis, edges)
        app.click_histogram_bin(edges[fullest], edges[fullest + 1], hist["counts"][fullest])
        expect(app.grid_tiles()).to_have_count(hist["counts"][fullest], timeout=30_000)
    with app.step("'Worst N' narrows again, then 'Back to my view' restores 'mine' exactly"):
        app.panel_button("Worst N").click()
        expect(panel).to_contain_text("lowest 'sharpness' scores", timeout=30_000)
        app.panel_button("Back to my view").click()
        expect(app.grid_tiles()).to_have_count(7, timeout=30_000)
        app.page.wait_for_timeout(2000)
        t0 = time.time()
        app.panel_button("Refresh").click()
        app.page.wait_for_timeout(2000)
        (body,) = [b for t, _, b in calls.bodies if t >= t0
                   and (b.get("params") or {}).get("__method__") == "refresh"]
        assert body.get("view_name") == "mine", body.get("view_name")
        # the App sends a saved view's own stages with its name: exactly those, no SortBy
        strip = [{k: v for k, v in st.items() if k != "_uuid"} for st in body.get("view")]
        assert strip == users._serialize(include_uuids=False), body.get("view")
