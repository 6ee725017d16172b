"""Calibration to a user's taste (qualiclip.calibrate) on real degraded image files and the tiny
random model of tests/conftest.py.

The synthetic user rates photos by their noise level only and ignores blur; the photos are
smooth synthetic images, each blurred and noised by independent random amounts. The tiny random
model's scores barely follow that taste, and its frozen embeddings still carry the noise level,
so learning the prompt context must raise the held-out SRCC by a wide margin.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qualiclip.calibrate import (
    CalibrationError,
    PromptContext,
    calibrate,
    check_ratings,
    fit_context,
    image_features,
    kfold_indices,
    read_ratings,
    scores_from,
)
from tests.synthetic import degraded_set

#: Steps per fit: enough for the noise taste to be learnt (held-out SRCC ~0.9) and keeps this
#: module near a minute on 2 shared cores.
STEPS = 100


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the fits multiply matrices of a few thousand elements, where
    threads on 2 shared cores only wait for each other (measured: 29 s with 2 threads, 3 s
    with one, for one 50-rating calibration)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, list[tuple[Path, float, float]]]:
    """50 photos to rate and 30 others the calibration never sees."""
    root = tmp_path_factory.mktemp("calibrate")
    return {"rated": degraded_set(root / "rated", 50, seed=7),
            "unseen": degraded_set(root / "unseen", 30, seed=8)}


def _srcc(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


@pytest.fixture(scope="module")
def noise_run(photos, tiny_checkpoint, tmp_path_factory):
    """Calibration on 50 ratings of a user who rates by noise only (less noise = better)."""
    out = tmp_path_factory.mktemp("calibrated") / "noise.pth"
    ratings = [(path, -noise) for path, noise, _ in photos["rated"]]
    return calibrate(ratings, tiny_checkpoint, out, steps=STEPS), out


def test_noise_taste_is_learnt_in_cross_validation(noise_run):
    report, out = noise_run
    assert len(report.folds) == 5 and sum(f["n_test"] for f in report.folds) == 50
    assert report.after["srcc"] - report.before["srcc"] > 0.4, report.table()
    assert report.after["srcc"] > 0.7, report.table()
    assert report.improved and report.written == out and out.is_file()
    assert "beats the base model" in report.verdict()
    assert report.table().splitlines()[-1].split()[:2] == ["mean", "50"]


def test_calibrated_checkpoint_scores_unseen_photos_by_the_taste(noise_run, photos,
                                                                 tiny_checkpoint):
    """Loaded like any checkpoint, it ranks 30 photos it never saw by noise far better than the
    base model does, and scores exactly what calibration computed from the same embeddings."""
    import qualiclip
    from qualiclip.weights import sha256_file

    _, out = noise_run
    paths = [p for p, _, _ in photos["unseen"]]
    taste = [-noise for _, noise, _ in photos["unseen"]]
    base = qualiclip.load_model(tiny_checkpoint, device="cpu")
    calibrated = qualiclip.load_model(out, device="cpu")
    base_scores = [r.score for r in qualiclip.score_images(paths, model=base, precision="fp32")]
    new_scores = [r.score for r in qualiclip.score_images(paths, model=calibrated,
                                                          precision="fp32")]
    assert _srcc(new_scores, taste) - _srcc(base_scores, taste) > 0.4
    assert _srcc(new_scores, taste) > 0.7
    features = image_features(base, paths)
    expected = scores_from(features, calibrated.prompt_features)
    assert torch.allclose(torch.tensor(new_scores), expected, atol=1e-5)
    # the exported ONNX graph is the image tower only, so it serves the calibrated file too
    onnx_scores = [r.score for r in qualiclip.score_images(paths, model=calibrated,
                                                           precision="fp32",
                                                           backend="onnxruntime")]
    assert torch.allclose(torch.tensor(onnx_scores), expected, atol=1e-4)
    meta = torch.load(out, weights_only=True)["metadata"]["calibration"]
    assert meta["base_sha256"] == sha256_file(tiny_checkpoint)
    assert meta["n_ratings"] == 50 and len(meta["folds"]) == 5
    assert {"srcc", "plcc"} <= set(meta["folds"][0]["before"]) <= set(meta["folds"][0]["after"])
    assert meta["context"].shape == (4, 64)


def test_image_and_text_towers_stay_frozen(noise_run, tiny_checkpoint):
    """Only the prompt features change: every weight of the calibrated file equals the base's."""
    _, out = noise_run
    base = torch.load(tiny_checkpoint, weights_only=True)
    new = torch.load(out, weights_only=True)
    assert base["state_dict"].keys() == new["state_dict"].keys()
    changed = [k for k, v in base["state_dict"].items() if not torch.equal(v, new["state_dict"][k])]
    assert changed == []
    assert not torch.allclose(base["prompt_features"], new["prompt_features"], atol=1e-3)


def test_a_fit_learns_the_context_only(tiny_clip):
    """The text tower is shared by every fold's fit: if a fit trained it, later folds would
    start from a tower that has seen their held-out images. Even from a caller whose tower
    still requires gradients, a fit changes the context and nothing else."""
    import copy

    import torch.nn.functional as F

    from qualiclip.prompts import flat_prompts

    clip = copy.deepcopy(tiny_clip).requires_grad_(True)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    learner = PromptContext(clip, flat_prompts())
    start = learner.context.detach().clone()
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(24, 64, generator=generator), dim=-1)
    fit_context(learner, features, torch.rand(24, generator=generator), steps=5)
    assert not torch.equal(learner.context.detach(), start)
    assert [k for k, v in clip.state_dict().items() if not torch.equal(v, before[k])] == []
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["context"]


def test_taste_the_base_already_follows_writes_nothing(photos, tiny_checkpoint, tiny_model,
                                                       tmp_path):
    """Ratings that are the base model's own scores: held-out SRCC is already 1, calibration
    cannot beat it, says so, and writes no checkpoint unless forced."""
    import qualiclip

    paths = [p for p, _, _ in photos["rated"]]
    scores = [r.score for r in qualiclip.score_images(paths, model=tiny_model, precision="fp32")]
    out = tmp_path / "same.pth"
    report = calibrate(list(zip(paths, scores)), tiny_checkpoint, out, steps=STEPS)
    assert report.before["srcc"] == pytest.approx(1.0)
    assert not report.improved and report.written is None and not out.exists()
    assert "does not beat the base model" in report.verdict()
    assert "no checkpoint written" in report.verdict()


def test_ratings_without_signal_do_not_pass_cross_validation(photos, tiny_checkpoint):
    """Random ratings: a held-out fold can only be predicted if it leaked into training. A
    long context fitted long memorises its training images (with each test fold in its own
    training set, held-out SRCC reached 0.36-0.45 over three seeds; without, -0.30..-0.08)."""
    g = torch.Generator().manual_seed(3)
    ratings = [(p, float(torch.rand(1, generator=g))) for p, _, _ in photos["rated"]]
    report = calibrate(ratings, tiny_checkpoint, None, steps=300, n_ctx=16)
    assert report.after["srcc"] < 0.15, report.table()


def test_folds_partition_the_images_and_repeated_images_count_once(tmp_path):
    folds = kfold_indices(23, 5, seed=1)
    tests = [i for _, test in folds for i in test]
    assert sorted(tests) == list(range(23))
    for train, test in folds:
        assert not set(train) & set(test) and len(train) + len(test) == 23
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("path,rating\na.png,good\nsub/b.png,2\na.png,bad\nc.png,4.5\n")
    rows = read_ratings(csv_path)
    assert rows == [(tmp_path / "a.png", 1.0), (tmp_path / "sub" / "b.png", 2.0),
                    (tmp_path / "a.png", 0.0), (tmp_path / "c.png", 4.5)]
    from qualiclip.calibrate import mean_rating_per_image

    paths, values = mean_rating_per_image(rows)
    assert paths == [tmp_path / "a.png", tmp_path / "sub" / "b.png", tmp_path / "c.png"]
    assert values == [0.5, 2.0, 4.5]


def test_too_few_and_constant_ratings_are_refused_in_one_line():
    with pytest.raises(CalibrationError, match=r"^too few ratings: 19 rated image\(s\), "
                                               r"calibration needs at least 20"):
        check_ratings([float(i) for i in range(19)])
    with pytest.raises(CalibrationError, match=r"^all 30 ratings are equal \(3\)"):
        check_ratings([3.0] * 30)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    # one intra-op thread, as in-process (see one_thread)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "qualiclip.cli", "calibrate", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def test_cli_prints_the_table_and_refuses_in_one_line(photos, tiny_checkpoint, tmp_path):
    rated = photos["rated"][:20]
    ratings = tmp_path / "ratings.csv"
    with ratings.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "rating"])
        writer.writerows([str(p), f"{-noise:.4f}"] for p, noise, _ in rated)
    out = tmp_path / "cal.pth"
    done = _run_cli(str(ratings), "--weights", str(tiny_checkpoint), "-o", str(out),
                    "--steps", "20", "--force")
    assert done.returncode == 0, done.stderr
    assert "SRCC before" in done.stdout and "mean" in done.stdout
    assert out.is_file()
    constant = tmp_path / "constant.csv"
    constant.write_text("path,rating\n" + "".join(f"{p},3\n" for p, _, _ in rated))
    refused = _run_cli(str(constant), "--weights", str(tiny_checkpoint), "-o", str(out))
    assert refused.returncode != 0
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    assert "all 20 ratings are equal" in refused.stderr


def test_feature_cache_is_reused_only_for_the_same_weights_and_files(photos, tiny_model,
                                                                     tmp_path):
    paths = [p for p, _, _ in photos["unseen"][:6]]
    cache = tmp_path / "features.pt"
    first = image_features(tiny_model, paths, cache=cache)
    assert first.shape == (6, 64)
    stored = torch.load(cache, weights_only=True)
    assert stored["weights_sha256"] == tiny_model.weights_info["sha256"]
    assert len(stored["features"]) == 6
    # a cached embedding is returned as stored: poison one entry and read it back
    key = next(k for k in stored["features"] if k.startswith(str(paths[0].resolve()) + "|"))
    stored["features"][key] = torch.full((64,), 7.0)
    torch.save(stored, cache)
    assert torch.equal(image_features(tiny_model, paths, cache=cache)[0], torch.full((64,), 7.0))
    # other weights: the cache is not used, every image is embedded again
    stored["weights_sha256"] = "0" * 64
    torch.save(stored, cache)
    assert torch.allclose(image_features(tiny_model, paths, cache=cache), first)
    # a changed file (new mtime): embedded again, not read from the cache
    stored = torch.load(cache, weights_only=True)
    key = next(k for k in stored["features"] if k.startswith(str(paths[0].resolve()) + "|"))
    stored["features"][key] = torch.full((64,), 7.0)
    torch.save(stored, cache)
    stat = paths[0].stat()
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert torch.allclose(image_features(tiny_model, paths, cache=cache)[0], first[0])
