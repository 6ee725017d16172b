"""Quality maps: shape/range, consistency with the global score, and spatial localisation.

The localisation test (``probe_model``, tests/conftest.py) needs a model whose prompts
actually separate clean from degraded images; a random tiny CLIP's prompts do not. So it gives
the tiny random backbone a *constructed* prompt pair: positive = the direction from the mean
global embedding of noisy calibration images to that of clean ones (negative = its opposite).
That is a linear probe fitted on whole-image, global embeddings of *other* images; the test then
checks the map of a new image with noise pasted in one quadrant. It passes only if (a) the
per-cell projection lives in the same space as the global embedding (the MaskCLIP premise, exact
here: the pooled embedding is an attention-weighted average of the cell embeddings) and (b) cells
are laid out where their pixels are (no transposed or flipped map), checked for all 4 quadrants.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qualiclip.images import load_image
from qualiclip.quality_maps import compute_quality_maps, overlay, upsample_map
from tests.synthetic import add_noise, smooth_image


def _gradient(size: int = 256) -> torch.Tensor:
    """(3, size, size) in [0, 1]: a soft colour gradient, so a clean image's cells score alike."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([0.3 + 0.4 * xx, 0.3 + 0.4 * yy, 0.5 - 0.2 * xx * yy])


def _quadrant_means(qmap: np.ndarray) -> list[float]:
    h, w = qmap.shape
    return [float(qmap[ys, xs].mean())
            for ys in (slice(0, h // 2), slice(h // 2, h))
            for xs in (slice(0, w // 2), slice(w // 2, w))]


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
def test_noisy_quadrant_scores_lowest(probe_model, quadrant):
    clean = _gradient()  # content unlike the probe's calibration images
    assert probe_model(clean[None]) > probe_model(add_noise(clean[None], 3))  # the probe works
    ys = slice(0, 128) if quadrant < 2 else slice(128, 256)
    xs = slice(0, 128) if quadrant % 2 == 0 else slice(128, 256)
    degraded = clean.clone()
    degraded[:, ys, xs] = add_noise(clean[None], 7)[0][:, ys, xs]

    clean_map, degraded_map = (r.map for r in compute_quality_maps([clean, degraded],
                                                                   probe_model))
    assert degraded_map.shape == (8, 8)
    means = _quadrant_means(degraded_map)
    assert int(np.argmin(means)) == quadrant
    others = [m for i, m in enumerate(means) if i != quadrant]
    assert means[quadrant] < min(others) - 0.1
    # The degraded quadrant dropped against the clean image; the far quadrant barely moved.
    clean_means = _quadrant_means(clean_map)
    assert clean_means[quadrant] - means[quadrant] > 0.15
    far = 3 - quadrant
    assert abs(clean_means[far] - means[far]) < 0.05


def test_single_cell_map_equals_global_score(tiny_model):
    """A 32 px image has one feature cell: attention over one token (plus its mean, the same
    token) returns its value projection, so the map's only cell must equal the global score."""
    x = smooth_image(1, size=32)
    qmap = tiny_model.quality_map(x)
    assert qmap.shape == (1, 1, 1)
    torch.testing.assert_close(qmap[:, 0, 0], tiny_model(x), atol=1e-5, rtol=1e-5)


def test_maps_from_files_shape_range_and_errors(tiny_model, image_folder, tmp_path):
    paths = sorted(image_folder.iterdir())
    missing = tmp_path / "missing.jpg"
    results = compute_quality_maps([*paths, missing], tiny_model)
    assert [r.path for r in results] == [str(p) for p in [*paths, missing]]
    for r in results[:-1]:
        assert r.error is None
        assert r.map.dtype == np.float32
        # 96x64 -> 3x2 cells, 64x80 -> 3x2 (ceil-free: the trunk floors odd sizes)
        assert r.map.shape == tiny_model.quality_map(torch.zeros(1, 3, r.height, r.width)).shape[1:]
        with torch.no_grad():
            expected = tiny_model.quality_map(load_image(r.path).tensor[None])[0]
        np.testing.assert_allclose(r.map, expected.numpy(), atol=1e-5)
    assert results[-1].map is None and "missing.jpg" in results[-1].error

    big = upsample_map(results[0].map, (results[0].width, results[0].height))
    assert big.shape == (results[0].height, results[0].width)
    assert big.min() >= results[0].map.min() - 1e-6 and big.max() <= results[0].map.max() + 1e-6
    blended = overlay(np.zeros((results[0].height, results[0].width, 3), np.uint8), results[0].map)
    assert blended.size == (results[0].width, results[0].height)
    assert np.asarray(blended).max() > 0  # the colours are there


def test_an_image_too_large_for_memory_gets_an_error_and_the_others_their_maps(
        tiny_model, tmp_path):
    from qualiclip.model import QualiCLIP
    from tests.conftest import make_image

    class SmallMemory(QualiCLIP):
        """A device that cannot hold an image over 100 px wide."""

        def quality_map(self, x):
            if x.shape[-1] > 100:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
            return super().quality_map(x)

    model = SmallMemory(tiny_model.visual, tiny_model.prompt_features).eval()
    paths = [make_image(tmp_path / "small.png", size=(96, 64)),
             make_image(tmp_path / "huge.png", size=(160, 64), seed=1),
             make_image(tmp_path / "small2.png", size=(64, 96), seed=2)]
    maps = compute_quality_maps(paths, model)
    assert [m.error is None for m in maps] == [True, False, True]
    assert "out of memory at 160x64" in maps[1].error and "max_side" in maps[1].error
    assert maps[0].map is not None and maps[2].map is not None
