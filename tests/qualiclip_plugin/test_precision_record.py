"""The plugin's run record names the precision ``auto`` resolved to, whichever the CPU gives."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("value", "precision", "backend"),
                         [("1", "bf16", "torch"), ("0", "fp32", "onnxruntime")])
def test_the_record_names_what_auto_ran(monkeypatch, make_dataset, image_files, tiny_checkpoint,
                                        reference_scores, value, precision, backend):
    """``$QUALICLIP_CPU_BF16`` stands for the CPU: forced on, an ``auto`` run is bf16 and its
    record says so (a later run can then tell it apart from an fp32 one)."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust import provenance

    monkeypatch.setenv("QUALICLIP_CPU_BF16", value)
    dataset = make_dataset(image_files[:3])
    compute_image_quality(dataset, field="q", weights=str(tiny_checkpoint), device="cpu",
                          batch_size=4, pair_scores=False)
    record = provenance.recorded(dataset, "q")
    assert record["precision"] == precision
    assert record["preprocessing"]["backend"] == backend
    gaps = [abs(score - reference_scores[path].score)
            for path, score in zip(dataset.values("filepath"), dataset.values("q"))]
    if precision == "bf16":
        assert 1e-6 < max(gaps) < 0.01  # bf16 really ran (the references are fp32)
    else:
        assert max(gaps) <= 1e-4
