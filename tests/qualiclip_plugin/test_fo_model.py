"""`dataset.apply_model` / `compute_embeddings` with the TorchImageModel wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from qualiclip.prompts import PAIR_NAMES
from tests.qualiclip_plugin.test_operator import TOL


@pytest.fixture(scope="module")
def fo_model(tiny_checkpoint):
    import qualiclip_plugin

    return qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu", precision="fp32")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_apply_model_scores_each_sample_and_survives_broken_files(
        make_dataset, fo_model, reference_scores, num_workers):
    import fiftyone as fo

    dataset = make_dataset()
    fo_model.read_errors.clear()
    dataset.apply_model(fo_model, label_field="q", batch_size=4, num_workers=num_workers)
    assert isinstance(dataset.get_field("q"), fo.FloatField)
    dataset.reload()
    for sample in dataset:
        ref = reference_scores[sample.filepath]
        if ref.error:
            assert sample["q"] is None  # broken file: no score ...
        else:  # ... and its batch mates (it sits in the second batch of 4) keep theirs
            assert sample["q"] == pytest.approx(ref.score, abs=TOL)
    [(path, message)] = fo_model.read_errors.items()
    assert path.endswith("broken.jpg") and "not an image" in message


def test_apply_model_pair_scores(make_dataset, tiny_checkpoint, reference_scores):
    import qualiclip_plugin

    model = qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu",
                                        precision="fp32", pair_scores=True)
    dataset = make_dataset()
    dataset.apply_model(model, label_field="q", batch_size=8, num_workers=0)
    dataset.reload()
    for sample in dataset:
        ref = reference_scores[sample.filepath]
        if ref.error:
            assert sample["q_score"] is None and "not an image" in sample["q_error"]
            continue
        assert sample["q_score"] == pytest.approx(ref.score, abs=TOL)
        for name in PAIR_NAMES:
            assert sample[f"q_{name}"] == pytest.approx(ref.pair_scores[name], abs=TOL)


def test_compute_embeddings(make_dataset, fo_model, image_files, tiny_model):
    import torch

    from qualiclip.images import load_image

    good = [p for p in image_files if not p.name.startswith("broken")]
    dataset = make_dataset(good)
    embeddings = dataset.compute_embeddings(fo_model, batch_size=4, num_workers=0)
    assert embeddings.shape == (len(good), tiny_model.prompt_features.shape[-1])
    with torch.no_grad():
        x = load_image(dataset.first().filepath).tensor[None]
        expected = tiny_model.image_features(x)[0].numpy()
    np.testing.assert_allclose(embeddings[0], expected, rtol=1e-4, atol=1e-5)


def test_predict_on_arrays(fo_model, image_files, reference_scores):
    from PIL import Image

    image = np.asarray(Image.open(image_files[0]).convert("RGB"))
    assert fo_model.predict(image) == pytest.approx(reference_scores[str(image_files[0])].score,
                                                    abs=TOL)


def test_apply_model_rerun_leaves_no_stale_values(make_dataset, tiny_checkpoint, tmp_path):
    """A rerun after ``model.clear_outputs`` replaces every value: a file broken since the last
    run loses its old score and attribute scores, a file fixed since then loses its old error."""
    import shutil

    import qualiclip_plugin
    from tests.conftest import make_image

    model = qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu",
                                        precision="fp32", pair_scores=True)
    folder = tmp_path / "rerun"
    folder.mkdir()
    to_fix = folder / "a_fixed_later.jpg"
    to_fix.write_bytes(b"not an image yet")  # first in the dataset: a failure comes first
    to_break = make_image(folder / "b_broken_later.jpg", seed=7)
    good = make_image(folder / "c_good.jpg", seed=8)
    dataset = make_dataset([to_fix, to_break, good])
    fields = ["q_score", "q_error", *(f"q_{name}" for name in PAIR_NAMES)]

    def by_name():
        dataset.reload()
        return {s.filepath.rsplit("/", 1)[-1]: {f: s[f] for f in fields} for s in dataset}

    dataset.apply_model(model, label_field="q", batch_size=4, num_workers=0)
    first = by_name()
    assert first["a_fixed_later.jpg"]["q_score"] is None
    assert "not an image" in first["a_fixed_later.jpg"]["q_error"]
    assert first["b_broken_later.jpg"]["q_score"] is not None
    assert first["b_broken_later.jpg"]["q_error"] is None

    shutil.copyfile(good, to_fix)
    to_break.write_bytes(b"not an image any more")
    assert set(model.clear_outputs(dataset, "q")) == set(fields)
    dataset.apply_model(model, label_field="q", batch_size=4, num_workers=0)
    second = by_name()
    assert second["a_fixed_later.jpg"]["q_error"] is None  # no stale error
    assert second["a_fixed_later.jpg"]["q_score"] == pytest.approx(
        second["c_good.jpg"]["q_score"], abs=TOL)
    broken = second["b_broken_later.jpg"]
    assert "not an image" in broken["q_error"]
    assert all(broken[f] is None for f in fields if f != "q_error"), broken  # no stale scores
    assert second["c_good.jpg"] == first["c_good.jpg"]

    # A new label field on a dataset that already holds QualiCLIP fields of another one.
    dataset.apply_model(model, label_field="r", batch_size=1, num_workers=0)
    dataset.reload()
    r_scores = dataset.values("r_score")
    assert r_scores[1] is None and "not an image" in dataset.values("r_error")[1]
    assert r_scores[0] == pytest.approx(second["a_fixed_later.jpg"]["q_score"], abs=TOL)
    assert r_scores[2] == pytest.approx(second["c_good.jpg"]["q_score"], abs=TOL)


def test_clear_outputs_then_rerun_touches_the_target_only(make_dataset, fo_model,
                                                                tmp_path):
    from tests.conftest import make_image

    to_break = make_image(tmp_path / "broken_later.jpg", seed=9)
    other = make_image(tmp_path / "other.jpg", seed=10)
    dataset = make_dataset([to_break, other])
    dataset.apply_model(fo_model, label_field="f", batch_size=2, num_workers=0)
    before = dataset.values("f")
    assert None not in before
    to_break.write_bytes(b"not an image any more")
    other.write_bytes(b"broken too, but outside the target")
    target = dataset.match({"filepath": str(to_break)})
    assert fo_model.clear_outputs(target, "f") == ["f"]
    target.apply_model(fo_model, label_field="f", batch_size=2, num_workers=0)
    assert dataset.values("f") == [None, before[1]]


def _nan_for_width(model, width, monkeypatch):
    """Make the wrapped QualiCLIP return NaN features for images ``width`` px wide, as corrupt
    weights would for every image; other sizes (same FiftyOne batch) are left alone."""
    inner = model._model
    original = inner.embed

    def embed(x):
        out = original(x)
        return out * float("nan") if x.shape[-1] == width else out

    monkeypatch.setattr(inner, "embed", embed)


@pytest.mark.parametrize("pair_scores", [False, True])
def test_apply_model_non_finite_predictions_are_errors(
        make_dataset, tiny_checkpoint, reference_scores, monkeypatch, pair_scores):
    import qualiclip_plugin

    model = qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu",
                                        precision="fp32", pair_scores=pair_scores,
                                        backend="torch")  # the NaN hook is in the torch module
    _nan_for_width(model, 72, monkeypatch)
    dataset = make_dataset()
    dataset.apply_model(model, label_field="q", batch_size=13, num_workers=0)  # one batch
    dataset.reload()
    score_field = "q_score" if pair_scores else "q"
    nan_message = "the model returned a non-finite score (NaN/inf): the weights may be corrupt"
    seen = 0
    for sample in dataset:
        ref = reference_scores[sample.filepath]
        name = sample.filepath.rsplit("/", 1)[-1]
        if ref.error:
            assert sample[score_field] is None
        elif ref.width == 72:
            seen += 1
            assert sample[score_field] is None
            assert model.read_errors[sample.filepath] == f"{name}: {nan_message}"
            if pair_scores:
                assert sample["q_error"] == f"{name}: {nan_message}"
                assert all(sample[f"q_{p}"] is None for p in PAIR_NAMES)
        else:  # batch mates keep their scores
            assert sample[score_field] == pytest.approx(ref.score, abs=TOL)
    assert seen == 2


@pytest.mark.parametrize("pair_scores, field", [(False, "quality"), (True, "quality_error"),
                                                (True, "quality_sharp_image")])
def test_a_label_field_of_another_type_is_refused_before_anything_is_written(
        make_dataset, tiny_checkpoint, pair_scores, field):
    """FiftyOne would cast every score into an existing IntField (all 0) without a word; the
    model's apply_model and clear_outputs refuse first and write nothing."""
    import fiftyone as fo

    import qualiclip_plugin
    from qualiclip_plugin.fo_model import apply_model

    model = qualiclip_plugin.load_model(weights=tiny_checkpoint, device="cpu",
                                        precision="fp32", pair_scores=pair_scores)
    dataset = make_dataset()
    dataset.add_sample_field(field, fo.IntField)
    dataset.set_values(field, [7] * len(dataset))
    refusal = rf"'{field}' exists as IntField, not (Float|String)Field"
    for clear in (True, False):
        with pytest.raises(ValueError, match=refusal):
            apply_model(dataset, model, "quality", clear=clear, num_workers=0)
    with pytest.raises(ValueError, match="IntField"):
        model.clear_outputs(dataset, "quality")
    dataset.reload()
    assert dataset.values(field) == [7] * len(dataset)  # nothing cleared, nothing truncated
    written = [f for f in model.output_fields("quality") if f != field]
    assert not set(written) & set(dataset.get_field_schema())  # nothing else written either


def test_module_apply_model_clears_then_scores(make_dataset, fo_model, reference_scores):
    import fiftyone as fo

    from qualiclip_plugin.fo_model import apply_model

    dataset = make_dataset()
    dataset.add_sample_field("q", fo.FloatField)
    dataset.set_values("q", [0.123] * len(dataset))  # a stale value on the broken file too
    apply_model(dataset, fo_model, "q", batch_size=4, num_workers=0)
    dataset.reload()
    for sample in dataset:
        ref = reference_scores[sample.filepath]
        expected = None if ref.error else pytest.approx(ref.score, abs=TOL)
        assert sample["q"] == expected
