"""Video datasets in FiftyOne: the operator / Python API score sampled frames into
``frames.<field>`` with a per-video summary and worst segment, through the same runner as images
(ownership, run records, delegated and sharded runs, resume after a killed worker), and a
``to_frames`` view is scored as images. Videos are real H.264 files written here with PyAV."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("av")

from qualiclip.prompts import PAIR_NAMES  # noqa: E402
from tests.qualiclip.test_video import (  # noqa: E402
    degraded_video,
    expected_frames,
    independent_summary,
    ramp_frames,
    write_video,
)

TOL = 1e-5


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """A 3.1 s ramp at 10 fps (64x48), a 10 s clip at 5 fps whose seconds 4-6 are noisy, and
    a file that is no video."""
    folder = tmp_path_factory.mktemp("videos")
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(b"not a video " * 100)
    return {"ramp": write_video(folder / "ramp.mp4", ramp_frames(31), 10),
            "degraded": degraded_video(folder / "degraded.mp4"),
            "corrupt": corrupt}


@pytest.fixture()
def probe_checkpoint(tmp_path, tiny_clip, probe_model) -> Path:
    """``probe_model`` (noisy frames score lower) as a checkpoint file."""
    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import write_checkpoint

    return write_checkpoint(tmp_path / "probe.pth", model_config=TINY_TEST_CONFIG,
                            state_dict=tiny_clip.state_dict(),
                            prompt_features=probe_model.prompt_features)


@pytest.fixture()
def video_dataset(videos):
    """Factory: a persistent video dataset of ``names`` (default: all three files)."""
    import uuid

    import fiftyone as fo

    created = []

    def factory(names=("ramp", "degraded", "corrupt")):
        dataset = fo.Dataset(f"qualiclip-video-{uuid.uuid4().hex[:10]}", persistent=True)
        dataset.add_samples([fo.Sample(filepath=str(videos[n])) for n in names])
        created.append(dataset.name)
        return dataset

    yield factory
    for name in created:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


def _params(weights, **extra):
    return dict(weights=str(weights), device="cpu", precision="fp32", batch_size=4, **extra)


def _frames(sample, field):
    """``{frame_number: value}`` of the frames of ``sample`` holding ``field``."""
    return {n: frame[field] for n, frame in sample.frames.items()
            if frame.has_field(field) and frame[field] is not None}


def _library_scores(path, weights, fps, max_side=None):
    from qualiclip.video import iter_video_scores

    return list(iter_video_scores([path], weights=str(weights), device="cpu", fps=fps,
                                  precision="fp32", backend="torch", max_side=max_side))


def test_frames_summaries_and_worst_segment(video_dataset, videos, probe_checkpoint):
    """At 1 and 2 fps: the sampled frames (1-based frame numbers) hold the library's scores and
    attribute scores, each video's summary equals its frames aggregated here, the worst 3 s
    segment is the noisy seconds, the corrupt file is one error and nothing else."""
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality

    dataset = video_dataset()
    one = compute_image_quality(dataset, **_params(probe_checkpoint, backend="torch"))
    assert (one["scored"], one["failed"], one["frames_scored"]) == (2, 1, 4 + 10)
    two = compute_image_quality(dataset, field="q2", fps="2", pair_scores=False,
                                segment_seconds=2, **_params(probe_checkpoint))
    assert two["frames_scored"] == 7 + 20
    dataset.reload()
    by_name = {Path(s.filepath).stem: s for s in dataset}

    for field, fps, segment in (("quality", 1, 3.0), ("q2", 2, 2.0)):
        for name, rate, count in (("ramp", 10, 31), ("degraded", 5, 50)):
            sample = by_name[name]
            scores = _frames(sample, field)
            # FiftyOne numbers frames from 1: the library's frame k is frame_number k + 1.
            assert sorted(scores) == [k + 1 for k in expected_frames(count, Fraction(rate),
                                                                     fps)]
            library = {r.frame + 1: r for r in _library_scores(videos[name], probe_checkpoint,
                                                               fps)}
            for number, value in scores.items():
                assert value == pytest.approx(library[number].score, abs=TOL)
                if field == "quality":
                    for pair in PAIR_NAMES:
                        assert sample.frames[number][f"quality_{pair}"] == pytest.approx(
                            library[number].pair_scores[pair], abs=TOL)
            assert not _frames(sample, f"{field}_error")
            numbers = sorted(scores)
            times = [(n - 1) / rate for n in numbers]
            expected = independent_summary([scores[n] for n in numbers], times, segment)
            assert sample[field] == pytest.approx(expected["mean"], abs=TOL)
            assert sample[f"{field}_min"] == pytest.approx(expected["min"], abs=TOL)
            assert sample[f"{field}_p10"] == pytest.approx(expected["p10"], abs=TOL)
            (worst,) = sample[f"{field}_segments"].detections
            assert isinstance(sample[f"{field}_segments"], fo.TemporalDetections)
            assert worst.label == "low quality"
            assert worst.support == [round(expected["worst_start"] * rate) + 1,
                                     round(expected["worst_end"] * rate) + 1]
            assert worst.confidence == pytest.approx(expected["worst_mean"], abs=TOL)
            assert sample[f"{field}_error"] is None

        # The noisy seconds 4, 5, 6 (frames 21-35 at 5 fps) are the worst segment.
        first, last = by_name["degraded"][f"{field}_segments"].detections[0].support
        assert 21 <= first and last <= 35 and last - first >= (10 if fps == 1 else 5)
        corrupt = by_name["corrupt"]
        assert corrupt[f"{field}_error"].startswith("corrupt.mp4: cannot open as a video")
        assert "\n" not in corrupt[f"{field}_error"]
        for suffix in ("", "_min", "_p10", "_segments"):
            assert corrupt[f"{field}{suffix}"] is None
        assert not _frames(corrupt, field) and not _frames(corrupt, f"{field}_error")

    # max_side reaches the decoder: the frames are scored downscaled, as the library does.
    ramp = dataset.select(by_name["ramp"].id)
    compute_image_quality(ramp, field="q3", max_side=32, pair_scores=False,
                          **_params(probe_checkpoint))
    small = {r.frame + 1: r.score for r in _library_scores(videos["ramp"], probe_checkpoint, 1,
                                                           max_side=32)}
    assert _frames(ramp.first(), "q3") == pytest.approx(small, abs=TOL)
    assert small != pytest.approx(_frames(by_name["ramp"], "quality"), abs=TOL)

    schema = dataset.get_frame_field_schema()
    assert isinstance(schema["quality"], fo.FloatField)
    assert "q2_sharp_image" not in schema  # attributes only when asked for


def test_video_fields_belong_to_the_run(video_dataset, tiny_checkpoint):
    """Every field a video run writes is recorded as that run's; a user's own frame field of
    such a name is refused with the plugin's one-sentence reason, before any write."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust import protection
    from qualiclip_plugin.trust.request import RequestError

    dataset = video_dataset(("ramp",))
    compute_image_quality(dataset, **_params(tiny_checkpoint))
    owners = protection.field_owners(dataset)
    run = protection.scoring_run("quality")
    written = {"quality", "quality_error", "quality_min", "quality_p10", "quality_segments",
               "frames.quality", "frames.quality_error",
               *(f"frames.quality_{p}" for p in PAIR_NAMES)}
    assert {name for name, owner in owners.items() if owner.run == run} == written

    sample = dataset.first()
    sample.frames[2]["mine"] = 0.25  # a user's own frame values, named like a run's output
    sample.save()
    with pytest.raises(RequestError, match=r"^frame score field 'frames\.mine' already exists "
                                           r"and was not written by this plugin"):
        compute_image_quality(dataset, field="mine", **_params(tiny_checkpoint))
    dataset.reload()
    assert not dataset.has_run("qualiclip_mine") and not dataset.has_sample_field("mine_min")
    assert dataset.count("frames.mine") == 1


def test_delegated_and_sharded_runs(video_dataset, operator, tiny_checkpoint):
    """A delegated run and a 2-shard run on video datasets score every video once, as an
    immediate run does."""
    from tests.qualiclip_plugin.test_delegated import _ops, _run_queue

    # At 2 fps, so a queued run that lost its options (and sampled at the default 1) shows.
    reference = video_dataset(("ramp", "degraded"))
    operator(reference, **_params(tiny_checkpoint, fps="2"))
    expected = {s.filepath: (s["quality"], _frames(s, "quality")) for s in reference}

    delegated = video_dataset(("ramp", "degraded"))
    queued = operator(delegated, **_params(tiny_checkpoint, fps="2"), delegate=True)
    assert queued["run_state"] == "queued"
    sharded = video_dataset(("ramp", "degraded", "ramp", "corrupt"))
    summary = operator(sharded, **_params(tiny_checkpoint, fps="2", num_shards=2))
    assert summary["queued_shards"] == 2
    for dataset in (delegated, sharded):
        _run_queue(dataset)
        ops = _ops(dataset)
        assert all(op.run_state == "completed" for op in ops), [op.result.error for op in ops]
        dataset.reload()
        for sample in dataset:
            if sample.filepath.endswith("corrupt.mp4"):
                assert sample["quality_error"] and sample["quality"] is None
                continue
            mean, frames = expected[sample.filepath]
            assert sample["quality"] == pytest.approx(mean, abs=TOL)
            assert _frames(sample, "quality") == pytest.approx(frames, abs=TOL)
    per_shard = sorted(op.result.result["to_score"] for op in _ops(sharded))
    assert per_shard == [2, 2]
    assert sum(op.result.result["frames_scored"] for op in _ops(sharded)) == 7 + 20 + 7


_KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import fiftyone as fo
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.scoring import videos

    written = []
    original = videos.write_video

    def write_then_die(dataset, sample_id, results, *args):
        if len(written) == 1:
            # The 2nd video: a frame value is saved (frame 2: one that 1 fps does not
            # sample, so only clearing removes it), then the worker dies mid-video.
            sample = dataset[sample_id]
            sample.frames[2]["quality"] = 0.5
            sample.save()
            os.kill(os.getpid(), signal.SIGKILL)
        written.append(sample_id)
        return original(dataset, sample_id, results, *args)

    videos.write_video = write_then_die
    compute_image_quality(fo.load_dataset(sys.argv[1]), weights=sys.argv[2], device="cpu",
                          precision="fp32", batch_size=4)
""")


def test_resume_after_a_killed_worker_scores_each_frame_once(video_dataset, tiny_checkpoint,
                                                             monkeypatch):
    """A worker process SIGKILLed inside its 2nd video: the rerun (overwrite off) decodes only
    the videos without a summary, and every sampled frame ends scored exactly once, equal to an
    uninterrupted run; a further rerun decodes nothing."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.scoring import claims

    dataset = video_dataset(("ramp", "degraded", "ramp"))
    env = {**os.environ, "QUALICLIP_CLAIM_TIMEOUT": "1"}  # the killed run's claim expires
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, dataset.name,
                             str(tiny_checkpoint)], env=env, capture_output=True, text=True,
                            timeout=300, cwd=Path(__file__).parents[2])
    assert killed.returncode == -9, killed.stderr[-2000:]
    dataset.reload()
    first, second, third = list(dataset)
    assert first["quality"] is not None and second["quality"] is None
    assert _frames(second, "quality") == {2: 0.5}  # the stopped attempt's leftover

    decoded = []
    from qualiclip import video as library_video

    original = library_video.iter_frames

    def counting(path, fps=1.0):
        decoded.append(Path(path).name)
        return original(path, fps)

    monkeypatch.setattr(library_video, "iter_frames", counting)
    monkeypatch.setenv("QUALICLIP_CLAIM_TIMEOUT", "1")
    import time

    time.sleep(1.1)
    assert claims.holder(dataset, "quality") is None
    summary = compute_image_quality(dataset, **_params(tiny_checkpoint))
    assert decoded == ["degraded.mp4", "ramp.mp4"]  # the finished first video is not decoded
    assert (summary["skipped"], summary["frames_scored"]) == (1, 10 + 4)

    reference = video_dataset(("ramp", "degraded", "ramp"))
    compute_image_quality(reference, **_params(tiny_checkpoint))
    dataset.reload()
    for resumed, whole in zip(dataset, reference, strict=True):
        assert resumed["quality"] == pytest.approx(whole["quality"], abs=TOL)
        assert _frames(resumed, "quality") == pytest.approx(_frames(whole, "quality"), abs=TOL)
    assert dataset.count("frames.quality") == 4 + 10 + 4  # each sampled frame once

    decoded.clear()
    again = compute_image_quality(dataset, **_params(tiny_checkpoint))
    assert decoded == [] and again["frames_scored"] == 0 and again["skipped"] == 3


def test_frames_view_is_scored_as_images(video_dataset, videos, tiny_checkpoint, tmp_path,
                                         monkeypatch):
    """``to_frames(sample_frames=True)``: the frame images are scored as an image dataset, into
    the frames dataset FiftyOne generated (the images themselves, so the same scores as the
    library gives those files); the video dataset gets no field; a patches-like generated view
    is still refused."""
    import fiftyone as fo

    from qualiclip.scoring import score_images
    from qualiclip.video import iter_frames
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust.request import RequestError

    dataset = video_dataset(("ramp",))
    # FiftyOne samples frames with the ffmpeg program, which this machine need not have: the
    # frame images are written here (PyAV) where FiftyOne looks for them, so it uses them.
    out = tmp_path / "frames"
    (out / "ramp").mkdir(parents=True)
    from PIL import Image

    for frame in iter_frames(videos["ramp"], fps=None):
        Image.fromarray(frame.pixels).save(out / "ramp" / f"{frame.frame + 1:06d}.png")
    sample = dataset.first()
    sample.metadata = fo.VideoMetadata(frame_width=64, frame_height=48, frame_rate=10,
                                       total_frame_count=31, duration=3.1)
    sample.save()
    frames = dataset.to_frames(sample_frames=True, output_dir=str(out), frames_patt="%06d.png",
                               max_fps=5)
    assert frames.media_type == "image" and frames.count() == 16

    summary = compute_image_quality(frames, **_params(tiny_checkpoint, pair_scores=False))
    assert summary["scored"] == 16
    expected = {r.path: r.score for r in score_images(
        frames.values("filepath"), weights=str(tiny_checkpoint), device="cpu",
        precision="fp32", backend="torch", num_workers=0, progress=False)}
    for filepath, score in zip(*frames.values(["filepath", "quality"]), strict=True):
        assert score == pytest.approx(expected[filepath], abs=TOL)
    frames_dataset = frames._dataset
    assert frames_dataset.has_run("qualiclip_quality")
    assert "quality" not in dataset.get_frame_field_schema()
    assert not dataset.has_sample_field("quality")

    # Resume works there as on any image dataset; clips still have no images to score.
    assert compute_image_quality(frames, **_params(tiny_checkpoint, pair_scores=False)
                                 )["skipped"] == 16
    with pytest.raises(RequestError, match="^a frames view is scored in the frames dataset "
                                           "FiftyOne generated for it, which a background"):
        compute_image_quality(frames, field="q2", delegate=True, **_params(tiny_checkpoint))
    # In the App, a frames view larger than what runs immediately by default still runs
    # immediately (a background worker could not open it).
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI
    from qualiclip_plugin.scoring import operator as operator_module

    monkeypatch.setattr(operator_module, "IMMEDIATE_MAX_SAMPLES", 10)
    result = foo.execute_operator(OPERATOR_URI, ctx=dict(
        view=frames, params={**_params(tiny_checkpoint), "field": "q3", "pair_scores": False}))
    assert result.error is None and frames.count("q3") == 16

    # The video dataset's own frame scores reach the frames dataset as plain values: a run of
    # the frames view into that name is refused (they are not its to replace).
    compute_image_quality(dataset, field="vq", **_params(tiny_checkpoint))
    regenerated = dataset.to_frames(sample_frames=True, output_dir=str(out),
                                    frames_patt="%06d.png", max_fps=5)
    assert regenerated.count("vq") == 4
    with pytest.raises(RequestError, match="^field 'vq' holds 4 values with no record"):
        compute_image_quality(regenerated, field="vq", **_params(tiny_checkpoint))
    clips = dataset.to_clips([[(1, 10)]])
    with pytest.raises(RequestError, match="generated view"):
        compute_image_quality(clips, **_params(tiny_checkpoint))


@pytest.mark.parametrize("fps, message", [("0", "fps must be"), ("fast", "fps must be"),
                                          ("2000", "fps must be")])
def test_bad_video_options_are_refused(video_dataset, tiny_checkpoint, fps, message):
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust.request import RequestError

    dataset = video_dataset(("ramp",))
    with pytest.raises(RequestError, match=message):
        compute_image_quality(dataset, fps=fps, **_params(tiny_checkpoint))
    with pytest.raises(RequestError, match="segment_seconds must be"):
        compute_image_quality(dataset, segment_seconds=0, **_params(tiny_checkpoint))
    # Ray results are one row per image: not written into a video dataset's fields.
    from qualiclip_plugin.api import import_scores

    with pytest.raises(RequestError, match="holds videos, and import_scores writes one score"):
        import_scores(dataset, str(tiny_checkpoint.parent))
    assert not dataset.has_sample_field("quality")


def test_form_shows_video_options_for_video_datasets_only(video_dataset, make_dataset,
                                                          image_files, tiny_checkpoint):
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI

    operator = foo.get_operator(OPERATOR_URI)

    def form(dataset):
        from fiftyone.operators.executor import ExecutionContext

        ctx = ExecutionContext(request_params=dict(
            dataset_name=dataset.name, params=_params(tiny_checkpoint)))
        return set(operator.resolve_input(ctx).type.properties)

    assert {"fps", "segment_seconds"} <= form(video_dataset(("ramp",)))
    assert not {"fps", "segment_seconds"} & form(make_dataset(image_files[:2]))


def test_apply_model_on_a_video_dataset(video_dataset, tiny_checkpoint):
    """``qualiclip_plugin.fo_model.apply_model`` scores a video collection through the plugin's
    run (same fields and values as the operator); FiftyOne's own ``dataset.apply_model`` would
    read every frame with ffmpeg and write no summary, so the model refuses it in one line."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.fo_model import apply_model, load_model

    model = load_model(weights=str(tiny_checkpoint), device="cpu", precision="fp32",
                       backend="torch", pair_scores=True)
    dataset = video_dataset(("ramp",))
    with pytest.raises(ValueError, match=r"^QualiCLIP scores video datasets with its own "
                                         r"decoder.*fo_model\.apply_model"):
        dataset.apply_model(model, label_field="quality")
    summary = apply_model(dataset, model, label_field="quality", fps=2, batch_size=4)
    assert summary["frames_scored"] == 7
    reference = video_dataset(("ramp",))
    compute_image_quality(reference, fps=2, **_params(tiny_checkpoint))
    dataset.reload()
    for got, want in zip(dataset, reference, strict=True):
        assert got["quality"] == pytest.approx(want["quality"], abs=TOL)
        assert _frames(got, "quality_sharp_image") == pytest.approx(
            _frames(want, "quality_sharp_image"), abs=TOL)
    assert dataset.get_run_info("qualiclip_quality").config.fps == 2


def test_app_execution_on_a_video_dataset(video_dataset, tiny_checkpoint):
    """Through ``foo.execute_operator`` (the App's path, under its policy): a bad ``fps`` is the
    form's one-sentence refusal; a run on the selected video at every frame scores all of its
    frames, and flags and tags it by its mean."""
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI
    from tests.conftest import refusal

    dataset = video_dataset(("ramp", "degraded"))
    message = refusal(lambda: foo.execute_operator(OPERATOR_URI, ctx=dict(
        view=dataset.view(), params={**_params(tiny_checkpoint), "fps": "0"})))
    assert message.endswith("Reason: fps must be a number of frames per second in (0, 1000], "
                            "or 'all' for every frame; got '0'"), message
    selected = dataset.values("id")[1:]
    foo.execute_operator(OPERATOR_URI, ctx=dict(view=dataset.view(), selected=selected, params={
        **_params(tiny_checkpoint), "fps": "all", "view_target": "SELECTED_SAMPLES",
        "flag_mode": "percent", "flag_percent": 100}))
    dataset.reload()
    assert dataset.exists("quality").values("id") == selected
    video = dataset[selected[0]]
    assert sorted(_frames(video, "quality")) == list(range(1, 51))  # every frame, from 1
    assert video["quality_flagged"] is True and video.tags == ["low_quality"]
    assert dataset.get_run_info("qualiclip_quality").config.fps is None


def test_another_sampling_rate_is_not_mixed_into_a_field(video_dataset, tiny_checkpoint):
    """Summaries made at 1 fps and at 2 fps do not share a field unless all are replaced."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust.request import RequestError

    dataset = video_dataset(("ramp", "ramp"))
    compute_image_quality(dataset.limit(1), **_params(tiny_checkpoint))
    with pytest.raises(RequestError, match=r"^field 'quality' holds 1 scores made with other "
                                           r"settings \(fps: 1\.0 -> 2\.0\)"):
        compute_image_quality(dataset, fps=2, **_params(tiny_checkpoint))
    assert dataset.count("frames.quality") == 4
    summary = compute_image_quality(dataset, fps=2, overwrite=True, **_params(tiny_checkpoint))
    assert summary["frames_scored"] == 7 + 7 and dataset.count("frames.quality") == 14

    # The App's form says so before any model is loaded (the request pipeline's early check).
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI
    from tests.conftest import refusal

    message = refusal(lambda: foo.execute_operator(OPERATOR_URI, ctx=dict(
        view=dataset.view(), params={**_params(tiny_checkpoint), "fps": "1"})))
    assert "Reason: field 'quality' holds scores made with other settings (fps: 2.0 -> 1.0)" \
        in message, message
