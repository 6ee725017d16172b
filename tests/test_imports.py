"""What each import loads, in a fresh interpreter (click's ``test_imports`` style).

Each check runs a new Python process, imports something, and compares the top-level packages it
newly loaded (the standard library left out) with an allowlist, so a new heavy import anywhere
below fails here by name. The layers: ``training -> qualiclip <- qualiclip_plugin``; the library
and the CLI's start must stay cheap (no torch for ``import qualiclip`` or ``qualiclip --help``),
and what the FiftyOne App imports when it starts must not load torch either.
"""

from __future__ import annotations

import ast
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
    "qualiclip_plugin.scoring.operator", "qualiclip_plugin.panel.operator",
    "qualiclip_plugin.reports.operator", "qualiclip_plugin.reports.maps_operator",
    "qualiclip_plugin.trust.request", "qualiclip_plugin.scoring.forms",
    "qualiclip_plugin.trust.policy",
]
#: Optional packages some ``qualiclip`` modules need (the ONNX / OpenVINO backends, Ray Data,
#: PyAV for videos).
OPTIONAL = {"onnx", "onnxruntime", "openvino", "onnxscript", "ray", "pyarrow", "av"}


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


def test_library_loads_ray_only_for_the_ray_path(tmp_path):
    """Scoring with the library (``score_images``, the local ``qualiclip score``) and importing
    every library module except :mod:`qualiclip.ray`'s engine calls load neither Ray nor
    pyarrow; ``qualiclip.ray`` itself imports them only when a Ray run starts. Likewise PyAV:
    :mod:`qualiclip.video` imports it only when a video is decoded."""
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (40, 40), (90, 120, 150)).save(image)
    code = f"""
        import contextlib, io, pkgutil, importlib
        import qualiclip, qualiclip.ray
        for info in pkgutil.walk_packages(qualiclip.__path__, "qualiclip."):
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                skipped.append(info.name)
        from qualiclip.architecture import TINY_TEST_CONFIG, build_clip, compute_prompt_features
        from qualiclip.checkpoint import write_checkpoint
        from qualiclip.prompts import flat_prompts
        from qualiclip.cli import main
        clip = build_clip(TINY_TEST_CONFIG).eval()
        weights = write_checkpoint({str(tmp_path / "tiny.pth")!r}, model_config=TINY_TEST_CONFIG,
                                   state_dict=clip.state_dict(),
                                   prompt_features=compute_prompt_features(clip, flat_prompts()))
        out = io.StringIO()
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(out):
            try:
                main(["score", {str(image)!r}, "--weights", str(weights), "--no-progress"])
            except SystemExit:
                pass
        assert "a.png" in out.getvalue(), out.getvalue()
        qualiclip.score_images([{str(image)!r}], weights=str(weights), progress=False)
    """
    loaded = newly_loaded(code)
    assert not {"ray", "pyarrow", "av"} & set(loaded["new"]), loaded
    assert "torch" in loaded["new"]  # it did score


def test_video_path_loads_pyav(tmp_path):
    """The other side of the rule above: scoring a video does load PyAV (so the allowlist above
    would notice a module that imported it eagerly only if it is not the video path)."""
    pytest.importorskip("av")
    code = """
        import qualiclip.video
        assert "av" not in sys.modules
        list(qualiclip.video.iter_frames("missing.mp4"))
    """
    assert "av" in newly_loaded(code)["new"]


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


def _is_type_checking(test: ast.expr) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:``: a block that never runs."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[tuple[str, str]]:
    """Every import in ``tree``, at top level or inside functions (both run sooner or later),
    ``if TYPE_CHECKING:`` blocks left out, as ``(name, fallback)``: ``from package import name``
    gives ``("package.name", "package")`` (``name`` may be a submodule or an attribute), ``import
    a.b`` gives ``("a.b", "a.b")``; relative imports made absolute."""
    names: set[tuple[str, str]] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names.update((alias.name, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.update((f"{base}.{alias.name}", base) for alias in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return names


def import_graph(packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: modules of packages it imports}``, read from the source with ``ast``.

    ``from a.b import c`` is an edge to the module ``a.b.c`` when there is one, else to ``a.b``
    (the closest enclosing module of ``packages``); a package's ``__init__`` is the package's own
    node. The parent packages Python imports on the way are not edges: a package's
    ``__init__`` that imports its submodules only lazily (inside ``__getattr__``) shows up as
    those edges, and one that imports them at top level would be caught by them."""
    files: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in files.items():
        edges = set()
        for name, fallback in _imported_names(ast.parse(path.read_text()), module, is_package):
            if name not in files:
                name = fallback
                while name and name not in files:
                    name = name.rpartition(".")[0]
            if name and name != module:
                edges.add(name)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_find_cycle_names_the_cycle():
    """The checker itself: a planted cycle is found and named, a chain is not a cycle."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("package", ["qualiclip_plugin", "qualiclip"])
def test_no_import_cycles(package):
    """No module of ``package`` imports, even from inside a function, a module that imports it
    back: layers stay layers, so any module can be imported first and read on its own. A
    function-local import is allowed only to keep heavy modules (torch) out of the App's and
    the CLI's start, never to hide a cycle."""
    graph = import_graph(("qualiclip", "qualiclip_plugin"))
    graph = {m: e for m, e in graph.items() if m == package or m.startswith(package + ".")}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
