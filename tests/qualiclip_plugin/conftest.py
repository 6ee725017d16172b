"""Plugin test fixtures: the plugin linked into the session's plugins dir, image datasets.

Datasets are persistent (delegated runs load them from another context) with unique names, and
deleted afterwards. Images are real files written by ``make_image``; one is a broken file.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.conftest import make_image

#: (W, H) of the test images; repeated sizes make real multi-image batches.
SIZES = [(96, 64), (96, 64), (64, 80), (96, 64), (64, 80), (72, 72), (96, 64), (64, 80),
         (72, 72), (96, 64), (40, 30), (96, 64)]


@pytest.fixture(scope="session", autouse=True)
def plugin_link():
    """`qualiclip plugin install`'s effect, into the session's FIFTYONE_PLUGINS_DIR."""
    from qualiclip_plugin.install import install_plugin

    return install_plugin()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("plugin_images")
    paths = [make_image(folder / f"img_{i:02d}.{'png' if i % 4 == 0 else 'jpg'}", size=size,
                        seed=100 + i) for i, size in enumerate(SIZES)]
    broken = folder / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    paths.insert(5, broken)  # in the middle, so it shares a batch with good images
    return paths


@pytest.fixture()
def make_dataset(image_files):
    """Factory: a persistent dataset of the test images (plus the broken one), unique name."""
    import fiftyone as fo

    created = []

    def factory(paths=None):
        dataset = fo.Dataset(f"qualiclip-test-{uuid.uuid4().hex[:10]}", persistent=True)
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in (paths or image_files)])
        created.append(dataset.name)
        return dataset

    yield factory
    for name in created:
        if fo.dataset_exists(name):
            fo.delete_dataset(name)


@pytest.fixture()
def operator():
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI

    return foo.get_operator(OPERATOR_URI)


@pytest.fixture(scope="session")
def reference_scores(image_files, tiny_checkpoint):
    """The library's own fp32 scores of the test images: what every field must equal."""
    from qualiclip.scoring import score_images

    results = score_images([str(p) for p in image_files], weights=str(tiny_checkpoint),
                           device="cpu", precision="fp32", backend="torch", num_workers=0,
                           progress=False)
    return {r.path: r for r in results}
