"""Make the FiftyOne App screenshots in docs/images from real photos.

Two pictures, each from a small dataset built of scikit-image's sample photos (scikit-image is
installed with FiftyOne, so nothing else is needed), scored with the plugin's own operators, shown
by the App server on loopback and captured with Debian's headless Chromium:

* default: docs/images/app_quality_map.png, a sample's quality map in the modal (photos with a
  noisy or blurred quadrant);
* ``--panel``: docs/images/app_quality_panel.png, the Image quality panel beside the grid, for four
  photos and copies degraded with the training code's own distortions
  (``qualiclip_train.degradation``), with a saved threshold between them. Drives the page with
  Playwright (the dev extras). Prints every score, for the caption.

Needs a checkpoint: the official weights cannot be downloaded everywhere, so the README says
which checkpoint made the picture (e.g. one trained with ``qualiclip-train``)::

    .venv/bin/python docs/make_app_screenshot.py WEIGHTS.pth [OUT.png]
    .venv/bin/python docs/make_app_screenshot.py WEIGHTS.pth --panel [OUT.png]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.private_mongod import free_port, start_mongod  # noqa: E402


def wait_for(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer")


def degraded_photos(folder: Path) -> list[Path]:
    """Sample photos with a noisy or blurred quadrant, plus the clean originals."""
    import skimage.data

    rng = np.random.default_rng(0)
    paths = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        clean = folder / f"{name}.png"
        image.save(clean)
        w, h = image.size
        box = (w // 2, 0, w, h // 2)  # top-right quadrant
        noisy = np.asarray(image).astype(np.float32) / 255
        patch = noisy[box[1]:box[3], box[0]:box[2]]
        noisy[box[1]:box[3], box[0]:box[2]] = np.clip(
            patch + rng.normal(0, 0.15, patch.shape), 0, 1)
        Image.fromarray((noisy * 255).astype(np.uint8)).save(folder / f"{name}_noise_tr.png")
        blurred = image.copy()
        blurred.paste(image.crop(box).filter(ImageFilter.GaussianBlur(6)), box[:2])
        blurred.save(folder / f"{name}_blur_tr.png")
        paths += [clean, folder / f"{name}_noise_tr.png", folder / f"{name}_blur_tr.png"]
    return paths


#: The photos of the panel picture, and the distortions (name, level of 5) of their copies.
PANEL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
PANEL_DEGRADATIONS = (("gaussian_blur", 5), ("white_noise", 5), ("jpeg", 5))


def panel_photos(folder: Path) -> list[Path]:
    """The originals of :data:`PANEL_PHOTOS` and one copy per :data:`PANEL_DEGRADATIONS`, as PNG
    files named ``<photo>.png`` and ``<photo>_<distortion>_L<level>.png``."""
    import skimage.data
    import torch
    from qualiclip_train.degradation.ladders import apply_level

    paths = []
    for i, name in enumerate(PANEL_PHOTOS):
        image = np.array(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
        clean = folder / f"{name}.png"
        Image.fromarray(image).save(clean)
        paths.append(clean)
        x = torch.from_numpy(image).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
        for distortion, level in PANEL_DEGRADATIONS:
            g = torch.Generator().manual_seed(i)  # the noise pattern is part of the picture
            y = apply_level(x, distortion, level, g)
            pixels = (y.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            path = folder / f"{name}_{distortion}_L{level}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


class _Server:
    """What :class:`tests.app.app_ui.AppUI` needs to know about the App server."""

    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def panel_screenshot(weights: Path, out: Path, work: Path) -> None:
    """Score the panel photos into ``quality``, save a threshold between the originals and the
    copies, open the panel in the App and capture the page as ``out`` (1000 px wide)."""
    import fiftyone as fo
    from playwright.sync_api import expect, sync_playwright

    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data
    from tests.app.app_ui import AppUI, shrink_screenshot
    from tests.app_server import running_app_server

    images = work / "images"
    images.mkdir()
    dataset = fo.Dataset("qualiclip-panel", persistent=True)
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in panel_photos(images)])
    compute_image_quality(dataset, weights=str(weights), device="cpu", precision="fp32")
    scores = dict(zip(dataset.values("filepath"), dataset.values("quality"), strict=True))
    originals = [v for k, v in scores.items() if Path(k).stem in PANEL_PHOTOS]
    copies = [v for k, v in scores.items() if Path(k).stem not in PANEL_PHOTOS]
    for path, score in sorted(scores.items(), key=lambda kv: kv[1]):
        print(f"{score:.4f} {Path(path).name}")
    print(f"originals {min(originals):.4f}..{max(originals):.4f}, "
          f"degraded copies {min(copies):.4f}..{max(copies):.4f}")
    # Between the groups when they separate, else the median: the slider has something to show.
    ranked = sorted(scores.values())
    threshold = ((min(originals) + max(copies)) / 2 if min(originals) > max(copies)
                 else ranked[len(ranked) // 2])
    panel_data.save_threshold(dataset, panel_data.source(dataset, "quality"), "quality",
                              round(threshold, 4))
    with running_app_server(work / "server.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"])
        context = browser.new_context(viewport={"width": 1400, "height": 1250})
        context.add_init_script("window.IS_PLAYWRIGHT = true;")  # no Enterprise pop-overs
        app = AppUI(context.new_page(), _Server(url, work / "server.log"), work / "shots")
        app.open_dataset(dataset.name)
        expect(app.grid_tiles()).to_have_count(len(dataset), timeout=60_000)
        panel = app.open_quality_panel()
        expect(panel).to_contain_text("Saved threshold", timeout=30_000)
        # "Worst N" shows the grid lowest score first: the degraded copies should lead it.
        app.panel_button("Worst N").click()
        expect(panel).to_contain_text("lowest", timeout=30_000)
        app.page.wait_for_timeout(2000)  # let the grid's thumbnails and the plot settle
        app.page.screenshot(path=str(out))
        browser.close()
    shrink_screenshot(out, 1000)
    print("wrote", out)


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--panel"]
    panel = "--panel" in sys.argv[1:]
    weights = Path(args[0]).resolve()
    default = "app_quality_panel.png" if panel else "app_quality_map.png"
    out = Path(args[1] if len(args) > 1 else f"docs/images/{default}").resolve()
    work = Path(tempfile.mkdtemp(prefix="qualiclip-shot-"))
    mongod, uri = start_mongod(work / "mongo")
    os.environ.update(FIFTYONE_DATABASE_URI=uri,
                      FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_VALIDATION="false",
                      FIFTYONE_PLUGINS_DIR=str(work / "plugins"))
    (work / "plugins").mkdir()
    server = None
    try:
        import fiftyone as fo
        import fiftyone.operators as foo

        from qualiclip_plugin.install import install_plugin

        install_plugin(work / "plugins")
        if panel:
            panel_screenshot(weights, out, work)
            return
        images = work / "images"
        images.mkdir()
        dataset = fo.Dataset("qualiclip-demo", persistent=True)
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in degraded_photos(images)])
        foo.execute_operator("@qualiclip/qualiclip/compute_image_quality",
                             ctx=dict(view=dataset.view(),
                                      params=dict(weights=str(weights), device="cpu",
                                                  delegate=False)))
        foo.execute_operator("@qualiclip/qualiclip/compute_quality_maps",
                             ctx=dict(view=dataset.view(),
                                      params=dict(weights=str(weights), device="cpu",
                                                  delegate=False)))
        dataset.reload()
        # Show the map (labels start unticked in the modal) at a readable opacity.
        dataset.app_config.active_fields = fo.ActiveFields(paths=["quality_map"])
        dataset.app_config.color_scheme = fo.ColorScheme(opacity=0.6)
        dataset.save()
        sample = dataset.match(fo.ViewField("filepath").ends_with("astronaut_noise_tr.png")).first()
        np.set_printoptions(linewidth=150)
        print("map:\n", np.round(sample["quality_map"].map, 2))
        app_port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--port",
                                   str(app_port), "--address", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(f"http://127.0.0.1:{app_port}/")
        url = f"http://127.0.0.1:{app_port}/datasets/{dataset.name}?id={sample.id}"
        subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-quic", "--no-first-run", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={work / 'chrome'}", "--window-size=1500,900",
                        "--virtual-time-budget=40000", "--hide-scrollbars",
                        f"--screenshot={out}", url], check=True, timeout=300)
        # Keep the docs small: 1000 px wide, 128-colour palette.
        shot = Image.open(out).convert("RGB")
        shot = shot.resize((1000, round(shot.height * 1000 / shot.width)), Image.LANCZOS)
        shot.quantize(128).save(out, optimize=True)
        print("wrote", out)
    finally:
        if server is not None:
            server.terminate()
        mongod.terminate()
        mongod.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
