"""`dataset.apply_model` / `compute_embeddings` with the TorchImageModel wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from qualiclip.prompts import PAIR_NAMES
from tests.plugin.test_operator import TOL


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
