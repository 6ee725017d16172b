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


def test_default_threshold_is_a_quantile_of_the_scores(scored):
    from qualiclip_plugin.panel import data as panel_data

    values = np.array([v for v in scored.values("quality") if v is not None])
    hist = panel_data.histogram(scored.view(), "quality")
    default = panel_data.default_threshold(hist)
    assert values.min() <= default <= values.max()
    # read off the bins: within one bin width of the exact 10th percentile
    width = hist["edges"][1] - hist["edges"][0]
    assert abs(default - np.quantile(values, 0.1)) <= width
    assert panel_data.default_threshold(None) is None


def _slider(rendered: dict) -> tuple[str, dict]:
    """The threshold slider's (name, JSON) in a rendered panel."""
    (name,) = [n for n in rendered["type"]["properties"] if n.startswith("threshold__")]
    return name, rendered["type"]["properties"][name]


def test_panel_state_has_one_update_path(scored, tiny_checkpoint):
    """The selection (field, attribute, threshold) changes only through the panel's settle
    step: inputs repeating their value write nothing, a slider drawn for another field cannot
    set this field's threshold, thresholds come from the data, and a refresh sees new
    samples."""
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data
    from qualiclip_plugin.panel.operator import ImageQualityPanel
    from qualiclip_plugin.panel.state import Selection, input_name
    from tests.qualiclip_plugin.security.test_views import handed_to_app, panel_event

    dataset = scored
    compute_image_quality(dataset, **_params(tiny_checkpoint, field="sharpness"))
    saved = panel_data.save_threshold(dataset, panel_data.source(dataset, "quality"),
                                      "quality", 0.9)["threshold"]

    def writes(ctx):
        return [n for n, _ in handed_to_app(ctx) if n.endswith("patch_panel_state")]

    ctx = panel_event(dataset, "on_load", {})
    state = ctx.panel.state._data
    assert Selection.of(ctx.panel.state) == Selection("quality", "overall", saved)
    ctx = panel_event(dataset, "on_change_field", state, value="sharpness",
                      path=input_name(Selection.of(ctx.panel.state), "field"))
    state = ctx.panel.state._data
    current = Selection.of(ctx.panel.state)
    scores = dataset.exists("sharpness").values("sharpness")
    assert current.field == "sharpness" and min(scores) <= current.threshold <= max(scores)
    assert state[input_name(current, "threshold")] == current.threshold  # the slider shows it

    before = Selection("quality", "overall", saved)
    for event, params in (
            # redrawn inputs of the current selection repeating their values
            ("on_change_field", {"value": "sharpness", "path": input_name(current, "field")}),
            ("on_change_attribute", {"value": "overall",
                                     "path": input_name(current, "attribute")}),
            ("on_change_threshold", {"value": current.threshold,
                                     "path": input_name(current, "threshold")}),
            # inputs drawn for the previous field reporting their old values
            ("on_change_field", {"value": "quality", "path": input_name(before, "field")}),
            ("on_change_threshold", {"value": saved, "path": input_name(before, "threshold")})):
        ctx = panel_event(dataset, event, state, **params)
        assert writes(ctx) == [], event  # nothing written back: no loop can start
        assert Selection.of(ctx.panel.state) == current

    moved = (current.threshold + max(scores)) / 2
    ctx = panel_event(dataset, "on_change_threshold", state, value=moved,
                      path=input_name(current, "threshold"))
    state = ctx.panel.state._data
    assert Selection.of(ctx.panel.state).threshold == pytest.approx(moved)
    assert state["below"] == sum(s < moved for s in scores)

    # the rendered slider steps finer than the scores' spread; the axis spans the bars
    rendered = ImageQualityPanel().render(ctx).to_json()
    name, slider = _slider(rendered)
    assert name == input_name(Selection.of(ctx.panel.state), "threshold")
    assert 0 < slider["view"]["step"] <= (max(scores) - min(scores)) / 100
    layout = rendered["type"]["properties"]["histogram"]["view"]["layout"]
    edges = state["edges"]
    assert layout["xaxis"]["range"][0] <= edges[0] and layout["xaxis"]["range"][1] >= edges[-1]

    # samples added since the panel opened count on the next refresh
    dataset.add_sample(fo.Sample(filepath=dataset.first().filepath))
    ctx = panel_event(dataset, "refresh", state)
    assert ctx.panel.state.total == len(dataset) and ctx.panel.state.unscored == 1


# --- video datasets ---------------------------------------------------------------------------
#: Frames per second and length of the test videos; frames are sampled at 1 fps (frame numbers
#: 1, 11, 21, 31: FiftyOne's are 1-based).
VIDEO_RATE, VIDEO_FRAMES = 10, 40


def ramp_video(path, offset: int = 0):
    """A real H.264 file of ``VIDEO_FRAMES`` flat frames whose brightness tells the frame:
    frame number ``n`` (1-based) is ``offset + 20 + 5 (n - 1)``."""
    import numpy as np

    from tests.qualiclip.test_video import write_video

    frames = [np.full((48, 64, 3), offset + 20 + 5 * i, np.uint8) for i in range(VIDEO_FRAMES)]
    return write_video(path, frames, VIDEO_RATE)


def write_video_scores(sample, field: str, frame_scores: dict[int, float]) -> None:
    """The fields a video scoring run writes (the plugin's video layout): ``frames.<field>``
    per sampled frame, the per-video mean / p10 / min and the worst one-second segment as
    ``TemporalDetections`` (support: first and last frame, confidence: its mean)."""
    import fiftyone as fo

    for number, score in frame_scores.items():
        sample.frames[number][field] = score
    values = np.array(list(frame_scores.values()))
    worst = min(frame_scores, key=frame_scores.get)
    sample[field] = float(values.mean())
    sample[f"{field}_p10"] = float(np.percentile(values, 10))
    sample[f"{field}_min"] = float(values.min())
    sample[f"{field}_segments"] = fo.TemporalDetections(detections=[fo.TemporalDetection(
        label="low quality", support=[worst, worst + VIDEO_RATE - 1],
        confidence=frame_scores[worst])])


def scored_video_dataset(folder, frame_scores: list[dict[int, float]], field: str = "quality",
                         broken: bool = True):
    """A persistent video dataset: one real video per entry of ``frame_scores`` scored with
    those frame scores, plus (``broken``) a file that is no video (``<field>_error``), and the
    run record a scoring run leaves."""
    import uuid

    import fiftyone as fo

    from qualiclip.prompts import PAIR_NAMES
    from qualiclip_plugin.trust import provenance

    dataset = fo.Dataset(f"qualiclip-video-{uuid.uuid4().hex[:10]}", persistent=True)
    samples = []
    for i, scores in enumerate(frame_scores):
        sample = fo.Sample(filepath=str(ramp_video(folder / f"clip_{i}.mp4", offset=i)))
        write_video_scores(sample, field, scores)
        samples.append(sample)
    if broken:
        path = folder / "broken.mp4"
        path.write_bytes(b"not a video")
        samples.append(fo.Sample(filepath=str(path), **{f"{field}_error": "broken.mp4: cannot "
                                                        "open as a video"}))
    dataset.add_samples(samples)
    provenance.record(dataset, provenance.describe_run(
        field, {"name": "tiny.pth", "sha256": "c" * 64}, {"max_side": None, "precision": "fp32"},
        list(PAIR_NAMES), {"pair_scores": True, "fps": 1}))
    return dataset


#: Frame scores of the panel's test videos: means 0.6, 0.4, 0.55, 0.3; the worst frames differ.
VIDEO_SCORES = [{1: 0.7, 11: 0.7, 21: 0.3, 31: 0.7}, {1: 0.5, 11: 0.2, 21: 0.45, 31: 0.45},
                {1: 0.55, 11: 0.55, 21: 0.55, 31: 0.55}, {1: 0.1, 11: 0.5, 21: 0.3, 31: 0.3}]


@pytest.fixture()
def scored_videos(tmp_path):
    import fiftyone as fo

    dataset = scored_video_dataset(tmp_path, VIDEO_SCORES)
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def test_videos_are_the_panels_samples(scored_videos):
    """On a video dataset the panel aggregates the per-video summaries: the summary choice is
    mean / p10 / min (the attribute scores are per frame), counts and histograms are of
    videos, worst N are videos, and the worst segments open as clips, lowest mean first."""
    from qualiclip_plugin.panel import data as panel_data

    dataset = scored_videos
    src = panel_data.source(dataset, "quality")
    assert src.video and src.unit == "videos"
    assert src.attributes == ("p10", "min")
    assert src.path("overall") == "quality" and src.path("p10") == "quality_p10"
    with pytest.raises(panel_data.PanelError):
        src.path("sharp_image")  # per frame only: no such video field to draw

    counts = panel_data.counts(dataset.view(), "quality")
    assert (counts.total, counts.scored, counts.errors) == (5, 4, 1)
    for summary, aggregate in (("overall", np.mean), ("min", np.min),
                               ("p10", lambda v: np.percentile(v, 10))):
        values = np.array([aggregate(list(s.values())) for s in VIDEO_SCORES])
        hist = panel_data.histogram(dataset.view(), src.path(summary), bins=4)
        expected, edges = np.histogram(values, bins=4, range=(values.min(), values.max()))
        assert hist["counts"] == expected.tolist(), summary
        assert hist["edges"] == pytest.approx(edges.tolist())

    worst = panel_data.extremes(dataset.view(), "quality", 2, worst=True)
    assert [p.rsplit("/", 1)[1] for p in worst.values("filepath")] == ["clip_3.mp4",
                                                                        "clip_1.mp4"]
    clips = panel_data.segments_view(dataset.view(), src, 3)
    assert clips.count() == 3
    assert clips.values("quality_segments.confidence") == [0.1, 0.2, 0.3]
    assert clips.values("support") == [[1, 10], [11, 20], [21, 30]]
    assert [p.rsplit("/", 1)[1] for p in clips.values("filepath")] == \
        ["clip_3.mp4", "clip_1.mp4", "clip_0.mp4"]
    image_source = panel_data.ScoreSource("quality", (), None, None)
    with pytest.raises(panel_data.PanelError, match="videos only"):
        panel_data.segments_view(dataset.view(), image_source, 3)


def test_panel_events_on_a_video_dataset(scored_videos):
    """The panel's handlers on videos: settle on the video summaries, show worst videos and
    worst segments, tag videos below the threshold (never clips)."""
    from qualiclip_plugin.panel import data as panel_data
    from qualiclip_plugin.panel.operator import ImageQualityPanel
    from qualiclip_plugin.panel.state import Selection, input_name
    from tests.qualiclip_plugin.security.test_views import panel_event, shown_views

    dataset = scored_videos
    ctx = panel_event(dataset, "on_load", {})
    state = ctx.panel.state._data
    assert state["attributes"] == ["overall", "p10", "min"] and state["unit"] == "videos"
    assert (state["total"], state["scored"], state["errors"]) == (5, 4, 1)
    rendered = ImageQualityPanel().render(ctx).to_json()["type"]["properties"]
    assert "videos in the view" in str(rendered["histogram"]["view"]["layout"]["xaxis"])
    assert "segments" in rendered["ranks"]["type"]["properties"]

    current = Selection.of(ctx.panel.state)
    ctx = panel_event(dataset, "on_change_attribute", state, value="min",
                      path=input_name(current, "attribute"))
    state = ctx.panel.state._data
    assert Selection.of(ctx.panel.state).attribute == "min"
    assert state["edges"][0] == pytest.approx(0.1) and state["edges"][-1] == \
        pytest.approx(0.55, abs=1e-5)

    ctx = panel_event(dataset, "show_worst", {**state, "n": 2})
    (view,) = shown_views(ctx)
    assert "quality_min" in str(view) and "2 lowest 'quality_min'" in ctx.panel.state.message

    ctx = panel_event(dataset, "show_segments", {**state, "n": 2})
    (view,) = shown_views(ctx)
    assert "ToClips" in str(view) and "worst segments" in ctx.panel.state.message
    # the App then reports the clips view: the panel keeps drawing the videos' summaries
    ctx = panel_event(dataset, "on_change_view", ctx.panel.state._data, view=view)
    assert "⚠" not in (ctx.panel.state.message or "")
    assert (ctx.panel.state.unit, ctx.panel.state.total, ctx.panel.state.scored) == \
        ("clips", 2, 2)

    # tag the videos whose min is below 0.25: clip_3 (0.1) and clip_1 (0.2)
    ctx = panel_event(dataset, "on_change_threshold", state, value=0.25,
                      path=input_name(Selection.of(ctx.panel.state), "threshold"))
    state = ctx.panel.state._data
    ctx = panel_event(dataset, "tag_below", state)
    assert ctx.panel.state.message == "Tagged 2 videos below 0.25 with 'low_quality'"
    tagged = dataset.match_tags("low_quality").values("filepath")
    assert sorted(p.rsplit("/", 1)[1] for p in tagged) == ["clip_1.mp4", "clip_3.mp4"]

    # in the clips view the panel showed, tagging is refused and nothing changes
    src = panel_data.source(dataset, "quality")
    clips = panel_data.segments_view(dataset.view(), src, 4)
    with pytest.raises(panel_data.PanelError, match="Back to my view"):
        panel_data.tag_below(dataset, clips, "quality", 0.9, "low_quality")
    with pytest.raises(panel_data.PanelError, match="Back to my view"):
        panel_data.untag(clips, "low_quality")
    assert dataset.count_sample_tags() == {"low_quality": 2}


def require_ffmpeg() -> None:
    """Skip (fail with ``CI=true``) without the ``ffmpeg`` program, which FiftyOne's
    ``to_frames`` runs to sample frames (scripts/test.sh installs Debian's)."""
    import shutil

    from tests.conftest import missing_requirement

    if shutil.which("ffmpeg") is None:
        missing_requirement("ffmpeg is not installed (apt-get install ffmpeg): no frames views")


def test_panel_in_a_frames_view_of_videos(scored_videos, tmp_path):
    """In a frames view (``to_frames``) of scored videos the panel counts and draws frames
    (``<field>`` is each frame's score), and a summary chosen on the videos, which the frames
    do not hold, falls back to the overall score instead of failing."""
    from qualiclip_plugin.panel.state import Selection, input_name
    from tests.qualiclip_plugin.security.test_views import panel_event

    require_ffmpeg()
    dataset = scored_videos
    ctx = panel_event(dataset, "on_load", {})
    ctx = panel_event(dataset, "on_change_attribute", ctx.panel.state._data, value="min",
                      path=input_name(Selection.of(ctx.panel.state), "attribute"))
    assert Selection.of(ctx.panel.state).attribute == "min"
    # the scored frames (1 fps)
    frames = dataset.exists("quality").to_frames(sample_frames=True, fps=1,
                                                 output_dir=str(tmp_path / "frames"))
    ctx = panel_event(dataset, "on_load", {}, view=frames._serialize())
    assert "⚠" not in (ctx.panel.state.message or "")
    assert (ctx.panel.state.unit, ctx.panel.state.total, ctx.panel.state.scored) == \
        ("frames", 16, 16)
    assert Selection.of(ctx.panel.state).attribute == "overall"
    assert ctx.panel.state.attributes == ["overall"]  # these frames hold no attribute scores
