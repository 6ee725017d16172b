"""CPU inference runtimes for the image tower (faster exact fp32 scoring on CPUs without bf16).

``QualiCLIP.embed`` is exported once per weights to ONNX (:mod:`qualiclip.backends.export`) and
run by a runtime module, each giving a callable class mapping ``(N, 3, H, W)`` float32 in [0, 1]
(sides >= 32) to ``(N, D)`` float32 CPU embeddings; pair scores are then computed in torch by
``model.pair_scores_from_features``. Which runtimes are supported, and why: docs/backends.md.
Importing this package imports no runtime.
"""

from __future__ import annotations

from qualiclip.backends._common import (
    INSTALL_HINT,
    OPENVINO_INSTALL_HINT,
    BackendUnavailableError,
)

__all__ = ["INSTALL_HINT", "OPENVINO_INSTALL_HINT", "BackendUnavailableError"]
