"""Video files: frame sampling, per-frame scores, per-video summaries, errors (qualiclip.video and
``qualiclip score`` on videos). The videos are written here with PyAV (H.264 in MP4)."""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

av = pytest.importorskip("av")

from qualiclip.cli import main  # noqa: E402
from qualiclip.video import iter_frames, iter_video_scores, score_video, summarize  # noqa: E402
from tests.synthetic import add_noise, smooth_image  # noqa: E402


def write_video(path: Path, frames: list[np.ndarray], rate: int | Fraction,
                crf: int = 18, pix_fmt: str = "yuv420p") -> Path:
    """``frames`` ((H, W, 3) uint8, even sides) -> an H.264 MP4 at ``rate`` frames/s."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = pix_fmt
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def ramp_frames(count: int, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    """Frames whose brightness encodes their number (frame i has value 2 * i % 256)."""
    w, h = size
    return [np.full((h, w, 3), (2 * i) % 256, np.uint8) for i in range(count)]


def expected_frames(n_frames: int, rate: Fraction, fps: float | None) -> list[int]:
    """The frames sampling at ``fps`` must take, computed another way than the library does:
    for each target time k / fps, the first frame n with n / rate >= k / fps, i.e.
    n = ceil(k * rate / fps)."""
    if fps is None:
        return list(range(n_frames))
    fps_q = Fraction(str(fps))
    out, k = [], 0
    while True:
        n = math.ceil(k * rate / fps_q)
        if n >= n_frames:
            return out
        if not out or n != out[-1]:
            out.append(n)
        k += 1


@pytest.mark.parametrize("rate", [10, 24])
@pytest.mark.parametrize("fps", [1, 2.5, 3, None])
def test_sampled_frame_numbers_and_timestamps(tmp_path, rate, fps):
    count = 3 * rate + 1  # 3 s and one frame
    video = write_video(tmp_path / "ramp.mp4", ramp_frames(count), rate)
    frames = list(iter_frames(video, fps))
    assert [f.error for f in frames] == [None] * len(frames)
    numbers = [f.frame for f in frames]
    assert numbers == expected_frames(count, Fraction(rate), fps)
    for f in frames:
        assert f.timestamp == pytest.approx(f.frame / rate, abs=1e-9)
        # The pixels are that frame's (the value encodes the number; H.264 moves it by a few).
        assert abs(float(f.pixels.mean()) - (2 * f.frame) % 256) < 4


def test_frames_score_as_the_same_pixels_scored_as_images(tmp_path, tiny_model):
    """The same inference core: a sampled frame's score equals that frame's pixels scored by
    ``score_images`` (fp32, so exactly)."""
    from qualiclip import score_images

    video = write_video(tmp_path / "v.mp4", ramp_frames(30, (80, 64)), 10)
    results = list(iter_video_scores(video, model=tiny_model, fps=2, precision="fp32",
                                     batch_size=4))
    pixels = [f.pixels for f in iter_frames(video, 2)]
    images = score_images(pixels, model=tiny_model, precision="fp32", progress=False)
    assert [r.frame for r in results] == [0, 5, 10, 15, 20, 25]
    assert [r.score for r in results] == pytest.approx([r.score for r in images], abs=1e-6)
    assert all(r.width == 80 and r.height == 64 for r in results)
    capped = list(iter_video_scores(video, model=tiny_model, fps=2, precision="fp32",
                                    max_side=40))
    capped_images = score_images(pixels, model=tiny_model, precision="fp32", max_side=40,
                                 progress=False)
    assert [r.score for r in capped] == pytest.approx([r.score for r in capped_images],
                                                      abs=1e-6)


def independent_summary(scores: list[float], times: list[float], segment: float) -> dict:
    """The summary by brute force: numpy statistics, and every window [t, t + segment) tried."""
    windows = []
    for t0 in times:
        inside = [s for s, t in zip(scores, times) if t0 <= t < t0 + segment - 1e-9]
        picked = [t for t in times if t0 <= t < t0 + segment - 1e-9]
        windows.append((float(np.mean(inside)), t0, picked[-1]))
    worst = min(windows, key=lambda w: w[0])
    return {"mean": float(np.mean(scores)), "p10": float(np.percentile(scores, 10)),
            "min": float(np.min(scores)), "worst_mean": worst[0], "worst_start": worst[1],
            "worst_end": worst[2]}


def degraded_video(path: Path, seconds: int = 10, rate: int = 5,
                   bad: tuple[int, int] = (4, 7)) -> Path:
    """A 256x256 video of slowly changing smooth scenes whose seconds [bad[0], bad[1]) carry
    strong Gaussian noise (std 0.3), encoded nearly losslessly so the noise survives."""
    frames = []
    for i in range(seconds * rate):
        scene = smooth_image(i // rate)
        if bad[0] * rate <= i < bad[1] * rate:
            scene = add_noise(scene, 1000 + i)
        frames.append((scene[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
    return write_video(path, frames, rate, crf=4, pix_fmt="yuv444p")


def test_worst_segment_covers_the_degraded_seconds_and_summaries_match(tmp_path, probe_model,
                                                                      tiny_clip):
    """With a model for which noisy frames score lower (``probe_model``: the tiny model's prompts
    replaced by a clean-vs-noisy direction fitted on other images; a random model has no reason
    to rank noise low), the worst 3 s segment is the 3 noisy seconds. The CLI's summary row
    equals the per-frame rows aggregated independently."""
    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import write_checkpoint

    video = degraded_video(tmp_path / "clip.mp4")
    result = score_video(video, model=probe_model, fps=1, precision="fp32", segment_seconds=3)
    by_time = {r.timestamp: r.score for r in result.frames}
    assert sorted(by_time) == [float(t) for t in range(10)]
    noisy = [by_time[t] for t in (4.0, 5.0, 6.0)]
    clean = [s for t, s in by_time.items() if t not in (4.0, 5.0, 6.0)]
    assert max(noisy) < min(clean), by_time  # the model does see the degradation
    assert (result.summary.worst_start, result.summary.worst_end) == (4.0, 6.0)

    # Through the CLI, at 2.5 fps: summaries vs the rows, aggregated here.
    weights = tmp_path / "probe.pth"
    write_checkpoint(weights, model_config=TINY_TEST_CONFIG, state_dict=tiny_clip.state_dict(),
                     prompt_features=probe_model.prompt_features)
    out = tmp_path / "scores.csv"
    run = CliRunner().invoke(main, ["score", str(video), "--weights", str(weights), "--fps",
                                    "2.5", "--segment", "2", "--precision", "fp32",
                                    "--no-progress", "-o", str(out)])
    assert run.exit_code == 0, run.output
    rows = list(csv.DictReader(out.open()))
    assert [int(r["frame"]) for r in rows] == expected_frames(50, Fraction(5), 2.5)
    scores = [float(r["score"]) for r in rows]
    times = [float(r["timestamp"]) for r in rows]
    (summary,) = list(csv.DictReader(Path(str(out) + ".videos.csv").open()))
    expected = independent_summary(scores, times, 2.0)
    for key, value in expected.items():
        assert float(summary[key]) == pytest.approx(value, abs=1e-6), key
    assert int(summary["frames"]) == len(rows) and summary["failed"] == "0"
    assert 4.0 <= float(summary["worst_start"]) and float(summary["worst_end"]) < 7.0


def test_summarize_edge_cases():
    from qualiclip.video import FrameScore

    one = summarize([FrameScore("a.mp4", 0, 0.0, 0.5)], segment_seconds=3)
    assert (one.mean, one.p10, one.min, one.worst_start, one.worst_end) == (0.5, 0.5, 0.5,
                                                                           0.0, 0.0)
    failed = summarize([FrameScore("a.mp4", error="a.mp4: cannot open as a video (x)")])
    assert failed.frames == 0 and failed.failed == 1 and failed.mean is None
    assert failed.error.startswith("a.mp4")


def test_corrupt_videos_are_one_error_row_each(tmp_path, tiny_checkpoint):
    """Garbage bytes, a truncated MP4 and an empty file: one error row each, the good video's
    frames still scored, exit status 0."""
    good = write_video(tmp_path / "good.mp4", ramp_frames(20), 10)
    data = good.read_bytes()
    (tmp_path / "garbage.mp4").write_bytes(b"not a video " * 200)
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.mov").write_bytes(b"")
    out = tmp_path / "scores.csv"
    run = CliRunner().invoke(main, ["score", str(tmp_path), "--weights", str(tiny_checkpoint),
                                    "--no-progress", "-o", str(out)])
    assert run.exit_code == 0, run.output
    rows = list(csv.DictReader(out.open()))
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert sorted(errors) == ["empty.mov", "garbage.mp4", "truncated.mp4"]
    for name, error in errors.items():
        assert error.startswith(f"{name}: cannot open as a video"), error
        assert "\n" not in error and str(tmp_path) not in error
    assert [r["frame"] for r in rows if Path(r["path"]).name == "good.mp4"] == ["0", "10"]
    assert "scored 2, failed 3" in run.output


def test_fps_option_and_images_beside_videos(tmp_path, tiny_checkpoint):
    """--fps all scores every frame; images in the same run keep empty frame/timestamp cells;
    a bad --fps is a one-line usage error."""
    from tests.conftest import make_image

    video = write_video(tmp_path / "v.mp4", ramp_frames(7), 5)
    image = make_image(tmp_path / "a.png")
    run = CliRunner().invoke(main, ["score", str(image), str(video), "--fps", "all",
                                    "--weights", str(tiny_checkpoint), "--no-progress"])
    assert run.exit_code == 0, run.output
    lines = [line for line in run.stdout.splitlines() if line]
    rows = list(csv.DictReader(lines))
    assert rows[0]["path"] == str(image) and rows[0]["frame"] == "" and rows[0]["score"]
    assert [r["frame"] for r in rows[1:]] == [str(i) for i in range(7)]
    assert f"video {video}: frames 7, failed 0" in run.stderr
    bad = CliRunner().invoke(main, ["score", str(video), "--fps", "0",
                                    "--weights", str(tiny_checkpoint)])
    assert bad.exit_code == 2 and "--fps" in bad.output and "Traceback" not in bad.output
