"""Calibration in the real App: rate samples in the "Image quality" panel (a selection in the
grid, good / bad), run "Calibrate to my ratings" from the panel, see the before/after table, and
score with the new checkpoint, which the scoring form's Weights list now offers.

The synthetic user of tests/qualiclip/test_calibrate.py rates degraded photos by noise only; most
ratings are given beforehand with the panel's own function (selecting 26 tiles by hand would
only make the test slow), the last four in the browser. The App server here has its own weights
folder, so the checkpoint it writes does not reach the other browser tests' weights lists.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

from tests.app.conftest import serve_app
from tests.qualiclip_plugin.test_calibration import stars_by_noise
from tests.synthetic import degraded_set

N_PHOTOS = 30
CHECKPOINT = "calibrated/noise-taste.pth"


@pytest.fixture(scope="module")
def calibration_server(browser_requirements, plugin_link, tiny_checkpoint,  # noqa: F811
                       tmp_path_factory):
    """An App server whose weights folder holds the tiny checkpoint and nothing else."""
    folder = tmp_path_factory.mktemp("calibration_weights")
    shutil.copyfile(tiny_checkpoint, folder / "tiny.pth")
    # One intra-op thread, as the calibration tests run in-process: the fits' small matrix
    # products only wait for each other on 2 shared cores (tests/qualiclip/test_calibrate.py).
    yield from serve_app(tmp_path_factory.mktemp("calibration_server"), folder,
                         OMP_NUM_THREADS="1")


@pytest.fixture()
def rated_dataset(tmp_path):
    """30 degraded photos: the 2 noisiest first, then the 2 least noisy (rated in the
    browser), then the rest, rated 1-5 by noise with the panel's function."""
    import fiftyone as fo

    from qualiclip_plugin.calibration import ratings

    photos = degraded_set(tmp_path / "photos", N_PHOTOS, seed=7)
    order = sorted(range(N_PHOTOS), key=lambda i: -photos[i][1])
    order = [*order[:2], *order[-2:], *order[2:-2]]
    photos = [photos[i] for i in order]
    dataset = fo.Dataset(f"qualiclip-app-calib-{uuid.uuid4().hex[:10]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p, _, _ in photos])
    ids, stars = dataset.values("id"), stars_by_noise(photos)
    for value in set(stars[4:]):
        chosen = [sid for sid, s in zip(ids[4:], stars[4:]) if s == value]
        ratings.rate(dataset, dataset.select(chosen), "quality_rating", value)
    yield dataset, photos
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def _select_tile(app, index: int) -> None:
    """Tick the selection checkbox of the ``index``-th grid tile (shown on hover)."""
    tile = app.grid_tiles().nth(index)
    tile.hover()
    # The input itself is hidden under its styled box: click the box, as a user does.
    tile.locator("input[type=checkbox]").first.locator("xpath=..").click()


def test_rate_in_panel_calibrate_then_score_with_the_result(browser, calibration_server,
                                                            rated_dataset, tmp_path):
    from playwright.sync_api import expect

    from qualiclip import load_model
    from qualiclip.scoring import score_images
    from tests.app.app_ui import QUALITY_PANEL, AppUI

    dataset, photos = rated_dataset
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_init_script("window.IS_PLAYWRIGHT = true;")
    app = AppUI(context.new_page(), calibration_server, shots_dir=tmp_path / "screenshots")
    try:
        app.open_dataset(dataset.name)
        panel = app.quality_panel()
        with app.step("open the Image quality panel: 26 ratings, no scores yet"):
            app.page.locator("[data-cy=new-panel-btn]").first.click()
            app.page.locator(f"[data-cy=new-panel-option-{QUALITY_PANEL}]").click()
            expect(panel).to_contain_text("Ratings: 26 in 'quality_rating'", timeout=60_000)

        with app.step("select the two noisiest photos in the grid and rate them Bad"):
            _select_tile(app, 0)
            _select_tile(app, 1)
            expect(panel).to_contain_text("Selected samples (2)", timeout=30_000)
            app.panel_button("Bad").click()
            expect(panel).to_contain_text("Rated 2 samples bad", timeout=30_000)
            expect(panel).to_contain_text("Ratings: 28 in", timeout=30_000)

        with app.step("select the two cleanest instead, rate Good, clear one and rate again"):
            for index in (0, 1, 2, 3):  # untick the first two, tick the next two
                _select_tile(app, index)
            expect(panel).to_contain_text("Selected samples (2)", timeout=30_000)
            app.panel_button("Good").click()
            expect(panel).to_contain_text("Ratings: 30 in", timeout=30_000)
            app.panel_button("Clear rating").click()
            expect(panel).to_contain_text("Cleared the ratings of 2 samples", timeout=30_000)
            expect(panel).to_contain_text("Ratings: 28 in", timeout=30_000)
            app.panel_button("Good").click()
            expect(panel).to_contain_text("Ratings: 30 in", timeout=30_000)
        dataset.reload()
        assert dataset.values("quality_rating")[:4] == [1.0, 1.0, 5.0, 5.0]

        with app.step("'Calibrate to my ratings' opens its form; run it with few steps"):
            app.panel_button("Calibrate to my ratings").click()
            expect(app.form()).to_be_visible(timeout=30_000)
            expect(app.form()).to_contain_text("30 ratings in 'quality_rating'")
            app.choose("Base weights", "tiny.pth")
            app.fill("Checkpoint name", "noise-taste")
            app.fill("Steps per fit", "60")
            app.page.wait_for_timeout(1000)  # the form re-checks the values
            expect(app.error_box()).to_have_count(0)
            app.execute_button().click()
            result = app.page.locator(".MuiDialog-paper, [role=dialog]").filter(
                has_text="Calibration beats the base model")
            expect(result).to_be_visible(timeout=180_000)
            expect(result).to_contain_text("held-out")
            expect(result).to_contain_text(CHECKPOINT)
            expect(result.locator("table")).to_have_count(1)
            expect(result.locator("table tr")).to_have_count(1 + 5 + 1)
            result.get_by_role("button", name="Done").click()
            expect(result).to_have_count(0)
        written = calibration_server.weights_dir / CHECKPOINT
        assert written.is_file()

        with app.step("untick the selection: the scoring target is the whole dataset"):
            for index in (2, 3):
                _select_tile(app, index)
            expect(panel).to_contain_text("Selected samples (0)", timeout=30_000)
        app.open_operator()
        with app.step("the scoring form offers the new checkpoint; score with it"):
            assert f"{CHECKPOINT} (checkpoint)" in app.weights_choices()
            app.choose_weights(CHECKPOINT)
            app.choose("Precision", "fp32")
            expect(app.error_box()).to_have_count(0)
            summary = app.run_and_wait()
            expect(summary).to_contain_text(
                re.compile(rf"Scored in this run:\s*{N_PHOTOS}(?!\d)"))
    finally:
        context.close()

    dataset.reload()
    paths = dataset.values("filepath")
    expected = {r.path: r.score for r in score_images(
        paths, model=load_model(written, device="cpu"), precision="fp32", progress=False)}
    assert dataset.values("quality") == pytest.approx([expected[p] for p in paths], abs=1e-5)
    assert Path(dataset.get_run_info("qualiclip_quality").config.weights_name).name == \
        Path(CHECKPOINT).name
