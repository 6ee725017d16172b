"""ONNX Runtime backend: runs the cached ONNX export of ``QualiCLIP.embed`` on the CPU.

    embedder = OnnxRuntimeEmbedder(model)          # exports once per weights, then loads
    features = embedder(batch)                     # (N, 3, H, W) -> (N, D) float32, CPU
    pair_scores = model.pair_scores_from_features(features)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from qualiclip.backends._common import (
    check_batch,
    default_threads,
    import_runtime,
    runtime_available,
    to_numpy,
)
from qualiclip.backends.export import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, load_export

NAME = "onnxruntime"


def is_available() -> bool:
    """True when the ``onnxruntime`` package (and ``onnx``, for the export) is installed."""
    return runtime_available("onnxruntime")


class OnnxRuntimeEmbedder:
    """``(N, 3, H, W)`` float32 in [0, 1], sides >= 32 -> ``(N, D)`` float32 CPU embeddings,
    equal to ``model.embed`` in fp32 (CPU execution provider, no reduced precision).

    Args:
        model: the :class:`~qualiclip.model.QualiCLIP` whose ``embed`` is exported (once per
            weights, cached: :func:`qualiclip.backends.export.ensure_onnx`).
        threads: intra-op threads (default: ``torch.get_num_threads()``).
        cache_folder: where exports are cached (default ``<weights cache>/onnx``).
        progress: show the one-time export message.

    Raises:
        BackendUnavailableError: onnxruntime or onnx (the exporter needs it) is not installed;
            the message gives the pip line.
    """

    name = NAME

    def __init__(self, model: nn.Module, threads: int | None = None,
                 cache_folder: str | os.PathLike | None = None, progress: bool = True,
                 opset: int = DEFAULT_OPSET) -> None:
        ort = import_runtime(NAME, "onnxruntime")
        self.threads = threads or default_threads()
        self.onnx_path, self.session = load_export(
            model, lambda path: self._session(ort, path), opset=opset, folder=cache_folder,
            progress=progress)

    def _session(self, ort, path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        check_batch(batch)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: to_numpy(batch)})
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        return f"OnnxRuntimeEmbedder({self.onnx_path.name}, threads={self.threads})"
