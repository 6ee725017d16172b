"""One ownership rule for every writer: the plugin writes only what its runs made, and never
takes a field, a tag or a file back from a user who wrote into it.

Requests go through ``foo.execute_operator`` (what the App's Execute button reaches:
``resolve_input`` checks, then ``execute``); refusals must leave the dataset as it was.
"""

from __future__ import annotations

import uuid

import pytest

from qualiclip_plugin import OPERATOR_URI, PLUGIN_NAME
from tests.conftest import refusal
from tests.qualiclip_plugin.test_operator import _params, _snapshot

REPORT_URI = f"{PLUGIN_NAME}/write_quality_report"
MAPS_URI = f"{PLUGIN_NAME}/compute_quality_maps"


def _execute(uri, target, **params):
    import fiftyone.operators as foo

    return lambda: foo.execute_operator(uri, ctx=dict(view=target.view(), params=params))


def _refused_by_the_form(uri, target, **params) -> str:
    """The message ``resolve_input`` refused with (the form's inline "Cannot run" box): the
    request never reaches ``execute``."""
    from fiftyone.operators.executor import ExecutionError

    with pytest.raises(ExecutionError) as info:
        _execute(uri, target, **params)()
    return str(info.value)


@pytest.fixture()
def scored(make_dataset, image_files, tiny_checkpoint):
    """4 images scored into ``quality`` (with attribute scores) by the plugin."""
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:4])
    compute_image_quality(dataset, **_params(tiny_checkpoint))
    return dataset


def _maps_params(tiny_checkpoint, **extra):
    return dict(weights=str(tiny_checkpoint), device="cpu", **extra)


# --- tags -------------------------------------------------------------------------------------
def test_reflagging_keeps_a_tag_a_colleague_set_by_hand(scored, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    compute_image_quality(scored, **_params(tiny_checkpoint, flag_percent=25, overwrite=True))
    best = scored.exists("quality").sort_by("quality", reverse=True).first()
    assert "low_quality" not in best.tags
    best.tags.append("low_quality")  # a colleague marks it by hand after the run
    best.save()

    summary = compute_image_quality(scored, **_params(tiny_checkpoint, flag_percent=50,
                                                       overwrite=True))
    best.reload()
    assert "low_quality" in best.tags  # still theirs
    flagged = set(scored.match_tags("low_quality").values("id"))
    assert flagged == set(scored.match({"quality_flagged": True}).values("id")) | {best.id}
    assert summary["flagged"] == 2


def test_panel_untag_keeps_a_tag_a_colleague_set_by_hand(scored):
    from qualiclip_plugin.panel import data as panel_data

    src = panel_data.source(scored, "quality")
    tag = panel_data.panel_tag(scored, src)
    worst = scored.sort_by("quality").first()
    panel_data.tag_below(scored, scored.view(), "quality", worst.quality + 1e-6, tag)
    best = scored.sort_by("quality", reverse=True).first()
    best.tags.append(tag)
    best.save()

    assert panel_data.untag(scored.view(), tag) == 1  # only the sample the panel tagged
    assert scored.match_tags(tag).values("id") == [best.id]


# --- fields of other runs ---------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_another_runs_attribute_field_is_refused_in_the_form(overwrite, scored,
                                                             tiny_checkpoint):
    before = _snapshot(scored)
    message = _refused_by_the_form(OPERATOR_URI, scored, **_params(
        tiny_checkpoint, field="quality_sharp_image", overwrite=overwrite))
    assert "'sharp image' attribute scores of the scoring run into 'quality'" in message
    assert "no record" not in message
    assert _snapshot(scored) == before


def test_another_runs_flag_field_is_refused(scored, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    compute_image_quality(scored, **_params(tiny_checkpoint, flag_percent=50, overwrite=True))
    before = _snapshot(scored)
    message = _refused_by_the_form(OPERATOR_URI, scored, **_params(
        tiny_checkpoint, field="other", flag_mode="percent", flag_percent=50,
        flag_field="quality_flagged"))
    assert "low-quality flags of the scoring run into 'quality'" in message
    assert _snapshot(scored) == before


def test_a_flag_view_name_must_be_plain_words(scored, tiny_checkpoint):
    before = _snapshot(scored)
    message = _refused_by_the_form(OPERATOR_URI, scored, **_params(
        tiny_checkpoint, flag_mode="percent", flag_percent=50, flag_view="../../etc",
        overwrite=True))
    assert "cannot name a saved view" in message and "\n" not in message
    assert _snapshot(scored) == before and scored.list_saved_views() == []


# --- quality maps -----------------------------------------------------------------------------
def test_maps_never_overwrite_a_users_heatmap_field(scored, tiny_checkpoint):
    import fiftyone as fo
    import numpy as np

    scored.set_values("my_map", [fo.Heatmap(map=np.full((2, 2), 0.25), range=[0, 1])
                                 for _ in range(len(scored))])
    before = _snapshot(scored)
    message = refusal(_execute(MAPS_URI, scored, **_maps_params(tiny_checkpoint,
                                                                field="my_map")))
    assert "heatmap field 'my_map'" in message and "not written by this plugin" in message
    assert _snapshot(scored) == before


def test_maps_never_clear_a_users_error_field(scored, tiny_checkpoint):
    scored.set_values("qmap_error", ["my note"] * len(scored))
    before = _snapshot(scored)
    message = refusal(_execute(MAPS_URI, scored, **_maps_params(tiny_checkpoint,
                                                                field="qmap")))
    assert "'qmap_error'" in message and "not written by this plugin" in message
    assert scored.values("qmap_error") == ["my note"] * len(scored)
    assert _snapshot(scored) == before


def test_maps_are_recorded_and_claim_their_field(scored, tiny_checkpoint):
    import fiftyone.operators as foo

    from qualiclip.weights import sha256_file
    from qualiclip_plugin.scoring import claims
    from qualiclip_plugin.trust import provenance

    owner = claims.new_owner()
    claims.claim(scored, "qmap", owner, label="quality maps into 'qmap'")
    try:
        message = refusal(_execute(MAPS_URI, scored, **_maps_params(tiny_checkpoint,
                                                                    field="qmap")))
        assert "being written by another run" in message
        assert scored.get_field("qmap") is None
    finally:
        claims.release(scored, "qmap", owner)

    result = foo.execute_operator(MAPS_URI, ctx=dict(
        view=scored.view(), params=_maps_params(tiny_checkpoint, field="qmap", max_side=64)))
    assert result.error is None, result.error
    record = provenance.maps_recorded(scored, "qmap")
    assert record["weights_sha256"] == sha256_file(tiny_checkpoint)
    assert record["max_side"] == 64 and record["error_field"] == "qmap_error"
    assert claims.holder(scored, "qmap") is None  # released at the end
    # The plugin's own maps may be made again (its run record says they are its own).
    result = foo.execute_operator(MAPS_URI, ctx=dict(
        view=scored.view(), params=_maps_params(tiny_checkpoint, field="qmap")))
    assert result.error is None, result.error
    assert provenance.maps_recorded(scored, "qmap")["max_side"] is None


def test_small_images_get_quality_maps_the_app_shows(make_dataset, tiny_checkpoint, tmp_path):
    """A 112x75 image gives a 2x3 map. The App draws a heatmap (colour by field) with opacity
    ``|value| / max(|range|)``: on the range [0, 1] a map of low local scores is drawn almost
    transparent; every map must be drawn with its best cell opaque and no cell invisible."""
    import fiftyone.operators as foo
    import numpy as np

    from tests.conftest import make_image

    path = make_image(tmp_path / "small.jpg", size=(112, 75), seed=7)
    dataset = make_dataset([path])
    result = foo.execute_operator(MAPS_URI, ctx=dict(
        view=dataset.view(), params=_maps_params(tiny_checkpoint, field="qmap")))
    assert result.error is None, result.error
    heatmap = dataset.first().qmap
    assert heatmap.map.shape == (2, 3)
    low, high = heatmap.range
    opacity = np.minimum(np.abs(heatmap.map), max(abs(low), abs(high))) / max(abs(low),
                                                                                abs(high))
    assert opacity.max() == pytest.approx(1.0) and opacity.min() > 0.5
    assert low <= heatmap.map.min() and heatmap.map.max() <= high  # colour by value: in range


# --- reports ----------------------------------------------------------------------------------
def _report(target, **params):
    import fiftyone.operators as foo

    result = foo.execute_operator(REPORT_URI, ctx=dict(view=target.view(), params=params))
    assert result.error is None, result.error
    return result.result


def test_a_report_name_in_use_is_refused_unless_overwrite(scored):
    from pathlib import Path

    first = _report(scored, field="quality", name="weekly")
    path = Path(first["folder"]) / first["report"]
    path.write_text(path.read_text() + "<!-- last week's -->")
    message = _refused_by_the_form(REPORT_URI, scored, field="quality", name="weekly")
    assert "already in this dataset's report folder" in message
    assert "Replace an existing report" in message
    assert path.read_text().endswith("<!-- last week's -->")
    _report(scored, field="quality", name="weekly", overwrite=True)
    assert not path.read_text().endswith("<!-- last week's -->")


@pytest.mark.parametrize("name", ["weekly\n", "week\tly", "weekly\r"])
def test_a_report_name_with_control_characters_is_refused(name, scored):
    message = _refused_by_the_form(REPORT_URI, scored, field="quality", name=name)
    assert "report name" in message


def test_the_report_threshold_defaults_to_the_saved_one(scored):
    from pathlib import Path

    from qualiclip_plugin.panel import data as panel_data

    src = panel_data.source(scored, "quality")
    panel_data.save_threshold(scored, src, "quality", 0.37)
    panel_data.set_reviewed(scored, src, "quality", True)
    written = _report(scored, field="quality", name="saved")
    html = (Path(written["folder"]) / written["report"]).read_text()
    assert "score &lt; 0.37" in html and "score &lt; 0.5" not in html


def test_datasets_never_share_a_report_folder(make_dataset, image_files, tiny_checkpoint):
    import hashlib

    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality

    name = f"qc own {uuid.uuid4().hex[:6]}"
    # The name another dataset's folder had: its slug plus a hash of the name.
    lookalike = name.replace(" ", "-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    folders = []
    try:
        for dataset_name in (name, lookalike, name):  # the last: deleted and made again
            if fo.dataset_exists(dataset_name):
                fo.delete_dataset(dataset_name)
            dataset = fo.Dataset(dataset_name, persistent=True)
            dataset.add_samples([fo.Sample(filepath=str(p)) for p in image_files[:2]])
            compute_image_quality(dataset, **_params(tiny_checkpoint))
            folders.append(_report(dataset, field="quality", name="r")["folder"])
    finally:
        for dataset_name in (name, lookalike):
            if fo.dataset_exists(dataset_name):
                fo.delete_dataset(dataset_name)
    assert len(set(folders)) == 3
