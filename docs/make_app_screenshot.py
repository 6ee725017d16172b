"""Make docs/images/app_quality_map.png: a quality map shown in the FiftyOne App.

Builds a small dataset of sample photos with a degraded quadrant, scores it and writes quality
maps with the plugin's operators, starts the App server on loopback and screenshots a sample's
modal with headless Chromium. Needs a checkpoint (e.g. one trained with `qualiclip-train`) and
Debian's chromium:

    .venv/bin/python docs/make_app_screenshot.py WEIGHTS.pth [OUT.png]
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


def main() -> None:
    weights = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/images/app_quality_map.png").resolve()
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
