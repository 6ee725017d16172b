"""The quality report from the real App: the link after the run opens the report in a new tab,
and the App's own tab stays where the user was."""

from __future__ import annotations

import re

REPORT_LABEL = "Write quality report (QualiCLIP)"


def test_report_link_opens_a_new_tab(app, app_dataset, tiny_checkpoint):
    from playwright.sync_api import expect

    from qualiclip_plugin.api import compute_image_quality

    dataset, _ = app_dataset
    compute_image_quality(dataset, weights=str(tiny_checkpoint), device="cpu",
                          precision="fp32", pair_scores=False)
    app.open_dataset(dataset.name)
    page = app.page
    app_url = page.url

    with app.step(f"open {REPORT_LABEL!r} from the operator browser"):
        page.locator("body").press("Backquote")
        search = page.get_by_placeholder("Search operations by name...")
        expect(search).to_be_visible()
        search.fill("quality report")
        page.get_by_text(REPORT_LABEL, exact=True).click()
        # The form's first check imports the report builder (torch) in the App server.
        expect(app.form_field("Report name")).to_be_visible(timeout=90_000)
        expect(app.execute_button()).to_be_enabled(timeout=90_000)

    with app.step("execute: the result offers a link to the report"):
        app.fill("Report name", "from-the-app")
        expect(app.execute_button()).to_be_enabled()
        app.execute_button().click()
        link = page.get_by_role("link", name="Open from-the-app.html in a new tab")
        expect(link).to_be_visible(timeout=120_000)
        assert link.get_attribute("target") == "_blank"

    with app.step("the link opens the report in a new tab; the App's tab is unchanged"):
        with page.context.expect_page() as new_tab:
            link.click()
        report = new_tab.value
        # A new tab starts at about:blank: wait for the report's address, not just any load.
        expect(report).to_have_url(re.compile(r"/media\?.*from-the-app\.html"), timeout=30_000)
        expect(report.locator("body")).to_contain_text("QualiCLIP quality report")
        assert page.url == app_url
        expect(page.locator("[data-cy=looker]").first).to_be_visible()
        assert len(page.context.pages) == 2
