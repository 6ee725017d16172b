"""``backend=``: which image tower runs, chosen as documented, and the same scores whichever runs.

The runtimes' own parity (embeddings) is tested in test_backends.py; here the whole path:
``score_images`` (decoding, min-side upscale, max_side, per-file errors, pair scores), the CLI's
``--backend`` and the provenance record.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from qualiclip import score_images
from qualiclip.backends import BackendUnavailableError, selection
from qualiclip.backends.selection import RUNTIMES, resolve_backend, runtime_available
from tests.conftest import make_image

CPU = torch.device("cpu")
#: The scoring runtimes; scripts/setup.sh installs them (the cpu-fast extra), so these tests
#: always run rather than skip.
INSTALLED = list(RUNTIMES)


def test_auto_picks_an_installed_runtime_for_exact_cpu_scoring():
    assert all(runtime_available(name) for name in INSTALLED), "pip install qualiclip[cpu-fast]"
    preferred = next(r for r in selection.PREFERRED_RUNTIMES if r in INSTALLED)
    assert resolve_backend("auto", "fp32", CPU) == (preferred, "fp32")
    assert resolve_backend("torch", "fp32", CPU) == ("torch", "fp32")


def test_auto_keeps_torch_for_reduced_precision_and_cuda():
    assert resolve_backend("auto", "bf16", CPU) == ("torch", "bf16")
    assert resolve_backend("auto", "auto", torch.device("cuda")) == ("torch", "fp16")
    assert resolve_backend("auto", "fp32", torch.device("cuda")) == ("torch", "fp32")


def test_auto_precision_on_a_bf16_cpu_stays_on_torch(monkeypatch):
    """Where the CPU has native bf16, today's bf16 path is kept (not slower than before);
    elsewhere auto is exact fp32 on the runtime."""
    monkeypatch.setenv("QUALICLIP_CPU_BF16", "1")
    assert resolve_backend("auto", "auto", CPU) == ("torch", "bf16")
    monkeypatch.setenv("QUALICLIP_CPU_BF16", "0")
    assert resolve_backend("auto", "auto", CPU) == (INSTALLED[0], "fp32")


@pytest.mark.parametrize("runtime", list(RUNTIMES))
def test_explicit_runtimes_refuse_what_they_cannot_do(runtime):
    with pytest.raises(ValueError, match="runs exact fp32"):
        resolve_backend(runtime, "bf16", CPU)
    with pytest.raises(ValueError, match="runs on the CPU"):
        resolve_backend(runtime, "auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("tensorrt", "auto", CPU)


def test_a_missing_runtime_is_an_error_when_asked_for_and_a_fallback_under_auto(
        monkeypatch, caplog):
    missing = {name: ("qualiclip_no_such_runtime", module, cls)
               for name, (_, module, cls) in RUNTIMES.items()}
    monkeypatch.setattr(selection, "RUNTIMES", missing)
    with pytest.raises(BackendUnavailableError, match=r"qualiclip\[cpu-fast\]"):
        resolve_backend("onnxruntime", "fp32", CPU)
    selection._hint_once.cache_clear()
    with caplog.at_level("WARNING"):
        assert resolve_backend("auto", "fp32", CPU) == ("torch", "fp32")
    assert "cpu-fast" in caplog.text


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Non-square sizes, one below the 32 px minimum (upscaled), one repeated size (batched),
    and a broken file."""
    folder = tmp_path_factory.mktemp("backend-images")
    paths = [make_image(folder / f"{i}.png", size=size, seed=i)
             for i, size in enumerate([(96, 64), (64, 96), (96, 64), (20, 50), (130, 45)])]
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not an image")
    return [*paths, broken]


@pytest.mark.parametrize("runtime", INSTALLED)
@pytest.mark.parametrize("max_side", [None, 48])
def test_score_images_gives_torch_fp32_scores_on_every_backend(tiny_model, sources, runtime,
                                                                max_side):
    reference = score_images(sources, model=tiny_model, precision="fp32", backend="torch",
                             max_side=max_side, progress=False, batch_size=4)
    results = score_images(sources, model=tiny_model, precision="fp32", backend=runtime,
                           max_side=max_side, progress=False, batch_size=4)
    assert results.preprocessing["backend"] == runtime
    assert reference.preprocessing["backend"] == "torch"
    for ours, theirs in zip(results, reference):
        assert (ours.error is None) == (theirs.error is None)
        if theirs.error is not None:
            assert ours.error == theirs.error and "broken.jpg" in ours.error
            continue
        assert (ours.width, ours.height) == (theirs.width, theirs.height)
        assert abs(ours.score - theirs.score) <= 1e-4
        assert list(ours.pair_scores) == list(theirs.pair_scores)
        for name, value in theirs.pair_scores.items():
            assert abs(ours.pair_scores[name] - value) <= 1e-4
    # Not trivially equal: the tiny model scores these images differently from each other.
    assert len({round(r.score, 6) for r in reference if r.error is None}) > 2


@pytest.mark.parametrize("runtime", INSTALLED)
def test_cli_backend_option_runs_that_backend(tmp_path, tiny_checkpoint, tiny_model, runtime):
    from qualiclip.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        make_image(folder / f"{i}.png", size=(80, 48), seed=i)
    result = CliRunner().invoke(main, ["score", str(folder), "--weights", str(tiny_checkpoint),
                                       "--device", "cpu", "--backend", runtime,
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"({runtime})" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = score_images(sorted(folder.iterdir()), model=tiny_model, precision="fp32",
                            backend="torch", progress=False)
    assert [float(r["score"]) for r in rows] == pytest.approx([r.score for r in expected],
                                                               abs=1e-4)


def test_cli_refuses_a_runtime_with_reduced_precision_in_one_line(tmp_path, tiny_checkpoint):
    from qualiclip.cli import main

    image = make_image(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["score", str(image), "--weights", str(tiny_checkpoint),
                                       "--device", "cpu", "--backend", "onnxruntime",
                                       "--precision", "bf16"])
    assert result.exit_code == 2
    assert "--backend" in result.output and "runs exact fp32" in result.output
    assert "Traceback" not in result.output


def test_in_memory_images_score_alike_on_torch_and_runtime(tiny_model):
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (40, 56, 3), np.uint8) for _ in range(3)]
    arrays.append(Image.fromarray(arrays[0]))
    torch_scores = [r.score for r in score_images(arrays, model=tiny_model, backend="torch",
                                                   precision="fp32", progress=False)]
    runtime_scores = [r.score for r in score_images(arrays, model=tiny_model,
                                                     backend=INSTALLED[0], progress=False)]
    assert runtime_scores == pytest.approx(torch_scores, abs=1e-4)
    assert runtime_scores[0] == pytest.approx(runtime_scores[3], abs=1e-6)
