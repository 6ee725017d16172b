"""This repository as a FiftyOne remote zoo model source (zoo/manifest.json + zoo/__init__.py).

The checkout is served as an archive from a loopback HTTP server, registered with
``foz.register_zoo_model_source`` and loaded with ``foz.load_zoo_model`` and the
``fiftyone zoo models apply`` CLI, with a tiny checkpoint standing in for the official weights.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _checkout_archive() -> bytes:
    """The checkout as git sees it (tracked and new, not ignored files), as ``git archive``
    would pack it: one top folder, tar.gz."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in filter(None, names):
            if (REPO / name).is_file():
                tar.add(REPO / name, arcname=f"qualiclip-main/{name}")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    (folder / "qualiclip-main.tar.gz").write_bytes(_checkout_archive())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/qualiclip-main.tar.gz"
    server.shutdown()


@pytest.fixture()
def zoo_dir(tmp_path, monkeypatch):
    import fiftyone as fo

    folder = tmp_path / "zoo"
    monkeypatch.setattr(fo.config, "model_zoo_dir", str(folder))
    monkeypatch.setenv("FIFTYONE_MODEL_ZOO_DIR", str(folder))  # for CLI subprocesses
    return folder


def test_zoo_model_is_the_plugin_model(source_url, zoo_dir, monkeypatch, make_dataset,
                                       image_files, tiny_checkpoint, tiny_official_checkpoint):
    import fiftyone.zoo as foz

    import qualiclip
    import qualiclip_plugin

    monkeypatch.setenv("QUALICLIP_WEIGHTS", str(tiny_checkpoint))
    foz.register_zoo_model_source(source_url)
    assert "qualiclip" in [m.split("@")[0] for m in foz.list_zoo_models(source=source_url)]
    model = foz.load_zoo_model("qualiclip", device="cpu")
    # The source's module must not have replaced the library package (module-name trap).
    assert sys.modules["qualiclip"] is qualiclip
    assert isinstance(model, qualiclip_plugin.QualiCLIPModel)
    assert model.config.weights == str(tiny_checkpoint)

    dataset = make_dataset(image_files[:6])
    dataset.apply_model(model, label_field="quality_zoo")
    reference = qualiclip_plugin.load_model(weights=str(tiny_checkpoint), device="cpu")
    dataset.apply_model(reference, label_field="quality_plugin")
    zoo, plugin = dataset.values("quality_zoo"), dataset.values("quality_plugin")
    assert sum(v is not None for v in zoo) == 5  # the broken file gets no score
    assert zoo == plugin

    # A fine-tuned checkpoint by parameter; the official format loads the same network.
    other = foz.load_zoo_model("qualiclip", weights=str(tiny_official_checkpoint),
                               device="cpu", pair_scores=True)
    assert other.config.weights == str(tiny_official_checkpoint) and other.config.pair_scores


def test_fiftyone_zoo_models_apply_cli(source_url, zoo_dir, make_dataset, image_files,
                                       tiny_checkpoint):
    import fiftyone.zoo as foz

    import qualiclip_plugin

    foz.register_zoo_model_source(source_url)
    dataset = make_dataset(image_files[:3])
    env = {**os.environ, "QUALICLIP_WEIGHTS": str(tiny_checkpoint), "CUDA_VISIBLE_DEVICES": ""}
    cli = Path(sys.executable).parent / "fiftyone"
    done = subprocess.run([str(cli), "zoo", "models", "apply", "qualiclip", dataset.name,
                           "quality"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    dataset.reload()
    # Both at the default precision, "auto": the child process inherits the CPU and
    # $QUALICLIP_CPU_BF16, so it resolves "auto" as this process does (bf16 or fp32).
    reference = qualiclip_plugin.load_model(weights=str(tiny_checkpoint), device="cpu")
    dataset.apply_model(reference, label_field="expected")
    assert dataset.values("quality") == pytest.approx(dataset.values("expected"), abs=1e-6)


def test_app_form_of_the_zoo_source_takes_no_weights():
    """The '@voxel51/zoo' operator's form may not name weights (no paths or URLs from the App)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("qualiclip_zoo_source",
                                                  REPO / "zoo" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    params = {"weights": "http://127.0.0.1:9/x.pth", "pair_scores": True, "device": "cuda"}
    module.parse_parameters("qualiclip", None, params)
    assert params == {"pair_scores": True}
