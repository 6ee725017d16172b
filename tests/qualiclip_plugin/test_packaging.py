"""Manifest, install paths, and import hygiene of the entry module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "qualiclip_plugin"


def _manifest(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_manifests_agree_and_list_every_operator():
    root, package = _manifest(REPO / "fiftyone.yml"), _manifest(PACKAGE / "fiftyone.yml")
    assert (REPO / root.pop("py_entry")).resolve() == (PACKAGE / package.pop("py_entry")).resolve()
    assert root == package
    assert root["name"] == "@qualiclip/qualiclip"
    assert root["fiftyone"]["version"].startswith(">=")
    from qualiclip_plugin import OPERATOR_NAME

    assert OPERATOR_NAME in root["operators"]


def test_pip_install_path_links_the_package(tmp_path):
    from qualiclip.cli import main

    result = CliRunner().invoke(main, ["plugin", "install", "--plugins-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    link = tmp_path / "qualiclip"
    assert link.is_symlink() and link.resolve() == PACKAGE
    assert str(link) in result.output
    again = CliRunner().invoke(main, ["plugin", "install", "--plugins-dir", str(tmp_path)])
    assert again.exit_code == 0  # idempotent
    result = CliRunner().invoke(main, ["plugin", "uninstall", "--plugins-dir", str(tmp_path)])
    assert result.exit_code == 0 and not link.exists()


def test_install_refuses_to_clobber(tmp_path):
    from qualiclip_plugin.install import plugin_group

    (tmp_path / "qualiclip").mkdir()
    result = CliRunner().invoke(plugin_group, ["install", "--plugins-dir", str(tmp_path)])
    assert result.exit_code != 0 and "--force" in result.output


def _registered_operators(plugins_dir: Path) -> list[str]:
    """Operators FiftyOne registers from ``plugins_dir`` (fresh process, as the App would)."""
    code = ("import fiftyone.operators as foo; "
            "print(sorted(op.name for op in foo.list_operators() "
            "if op.uri.startswith('@qualiclip/qualiclip/')))")
    env = {**os.environ, "FIFTYONE_PLUGINS_DIR": str(plugins_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    return eval(out.stdout.strip().splitlines()[-1])


def test_both_layouts_register_the_operator(tmp_path):
    # `fiftyone plugins download <repo url>` places the repository root (with the root
    # fiftyone.yml) in the plugins dir; `qualiclip plugin install` links the package folder.
    from qualiclip_plugin.install import install_plugin

    manifest = _manifest(REPO / "fiftyone.yml")
    listed = sorted(manifest["operators"] + manifest["panels"])  # every one must register

    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    (downloaded / "qualiclip").symlink_to(REPO, target_is_directory=True)
    linked = tmp_path / "linked"
    install_plugin(linked)
    assert _registered_operators(downloaded) == listed
    assert _registered_operators(linked) == listed


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_and_manifests_require_the_same_fiftyone():
    """pip (the ``fiftyone`` extra), the plugin's missing-FiftyOne message and FiftyOne must agree
    on the oldest FiftyOne the plugin runs on (the one tested)."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from qualiclip_plugin import FIFTYONE_REQUIREMENT

    (requirement,) = [Requirement(r) for r in
                      _pyproject()["project"]["optional-dependencies"]["fiftyone"]
                      if Requirement(r).name == "fiftyone"]
    assert str(requirement) == str(Requirement(FIFTYONE_REQUIREMENT))
    lower = [s.version for s in requirement.specifier if s.operator == ">="]
    for path in (REPO / "fiftyone.yml", PACKAGE / "fiftyone.yml"):
        assert _manifest(path)["fiftyone"]["version"] == f">={lower[0]}", path
    assert version("fiftyone") in requirement.specifier  # the installed one is allowed


def test_licence_file_is_apache_2_and_declared():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it
    project = _pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]


def test_wheel_ships_the_plugin_manifest_icon_and_licence(tmp_path):
    """A non-editable install must carry what FiftyOne loads from the package folder, and the
    licence."""
    import zipfile

    # PEP 639 licence fields; setuptools builds wheels itself since 70.1 (no `wheel` package)
    pytest.importorskip("setuptools", minversion="77")
    import shutil

    source = tmp_path / "src"  # a clean copy: no build/ left over from earlier builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, source / name)
    for name in ("qualiclip", "qualiclip_plugin", "training"):
        shutil.copytree(REPO / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("qualiclip-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    manifest = _manifest(PACKAGE / "fiftyone.yml")
    assert "qualiclip_plugin/fiftyone.yml" in names
    from qualiclip_plugin.scoring.forms import ICON

    assert "qualiclip_plugin/" + ICON.lstrip("/") in names
    assert manifest["name"] == "@qualiclip/qualiclip"
    wheel_zip = zipfile.ZipFile(wheel)
    (licence,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel_zip.read(licence) == (REPO / "LICENSE").read_bytes()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in wheel_zip.read(metadata).decode()
