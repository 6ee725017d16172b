"""The "Image quality" panel in the real App: histogram of a scored dataset, a clicked bar shows
its samples in the grid, "Tag below threshold" tags exactly the samples below the saved one.

The README's picture of the panel is not made here (these are random test images, which a tiny
random model scores alike) but by ``docs/make_app_screenshot.py --panel`` from real photos.
"""

from __future__ import annotations

import pytest


@pytest.fixture()
def scored_dataset(app_dataset, tiny_checkpoint):
    """The App dataset scored by the plugin (a run record, attribute scores), with a saved
    threshold between the 3rd and 4th lowest scores."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data

    dataset, reference = app_dataset
    # fp32: the same scores (so the same bins and threshold) on every CPU, bf16 or not.
    compute_image_quality(dataset, weights=str(tiny_checkpoint), device="cpu", precision="fp32")
    scores = sorted(dataset.values("quality"))
    threshold = round((scores[2] + scores[3]) / 2, 6)
    src = panel_data.source(dataset, "quality")
    panel_data.save_threshold(dataset, src, "quality", threshold)
    return dataset, threshold


def test_panel_histogram_range_and_tagging(app, scored_dataset):
    from playwright.sync_api import expect

    from qualiclip_plugin.panel import data as panel_data

    dataset, threshold = scored_dataset
    hist = panel_data.histogram(dataset.view(), "quality")
    fullest = max(range(len(hist["counts"])), key=hist["counts"].__getitem__)
    assert 0 < hist["counts"][fullest] < len(dataset)  # a bar that narrows the grid

    app.open_dataset(dataset.name)
    expect(app.grid_tiles()).to_have_count(len(dataset), timeout=30_000)
    panel = app.open_quality_panel()

    with app.step("the panel shows the histogram, counts and the saved threshold"):
        expect(app.histogram()).to_be_visible()
        expect(app.panel_button(f"Scored: {len(dataset)}")).to_be_visible()
        expect(app.panel_button("Not scored: 0")).to_be_visible()
        expect(panel).to_contain_text(f"Saved threshold {threshold:.6g}", timeout=30_000)
        expect(panel).to_contain_text("not reviewed yet", timeout=30_000)

    with app.step("clicking the fullest bar shows its samples in the grid"):
        edges = hist["edges"]
        app.click_histogram_bin(edges[fullest], edges[fullest + 1], hist["counts"][fullest])
        expect(app.grid_tiles()).to_have_count(hist["counts"][fullest], timeout=30_000)
        expect(panel).to_contain_text(f"{hist['counts'][fullest]} samples", timeout=30_000)

    with app.step("'Back to my view' shows every sample again"):
        app.panel_button("Back to my view").click()
        expect(app.grid_tiles()).to_have_count(len(dataset), timeout=30_000)

    with app.step("'Tag below threshold' tags the samples below the saved threshold"):
        app.panel_button("Tag below threshold").click()
        expect(panel).to_contain_text("Tagged 3 samples below", timeout=30_000)
        dataset.reload()
        below = set(panel_data.below(dataset.view(), "quality", threshold).values("id"))
        assert len(below) == 3
        assert set(dataset.match_tags("low_quality").values("id")) == below

    with app.step("'Untag' removes the plugin's tag again"):
        app.panel_button("Untag").click()
        expect(panel).to_contain_text("Removed 'low_quality' from 3 samples", timeout=30_000)
        dataset.reload()
        assert dataset.count_sample_tags() == {}

    with app.step("'Score unscored samples' opens the scoring form for the field"):
        app.panel_button("Score unscored samples").click()
        expect(app.form()).to_be_visible(timeout=30_000)
        expect(app.form_field("Output field").locator("input")).to_have_value("quality")
