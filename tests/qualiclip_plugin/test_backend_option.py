"""The plugin's ``backend`` option: checked in the form, recorded in provenance, same scores."""

from __future__ import annotations

import pytest

from qualiclip_plugin.trust.request import RequestError, parse_request


def test_request_checks_backend_without_loading_anything():
    assert parse_request({}).backend == "auto"
    assert parse_request({"backend": ""}).backend == "auto"
    with pytest.raises(RequestError, match="backend must be one of"):
        parse_request({"backend": "tensorrt"})
    with pytest.raises(RequestError, match="runs exact fp32"):
        parse_request({"backend": "onnxruntime", "precision": "bf16"})


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_a_runtime_missing_on_the_server_is_refused_in_the_form(monkeypatch, missing):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == missing else real(name, *a))
    with pytest.raises(RequestError, match="not installed on this server"):
        parse_request({"backend": "onnxruntime"})


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_the_backend_asked_for_writes_the_torch_scores_and_is_recorded(
        make_dataset, tiny_checkpoint, reference_scores, backend):
    """Exact fp32 on both (the references are fp32): auto would pick ONNX Runtime for fp32 on
    the CPU, so the torch run shows the option is not ignored."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust import provenance

    dataset = make_dataset()
    summary = compute_image_quality(dataset, field="q", weights=str(tiny_checkpoint),
                                    device="cpu", backend=backend, precision="fp32",
                                    batch_size=4)
    assert summary["failed"] == 1
    for path, score in zip(dataset.values("filepath"), dataset.values("q")):
        expected = reference_scores[path]
        if expected.error is not None:
            assert score is None
        else:
            assert score == pytest.approx(expected.score, abs=1e-4)
    record = provenance.recorded(dataset, "q")
    assert record["preprocessing"]["backend"] == backend
    assert record["options"]["backend"] == backend
    assert record["precision"] == "fp32"
