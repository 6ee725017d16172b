"""What each import loads, in a fresh interpreter (click's ``test_imports`` style).

Each check runs a new Python process, imports something, and compares the top-level packages it
newly loaded (the standard library left out) with an allowlist, so a new heavy import anywhere
below fails here by name. The layers: ``training -> qualiclip <- qualiclip_plugin``; the library
and the CLI's start must stay cheap (no torch for ``import qualiclip`` or ``qualiclip --help``),
and what the FiftyOne App imports when it starts must not load torch either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Modules the App imports at start: ``qualiclip_plugin/operators_entry.py`` and its imports.
PLUGIN_ENTRY_MODULES = [
    "qualiclip_plugin.operators", "qualiclip_plugin.panel", "qualiclip_plugin.report_operator",
    "qualiclip_plugin.quality_maps_operator", "qualiclip_plugin.request",
    "qualiclip_plugin.forms", "qualiclip_plugin.policy",
]
#: Optional packages some ``qualiclip`` modules need (the ONNX / OpenVINO backends).
OPTIONAL = {"onnx", "onnxruntime", "openvino", "onnxscript"}


def newly_loaded(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; return ``{"new": [...], "skipped": [...]}``: the
    non-stdlib top-level packages it loaded, and what ``code`` put in the list ``skipped``."""
    script = "\n".join([
        "import json, sys",
        "before = set(sys.modules)",
        "skipped = []",
        textwrap.dedent(code).strip(),
        "new = {name.split('.')[0] for name in set(sys.modules) - before}",
        "print(json.dumps({'new': sorted(n for n in new if n not in sys.stdlib_module_names),"
        " 'skipped': skipped}))",
    ])
    env = {**os.environ, "FIFTYONE_DO_NOT_TRACK": "true"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_qualiclip_loads_only_itself():
    """``import qualiclip`` (and its torch-free names) loads no torch, fiftyone or training."""
    new = newly_loaded("import qualiclip; qualiclip.PAIR_NAMES")["new"]
    assert set(new) <= {"qualiclip"}, new


@pytest.mark.parametrize("module", ["qualiclip.weights", "qualiclip.constants"])
def test_torch_free_library_modules(module):
    """``qualiclip.weights`` (the plugin checks weights names with it before any model exists)
    and the shared constants load nothing but the library."""
    new = newly_loaded(f"import {module}")["new"]
    assert set(new) <= {"qualiclip"}, new


def test_cli_module_loads_no_torch_pil_numpy_or_fiftyone():
    """``import qualiclip.cli``: click and the library, nothing else."""
    new = newly_loaded("import qualiclip.cli")["new"]
    assert set(new) <= {"click", "qualiclip"}, new


def test_cli_help_loads_no_torch_pil_numpy_or_fiftyone():
    """``qualiclip --help`` lists the sub-commands other packages contribute (their modules are
    imported for their help text) but loads no torch, PIL, numpy or fiftyone."""
    new = newly_loaded("""
        import contextlib, io
        from qualiclip.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit:
                pass
    """)["new"]
    assert set(new) <= {"click", "qualiclip", "qualiclip_plugin", "qualiclip_train"}, new


def _walk(package: str) -> str:
    """Code that imports every module of ``package``, skipping (and recording) those whose
    optional third-party dependency is missing."""
    return f"""
        import importlib, pkgutil
        import {package}
        for info in pkgutil.walk_packages({package}.__path__, "{package}."):
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] not in {sorted(OPTIONAL)!r}:
                    raise
                skipped.append(info.name)
    """


def test_no_library_module_imports_fiftyone_the_plugin_or_training():
    """Every module of ``qualiclip``, imported together: the library depends on neither of the
    packages built on it, nor on FiftyOne."""
    loaded = newly_loaded(_walk("qualiclip"))
    assert not {"fiftyone", "qualiclip_plugin", "qualiclip_train"} & set(loaded["new"]), loaded
    assert not {"qualiclip.scoring", "qualiclip.cli"} & set(loaded["skipped"])


def test_no_plugin_module_imports_training():
    """Every module of ``qualiclip_plugin``, imported together: the plugin depends on the
    library only."""
    loaded = newly_loaded(_walk("qualiclip_plugin"))
    assert "qualiclip_train" not in loaded["new"], loaded
    assert "fiftyone" in loaded["new"]  # the walk did reach the operators


def test_plugin_entry_modules_load_no_torch():
    """What the App imports when it starts (the entry file run as FiftyOne runs it, and each of
    its imports) loads no torch, open_clip or torchvision: those wait for a run."""
    code = f"""
        import runpy
        runpy.run_path({str(REPO / "qualiclip_plugin" / "operators_entry.py")!r})
        for name in {PLUGIN_ENTRY_MODULES!r}:
            __import__(name)
    """
    new = set(newly_loaded(code)["new"])
    assert {"fiftyone", "qualiclip_plugin"} <= new
    assert not {"torch", "open_clip", "torchvision"} & new, sorted(new)
