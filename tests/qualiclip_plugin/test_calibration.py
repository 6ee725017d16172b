"""Calibration from the App against the session's real database: ratings written by the panel's
functions into a field the plugin owns, the "Calibrate to my ratings" operator end to end
through ``foo.execute_operator`` (checkpoint in the admin's weights folder with its provenance;
nothing written without a gain; one-sentence refusals), and the new checkpoint scored through the
scoring operator.

The synthetic user of tests/qualiclip/test_calibrate.py: degraded photos (independent noise and
blur), rated 1-5 stars by their noise level only; the tiny random model barely follows that taste.
"""

from __future__ import annotations

import shutil
import uuid

import pytest
import torch

from qualiclip_plugin import PLUGIN_NAME
from tests.conftest import refusal
from tests.synthetic import degraded_set

CALIBRATE_URI = f"{PLUGIN_NAME}/calibrate_to_ratings"
#: Steps per fit: the noise taste is learnt (held-out SRCC > 0.7) in a few seconds.
STEPS = 60


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the fits' small matrix products only wait for each other on 2
    shared cores (see tests/qualiclip/test_calibrate.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """50 degraded photos ``(path, noise, blur)``."""
    return degraded_set(tmp_path_factory.mktemp("calibration_photos"), 50, seed=7)


@pytest.fixture()
def weights_dir(tmp_path, monkeypatch, tiny_checkpoint):
    """The admin's weights folder for this test: a copy of the tiny checkpoint, nothing else."""
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copyfile(tiny_checkpoint, folder / "tiny.pth")
    monkeypatch.setenv("QUALICLIP_APP_WEIGHTS_DIRS", str(folder))
    return folder


@pytest.fixture()
def photo_dataset(photos):
    import fiftyone as fo

    dataset = fo.Dataset(f"qualiclip-calib-{uuid.uuid4().hex[:10]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p, _, _ in photos])
    yield dataset
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)


def stars_by_noise(photos) -> list[int]:
    """1-5 stars from the noise level alone: the least noisy fifth gets 5."""
    order = sorted(range(len(photos)), key=lambda i: photos[i][1])
    stars = [0] * len(photos)
    for rank, i in enumerate(order):
        stars[i] = 5 - (5 * rank) // len(photos)
    return stars


def rate_all(dataset, stars: list[int]) -> None:
    """Rate the samples as the panel does: one call per star value on a selection."""
    from qualiclip_plugin.calibration import ratings

    ids = dataset.values("id")
    for value in set(stars):
        chosen = [sid for sid, s in zip(ids, stars) if s == value]
        ratings.rate(dataset, dataset.select(chosen), "quality_rating", value)


def calibrate(dataset, **params):
    import fiftyone.operators as foo

    return foo.execute_operator(CALIBRATE_URI, ctx=dict(view=dataset.view(), params=params))


def shown(result) -> dict:
    [params] = [r.params for r in result.executor._requests if r.operator_uri == "show_output"]
    return params["results"]


def _srcc(a, b) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


# --- ratings -------------------------------------------------------------------------------------
def test_ratings_are_the_plugins_field_and_can_be_cleared(photo_dataset):
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.calibration import ratings
    from qualiclip_plugin.trust import provenance
    from qualiclip_plugin.trust.request import RequestError

    dataset = photo_dataset
    ids = dataset.values("id")
    assert ratings.count(dataset, "quality_rating") == 0
    assert ratings.rate(dataset, dataset.select(ids[:3]), "quality_rating", "good") == 3
    assert ratings.rate(dataset, dataset.select(ids[3:5]), "quality_rating", "bad") == 2
    assert ratings.rate(dataset, dataset.select(ids[5:6]), "quality_rating", 3) == 1
    assert dataset.values("quality_rating")[:7] == [5.0, 5.0, 5.0, 1.0, 1.0, 3.0, None]
    assert isinstance(dataset.get_field("quality_rating"), fo.FloatField)
    assert provenance.ratings_recorded(dataset, "quality_rating")["scale"].startswith("1-5")
    assert ratings.count(dataset.select(ids[:4]), "quality_rating") == 4
    # clearing: the samples are unrated again
    assert ratings.clear(dataset, dataset.select(ids[:2]), "quality_rating") == 2
    assert dataset.values("quality_rating")[:4] == [None, None, 5.0, 1.0]
    assert ratings.count(dataset, "quality_rating") == 4
    with pytest.raises(RequestError, match="is not one of good, bad, 1, 2, 3, 4, 5"):
        ratings.rate(dataset, dataset.select(ids[:1]), "quality_rating", 7)

    # a user's own field of that name: refused with the ownership rule's reason, untouched
    dataset.add_sample_field("my_rating", fo.FloatField)
    dataset.select(ids[:2]).set_values("my_rating", [2.0, 4.0])
    for action in (lambda: ratings.rate(dataset, dataset.select(ids[2:3]), "my_rating", 5),
                   lambda: ratings.clear(dataset, dataset.view(), "my_rating")):
        with pytest.raises(RequestError, match="ratings field 'my_rating' already exists and "
                                               "was not written by this plugin"):
            action()
    assert dataset.values("my_rating")[:3] == [2.0, 4.0, None]
    # the ratings field is the plugin's: no scoring run may write it, and it may not rate into
    # a score field
    with pytest.raises(RequestError, match="holds the ratings given in the Image quality panel"):
        compute_image_quality(dataset, field="quality_rating", weights="qualiclip")
    dataset.add_sample_field("quality", fo.StringField)
    with pytest.raises(RequestError, match="holds StringField values, not ratings"):
        ratings.rate(dataset, dataset.select(ids[:1]), "quality", 5)


# --- the operator --------------------------------------------------------------------------------
def test_calibrate_operator_writes_a_checkpoint_the_scoring_form_offers(
        photo_dataset, photos, weights_dir, tiny_checkpoint):
    import fiftyone.operators as foo

    from qualiclip import load_model
    from qualiclip.scoring import score_images
    from qualiclip.weights import sha256_file
    from qualiclip_plugin import OPERATOR_URI
    from qualiclip_plugin.trust.policy import AppPolicy, weights_choices
    from qualiclip_plugin.trust.protection import plugin_wrote_file

    dataset = photo_dataset
    stars = stars_by_noise(photos)
    rate_all(dataset, stars)
    base = str(weights_dir / "tiny.pth")
    result = calibrate(dataset, weights=base, name="noise taste", steps=STEPS)
    assert result.error is None, result.error
    out = shown(result)
    assert out["verdict"].startswith("Calibration beats the base model"), out
    assert out["checkpoint"] == "calibrated/noise taste.pth"
    rows = out["table"].splitlines()
    assert len(rows) == 2 + 5 + 1 and rows[-1].startswith("| **mean** | 50 |")

    written = weights_dir / "calibrated" / "noise taste.pth"
    assert written.is_file() and plugin_wrote_file(written)
    assert [p.name for p in written.parent.iterdir()] == [written.name]  # no partial left
    meta = torch.load(written, weights_only=True)["metadata"]["calibration"]
    assert meta["base_sha256"] == sha256_file(tiny_checkpoint)
    assert meta["n_ratings"] == 50 and len(meta["folds"]) == 5
    assert meta["dataset"] == dataset.name and meta["ratings_field"] == "quality_rating"
    assert meta["source"] == "qualiclip_plugin" and meta["steps"] == STEPS

    # the scoring form lists it, and the scoring operator (App policy) scores with it
    choices = {c.label: c.value for c in weights_choices(AppPolicy.current())}
    assert choices["calibrated/noise taste.pth (checkpoint)"] == str(written.resolve())
    scored = foo.execute_operator(OPERATOR_URI, ctx=dict(view=dataset.view(), params=dict(
        field="quality", weights=str(written), device="cpu", precision="fp32")))
    assert scored.error is None, scored.error
    paths = dataset.values("filepath")
    expected = {r.path: r.score for r in score_images(
        paths, model=load_model(written, device="cpu"), precision="fp32", progress=False)}
    assert dataset.values("quality") == pytest.approx([expected[p] for p in paths], abs=1e-5)
    base_scores = [r.score for r in score_images(paths, weights=base, device="cpu",
                                                 precision="fp32", progress=False)]
    taste = [-noise for _, noise, _ in photos]
    assert _srcc(dataset.values("quality"), taste) - _srcc(base_scores, taste) > 0.4

    # the same name again: only with "replace", and only because the plugin wrote the file
    assert "already in the weights folder" in refusal(
        lambda: calibrate(dataset, weights=base, name="noise taste", steps=STEPS))
    before = written.stat().st_mtime_ns
    again = calibrate(dataset, weights=base, name="noise taste", steps=STEPS, overwrite=True)
    assert again.error is None and shown(again)["checkpoint"] == "calibrated/noise taste.pth"
    assert written.stat().st_mtime_ns != before and plugin_wrote_file(written)


def test_no_gain_writes_nothing(photo_dataset, weights_dir):
    """Ratings that are the base model's own scores: nothing to gain, nothing written."""
    from qualiclip.scoring import score_images

    dataset = photo_dataset
    base = str(weights_dir / "tiny.pth")
    rate_all(dataset, [3] * len(dataset))  # the panel records the field...
    scores = [r.score for r in score_images(dataset.values("filepath"), weights=base,
                                            device="cpu", precision="fp32", progress=False)]
    dataset.set_values("quality_rating", scores)  # ...holding exactly the base model's taste
    result = calibrate(dataset, weights=base, name="same taste", steps=STEPS)
    assert result.error is None, result.error
    out = shown(result)
    assert out["verdict"].startswith("Calibration does not beat the base model"), out
    assert "no checkpoint was written" in out["verdict"] and "checkpoint" not in out
    assert "| **mean** | 50 | 1.000 |" in out["table"]
    assert not (weights_dir / "calibrated" / "same taste.pth").exists()
    assert [p.name for p in (weights_dir / "calibrated").iterdir()] == []


def test_refusals_are_one_sentence_before_any_work(photo_dataset, photos, weights_dir,
                                                   monkeypatch):
    dataset = photo_dataset
    base = str(weights_dir / "tiny.pth")
    ids = dataset.values("id")

    def refused(**params) -> str:
        params = {"weights": base, "steps": STEPS, **params}
        message = refusal(lambda: calibrate(dataset, **params))
        assert "\n" not in message and "Traceback" not in message
        return message.split("Reason: ", 1)[-1]  # FiftyOne's prefix for a form's refusal

    assert "no ratings in 'quality_rating' on this dataset yet" in refused()
    from qualiclip_plugin.calibration import ratings

    ratings.rate(dataset, dataset.select(ids[:12]), "quality_rating", "good")
    assert refused().startswith("too few ratings: 12 rated image(s), calibration needs at "
                                "least 20")
    ratings.rate(dataset, dataset.select(ids[12:30]), "quality_rating", "good")
    assert refused().startswith("all 30 ratings are equal (5)")
    rate_all(dataset, stars_by_noise(photos))
    assert "not among the weights this server offers" in refused(weights="/etc/passwd")
    assert "give a plain file name" in refused(name="../../evil")
    (weights_dir / "calibrated").mkdir()
    (weights_dir / "calibrated" / "mine.pth").write_bytes(b"the user's file")
    assert "'mine.pth' that this plugin did not write" in refused(name="mine")
    assert (weights_dir / "calibrated" / "mine.pth").read_bytes() == b"the user's file"
    # no weights folder configured: the default weights cache is not written into
    monkeypatch.delenv("QUALICLIP_APP_WEIGHTS_DIRS")
    assert refused(weights="qualiclip").startswith(
        "no weights folder is configured on this server")
    assert not (weights_dir / "calibrated" / f"{dataset.name}-quality_rating.pth").exists()


def test_many_ratings_run_in_the_background(photo_dataset, photos, weights_dir):
    """Above 100 ratings the run is delegated by default; the worker checks the request again
    and writes the checkpoint (an image rated twice counts once, with its mean rating)."""
    import fiftyone as fo
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = photo_dataset
    dataset.add_samples([fo.Sample(filepath=str(p)) for p, _, _ in [*photos, photos[0]]])
    stars = stars_by_noise(photos)
    rate_all(dataset, [*stars, *stars, stars[0]])
    assert len(dataset.exists("quality_rating")) == 101
    queued = calibrate(dataset, weights=str(weights_dir / "tiny.pth"), name="background",
                       steps=STEPS)
    assert queued.delegated and queued.error is None, queued.error
    written = weights_dir / "calibrated" / "background.pth"
    assert not written.exists()  # nothing happens until a worker runs it
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name)
    assert op.run_state == "completed", op.result.error
    assert op.result.result["checkpoint"] == "calibrated/background.pth"
    assert op.result.result["n_ratings"] == 101
    meta = torch.load(written, weights_only=True)["metadata"]["calibration"]
    assert (meta["n_ratings"], meta["n_images"]) == (101, 50)


def test_worker_checks_the_request_again(photo_dataset, photos, weights_dir):
    """A file put at the checkpoint's place after the run was queued: the worker refuses in one
    sentence (the operation fails with it) and leaves the file alone."""
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset = photo_dataset
    rate_all(dataset, stars_by_noise(photos))
    queued = calibrate(dataset, weights=str(weights_dir / "tiny.pth"), name="late",
                       steps=STEPS, delegate=True)
    assert queued.delegated and queued.error is None, queued.error
    (weights_dir / "calibrated").mkdir()
    late = weights_dir / "calibrated" / "late.pth"
    late.write_bytes(b"a colleague's file")
    service = DelegatedOperationService()
    service.execute_queued_operations(dataset_name=dataset.name)
    [op] = service.list_operations(dataset_name=dataset.name)
    assert op.run_state == "failed"
    assert op.result.error.startswith("a file named 'late.pth' that this plugin did not write")
    assert "\n" not in op.result.error and late.read_bytes() == b"a colleague's file"


def test_the_default_fits_run_in_the_background_without_a_gpu(photo_dataset, photos,
                                                               weights_dir):
    """Without a GPU the default fits (200 steps x 6) take longer than the App waits for an
    immediate run, so they are queued by default even for few ratings; a small run (60 x 6
    steps, as the browser test runs) is not."""
    import fiftyone as fo
    from fiftyone.operators.delegated import DelegatedOperationService

    if torch.cuda.is_available():
        pytest.skip("the CPU default: this machine has a GPU")
    dataset = photo_dataset
    dataset.add_samples([fo.Sample(filepath=str(p)) for p, _, _ in photos])
    rate_all(dataset, stars_by_noise(photos))
    weights = str(weights_dir / "tiny.pth")
    assert calibrate(dataset, weights=weights, name="cpu-default").delegated
    assert calibrate(dataset, weights=weights, name="cpu-few", steps=300, folds=3).delegated
    assert not calibrate(dataset, weights=weights, name="cpu-small", steps=STEPS).delegated
    service = DelegatedOperationService()
    queued = service.list_operations(dataset_name=dataset.name)
    assert len(queued) == 2
    for op in queued:
        service.delete_operation(op.id)
