"""The report opens in a real browser with no server: headless Chromium loads it from file://
and every figure and thumbnail decodes (``naturalWidth > 0``)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qualiclip.report.data import ReportRow
from qualiclip.report.html import ReportConfig, write_report
from tests.conftest import make_image

CHROMIUM = "/usr/bin/chromium"

# Outside CI a missing browser skips; in CI (scripts/test.sh installs it) it must be there.
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason=f"{CHROMIUM} is not installed (apt install chromium)")

# Appended to a *copy* of the report (the report itself has no script): after the load event,
# record each image's decoded width and the page's total in attributes --dump-dom will show.
_PROBE = """<script>window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-images", document.images.length);
});</script>"""


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={user_dir}", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture()
def report_path(tmp_path) -> Path:
    rng = np.random.default_rng(3)
    rows = [ReportRow(path=str(make_image(tmp_path / f"im_{i}.png", size=(64, 48), seed=i)),
                      score=float(rng.uniform()), pair_scores={"good_photo": float(rng.uniform())},
                      groups={"split": ("train" if i % 2 else "val",)})
            for i in range(8)]
    return write_report(rows, tmp_path / "report.html", ReportConfig(n=3))


def test_figures_and_thumbnails_render_in_chromium(report_path, tmp_path):
    probed = tmp_path / "probed.html"
    probed.write_text(report_path.read_text().replace("</body>", _PROBE + "</body>"))
    result = _chromium("--dump-dom", probed.as_uri(), user_dir=tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    total = re.search(r'data-images="(\d+)"', dom)
    assert total, "the probe did not run: page not loaded"
    widths = [int(w) for w in re.findall(r'data-natural-width="(\d+)"', dom)]
    # histogram + pair scores + split breakdown figures, then 3 worst + 3 best thumbnails
    assert int(total.group(1)) == len(widths) == 9
    assert all(w > 0 for w in widths), widths
    figures = re.findall(r'<img class="figure" id="([^"]+)"[^>]*data-natural-width="(\d+)"', dom)
    assert {name for name, _ in figures} == {"fig-histogram", "fig-pairs", "fig-group-split"}
    assert all(int(w) >= 600 for _, w in figures)  # 6.4 in at 100 dpi: really decoded


def test_screenshot_is_not_blank(report_path, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1000,1400", report_path.as_uri(),
                       user_dir=tmp_path / "profile")
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape[:2] == (1400, 1000)
    # a rendered histogram puts many non-white pixels on the page
    assert (pixels.min(axis=-1) < 200).mean() > 0.02
