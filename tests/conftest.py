"""Shared test set-up.

* A throwaway MongoDB (FiftyOne's bundled ``mongod``) is started for the whole session on a free
  loopback port, and FiftyOne is pointed at it through environment variables **before** anything
  imports fiftyone; subprocesses (the App server in the plugin tests) inherit them.
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


def _start_mongod() -> None:
    """Start a private mongod and export FIFTYONE_DATABASE_URI (unless the caller set one)."""
    global _MONGOD
    if os.environ.get("FIFTYONE_DATABASE_URI"):
        return
    import importlib.util

    if importlib.util.find_spec("fiftyone") is None:
        return
    from tests.private_mongod import start_mongod

    _MONGOD, uri = start_mongod(_SESSION_DIR / "mongo")
    os.environ["FIFTYONE_DATABASE_URI"] = uri
    os.environ["FIFTYONE_DATABASE_ADMIN"] = "true"


def pytest_configure(config: pytest.Config) -> None:
    plugins_dir = _SESSION_DIR / "plugins"
    plugins_dir.mkdir(exist_ok=True)
    os.environ.setdefault("FIFTYONE_PLUGINS_DIR", str(plugins_dir))
    os.environ.setdefault("QUALICLIP_CACHE", str(_SESSION_DIR / "cache"))
    # The App policy (qualiclip_plugin.policy) for operator executions in tests: checkpoints
    # from WEIGHTS_DIR may be loaded, reports go under the session folder.
    WEIGHTS_DIR.mkdir(exist_ok=True)
    os.environ.setdefault("QUALICLIP_APP_WEIGHTS_DIRS", str(WEIGHTS_DIR))
    os.environ.setdefault("QUALICLIP_APP_OUTPUT_DIR", str(_SESSION_DIR / "app-output"))
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
