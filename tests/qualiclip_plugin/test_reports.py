"""The plugin side: a dataset field -> rows/report (with label, tag and split breakdown), the
report and quality-map operators through ``foo.execute_operator``, and ``report --dataset``."""

from __future__ import annotations

import csv
import html
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qualiclip.prompts import PAIR_NAMES
from tests.conftest import make_image, refusal
from tests.qualiclip.test_report import section

PLUGIN = "@qualiclip/qualiclip"


@pytest.fixture()
def scored_dataset(tmp_path):
    """10 images with known scores, pair scores, tags, a split field and a class label; one
    sample unscored (its error field set). Persistent, deleted afterwards."""
    import fiftyone as fo

    dataset = fo.Dataset(f"qualiclip-reports-{uuid.uuid4().hex[:10]}", persistent=True)
    scores = [0.91, 0.12, 0.55, 0.33, 0.78, 0.05, 0.67, 0.44, 0.29, None]
    samples = []
    for i, score in enumerate(scores):
        path = make_image(tmp_path / f"s{i}.jpg", size=(64, 48), seed=i)
        sample = fo.Sample(filepath=str(path), split="train" if i < 6 else "val",
                           tags=["night"] if i % 3 == 0 else [],
                           ground_truth=fo.Classification(label="cat" if i % 2 else "dog"))
        if score is not None:
            sample["quality"] = score
            for k, pair in enumerate(PAIR_NAMES):
                sample[f"quality_{pair}"] = round(score + 0.01 * k, 3)
        else:
            sample["quality_error"] = "cannot identify image file"
        samples.append(sample)
    dataset.add_samples(samples)
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def test_rows_from_collection_reads_scores_and_groups(scored_dataset):
    from qualiclip_plugin.reports.rows import default_group_fields, rows_from_collection

    assert default_group_fields(scored_dataset) == ["tags", "split", "ground_truth"]
    rows = rows_from_collection(scored_dataset)
    by_path = {r.path: r for r in rows}
    first = by_path[scored_dataset.first().filepath]
    assert first.score == 0.91
    assert first.pair_scores == {p: round(0.91 + 0.01 * k, 3) for k, p in enumerate(PAIR_NAMES)}
    assert first.groups == {"tags": ("night",), "split": ("train",), "ground_truth": ("dog",)}
    last = by_path[scored_dataset.last().filepath]
    assert last.score is None and last.error == "cannot identify image file"
    assert rows[1].groups["tags"] == ("(none)",)

    view = scored_dataset.match_tags("night")
    assert [r.path for r in rows_from_collection(view, group_by=["split"])] == \
        view.values("filepath")
    with pytest.raises(ValueError, match="no field 'nope'"):
        rows_from_collection(scored_dataset, field="nope")


def _report_folder(dataset):
    from qualiclip_plugin.trust.policy import AppPolicy, dataset_folder

    return dataset_folder(AppPolicy.current(), dataset.name, str(dataset._doc.id))


def test_report_operator_writes_the_view_report(scored_dataset):
    import urllib.parse

    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/write_quality_report", ctx=dict(
        view=scored_dataset.view(), params=dict(field="quality", name="report", n=3,
                                                threshold=0.4)))
    assert result.error is None, result.error
    out = _report_folder(scored_dataset) / "report.html"
    assert result.result["report"] == "report.html"
    # The link the App serves the file under (FiftyOne's /media route).
    query = urllib.parse.urlparse(result.result["href"]).query
    assert urllib.parse.parse_qs(query)["filepath"] == [str(out)]
    page = out.read_text()
    paths = scored_dataset.values("filepath")
    scores = scored_dataset.values("quality")
    lowest = [p for _, p in sorted((s, p) for s, p in zip(scores, paths, strict=True)
                                   if s is not None)][:3]
    worst_html = page[page.index('id="worst"'):page.index('id="best"')]
    assert [html.unescape(p) for p in re.findall(r'data-path="([^"]+)"', worst_html)] == lowest
    # breakdown: dog/cat counts of scored samples, flag count
    table = page[page.index('data-key="ground_truth"'):]
    table = table[:table.index("</table>")]
    counts = dict(re.findall(r'data-value="(\w+)">.*?class="count">(\d+)<', table))
    labels = scored_dataset.values("ground_truth.label")
    assert counts == {lab: str(sum(1 for s, lb in zip(scores, labels, strict=True)
                                   if lb == lab and s is not None)) for lab in ("cat", "dog")}
    flagged = re.search(r'data-key="flagged">.*?<td>(\d+)</td>', page).group(1)
    assert int(flagged) == sum(1 for s in scores if s is not None and s < 0.4)


def test_report_cli_from_dataset(scored_dataset, tmp_path):
    from qualiclip.cli import main

    out = tmp_path / "cli.html"
    result = CliRunner().invoke(main, ["report", "--dataset", scored_dataset.name, "--field",
                                       "quality", "--group-by", "split", "-o", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert 'data-key="split"' in page and 'data-key="ground_truth"' not in page
    missing = CliRunner().invoke(main, ["report", "--dataset", "no-such-dataset-xyz"])
    assert missing.exit_code != 0 and "no FiftyOne dataset" in missing.output
    no_view = CliRunner().invoke(main, ["report", "--dataset", scored_dataset.name, "--view",
                                        "nope", "-o", str(out)])
    assert no_view.exit_code == 1 and "no saved view 'nope'" in no_view.output


def test_quality_maps_operator_writes_heatmaps(scored_dataset, tiny_checkpoint, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo

    from qualiclip import load_model
    from qualiclip.quality_maps import compute_quality_maps
    from qualiclip_plugin.reports.map_writing import display_range

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    scored_dataset.add_sample(fo.Sample(filepath=str(broken)))
    result = foo.execute_operator(f"{PLUGIN}/compute_quality_maps", ctx=dict(
        view=scored_dataset.view(), params=dict(field="qmap", weights=str(tiny_checkpoint),
                                                device="cpu")))
    assert result.error is None, result.error
    model = load_model(tiny_checkpoint, device="cpu")
    heatmaps = scored_dataset.values("qmap")
    expected = compute_quality_maps(scored_dataset.values("filepath"), model)
    assert len(heatmaps) == 11
    for heatmap, ref in zip(heatmaps, expected, strict=True):
        if ref.map is None:
            assert heatmap is None
            continue
        assert isinstance(heatmap, fo.Heatmap)
        # each map on its own range (stored as the database returns it: not bit-exact)
        assert list(heatmap.range) == pytest.approx(display_range(ref.map), abs=1e-6)
        np.testing.assert_allclose(heatmap.map, ref.map, atol=1e-6)
    assert heatmaps[-1] is None
    # The unreadable image is named: in its error field (file name first) and in the result.
    errors = scored_dataset.values("qmap_error")
    assert errors[-1].startswith("broken.jpg") and errors[:-1] == [None] * 10
    [shown] = [r.params for r in result.executor._requests if r.operator_uri == "show_output"]
    assert shown["results"]["unreadable"] == 1
    assert shown["results"]["unreadable_files"] == "broken.jpg"


def _snapshot(dataset):
    """Everything a refused run must leave unchanged: samples and schema."""
    dataset.reload()
    return [s.to_dict() for s in dataset.iter_samples()], sorted(dataset.get_field_schema())


def test_report_operator_empty_params_fall_back_to_defaults(scored_dataset):
    """The App sends None for a cleared number or list box: the defaults apply, the report
    gets the default name in the dataset's folder."""
    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/write_quality_report", ctx=dict(
        view=scored_dataset.view(), params=dict(field=None, name=None, n=None,
                                                threshold=None, group_by=None)))
    assert result.error is None, result.error
    page = (_report_folder(scored_dataset) / "quality-report.html").read_text()
    scores = [s for s in scored_dataset.values("quality") if s is not None]
    flagged = re.search(r'data-key="flagged">.*?<td>(\d+)</td>', page).group(1)
    assert int(flagged) == sum(1 for s in scores if s < 0.5)  # default threshold
    worst_html = page[page.index('id="worst"'):page.index('id="best"')]
    # default n = 12; with fewer than 2n scores the worst get the larger half, no overlap
    assert len(re.findall(r'data-path="', worst_html)) == min(12, (len(scores) + 1) // 2)


@pytest.mark.parametrize("case", ["name_is_path", "threshold_2", "threshold_text", "n_0",
                                  "missing_field"])
def test_report_operator_refuses_bad_input(case, scored_dataset, tmp_path):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionError

    out = _report_folder(scored_dataset) / "r.html"
    params = dict(field="quality", name="r")
    # Some are caught by FiftyOne's own check against the form ("Path: n. Reason: ...").
    expected = {"name_is_path": "not a path", "threshold_2": "threshold",
                "threshold_text": "threshold", "n_0": "Path: n.",
                "missing_field": "no field 'nope'"}[case]
    if case == "name_is_path":
        params["name"] = str(tmp_path / "r")
        out = tmp_path / "r.html"
    elif case == "threshold_2":
        params["threshold"] = 2
    elif case == "threshold_text":
        params["threshold"] = "low"
    elif case == "n_0":
        params["n"] = 0
    elif case == "missing_field":
        params["field"] = "nope"
    with pytest.raises(ExecutionError) as info:
        foo.execute_operator(f"{PLUGIN}/write_quality_report", ctx=dict(
            view=scored_dataset.view(), params=params))
    assert expected in str(info.value)
    assert not out.exists()


def test_quality_maps_operator_empty_params_use_defaults(scored_dataset, tiny_checkpoint):
    import fiftyone as fo
    import fiftyone.operators as foo

    result = foo.execute_operator(f"{PLUGIN}/compute_quality_maps", ctx=dict(
        view=scored_dataset.limit(2), params=dict(field=None, weights=str(tiny_checkpoint),
                                                  device=None, max_side=None)))
    assert result.error is None, result.error
    heatmaps = scored_dataset.values("quality_map")
    assert all(isinstance(h, fo.Heatmap) for h in heatmaps[:2])
    assert heatmaps[2:] == [None] * (len(heatmaps) - 2)


@pytest.mark.parametrize("case", ["missing_weights", "invalid_weights", "max_side_8",
                                  "max_side_text", "bad_field_name", "field_of_other_type",
                                  "empty_target", "generated_view", "video_dataset"])
def test_quality_maps_operator_refuses_bad_input_before_writing(case, scored_dataset,
                                                                tiny_checkpoint, tmp_path):
    import fiftyone as fo
    import fiftyone.operators as foo

    dataset = scored_dataset
    target = dataset.view()
    params = dict(field="qmap", weights=str(tiny_checkpoint), device="cpu")
    expected = {"missing_weights": "not among the weights this server offers",
                "invalid_weights": "cannot load weights",
                "max_side_8": "max_side", "max_side_text": "max_side",
                "bad_field_name": "not usable", "field_of_other_type": "FloatField",
                "empty_target": "no samples", "generated_view": "generated view",
                "video_dataset": "video"}[case]
    if case == "missing_weights":
        params["weights"] = str(tmp_path / "nope.pth")
    elif case == "invalid_weights":  # offered by the policy, but not a checkpoint
        bad = tiny_checkpoint.parent / f"bad-{uuid.uuid4().hex[:6]}.pth"
        bad.write_bytes(b"\x00garbage" * 100)
        params["weights"] = str(bad)
    elif case == "max_side_8":
        params["max_side"] = 8
    elif case == "max_side_text":
        params["max_side"] = "big"
    elif case == "bad_field_name":
        params["field"] = "filepath"
    elif case == "field_of_other_type":
        params["field"] = "quality"
    elif case == "empty_target":
        target = dataset.match({"filepath": "nothing"})
    elif case == "generated_view":
        dataset.set_values("boxes", [fo.Detections(detections=[fo.Detection(
            label="x", bounding_box=[0.1, 0.1, 0.5, 0.5])]) for _ in range(len(dataset))])
        target = dataset.to_patches("boxes")
    elif case == "video_dataset":
        dataset = fo.Dataset(f"qualiclip-video-{uuid.uuid4().hex[:8]}")
        dataset.add_sample(fo.Sample(filepath=str(tmp_path / "clip.mp4")))
        target = dataset.view()
    before = _snapshot(dataset)
    try:
        assert expected in refusal(lambda: foo.execute_operator(
            f"{PLUGIN}/compute_quality_maps", ctx=dict(view=target, params=params)))
        assert _snapshot(dataset) == before
    finally:
        if case == "video_dataset":
            dataset.delete()
        if case == "invalid_weights":
            Path(params["weights"]).unlink()


def test_report_reads_the_apply_model_pair_scores_layout(tmp_path, tiny_checkpoint):
    """apply_model(pair_scores=True) writes <label>_score, <label>_<pair>, <label>_error: the
    report of that label field has the scores, the pair scores and the read errors."""
    import fiftyone as fo

    import qualiclip_plugin
    from qualiclip_plugin.reports.rows import rows_from_collection

    paths = [make_image(tmp_path / f"a{i}.jpg", size=(64, 48), seed=i) for i in range(3)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    dataset = fo.Dataset()
    try:
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in [*paths, broken]])
        model = qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu",
                                            precision="fp32", pair_scores=True)
        dataset.apply_model(model, label_field="qa", batch_size=2, num_workers=0)
        rows = rows_from_collection(dataset, field="qa", group_by=[])
        assert [r.score for r in rows[:3]] == pytest.approx(dataset.values("qa_score")[:3])
        assert all(set(r.pair_scores) == set(PAIR_NAMES) for r in rows[:3])
        assert rows[3].score is None and "broken.jpg" in rows[3].error
    finally:
        dataset.delete()


def test_cli_scores_then_reports(tiny_checkpoint, image_folder, tmp_path):
    """`qualiclip score` writes the CSV, `qualiclip report` turns it into a page whose worst grid
    is the CSV's lowest scores."""
    from qualiclip.cli import main

    runner = CliRunner()
    scores_csv = tmp_path / "scores.csv"
    result = runner.invoke(main, ["score", str(image_folder), "-o", str(scores_csv), "--weights",
                                  str(tiny_checkpoint), "--device", "cpu", "--workers", "0",
                                  "--precision", "fp32", "--no-progress"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report.html"
    result = runner.invoke(main, ["report", str(scores_csv), "-o", str(out), "-n", "3",
                                  "--threshold", "0.5"])
    assert result.exit_code == 0, result.output
    with scores_csv.open() as handle:
        table = list(csv.DictReader(handle))
    lowest = sorted(table, key=lambda r: (float(r["score"]), r["path"]))[:3]
    page = out.read_text()
    worst = [html.unescape(p) for p in re.findall(r'data-path="([^"]+)"',
                                                  section(page, 'id="worst"', 'id="best"'))]
    assert worst == [r["path"] for r in lowest]
    assert "Scores per prompt pair" in page

    usage = runner.invoke(main, ["report", "-o", str(out)])
    assert usage.exit_code != 0 and "either SCORES_CSV or --dataset" in usage.output


@pytest.mark.parametrize("metadata", [True, False], ids=["frame_rate", "decoded_times"])
def test_report_of_a_video_dataset_shows_the_worst_frames(metadata, tmp_path):
    """A report of a scored video dataset (the scoring run's video layout) through the
    operator: one entry per video, the worst videos by mean first, each with its worst frames
    (number, timestamp, score) and thumbnails decoded from the video: the frame shown is the
    frame named (the test videos' brightness tells the frame). Timestamps come from the frame
    rate in the metadata, else from the decoded frames; they agree."""
    import base64
    import io

    import fiftyone as fo
    import fiftyone.operators as foo
    from PIL import Image

    from tests.qualiclip_plugin.test_panel import (
        VIDEO_RATE,
        VIDEO_SCORES,
        scored_video_dataset,
    )

    dataset = scored_video_dataset(tmp_path, VIDEO_SCORES)
    try:
        if metadata:
            dataset.compute_metadata()
        result = foo.execute_operator(f"{PLUGIN}/write_quality_report", ctx=dict(
            view=dataset.view(), params=dict(field="quality", name="videos", n=2,
                                             threshold=0.5)))
        assert result.error is None, result.error
        page = (_report_folder(dataset) / "videos.html").read_text()
        assert "<h2>Worst 2 videos</h2>" in page
        assert re.search(r'data-key="images"><td class=name>videos</td><td>5</td>', page)
        assert re.search(r'data-key="flagged">.*?<td>2</td>', page)  # means 0.4 and 0.3

        means = [float(np.mean(list(s.values()))) for s in VIDEO_SCORES]
        order = sorted(range(len(means)), key=means.__getitem__)[:2]
        worst = section(page, 'id="worst"', 'id="best"')
        figures = re.findall(r'<figure class="thumb".*?</figure>', worst)
        assert [re.search(r'data-path="[^"]*/(clip_\d)\.mp4"', f)[1] for f in figures] == \
            [f"clip_{i}" for i in order]
        for video, figure in zip(order, figures, strict=True):
            scores = VIDEO_SCORES[video]
            expected = sorted(scores, key=lambda n: (scores[n], n))[:3]
            rows = re.findall(r'<tr class="frame" data-frame="(\d+)" data-timestamp="([\d.]+)" '
                              r'data-score="([\d.]+)"><td><img alt="frame \d+" '
                              r'src="data:image/jpeg;base64,([^"]+)">', figure)
            assert [int(r[0]) for r in rows] == expected, figure[:300]
            for number, timestamp, score, jpeg in rows:
                number = int(number)
                assert float(timestamp) == pytest.approx((number - 1) / VIDEO_RATE, abs=1e-3)
                assert float(score) == pytest.approx(scores[number])
                pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(jpeg))).convert("L"))
                # frame n of clip_<v> is a flat grey of v + 20 + 5 (n - 1)
                assert abs(float(np.median(pixels)) - (video + 20 + 5 * (number - 1))) <= 3
            p10 = np.percentile(list(scores.values()), 10)
            assert f"<td class=name>p10</td><td>{p10:.3f}</td>" in figure
            first = expected[0]
            assert f'data-first="{first}" data-last="{first + VIDEO_RATE - 1}"' in figure
        assert "broken.mp4: cannot open as a video" in section(page, 'id="failed"', "</table>")
    finally:
        fo.delete_dataset(dataset.name)


def test_panel_and_report_on_videos_scored_by_the_plugin(tmp_path, tiny_checkpoint):
    """The real path: videos scored by the plugin's Python API (2 fps, 1 s segments). The
    panel offers the summaries the run wrote and opens its worst segments as clips, and the
    report's worst frames are the run's lowest frame scores, at the library's own timestamps,
    showing the frames named (brightness)."""
    import fiftyone as fo

    from qualiclip.video import iter_video_scores
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data
    from qualiclip_plugin.reports.rows import rows_from_collection
    from tests.qualiclip_plugin.security.test_views import panel_event, shown_views
    from tests.qualiclip_plugin.test_panel import ramp_video

    paths = [ramp_video(tmp_path / f"clip_{i}.mp4", offset=15 * i) for i in range(2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video " * 50)
    dataset = fo.Dataset(f"qualiclip-video-report-{uuid.uuid4().hex[:8]}", persistent=True)
    try:
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in [*paths, broken]])
        settings = dict(weights=str(tiny_checkpoint), device="cpu", precision="fp32")
        compute_image_quality(dataset, fps=2, segment_seconds=1, **settings)

        src = panel_data.source(dataset, "quality")
        assert src.video and src.attributes == ("p10", "min")
        state = panel_event(dataset, "on_load", {}).panel.state._data
        assert (state["scored"], state["errors"], state["unit"]) == (2, 1, "videos")
        ctx = panel_event(dataset, "show_segments", state)
        (view,) = shown_views(ctx)
        ctx = panel_event(dataset, "on_change_view", ctx.panel.state._data, view=view)
        assert "⚠" not in (ctx.panel.state.message or "") and ctx.panel.state.total == 2

        rows = {Path(r.path).name: r for r in rows_from_collection(dataset, worst_frames=3)}
        assert rows["broken.mp4"].score is None and rows["broken.mp4"].error
        for path in paths:
            row = rows[path.name]
            sample = dataset.one(fo.ViewField("filepath") == str(path))
            stored = {n: f["quality"] for n, f in sample.frames.items()
                      if f.has_field("quality") and f["quality"] is not None}
            lowest = sorted(stored, key=lambda n: (stored[n], n))[:3]
            assert [f.frame for f in row.frames] == lowest
            library = {r.frame + 1: r.timestamp
                       for r in iter_video_scores([path], fps=2, **settings)}
            # no metadata computed: the report takes the times from the decoded frames
            assert all(f.timestamp is None for f in row.frames)
            page = _render(row)
            for number in lowest:
                match = re.search(rf'data-frame="{number}" data-timestamp="([\d.]+)"', page)
                assert float(match[1]) == pytest.approx(library[number], abs=1e-3)
            support = sample["quality_segments"].detections[0].support
            assert row.segment[:2] == tuple(support)
    finally:
        fo.delete_dataset(dataset.name)


def test_frames_view_of_plugin_scored_videos_offers_the_frames_attributes(tmp_path,
                                                                          tiny_checkpoint):
    """A frames view of videos the plugin scored: the panel offers the frames' own attribute
    scores (frames.<field>_<attribute>) and counts the scored frames."""
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality
    from tests.qualiclip_plugin.security.test_views import panel_event
    from tests.qualiclip_plugin.test_panel import ramp_video, require_ffmpeg

    require_ffmpeg()
    dataset = fo.Dataset(f"qualiclip-video-frames-{uuid.uuid4().hex[:8]}", persistent=True)
    try:
        dataset.add_sample(fo.Sample(filepath=str(ramp_video(tmp_path / "clip.mp4"))))
        compute_image_quality(dataset, fps=2, weights=str(tiny_checkpoint), device="cpu",
                              precision="fp32")
        frames = dataset.exists("quality").to_frames(sample_frames=True, fps=2,
                                                     output_dir=str(tmp_path / "frames"))
        state = panel_event(dataset, "on_load", {}, view=frames._serialize()).panel.state
        assert (state.unit, state.attributes) == ("frames", ["overall", *PAIR_NAMES])
        assert state.scored == dataset.count("frames.quality") == 8
    finally:
        fo.delete_dataset(dataset.name)


def _render(row) -> str:
    from qualiclip.report.html import ReportConfig, render_report

    return render_report([row], ReportConfig(n=1, unit="videos"))
