"""Weights the server may not fetch, in the real App: the operator's form starts on the local
checkpoint it offers, and shows the inline "Cannot run" box, with Execute disabled, for them.

The App server (``conftest.py``) runs with ``QUALICLIP_APP_DOWNLOADS=0``, an empty weights cache
and ``QUALICLIP_APP_WEIGHTS_DIRS`` naming a folder with one tiny checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.app.conftest import APP_CHECKPOINT_NAME

REFUSAL = "Weights 'qualiclip' are not available on this server"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "app_operator_form.png"


def _save_docs_screenshot(app, dialog) -> None:
    """QUALICLIP_SCREENSHOTS=1: the whole form as docs/images/app_operator_form.png (kept small).

    The page is made tall enough for the dialog to show every input without scrolling.
    """
    if os.environ.get("QUALICLIP_SCREENSHOTS") != "1":
        return
    from tests.app.app_ui import shrink_screenshot

    size = app.page.viewport_size
    app.page.set_viewport_size({"width": size["width"], "height": 1700})
    try:
        app.page.wait_for_timeout(500)  # let the dialog grow
        dialog.screenshot(path=str(SCREENSHOT))
    finally:
        app.page.set_viewport_size(size)
    shrink_screenshot(SCREENSHOT, 900)


def test_form_refuses_unavailable_weights_and_offers_the_local_checkpoint(app, app_dataset):
    """Official weights cannot be downloaded by this server: the form starts on the allowed
    checkpoint (offered by file name), so it can run; choosing the official weights shows the
    inline "Cannot run" and disables Execute; choosing the checkpoint again clears it."""
    from playwright.sync_api import expect

    dataset, _ = app_dataset
    app.open_dataset(dataset.name)
    dialog = app.open_operator()

    with app.step("the Weights input is a dropdown of the allowed weights"):
        assert app.weights_is_dropdown(), "Weights is not a dropdown"
        choices = app.weights_choices()
        assert any(c == "qualiclip" or c.startswith("qualiclip ") for c in choices), choices
        assert any(APP_CHECKPOINT_NAME in c for c in choices), choices

    with app.step("the default is the checkpoint this server can load: no refusal"):
        expect(app.form_field("Weights")).to_contain_text(APP_CHECKPOINT_NAME)
        expect(app.error_box()).to_have_count(0)
        expect(app.execute_button()).to_be_enabled()

    with app.step("unavailable official weights: inline refusal, Execute disabled"):
        app.choose_weights("qualiclip")
        error = app.error_box()
        expect(error).to_be_visible()
        expect(error).to_contain_text(REFUSAL)
        description = error.locator("p").last.inner_text().strip()
        assert description.startswith(REFUSAL), description
        expect(app.execute_button()).to_be_disabled()
        _save_docs_screenshot(app, dialog)

    with app.step("choosing the local checkpoint clears the refusal and enables Execute"):
        app.choose_weights(APP_CHECKPOINT_NAME)
        expect(app.error_box()).to_have_count(0)
        expect(app.execute_button()).to_be_enabled()
    dataset.reload()
    assert len(dataset.exists("quality")) == 0  # nothing ran
