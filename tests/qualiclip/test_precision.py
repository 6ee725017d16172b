"""The ``precision="auto"`` rule and ``$QUALICLIP_CPU_BF16``, its override of the bf16 detection.

Every other test names the precision it compares at; these check what ``auto`` resolves to, so
that the suite means the same on CPUs with and without native bf16.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from qualiclip import score_images
from qualiclip.backends.selection import resolve_backend
from qualiclip.cli import main
from qualiclip.precision import (
    CPU_BF16_ENV,
    PrecisionEnvError,
    cpu_bf16_override,
    cpu_has_fast_bf16,
    resolve_precision,
)
from tests.conftest import make_image

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("value", "cpu_auto", "cpu_backend"),
                         [("1", "bf16", "torch"), ("0", "fp32", "onnxruntime"),
                          (" 1\n", "bf16", "torch")])
def test_the_override_decides_auto_on_the_cpu(monkeypatch, value, cpu_auto, cpu_backend):
    monkeypatch.setenv(CPU_BF16_ENV, value)
    assert cpu_has_fast_bf16() is (cpu_auto == "bf16")
    assert resolve_precision("auto", CPU) == cpu_auto
    assert resolve_backend("auto", "auto", CPU) == (cpu_backend, cpu_auto)
    # CUDA and explicit precisions do not depend on the CPU.
    assert resolve_precision("auto", CUDA) == "fp16"
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"


@pytest.mark.parametrize("value", [None, ""])
def test_unset_or_empty_detects(monkeypatch, value):
    if value is None:
        monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    else:
        monkeypatch.setenv(CPU_BF16_ENV, value)
    assert cpu_bf16_override() is None
    probes = [getattr(torch.cpu, name, lambda: False)
              for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    detected = any(probe() for probe in probes)
    assert cpu_has_fast_bf16() is detected
    assert resolve_precision("auto", CPU) == ("bf16" if detected else "fp32")


@pytest.mark.parametrize("value", ["yes", "true", "2", "bf16", "-1"])
def test_any_other_value_is_a_one_line_error_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(CPU_BF16_ENV, value)
    with pytest.raises(PrecisionEnvError) as caught:
        resolve_precision("auto", CPU)
    message = str(caught.value)
    assert CPU_BF16_ENV in message and repr(value) in message and "\n" not in message
    assert "1" in message and "0" in message and "unset" in message
    # An explicit precision, or CUDA's auto, never reads the CPU variable.
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "fp16"


def test_cli_reports_a_bad_value_in_one_line(monkeypatch, tmp_path, tiny_checkpoint):
    image = make_image(tmp_path / "a.png")
    monkeypatch.setenv(CPU_BF16_ENV, "on")
    for args in (["score", str(image), "--weights", str(tiny_checkpoint), "--device", "cpu"],
                 ["info"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and not isinstance(result.exception,
                                                                   PrecisionEnvError)
        [line] = [text for text in result.output.splitlines() if text.startswith("Error:")]
        assert CPU_BF16_ENV in line and "'on'" in line
        assert "--precision" not in result.output  # the option was fine; the variable is not


@pytest.mark.parametrize(("value", "label", "backend"),
                         [("1", "native", "torch at bf16"), ("0", "no", "onnxruntime at fp32")])
def test_a_child_process_inherits_the_override(value, label, backend):
    """The App server and CLI runs the tests start are child processes: they follow it too."""
    import os

    env = {**os.environ, CPU_BF16_ENV: value, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "qualiclip.cli", "info"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"cpu bf16:  {label} (set by ${CPU_BF16_ENV})" in done.stdout
    assert f"backend:   {backend} by default" in done.stdout


@pytest.mark.parametrize(("value", "precision", "backend"),
                         [("1", "bf16", "torch"), ("0", "fp32", "onnxruntime")])
def test_provenance_records_what_auto_ran(monkeypatch, tiny_model, tmp_path, value, precision,
                                          backend):
    """Forced on, ``auto`` on the CPU really runs bf16 (scores move off fp32) and says so."""
    sources = [make_image(tmp_path / f"{i}.png", size=(80, 64), seed=i) for i in range(3)]
    exact = score_images(sources, model=tiny_model, precision="fp32", backend="torch",
                         progress=False, num_workers=0)
    monkeypatch.setenv(CPU_BF16_ENV, value)
    auto = score_images(sources, model=tiny_model, progress=False, num_workers=0)
    assert auto.preprocessing["precision"] == precision
    assert auto.preprocessing["backend"] == backend
    gaps = [abs(a.score - b.score) for a, b in zip(auto, exact)]
    if precision == "bf16":
        assert 1e-6 < max(gaps) < 0.01  # autocast ran, within the documented bound
    else:
        assert max(gaps) <= 1e-4
