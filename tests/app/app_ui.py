"""What a user does in the FiftyOne App (1.22), as Playwright steps: one place for the selectors.

Every step runs inside :meth:`AppUI.step`, which turns a failure (assertion or Playwright
timeout) into an ``AssertionError`` naming the step, with a screenshot of the page and the tail
of the App server's log in the message.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import Locator, Page, expect

OPERATOR_LABEL = "Compute image quality (QualiCLIP)"
#: The panel's name (``PanelConfig.name``): the App's "New panel" menu item is keyed by it.
QUALITY_PANEL = "image_quality"
#: How long one immediate run may take in the App (the first one loads torch in the server).
RUN_TIMEOUT_MS = 180_000


def shrink_screenshot(path: Path, width: int) -> None:
    """Make a README screenshot light: at most ``width`` px wide, 128 colours, optimised PNG."""
    from PIL import Image

    shot = Image.open(path).convert("RGB")
    if shot.width > width:
        shot = shot.resize((width, round(shot.height * width / shot.width)), Image.LANCZOS)
    shot.quantize(128).save(path, optimize=True)


class AppUI:
    def __init__(self, page: Page, server, shots_dir: Path):
        self.page = page
        self.server = server
        self.shots_dir = shots_dir
        page.set_default_timeout(30_000)
        self._shots = 0

    # --- diagnostics -------------------------------------------------------------------------
    def screenshot(self, name: str) -> Path:
        self.shots_dir.mkdir(parents=True, exist_ok=True)
        self._shots += 1
        path = self.shots_dir / f"{self._shots:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
        try:
            self.page.screenshot(path=str(path))
        except PlaywrightError as exc:  # a dead page still gets its message
            return Path(f"(screenshot failed: {exc})")
        return path

    @contextlib.contextmanager
    def step(self, name: str):
        """Run a step; on failure raise an AssertionError with a screenshot path and server log."""
        try:
            yield
        except (AssertionError, PlaywrightError) as exc:
            shot = self.screenshot(name)
            raise AssertionError(
                f"App step failed: {name}\n{exc}\nscreenshot: {shot}\n"
                f"App server log (tail):\n{self.server.log_tail(2000)}") from exc

    # --- navigation --------------------------------------------------------------------------
    def open_dataset(self, name: str) -> None:
        with self.step(f"open the dataset page of {name!r}"):
            self.page.goto(f"{self.server.url}/datasets/{name}")
            expect(self.page.locator("[data-cy=looker]").first).to_be_visible(timeout=90_000)
            expect(self.page.get_by_title("Sort by")).to_be_visible()
            # The "Accelerate your workflow" Enterprise card would cover the grid's top-right
            # corner; window.IS_PLAYWRIGHT (set by the `app` fixture) keeps it away. Just in case:
            dismiss = self.page.get_by_role("button", name="Dismiss")
            if dismiss.is_visible():
                dismiss.click()

    def open_operator(self, label: str = OPERATOR_LABEL) -> Locator:
        """Open the operator browser with the backtick key, search and choose ``label``.

        Returns the form dialog (the one containing the Execute button).
        """
        with self.step(f"open {label!r} from the operator browser"):
            self.page.locator("body").press("Backquote")
            search = self.page.get_by_placeholder("Search operations by name...")
            expect(search).to_be_visible()
            search.fill("image quality")
            self.page.get_by_text(label, exact=True).click()
            dialog = self.form()
            expect(dialog).to_be_visible()
            expect(self.form_field("Weights")).to_be_visible()
            return dialog

    # --- the operator form -------------------------------------------------------------------
    def form(self) -> Locator:
        return self.page.locator(".MuiDialog-paper, [role=dialog]").filter(
            has=self.page.get_by_role("button", name="Execute")).last

    def form_field(self, label: str) -> Locator:
        """The form row of the property labelled ``label`` (label text exactly)."""
        return self.page.locator(
            f"xpath=//p[normalize-space(text())='{label}']"
            "/ancestor::div[contains(@class,'MuiGrid-item')][1]").first

    def execute_button(self) -> Locator:
        return self.page.get_by_role("button", name="Execute", exact=True)

    def error_box(self) -> Locator:
        """FiftyOne's inline form error (``types.Error``): an alert titled "Cannot run"."""
        return self.form().get_by_role("alert").filter(has_text="Cannot run")

    def weights_is_dropdown(self) -> bool:
        field = self.form_field("Weights")
        return field.locator("input.MuiSelect-nativeInput, [role=combobox]").count() > 0

    def weights_choices(self) -> list[str]:
        """The labels the Weights dropdown offers (opens and closes it)."""
        field = self.form_field("Weights")
        field.locator(".MuiSelect-select, [role=combobox]").first.click()
        options = self.page.get_by_role("option")
        expect(options.first).to_be_visible()
        labels = [t.strip() for t in options.all_inner_texts()]
        self.page.keyboard.press("Escape")
        expect(options).to_have_count(0)
        return labels

    def choose_weights(self, name: str) -> None:
        """Pick the choice whose label contains ``name`` in the Weights dropdown."""
        assert self.weights_is_dropdown(), "the Weights input is not a dropdown"
        self.choose("Weights", name)

    def choose(self, label: str, name: str) -> None:
        """Pick the choice whose label contains ``name`` in the dropdown labelled ``label``."""
        field = self.form_field(label)
        field.locator(".MuiSelect-select, [role=combobox]").first.click()
        option = self.page.get_by_role("option").filter(has_text=name)
        expect(option.first, f"no {label} choice mentions {name!r}").to_be_visible()
        option.first.click()
        expect(field).to_contain_text(name)

    def fill(self, label: str, value: str) -> None:
        self.form_field(label).locator("input").fill(value)

    def run_and_wait(self) -> Locator:
        """Press Execute and wait for the run's summary dialog (returned, still open)."""
        expect(self.execute_button()).to_be_enabled()
        self.execute_button().click()
        summary = self.page.locator(".MuiDialog-paper, [role=dialog]").filter(
            has_text="Scored in this run")
        expect(summary).to_be_visible(timeout=RUN_TIMEOUT_MS)
        return summary

    # --- sidebar and grid --------------------------------------------------------------------
    def sidebar_entry(self, field: str) -> Locator:
        return self.page.get_by_title(f"Show {field}", exact=True)

    def show_in_grid(self, field: str) -> None:
        """Tick a sidebar field so each grid tile shows its value."""
        self.sidebar_entry(field).click()

    def grid_texts(self) -> list[str]:
        """Each grid tile's text, in reading order (top to bottom, left to right)."""
        tiles = self.page.locator("[data-cy=looker]").evaluate_all(
            """els => els.map(e => { const r = e.getBoundingClientRect();
                   return [Math.round(r.top), Math.round(r.left), e.innerText]; })""")
        return [text for _, _, text in sorted(tiles)]

    def sort_grid_by(self, field: str) -> None:
        """The grid's "Sort by" control (App 1.x; offers indexed fields): choose ``field``."""
        self.page.get_by_title("Sort by").click()
        option = self.page.locator(f"[data-cy='selector-result-{field}']")
        expect(option, f"{field!r} is not offered by the grid's Sort by (it lists indexed fields "
                       "only)").to_be_visible()
        option.click()
        expect(self.page.locator("[data-cy='selector-Sort by']")).to_have_value(field)

    def toggle_sort_direction(self, now: str) -> None:
        """Click the Ascending/Descending toggle next to "Sort by"; ``now`` is its title now."""
        self.page.get_by_title(now, exact=True).click()

    # --- the "Image quality" panel -----------------------------------------------------------
    def open_quality_panel(self) -> Locator:
        """Open the plugin's panel from the grid's "New panel" (+) menu; returns its container
        once the histogram is drawn."""
        with self.step("open the Image quality panel"):
            self.page.locator("[data-cy=new-panel-btn]").first.click()
            self.page.locator(f"[data-cy=new-panel-option-{QUALITY_PANEL}]").click()
            panel = self.quality_panel()
            plot = panel.locator(".js-plotly-plot").first
            expect(plot).to_be_visible(timeout=60_000)
            plot.evaluate("gd => new Promise((ok, fail) => { const t0 = Date.now(); (function "
                          "wait() { if (gd.data && gd.data.length && gd._fullLayout) ok(); "
                          "else if (Date.now() - t0 > 30000) fail('no histogram data'); "
                          "else setTimeout(wait, 100); })(); })")
            return panel

    def quality_panel(self) -> Locator:
        return self.page.locator(f"[data-cy=panel-content-{QUALITY_PANEL}]")

    def panel_button(self, label: str) -> Locator:
        return self.quality_panel().get_by_role("button", name=label)

    def histogram(self) -> Locator:
        return self.quality_panel().locator(".js-plotly-plot").first

    def click_histogram_bin(self, low: float, high: float, count: int) -> None:
        """Click the bar of the bin ``[low, high)`` holding ``count`` samples where a user
        would: Plotly reads clicks from its drag layer above the bars, so the mouse goes to the
        page point of the bar's middle (from the plot's own axes)."""
        x, y = self.histogram().evaluate(
            """(gd, [x, y]) => { const L = gd._fullLayout, r = gd.getBoundingClientRect();
                 return [r.left + L._size.l + L.xaxis.l2p(x),
                         r.top + L._size.t + L.yaxis.l2p(y)]; }""",
            [(low + high) / 2, count / 2])
        self.page.mouse.click(x, y)

    def grid_tiles(self) -> Locator:
        return self.page.locator("[data-cy=looker]")
