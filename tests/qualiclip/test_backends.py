"""CPU runtime backends (qualiclip.backends): parity with torch fp32, the export cache, the
missing-runtime hint. Tiny random model. ONNX Runtime is the scoring runtime (scripts/setup.sh
installs it), so its tests always run; OpenVINO's embedder serves the benchmarks only, and its
tests run where it is installed (``pip install "qualiclip[openvino]"``)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys

import pytest
import torch

from qualiclip.backends import (
    INSTALL_HINT,
    OPENVINO_INSTALL_HINT,
    BackendUnavailableError,
    export,
)

RUNTIMES = {
    "onnxruntime": ("qualiclip.backends.onnxruntime_backend", "OnnxRuntimeEmbedder"),
    "openvino": ("qualiclip.backends.openvino_backend", "OpenVinoEmbedder"),
}
TESTED = ["onnxruntime"] + (["openvino"] if importlib.util.find_spec("openvino") else [])
#: (N, H, W): non-square both ways, odd sides, the minimum side, several batch sizes.
SHAPES = [(1, 32, 32), (2, 64, 96), (3, 97, 45), (1, 45, 130), (4, 33, 70), (2, 224, 160)]
TOL = 1e-4


def embedder_class(runtime: str):
    import importlib

    module_name, class_name = RUNTIMES[runtime]
    return getattr(importlib.import_module(module_name), class_name)


@pytest.fixture(scope="module", params=TESTED)
def runtime(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def embedder(runtime, tiny_model, onnx_folder):
    return embedder_class(runtime)(tiny_model, cache_folder=onnx_folder, progress=False)


@pytest.mark.parametrize("n,h,w", SHAPES)
def test_parity_with_torch_fp32(embedder, tiny_model, n, h, w):
    x = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(h * w + n))
    with torch.no_grad():
        ref = tiny_model.embed(x)
        ref_pairs = tiny_model.pair_scores_from_features(ref)
    got = embedder(x)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= TOL * max(1.0, float(ref.abs().max()))
    pairs = tiny_model.pair_scores_from_features(got)
    assert float((pairs - ref_pairs).abs().max()) <= TOL
    assert float((pairs.mean(-1) - ref_pairs.mean(-1)).abs().max()) <= TOL


def test_rejects_bad_shapes(embedder):
    with pytest.raises(ValueError, match=">= 32"):
        embedder(torch.rand(1, 3, 31, 64))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        embedder(torch.rand(3, 64, 64))


def test_export_is_named_by_checkpoint_sha_and_reused(runtime, tiny_model, onnx_folder, embedder,
                                                      capsys):
    sha = tiny_model.weights_info["sha256"]
    assert embedder.onnx_path.parent == onnx_folder
    assert embedder.onnx_path.name.startswith(f"qualiclip-embed-{sha[:16]}-")
    meta = json.loads(export.sidecar_path(embedder.onnx_path).read_text())
    assert meta["weights_sha256"] == sha and meta["settings"] == export.export_settings()
    mtime, count = embedder.onnx_path.stat().st_mtime_ns, export.export_count
    again = embedder_class(runtime)(tiny_model, cache_folder=onnx_folder, progress=True)
    assert again.onnx_path == embedder.onnx_path
    assert export.export_count == count
    assert "Exporting" not in capsys.readouterr().out
    assert embedder.onnx_path.stat().st_mtime_ns == mtime


def test_default_folder_is_the_weights_cache(tiny_model):
    from qualiclip.weights import cache_dir

    assert export.export_path(tiny_model).parent == cache_dir() / "onnx"


def test_different_weights_or_settings_give_different_files(tiny_model, tmp_path):
    a, b = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)
    a.weights_info = {"sha256": "a" * 64}
    b.weights_info = {"sha256": "b" * 64}
    assert export.export_path(a, folder=tmp_path) != export.export_path(b, folder=tmp_path)
    assert export.export_path(a, folder=tmp_path) != export.export_path(a, opset=18,
                                                                        folder=tmp_path)
    # Without a checkpoint hash the state dict is hashed: other weights, other file.
    a.weights_info, b.weights_info = {}, {}
    assert export.export_path(a, folder=tmp_path) == export.export_path(b, folder=tmp_path)
    with torch.no_grad():
        b.visual.attnpool.c_proj.bias.add_(1e-3)
    assert export.export_path(a, folder=tmp_path) != export.export_path(b, folder=tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "sidecar", "unloadable"])
def test_corrupt_export_is_rebuilt(runtime, tiny_model, embedder, tmp_path, damage, capsys):
    import shutil

    path = tmp_path / embedder.onnx_path.name  # a copy of the good export, then damaged
    shutil.copy(embedder.onnx_path, path)
    shutil.copy(export.sidecar_path(embedder.onnx_path), export.sidecar_path(path))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "sidecar":
        export.sidecar_path(path).write_text("{not json")
    else:  # passes the checksum but is not a model: the runtime's load fails, export again
        path.write_bytes(b"not an onnx model")
        meta = json.loads(export.sidecar_path(path).read_text())
        meta["onnx_sha256"] = export.sha256_file(path)
        export.sidecar_path(path).write_text(json.dumps(meta))
    count = export.export_count
    rebuilt = embedder_class(runtime)(tiny_model, cache_folder=tmp_path, progress=True)
    assert export.export_count == count + 1
    assert "Exporting QualiCLIP to ONNX (once per weights)" in capsys.readouterr().out
    assert rebuilt.onnx_path == path
    assert export.cached_export_is_valid(path, tiny_model.weights_info["sha256"],
                                         export.export_settings())
    x = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        assert float((rebuilt(x) - tiny_model.embed(x)).abs().max()) <= TOL


HINTS = {"onnxruntime": INSTALL_HINT, "openvino": OPENVINO_INSTALL_HINT}


@pytest.mark.parametrize("missing", ["runtime", "onnx"])
@pytest.mark.parametrize("name", TESTED)
def test_missing_runtime_gives_the_install_hint(monkeypatch, tiny_model, tmp_path, name,
                                                missing):
    import importlib

    # `import <module>` now raises ImportError, as when the package is not installed.
    monkeypatch.setitem(sys.modules, name if missing == "runtime" else "onnx", None)
    module = importlib.import_module(RUNTIMES[name][0])
    assert not module.is_available()
    with pytest.raises(BackendUnavailableError) as info:
        embedder_class(name)(tiny_model, cache_folder=tmp_path, progress=False)
    message = str(info.value)
    assert HINTS[name] in message and "\n" not in message
    assert (name if missing == "runtime" else "onnx") in message
    assert not os.listdir(tmp_path)  # nothing exported for a runtime that is not there
