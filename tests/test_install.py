"""What ``pip install`` of this project gives: the wheel's packages, its dependencies and extras,
and a fresh environment without FiftyOne, where the library, the CLI and the training code work
and the plugin refuses in one line that names the extra.

The fresh environment is a real venv with the wheel really installed in it. Its dependencies are
not downloaded (PyTorch alone is several GB): the venv sees, through a ``.pth`` file, a folder
of links to exactly the distributions the wheel's base requirements pull in, taken from the
environment running the tests. FiftyOne and everything only it needs stay out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
#: Repository folder -> the top-level package it installs as.
PACKAGE_FOLDERS = {"qualiclip": "qualiclip", "qualiclip_plugin": "qualiclip_plugin",
                   "training": "qualiclip_train"}

pytestmark = pytest.mark.install


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built offline from a clean copy of the working tree (no ``build/``
    left over from earlier builds can add or hide files)."""
    pytest.importorskip("setuptools", minversion="77")  # PEP 639 licence fields
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in PACKAGE_FOLDERS:
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(root), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (path,) = root.glob("qualiclip-*.whl")
    return path


def _metadata_requirements(wheel: Path) -> list[Requirement]:
    """The ``Requires-Dist`` lines of the wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode()
    return [Requirement(line.split(":", 1)[1]) for line in text.splitlines()
            if line.startswith("Requires-Dist:")]


def _needed(requirement: Requirement, extras: set[str]) -> bool:
    markers = [{"extra": extra} for extra in extras or {""}]
    return requirement.marker is None or any(requirement.marker.evaluate(m) for m in markers)


def test_wheel_holds_the_three_packages_and_every_module_of_the_repository(wheel):
    """The packages are listed by hand in pyproject.toml (the training folder installs under
    another name): a new subpackage missing from that list would install without its modules."""
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == set(PACKAGE_FOLDERS.values())
    missing = sorted(
        f"{package}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, package in PACKAGE_FOLDERS.items()
        for path in (REPO / folder).rglob("*.py") if "__pycache__" not in path.parts)
    missing = [name for name in missing if name not in names]
    assert not missing, f"not in the wheel (add the package to pyproject.toml): {missing}"


def test_fiftyone_is_the_fiftyone_extra_not_a_dependency(wheel):
    """A plain install brings the library, CLI and training code without FiftyOne (119
    packages, ~1.1 GB with MongoDB); ``qualiclip[fiftyone]`` adds the version the plugin is tested
    with, the one its missing-FiftyOne message names."""
    from qualiclip_plugin import FIFTYONE_MISSING, FIFTYONE_REQUIREMENT

    requirements = _metadata_requirements(wheel)
    base = {r.name for r in requirements if _needed(r, set())}
    assert "fiftyone" not in base
    assert {"torch", "open_clip_torch", "click"} <= base
    (extra,) = [r for r in requirements if r.name == "fiftyone"]
    assert _needed(extra, {"fiftyone"})
    assert str(extra.specifier) == str(Requirement(FIFTYONE_REQUIREMENT).specifier)
    assert FIFTYONE_REQUIREMENT in FIFTYONE_MISSING and "qualiclip[fiftyone]" in FIFTYONE_MISSING


def _base_distributions(wheel: Path) -> dict[str, object]:
    """Every installed distribution the wheel's base requirements pull in (extras of
    dependencies followed), plus pip and setuptools; by normalised name."""
    todo = [(r, set()) for r in _metadata_requirements(wheel) if _needed(r, set())]
    todo += [(Requirement("pip"), set()), (Requirement("setuptools"), set())]
    found: dict[str, object] = {}
    done: set[tuple[str, frozenset]] = set()
    while todo:
        requirement, _ = todo.pop()
        key = (re.sub(r"[-_.]+", "-", requirement.name).lower(), frozenset(requirement.extras))
        if key in done:
            continue
        done.add(key)
        dist = distribution(requirement.name)
        found[key[0]] = dist
        todo += [(r, set()) for r in map(Requirement, dist.requires or [])
                 if _needed(r, set(requirement.extras))]
    return found


@pytest.fixture(scope="module")
def fresh_venv(wheel, tmp_path_factory) -> Path:
    """A new venv with the wheel installed (no extras) and only its base dependencies visible;
    returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("fresh")
    deps = root / "deps"
    deps.mkdir()
    for dist in _base_distributions(wheel).values():
        site = Path(dist.locate_file(""))
        assert dist.files is not None, f"{dist.metadata['Name']} lists no files"
        for top in {f.parts[0] for f in dist.files}:
            # ".." entries are scripts outside site-packages; .pth files are only read in
            # site-packages itself; __pycache__ belongs to single-module distributions.
            if top in ("..", "__pycache__") or top.endswith(".pth") or (deps / top).exists():
                continue
            (deps / top).symlink_to(site / top)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "base-dependencies.pth").write_text(f"{deps}\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    return venv / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run a program of the fresh venv outside the repository (so the working tree is not on
    the import path) with a clean environment."""
    keep = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=300,
                          env={**keep, "PYTHONNOUSERSITE": "1", "XDG_CACHE_HOME": str(cwd),
                               **env})


def test_fresh_install_without_fiftyone(fresh_venv, tmp_path, tiny_checkpoint):
    """Without the extra: pip finds every requirement met; the README's Python example and
    ``qualiclip score`` run; every training module imports; ``import qualiclip_plugin`` and the
    plugin's sub-commands say in one line what to install, while ``qualiclip --help`` works."""
    from qualiclip_plugin import FIFTYONE_MISSING
    from tests.conftest import make_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        make_image(photos / f"p{i}.jpg", seed=i)

    check = _run(fresh_venv, "python", "-m", "pip", "check", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    where = _run(fresh_venv, "python", "-c", "import qualiclip; print(qualiclip.__file__)",
                 cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(fresh_venv.parent), where
    nothing = _run(fresh_venv, "python", "-c", "import fiftyone", cwd=tmp_path)
    assert "No module named 'fiftyone'" in nothing.stderr

    # The README's example as written; $QUALICLIP_WEIGHTS stands in the tiny model for the
    # official weights (no download).
    readme = (REPO / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "score_images" in example
    ran = _run(fresh_venv, "python", "-c", example, cwd=tmp_path,
               QUALICLIP_WEIGHTS=str(tiny_checkpoint))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert len(re.findall(r"^0\.\d{3} sharp 0\.\d{3} photos/p\d\.jpg$", ran.stdout, re.M)) == 3

    scored = _run(fresh_venv, "qualiclip", "score", "photos", "-o", "scores.csv", "--weights",
                  str(tiny_checkpoint), "--no-progress", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + 3

    training = _run(fresh_venv, "python", "-c",
                    "import pkgutil, importlib, qualiclip_train\n"
                    "for m in pkgutil.walk_packages(qualiclip_train.__path__, 'qualiclip_train.'):"
                    "\n    importlib.import_module(m.name)", cwd=tmp_path)
    assert training.returncode == 0, training.stderr[-3000:]
    assert _run(fresh_venv, "qualiclip-train", "--help", cwd=tmp_path).returncode == 0

    plugin = _run(fresh_venv, "python", "-c", "import qualiclip_plugin", cwd=tmp_path)
    assert plugin.stderr.strip().splitlines()[-1:] == [f"ModuleNotFoundError: {FIFTYONE_MISSING}"]
    usage = _run(fresh_venv, "qualiclip", "--help", cwd=tmp_path)
    assert usage.returncode == 0, usage.stderr
    assert re.search(r"^  plugin +\(unavailable", usage.stdout, re.M), usage.stdout
    for command in (["plugin", "install"], ["plugin", "--help"], ["report", "--dataset", "x"]):
        refused = _run(fresh_venv, "qualiclip", *command, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stdout + refused.stderr == f"Error: {FIFTYONE_MISSING}\n", command
    # A report from a scores CSV is the library's own: it needs no FiftyOne.
    reported = _run(fresh_venv, "qualiclip", "report", "scores.csv", "-o", "report.html",
                    cwd=tmp_path)
    assert reported.returncode == 0, reported.stderr[-3000:]
    assert "p0.jpg" in (tmp_path / "report.html").read_text()
