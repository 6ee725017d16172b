"""Browser tests of the real FiftyOne App: one App server and one headless Chromium for the package.

* The App server (``python -m fiftyone.server.main``) runs with the plugin's server policy for App
  requests: ``QUALICLIP_APP_DOWNLOADS=0`` and an empty ``QUALICLIP_CACHE`` (the official weights
  are unavailable) and ``QUALICLIP_APP_WEIGHTS_DIRS`` naming a folder holding a copy of the tiny
  test checkpoint (the one the form may offer). It shares the session's private MongoDB.
* Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright for Python. Where either is
  missing the tests skip with the reason; with ``CI=true`` they fail instead (``scripts/test.sh``
  installs both there).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app_server import running_app_server
from tests.conftest import missing_requirement
from tests.qualiclip_plugin.conftest import plugin_link  # noqa: F401  (autouse: the plugin is installed)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
#: File name of the checkpoint copy the App server may offer in the form.
APP_CHECKPOINT_NAME = "tiny_app_checkpoint.pth"


def _missing_requirement() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is not installed (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Outside CI, skip this package's tests at collection when a requirement is missing (before
    any fixture builds checkpoints or servers)."""
    missing = _missing_requirement()
    if not missing or os.environ.get("CI") == "true":
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.skip(reason=missing))


@pytest.fixture(scope="package")
def browser_requirements() -> None:
    """Skip (fail under CI=true) when Chromium or Playwright is missing."""
    missing = _missing_requirement()
    if missing:
        missing_requirement(f"App browser tests: {missing}")


@dataclass
class AppServer:
    url: str
    log: Path
    weights_dir: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(no server log: {exc})"


@pytest.fixture(scope="package")
def app_weights_dir(tmp_path_factory, tiny_checkpoint) -> Path:
    """The folder the App server may offer checkpoints from, holding a copy of the tiny one."""
    folder = tmp_path_factory.mktemp("app_weights")
    shutil.copyfile(tiny_checkpoint, folder / APP_CHECKPOINT_NAME)
    return folder


@pytest.fixture(scope="package")
def app_server(browser_requirements, plugin_link, app_weights_dir,  # noqa: F811
               tmp_path_factory) -> AppServer:
    """One FiftyOne App server for the whole package, with the plugin's App policy set."""
    yield from serve_app(tmp_path_factory.mktemp("app_server"), app_weights_dir)


def serve_app(folder: Path, weights_dir: Path, **extra_env: str):
    """Run an App server with the plugin's App policy (no downloads, an empty weights cache,
    ``weights_dir`` allowed), its log in ``folder``; yields its :class:`AppServer`.
    ``extra_env`` adds environment variables (e.g. to allow Schedule)."""
    cache = folder / "empty_cache"
    cache.mkdir()
    env = {**os.environ, "QUALICLIP_APP_DOWNLOADS": "0", "QUALICLIP_CACHE": str(cache),
           "QUALICLIP_APP_WEIGHTS_DIRS": str(weights_dir), "FIFTYONE_DO_NOT_TRACK": "true",
           **extra_env}
    log = folder / "server.log"
    try:
        with running_app_server(log, env) as url:
            yield AppServer(url=url, log=log, weights_dir=weights_dir)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="package")
def browser(browser_requirements):
    """One headless Debian Chromium for the package."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def app(browser, app_server, tmp_path):
    """A fresh browser context and page on the App; failures inside ``app.step`` screenshot."""
    from tests.app.app_ui import AppUI

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    # The App's own switch for its Playwright tests: no analytics, no Enterprise pop-over, no
    # query-performance toast over the grid.
    context.add_init_script("window.IS_PLAYWRIGHT = true;")
    page = context.new_page()
    ui = AppUI(page, app_server, shots_dir=tmp_path / "screenshots")
    yield ui
    context.close()


@pytest.fixture()
def app_dataset(tiny_checkpoint, tmp_path):
    """A persistent dataset of 8 real images, in an order that is neither ascending nor
    descending by score (so a sort visibly reorders the grid), plus the library's reference
    scores ``{filepath: score}``."""
    import uuid

    import fiftyone as fo

    from qualiclip.scoring import score_images
    from tests.conftest import make_image

    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(96, 64), (64, 80), (72, 72), (96, 64), (80, 60), (64, 80), (72, 72), (96, 64)]
    paths = [make_image(folder / f"app_{i}.{'png' if i % 3 == 0 else 'jpg'}", size=size,
                        seed=500 + i) for i, size in enumerate(sizes)]
    results = score_images([str(p) for p in paths], weights=str(tiny_checkpoint), device="cpu",
                           precision="fp32", num_workers=0, progress=False)
    reference = {r.path: r.score for r in results}
    ranked = sorted(reference, key=reference.get)
    # lowest, highest, then the rest interleaved: never sorted either way
    order = [ranked[0], ranked[-1], *ranked[2:-1:2], *ranked[1:-1:2]]
    assert sorted(order) == sorted(ranked)
    dataset = fo.Dataset(f"qualiclip-app-{uuid.uuid4().hex[:10]}", persistent=True)
    dataset.add_samples([fo.Sample(filepath=p) for p in order])
    yield dataset, reference
    if fo.dataset_exists(dataset.name):
        fo.delete_dataset(dataset.name)
