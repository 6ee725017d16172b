"""The operator through ``foo.execute_operator`` against the session's real database."""

from __future__ import annotations

import math

import pytest

from qualiclip.prompts import PAIR_NAMES

TOL = 1e-5


def _params(tiny_checkpoint, **extra):
    return dict(weights=str(tiny_checkpoint), device="cpu", precision="fp32", batch_size=4,
                **extra)


def _snapshot(dataset):
    """Everything a refused run must leave unchanged: samples, schema, runs, saved views."""
    dataset.reload()
    return ([s.to_dict() for s in dataset.iter_samples()], sorted(dataset.get_field_schema()),
            dataset.list_runs(), dataset.list_saved_views())


def test_immediate_run_matches_library_and_records_errors(make_dataset, operator,
                                                          tiny_checkpoint, reference_scores):
    dataset = make_dataset()
    summary = operator(dataset, **_params(tiny_checkpoint, chunk_size=5))
    dataset.reload()
    good = [s for s in dataset if not s.filepath.endswith("broken.jpg")]
    for sample in good:
        ref = reference_scores[sample.filepath]
        assert sample["quality"] == pytest.approx(ref.score, abs=TOL)
        for name in PAIR_NAMES:
            assert sample[f"quality_{name}"] == pytest.approx(ref.pair_scores[name], abs=TOL)
        assert sample["quality_error"] is None
    broken = dataset.match({"filepath": {"$regex": "broken"}}).first()
    assert broken["quality"] is None and "not an image" in broken["quality_error"]
    assert summary["scored"] == len(good) and summary["failed"] == 1
    assert summary["skipped"] == 0
    assert summary["mean"] == pytest.approx(sum(s["quality"] for s in good) / len(good))


def test_provenance_recorded(make_dataset, operator, tiny_checkpoint):
    from qualiclip.weights import sha256_file

    dataset = make_dataset()
    operator(dataset, **_params(tiny_checkpoint, field="q", pair_scores=False))
    info = dataset.get_run_info("qualiclip_q").config
    assert info.weights_sha256 == sha256_file(tiny_checkpoint)
    assert info.precision == "fp32" and info.max_side is None
    assert info.preprocessing["resize"] == "native resolution"
    assert info.qualiclip_version and info.date
    assert "q_good_photo" not in dataset.get_field_schema()


def test_resume_skips_scored_samples(make_dataset, operator, tiny_checkpoint, reference_scores):
    dataset = make_dataset()
    first = dataset.limit(4)
    operator(first, **_params(tiny_checkpoint))
    # A sentinel: a rerun without overwrite must not rescore (and so not touch) this sample.
    sample = dataset.first()
    sample["quality"] = 0.123456
    sample.save()
    summary = operator(dataset, **_params(tiny_checkpoint))
    assert summary["skipped"] == 4 and summary["scored"] + summary["failed"] == len(dataset) - 4
    dataset.reload()
    assert dataset.first()["quality"] == 0.123456
    last = dataset.skip(8).first()
    assert last["quality"] == pytest.approx(reference_scores[last.filepath].score, abs=TOL)
    summary = operator(dataset, **_params(tiny_checkpoint, overwrite=True))
    assert summary["skipped"] == 0
    dataset.reload()
    assert dataset.first()["quality"] == pytest.approx(
        reference_scores[dataset.first().filepath].score, abs=TOL)


@pytest.mark.parametrize("percent", [10, 34, 100])
def test_flag_percent_hits_exactly_the_worst(make_dataset, operator, tiny_checkpoint, percent):
    dataset = make_dataset()
    operator(dataset, **_params(tiny_checkpoint, flag_percent=percent, flag_view="worst"))
    dataset.reload()
    scored = sorted((s["quality"], s.id) for s in dataset if s["quality"] is not None)
    k = math.ceil(len(scored) * percent / 100)
    worst = {sid for _, sid in scored[:k]}
    flagged = {s.id for s in dataset if s["quality_flagged"]}
    tagged = {s.id for s in dataset if "low_quality" in s.tags}
    assert flagged == worst == tagged and len(flagged) == k
    assert set(dataset.load_saved_view("worst").values("id")) == worst
    broken = dataset.match({"filepath": {"$regex": "broken"}}).first()
    assert broken["quality_flagged"] is None


def test_flag_threshold_and_reflag_moves_tags(make_dataset, operator, tiny_checkpoint):
    dataset = make_dataset()
    operator(dataset, **_params(tiny_checkpoint, flag_percent=50))
    scores = sorted(v for v in dataset.values("quality") if v is not None)
    threshold = scores[2] + 1e-9  # the 3 lowest are strictly below
    summary = operator(dataset, **_params(tiny_checkpoint, flag_threshold=threshold,
                                          flag_tag="blurry"))
    dataset.reload()
    below = {s.id for s in dataset if s["quality"] is not None and s["quality"] < threshold}
    assert len(below) == 3 and summary["flagged"] == 3
    assert {s.id for s in dataset if s["quality_flagged"]} == below
    assert {s.id for s in dataset if "blurry" in s.tags} == below


def test_selected_samples_target(make_dataset, tiny_checkpoint):
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI

    dataset = make_dataset()
    ids = dataset.values("id")[:3]
    foo.execute_operator(OPERATOR_URI, ctx=dict(
        view=dataset.view(), selected=ids,
        params={**_params(tiny_checkpoint), "view_target": "SELECTED_SAMPLES"}))
    dataset.reload()
    assert set(dataset.exists("quality").values("id")) == set(ids)


@pytest.mark.parametrize("case", [
    "string_field", "missing_weights", "invalid_weights", "empty_target", "batch_size_0",
    "percent_150", "both_flags", "max_side_tiny", "bad_field_name", "other_settings",
    "flag_field_is_score", "flag_field_is_attribute", "flag_view_bad_name", "flag_view_taken",
    "int_field", "patches_view", "unrecorded_values",
])
def test_refusals_leave_dataset_unchanged(case, make_dataset, operator, tiny_checkpoint,
                                          tmp_path):
    import fiftyone as fo

    dataset = make_dataset()
    target = dataset
    params = _params(tiny_checkpoint)
    if case == "string_field":
        dataset.add_sample_field("quality", fo.StringField)
        sample = dataset.first()
        sample["quality"] = "good"
        sample.save()
    elif case == "missing_weights":
        params["weights"] = str(tmp_path / "nope.pth")
    elif case == "invalid_weights":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"\x00garbage" * 100)
        params["weights"] = str(bad)
    elif case == "empty_target":
        target = dataset.match({"filepath": "nothing"})
    elif case == "batch_size_0":
        params["batch_size"] = 0
    elif case == "percent_150":
        params["flag_percent"] = 150
    elif case == "both_flags":
        params.update(flag_percent=10, flag_threshold=0.3)
    elif case == "max_side_tiny":
        params["max_side"] = 8
    elif case == "bad_field_name":
        params["field"] = "filepath"
    elif case == "other_settings":
        operator(dataset.limit(3), **params)
        params["max_side"] = 64  # different preprocessing, same field, no overwrite
    elif case == "flag_field_is_score":
        params.update(flag_percent=10, flag_field="quality")
    elif case == "flag_field_is_attribute":
        params.update(flag_percent=10, flag_field="quality_noise_free")
    elif case == "flag_view_bad_name":
        params.update(flag_percent=10, flag_view="!!!")
    elif case == "flag_view_taken":
        dataset.save_view("My Worst", dataset.limit(2))  # same slug as "my_worst"
        params.update(flag_percent=10, flag_view="my_worst")
    elif case == "int_field":
        dataset.add_sample_field("quality", fo.IntField)
    elif case == "patches_view":
        sample = dataset.first()
        sample["gt"] = fo.Detections(detections=[fo.Detection(label="a",
                                                               bounding_box=[0, 0, .5, .5])])
        sample.save()
        target = dataset.to_patches("gt")
    elif case == "unrecorded_values":  # e.g. written by apply_model: no record of the settings
        dataset.add_sample_field("quality", fo.FloatField)
        dataset.set_values("quality", [0.5] * len(dataset))
    before = _snapshot(dataset)
    with pytest.raises(Exception) as info:
        operator(target, **params)
    assert _snapshot(dataset) == before
    message = str(info.value)
    expected = {"string_field": "StringField", "missing_weights": "no such file",
                "invalid_weights": "cannot load weights", "empty_target": "no samples",
                "batch_size_0": "batch_size", "percent_150": "flag_percent",
                "both_flags": "not both", "max_side_tiny": "max_side",
                "bad_field_name": "not usable", "other_settings": "other settings",
                "flag_field_is_score": "fields the scores go into",
                "flag_field_is_attribute": "fields the scores go into",
                "flag_view_bad_name": "cannot name a saved view",
                "flag_view_taken": "would replace your saved view 'My Worst'",
                "int_field": "IntField", "patches_view": "generated view",
                "unrecorded_values": "no record of how they were made"}[case]
    assert expected in message


def test_flag_count_is_exact_for_decimal_percents():
    from qualiclip_plugin.scoring.writing import flag_count

    assert math.ceil(1000 * 16.1 / 100) == 162  # the float formula's error
    assert flag_count(1000, 16.1) == 161
    assert flag_count(100_000, 1.1) == 1100
    assert flag_count(7, 10) == 1 and flag_count(7, 100) == 7 and flag_count(0, 50) == 0
    assert flag_count(3, 33.34) == 2  # a genuine fraction still rounds up


def test_target_that_selects_on_the_score_field_is_flagged_after_scoring(
        make_dataset, operator, tiny_checkpoint):
    """`exists("quality", False)` (the unscored samples) is empty once scored; the run must keep
    flagging and summarising the samples it was given."""
    dataset = make_dataset()
    operator(dataset.limit(4), **_params(tiny_checkpoint))
    unscored = dataset.exists("quality", False)
    n = unscored.count()
    summary = operator(unscored, **_params(tiny_checkpoint, flag_percent=50))
    dataset.reload()
    new = [s for s in dataset.skip(4) if s["quality"] is not None]
    assert summary["scored"] == len(new) == n - 1  # the broken file has no score
    assert summary["flagged"] == math.ceil(len(new) / 2)
    assert summary["mean"] == pytest.approx(sum(s["quality"] for s in new) / len(new))
    assert {s.id for s in dataset if "low_quality" in s.tags} <= {s.id for s in new}


def test_interrupted_overwrite_with_new_settings_then_resume_leaves_no_old_scores(
        make_dataset, tiny_checkpoint):
    """An overwrite with new settings clears the old scores first: a run cut off after its first
    chunk and resumed (overwrite off, as the README says) holds only new-setting scores."""
    from qualiclip_plugin.scoring.runner import ScoringRun
    from qualiclip_plugin.trust.request import parse_request

    dataset = make_dataset()
    old = _params(tiny_checkpoint, chunk_size=4)
    run = ScoringRun(dataset, dataset, parse_request(old), immediate=True)
    run.prepare()
    list(run.steps())
    old_scores = dict(zip(dataset.values("id"), dataset.values("quality"), strict=True))

    new = {**old, "max_side": 48}
    run = ScoringRun(dataset, dataset, parse_request({**new, "overwrite": True}),
                     immediate=True)
    run.prepare()
    steps = run.steps()
    next(steps)  # "Scoring N samples"
    next(steps)  # first chunk written
    steps.close()  # the worker dies here
    dataset.reload()
    assert sum(v is not None for v in dataset.values("quality")) == 4

    resumed = ScoringRun(dataset, dataset, parse_request(new), immediate=True)
    resumed.prepare()
    list(resumed.steps())
    dataset.reload()
    from qualiclip.scoring import score_images

    expected = {r.path: r.score for r in score_images(
        dataset.values("filepath"), weights=str(tiny_checkpoint), device="cpu",
        precision="fp32", max_side=48, num_workers=0, progress=False)}
    changed = 0
    for sample in dataset:
        if expected[sample.filepath] is None:
            continue
        assert sample["quality"] == pytest.approx(expected[sample.filepath], abs=TOL)
        changed += abs(old_scores[sample.id] - sample["quality"]) > TOL
    assert changed >= 8  # the settings do change the scores, so old ones would be caught
