"""OpenVINO backend: runs the cached ONNX export of ``QualiCLIP.embed`` with OpenVINO's CPU
plugin, in fp32.

    embedder = OpenVinoEmbedder(model)             # exports once per weights, then compiles
    features = embedder(batch)                     # (N, 3, H, W) -> (N, D) float32, CPU
    pair_scores = model.pair_scores_from_features(features)

OpenVINO runs in bf16 by default on CPUs with AMX / AVX512-BF16; this backend pins the inference
precision to f32 so its scores are exact everywhere.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from qualiclip.backends._common import (
    OPENVINO_INSTALL_HINT,
    check_batch,
    default_threads,
    import_runtime,
    runtime_available,
    to_numpy,
)
from qualiclip.backends.export import DEFAULT_OPSET, load_export

NAME = "openvino"


def is_available() -> bool:
    """True when the ``openvino`` package (and ``onnx``, for the export) is installed."""
    return runtime_available("openvino")


class OpenVinoEmbedder:
    """``(N, 3, H, W)`` float32 in [0, 1], sides >= 32 -> ``(N, D)`` float32 CPU embeddings,
    equal to ``model.embed`` in fp32.

    Args: as :class:`qualiclip.backends.onnxruntime_backend.OnnxRuntimeEmbedder`.

    Raises:
        BackendUnavailableError: openvino or onnx (the exporter needs it) is not installed; the
            message gives the pip line.
    """

    name = NAME

    def __init__(self, model: nn.Module, threads: int | None = None,
                 cache_folder: str | os.PathLike | None = None, progress: bool = True,
                 opset: int = DEFAULT_OPSET) -> None:
        ov = import_runtime(NAME, "openvino", OPENVINO_INSTALL_HINT)
        self.threads = threads or default_threads()
        self.onnx_path, self.compiled = load_export(
            model, lambda path: self._compile(ov, path), opset=opset, folder=cache_folder,
            progress=progress)
        self.request = self.compiled.create_infer_request()

    def _compile(self, ov, path):
        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        return core.compile_model(core.read_model(str(path)), "CPU", config)

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        check_batch(batch)
        self.request.infer({0: to_numpy(batch)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())

    def __repr__(self) -> str:
        return f"OpenVinoEmbedder({self.onnx_path.name}, threads={self.threads})"
