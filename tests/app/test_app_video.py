"""A scored video dataset in the real App: the Image quality panel ranks the videos, shows
their worst segments as clips, and the worst clip opens in the modal's player on that segment
(the player's time and the frame it shows are inside the segment's support).

The videos are real H.264 files whose frame brightness tells the frame number
(:func:`tests.qualiclip_plugin.test_panel.ramp_video`), scored by the plugin's Python API with
the tiny test checkpoint, so the frame on screen can be checked against the segment from a
screenshot. Every expectation is read from the dataset the run wrote (the videos' means, the
worst segment), not chosen here.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import missing_requirement
from tests.qualiclip_plugin.test_panel import VIDEO_RATE, ramp_video

#: Brightness offsets of the three test videos (frame n of a video: offset + 20 + 5 (n - 1)).
OFFSETS = (0, 15, 30)


@pytest.fixture()
def video_dataset(tmp_path, tiny_checkpoint):
    """Three ramp videos, added in an order that is not their order by mean score (so ranking
    reorders the grid), scored at 1 fps with 1-second segments by the plugin's Python API;
    returns the dataset and ``{file name: brightness offset}``."""
    import uuid

    import fiftyone as fo

    from qualiclip.video import score_video
    from qualiclip_plugin.api import compute_image_quality

    # The App server reads video metadata with FFmpeg's ffprobe and refuses video datasets
    # without it (scripts/test.sh installs Debian's ffmpeg).
    if shutil.which("ffprobe") is None:
        missing_requirement("ffprobe is not installed (apt-get install ffmpeg): the App shows "
                            "no video datasets")

    paths = [ramp_video(tmp_path / f"clip_{i}.mp4", offset=o) for i, o in enumerate(OFFSETS)]
    settings = dict(weights=str(tiny_checkpoint), device="cpu", precision="fp32")
    means = {p: score_video(p, fps=1, **settings).summary.mean for p in paths}
    ranked = sorted(paths, key=means.get)
    dataset = fo.Dataset(f"qualiclip-app-video-{uuid.uuid4().hex[:8]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in (ranked[1], ranked[0], ranked[2])])
    dataset.compute_metadata()  # frame rate and size, as the App reads them
    summary = compute_image_quality(dataset, fps=1, segment_seconds=1, **settings)
    assert summary and dataset.exists("quality_segments").count() == len(paths), summary
    yield dataset, {p.name: o for p, o in zip(paths, OFFSETS, strict=True)}
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def _clip_names(texts: list[str]) -> list[str]:
    return [(re.findall(r"clip_\d+\.mp4", t) or [f"<no video name in {t!r}>"])[0]
            for t in texts]


def _brightness(png: bytes) -> float:
    """Median grey level of the middle of a screenshot (the flat frame the player shows)."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    h, w = image.shape
    return float(np.median(image[h // 3: 2 * h // 3, w // 3: 2 * w // 3]))


def test_rank_videos_and_open_the_worst_segment(app, video_dataset):
    from playwright.sync_api import expect

    dataset, offsets = video_dataset
    names = {s.id: Path(s.filepath).name for s in dataset}
    by_mean = [names[i] for i in dataset.sort_by("quality").values("id")]
    inserted = [names[i] for i in dataset.values("id")]
    assert by_mean != inserted  # ranking must reorder the grid
    # the worst segment: lowest confidence over all videos
    segments = [(d.confidence, d.support, sample.filepath) for sample in dataset
                for d in sample["quality_segments"].detections]
    worst_score, (first, last), worst_path = min(segments)
    worst_name = Path(worst_path).name

    app.open_dataset(dataset.name)
    expect(app.grid_tiles()).to_have_count(len(dataset), timeout=30_000)
    with app.step("the grid shows the video names"):
        app.show_in_grid("filepath")
        expect(app.grid_tiles().first).to_contain_text("clip_", timeout=30_000)
    panel = app.open_quality_panel()

    with app.step("the panel counts videos and offers the per-video summaries"):
        expect(app.panel_button(f"Scored: {len(dataset)}")).to_be_visible()
        expect(panel).to_contain_text("Per-video score")
        expect(panel).to_contain_text("scored videos in the view", timeout=30_000)

    with app.step("'Worst N' ranks the videos by their mean score, worst first"):
        app.panel_button("Worst N").click()
        expect(panel).to_contain_text("lowest 'quality' scores", timeout=30_000)
        _wait(lambda: _clip_names(app.grid_texts()) == by_mean,
              lambda: f"grid {_clip_names(app.grid_texts())} is not {by_mean}")

    with app.step("'Worst segments' shows the segments as clips, the worst first"):
        app.panel_button("Worst segments").click()
        expect(panel).to_contain_text("worst segments", timeout=30_000)
        expect(app.page.get_by_text(f"{len(segments)} clips", exact=True)).to_be_visible(
            timeout=30_000)
        expect(panel).to_contain_text(f"quality ({len(segments)} clips in the view)")
        tag = app.grid_tiles().first.locator("[data-cy=tag-quality_segments]")
        expect(tag).to_have_attribute("title", "quality_segments: low quality")
        _wait(lambda: _clip_names(app.grid_texts())[:1] == [worst_name],
              lambda: f"first clip {_clip_names(app.grid_texts())[:1]} is not {worst_name}")

    with app.step("the worst clip opens in the player on its segment"):
        app.grid_tiles().first.click()
        modal = app.page.locator("[data-cy=modal]")
        expect(modal).to_be_visible()
        expect(modal).to_contain_text(worst_name)
        # The player's own clock (m:ss of the frame it shows) within the segment's seconds.
        clock = modal.locator("[data-cy=looker-video-time]")
        start, end = (first - 1) / VIDEO_RATE, last / VIDEO_RATE
        expect(clock).to_have_text(re.compile(r"\d+:\d\d / "), timeout=30_000)
        _wait(lambda: _seconds(clock.inner_text()) is not None,
              lambda: f"no time in {clock.inner_text()!r}")
        assert int(start) <= _seconds(clock.inner_text()) <= end, clock.inner_text()
        # The frame on screen: its brightness is 20 + offset + 5 (n - 1) for frame n.
        low, high = (offsets[worst_name] + 20 + 5 * (n - 1) for n in (first, last))
        player = modal.locator("[data-cy=modal-looker-container]")
        shown = _brightness(player.screenshot())
        assert low - 4 <= shown <= high + 4, (
            f"the player shows grey {shown}, not a frame of the segment [{first}, {last}] "
            f"(grey {low}..{high}); worst score {worst_score}")


def _seconds(text: str) -> float | None:
    found = re.match(r"\s*(\d+):(\d\d)", text)
    return None if not found else int(found[1]) * 60 + int(found[2])


def _wait(ready, describe, timeout: float = 30) -> None:
    import time

    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            raise AssertionError(describe())
        time.sleep(0.25)
