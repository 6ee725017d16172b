"""The "Image quality" panel's data layer (:mod:`qualiclip_plugin.panel.data`): aggregations
agree with the values, App input is checked against the run records, thresholds persist per
run, and the panel writes only the plugin's tag."""

from __future__ import annotations

import numpy as np
import pytest

from tests.qualiclip_plugin.test_operator import _params


@pytest.fixture()
def scored(make_dataset, tiny_checkpoint):
    """The 13 test images (one broken) scored by the plugin into ``quality``."""
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset()
    compute_image_quality(dataset, **_params(tiny_checkpoint))
    return dataset


def test_counts_histogram_and_views_agree_with_the_values(scored):
    from qualiclip_plugin.panel import data as panel_data

    dataset = scored
    view = dataset.skip(1)  # some view, not the dataset
    values = np.array([v for v in view.values("quality") if v is not None])
    counts = panel_data.counts(view, "quality")
    assert (counts.total, counts.scored, counts.errors, counts.unscored) == (12, 11, 1, 0)

    hist = panel_data.histogram(view, "quality", bins=5)
    expected, edges = np.histogram(values, bins=5, range=(values.min(), values.max()))
    assert hist["counts"] == expected.tolist()
    assert hist["edges"] == pytest.approx(edges.tolist())

    # a bin's view holds exactly its samples; the last bin includes its upper edge
    for i in range(5):
        last = i == 4
        got = panel_data.range_view(view, "quality", edges[i], edges[i + 1],
                                    include_high=last).count()
        assert got == expected[i]
    assert panel_data.counts_view(view, "quality", "errors").count() == 1
    dataset.limit(2).set_field("quality", None).save()  # two unscored samples
    assert panel_data.counts_view(dataset, "quality", "unscored").count() == 2

    worst = panel_data.extremes(view, "quality", 3, worst=True).values("quality")
    best = panel_data.extremes(view, "quality", 3, worst=False).values("quality")
    assert worst == sorted(worst) and best == sorted(best, reverse=True)
    assert max(worst) <= min(best)
    with pytest.raises(panel_data.PanelError):
        panel_data.extremes(view, "quality", 0, worst=True)


def test_app_values_are_checked_against_the_run_records(scored):
    import fiftyone as fo

    from qualiclip_plugin.panel import data as panel_data

    dataset = scored
    dataset.add_sample_field("mine", fo.FloatField)
    src = panel_data.source(dataset, "quality")
    assert src.path("sharp_image") == "quality_sharp_image"
    for field in ("mine", "filepath", None, ["quality"]):
        with pytest.raises(panel_data.PanelError):
            panel_data.source(dataset, field)
    for attribute in ("bogus", "error", "flagged"):
        with pytest.raises(panel_data.PanelError):
            src.path(attribute)
    for bad in ("x", float("nan"), None):
        with pytest.raises(panel_data.PanelError):
            panel_data.range_view(dataset, "quality", bad, 1.0)
    for bad in (-0.1, 1.5, "nan"):
        with pytest.raises(panel_data.PanelError):
            panel_data.check_threshold(bad)


def test_threshold_is_saved_per_run_and_reviewed_per_value(make_dataset):
    from qualiclip_plugin.panel import data as panel_data

    dataset = make_dataset()
    src = panel_data.ScoreSource("quality", (), None, weights_sha256="a" * 64)
    assert panel_data.saved_threshold(dataset, src, "quality") is None
    panel_data.save_threshold(dataset, src, "quality", 0.4)
    assert panel_data.set_reviewed(dataset, src, "quality", True)["reviewed"] is True
    # the same value again stays reviewed; another value starts unreviewed
    assert panel_data.save_threshold(dataset, src, "quality", 0.4)["reviewed"] is True
    assert panel_data.save_threshold(dataset, src, "quality", 0.3)["reviewed"] is False
    assert panel_data.saved_threshold(dataset, src, "quality")["threshold"] == 0.3
    assert panel_data.saved_threshold(dataset, src, "quality_sharp_image") is None
    # scores re-made with other weights: the old threshold is not theirs
    rescored = panel_data.ScoreSource("quality", (), None, weights_sha256="b" * 64)
    assert panel_data.saved_threshold(dataset, rescored, "quality") is None
    panel_data.reset_threshold(dataset, "quality")
    assert panel_data.saved_threshold(dataset, src, "quality") is None
    with pytest.raises(panel_data.PanelError):
        panel_data.set_reviewed(dataset, src, "quality", True)


def test_tags_only_the_plugins_tag(scored):
    from qualiclip_plugin.panel import data as panel_data

    dataset = scored
    src = panel_data.source(dataset, "quality")
    scores = sorted(dataset.exists("quality").values("quality"))
    threshold = (scores[3] + scores[4]) / 2
    tag = panel_data.panel_tag(dataset, src)
    assert tag == "low_quality"
    assert panel_data.tag_below(dataset, dataset.view(), "quality", threshold, tag) == 4
    tagged = dataset.match_tags(tag)
    assert sorted(tagged.values("quality")) == scores[:4]
    assert panel_data.panel_tag(dataset, src) == tag  # the panel wrote it: still the plugin's
    assert panel_data.untag(dataset.view(), tag) == 4
    assert dataset.count_sample_tags() == {}

    # the same tag set by the user on another dataset's samples: refused, untouched
    other = dataset.clone()
    try:
        other.limit(2).tag_samples("low_quality")
        with pytest.raises(panel_data.PanelError, match="not set by QualiCLIP"):
            panel_data.panel_tag(other, panel_data.source(other, "quality"))
        assert other.count_sample_tags() == {"low_quality": 2}
    finally:
        other.delete()


def test_views_coming_back_from_the_browser_never_run_raw_pipelines(make_dataset):
    """The panel keeps the user's view in its (browser-held) state to return to it; a state
    naming a raw Mongo stage (which could write with $out) falls back to the whole dataset."""
    import fiftyone.core.odm as foodm

    from qualiclip_plugin.panel.operator import _build_view

    dataset = make_dataset()
    narrowed = dataset.limit(3)
    assert _build_view(dataset, narrowed._serialize()).values("id") == narrowed.values("id")
    writer = dataset.mongo([{"$limit": 1}, {"$out": "stolen"}])
    assert _build_view(dataset, writer._serialize())._stages == []  # never built, never run
    assert "stolen" not in foodm.get_db_conn().list_collection_names()
    for junk in ("stages", [1, 2], None):
        assert len(_build_view(dataset, junk)) == len(dataset)
