"""Shared test set-up.

* Test folders mirror the packages: ``tests/qualiclip`` (library), ``tests/qualiclip_plugin``
  (FiftyOne plugin), ``tests/training`` (training, evaluation and sensitivity CLIs), ``tests/app``
  (the real FiftyOne App in a browser), and ``tests/test_imports.py`` (what each import loads).
* Tests that need FiftyOne's database carry the ``db`` marker, given here at collection to every
  test under ``tests/qualiclip_plugin`` and ``tests/app`` (a test elsewhere that needs it marks
  itself ``@pytest.mark.db``). ``pytest -m "not db"`` is the fast tier: it never starts MongoDB.
* A throwaway MongoDB (FiftyOne's bundled ``mongod``) is started on a free loopback port when the
  first ``db`` test runs, and stays up for the session. FiftyOne is pointed at that port through
  environment variables at start-up, **before** anything imports fiftyone (so FiftyOne never
  starts a server of its own); subprocesses (the App server in the plugin tests) inherit them.
* Tiny random ResNet CLIP checkpoints, in both formats, written to a temp dir, exercise the real
  loading path without any download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="qualiclip-tests-"))
_MONGOD: subprocess.Popen | None = None
#: Where the tiny checkpoints are written: a folder the App policy offers in tests.
WEIGHTS_DIR = _SESSION_DIR / "weights"


#: Folders whose tests all need FiftyOne's database (marked ``db`` at collection).
DB_FOLDERS = (Path(__file__).parent / "qualiclip_plugin", Path(__file__).parent / "app")
_MONGOD_PORT: int | None = None


def _reserve_database() -> None:
    """Point FiftyOne at a free loopback port where a private mongod will listen once a ``db``
    test runs (unless the caller set FIFTYONE_DATABASE_URI)."""
    global _MONGOD_PORT
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return
    import importlib.util

    if importlib.util.find_spec("fiftyone") is None:
        return
    from tests.private_mongod import free_port

    _MONGOD_PORT = free_port()
    os.environ["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{_MONGOD_PORT}"
    os.environ["FIFTYONE_DATABASE_ADMIN"] = "true"


def _start_mongod() -> None:
    """Start the private mongod on the reserved port, once."""
    global _MONGOD
    if _MONGOD is not None or _MONGOD_PORT is None:
        return
    from tests.private_mongod import start_mongod

    _MONGOD, _ = start_mongod(_SESSION_DIR / "mongo", port=_MONGOD_PORT)


def pytest_configure(config: pytest.Config) -> None:
    plugins_dir = _SESSION_DIR / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(plugins_dir))
    os.environ.setdefault("QUALICLIP_CACHE", str(_SESSION_DIR / "cache"))
    # The App policy (qualiclip_plugin.trust.policy) for operator executions in tests: checkpoints
    # from WEIGHTS_DIR may be loaded, reports go under the session folder.
    WEIGHTS_DIR.mkdir(exist_ok=True)
    os.environ.setdefault("QUALICLIP_APP_WEIGHTS_DIRS", str(WEIGHTS_DIR))
    os.environ.setdefault("QUALICLIP_APP_OUTPUT_DIR", str(_SESSION_DIR / "app-output"))
    _reserve_database()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under a folder of ``DB_FOLDERS`` needs the database."""
    for item in items:
        if any(folder in Path(item.path).parents for folder in DB_FOLDERS):
            item.add_marker(pytest.mark.db)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Start mongod before the first ``db`` test's fixtures (skipped tests never get here)."""
    if item.get_closest_marker("db") is not None:
        _start_mongod()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _MONGOD is not None:
        # FiftyOne deletes non-persistent datasets at exit; done now, while mongod still runs,
        # else its exit handler waits ~30 s for the stopped server.
        import atexit
        import sys

        database = sys.modules.get("fiftyone.core.odm.database")
        if database is not None:
            cleanup = database._delete_non_persistent_datasets_if_allowed
            atexit.unregister(cleanup)
            try:
                cleanup()
            except Exception:  # best effort: the data dir is removed below anyway
                pass
        _MONGOD.terminate()
        try:
            _MONGOD.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _MONGOD.kill()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


# --- tiny models ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_clip():
    """A tiny random open_clip CLIP (text tower included), seeded."""
    import torch

    from qualiclip.architecture import TINY_TEST_CONFIG, build_clip

    torch.manual_seed(1234)
    return build_clip(TINY_TEST_CONFIG).eval()


@pytest.fixture(scope="session")
def tiny_prompt_features(tiny_clip):
    from qualiclip.architecture import compute_prompt_features
    from qualiclip.prompts import flat_prompts

    return compute_prompt_features(tiny_clip, flat_prompts())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_clip, tiny_prompt_features) -> Path:
    """Path to a tiny checkpoint in this project's format."""
    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import write_checkpoint

    path = WEIGHTS_DIR / "tiny.pth"
    return write_checkpoint(path, model_config=TINY_TEST_CONFIG, state_dict=tiny_clip.state_dict(),
                            prompt_features=tiny_prompt_features)


@pytest.fixture(scope="session")
def tiny_official_checkpoint(tmp_path_factory, tiny_clip, tiny_prompt_features) -> Path:
    """Path to the same tiny model in the official flat format."""
    from qualiclip.checkpoint import write_official_checkpoint

    path = WEIGHTS_DIR / "tiny_official.pth"
    return write_official_checkpoint(path, state_dict=tiny_clip.state_dict(),
                                     prompt_features=tiny_prompt_features)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from qualiclip import load_model

    return load_model(tiny_checkpoint, device="cpu")


@pytest.fixture()
def probe_model(tiny_model):
    """The tiny random model with its 7 prompt pairs all replaced by one direction: from the
    mean global embedding of noisy calibration images to that of their clean originals
    (positive prompt = the clean side). A linear probe, fitted on other images than any test's
    (see tests/qualiclip/test_quality_maps.py for why that is a fair test model)."""
    import copy

    import torch
    import torch.nn.functional as F

    from tests.synthetic import add_noise, smooth_image

    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        clean = torch.cat([smooth_image(s) for s in range(8)])
        noisy = torch.cat([add_noise(smooth_image(s), 100 + s) for s in range(8)])
        e_clean = F.normalize(model.image_features(clean), dim=-1).mean(0)
        e_noisy = F.normalize(model.image_features(noisy), dim=-1).mean(0)
        direction = F.normalize(e_clean - e_noisy, dim=0)
        model.prompt_features.copy_(torch.stack([direction, -direction] * 7))
    return model


def missing_requirement(message: str) -> None:
    """Skip the test for a program or package this machine lacks, except under ``CI=true``,
    where scripts/test.sh installs everything and a missing requirement fails the test."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"cannot run in CI: {message}")
    pytest.skip(message)


def make_image(path: Path, size: tuple[int, int] = (96, 64), seed: int = 0, mode: str = "RGB"):
    """Write a real image file with smooth structure plus noise (W, H = size)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx / w), (yy / h), ((xx + yy) / (w + h))], axis=-1)
    img = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
    Image.fromarray((img * 255).astype("uint8")).convert(mode).save(path)
    return path


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """A folder of 6 small real JPEG/PNG images of two sizes."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        size = (96, 64) if i % 2 == 0 else (64, 80)
        make_image(folder / f"img_{i}.{'jpg' if i % 3 else 'png'}", size=size, seed=i)
    return folder


def refusal(execute) -> str:
    """The one sentence an operator refused with: an ``ExecutionError`` raised by
    ``foo.execute_operator`` (checks in ``resolve_input``), or the error dialog an immediate
    run showed (checks that need the model). Fails if the operator did not refuse."""
    from fiftyone.operators.executor import ExecutionError

    try:
        result = execute()
    except ExecutionError as exc:
        return str(exc)
    for request in result.executor._requests:
        if request.operator_uri == "show_output":
            errors = [p.get("view", {}).get("description")
                      for p in request.params["outputs"]["type"]["properties"].values()
                      if p.get("view", {}).get("name") == "Error"]
            if errors:
                return errors[0]
    raise AssertionError(f"the operator did not refuse (result: {result.result!r})")
