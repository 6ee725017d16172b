"""Which backend runs the image tower, and with which precision: ``backend="auto"`` resolved.

The rule (numbers: docs/backends.md, benchmarks/RESULTS.md):

* on CUDA: torch (fp16 autocast under ``precision="auto"``);
* on a CPU with native bf16 (AMX / AVX512-BF16), ``precision="auto"``: torch with bf16 autocast,
  the fastest path there and within 0.01 of fp32;
* on any other CPU, or with ``precision="fp32"``: the exported fp32 graph on ONNX Runtime when
  installed (the ``cpu-fast`` extra), equal to torch fp32 within ~1e-6 and 1.1-1.6x as fast as
  torch eager (decoding included) on a 2-core AVX2 CPU; without it, torch fp32 and a one-line
  hint (once per process).

An explicit runtime backend runs fp32 on the CPU; asking it for fp16/bf16 or a CUDA device is
an error that says what to use instead. OpenVINO was measured too (docs/backends.md) and is not
a scoring backend: no faster here, twice the install size, and a process that had run it
crashed (SIGSEGV) in FiftyOne's ``apply_model`` with DataLoader workers.
"""

from __future__ import annotations

import functools
import importlib
import logging
import weakref
from typing import TYPE_CHECKING

import torch

from qualiclip.backends import _common
from qualiclip.backends._common import INSTALL_HINT, BackendUnavailableError
from qualiclip.constants import BACKENDS
from qualiclip.precision import resolve_precision

if TYPE_CHECKING:
    from qualiclip.inference import FeatureBackend
    from qualiclip.model import QualiCLIP

logger = logging.getLogger(__name__)

#: runtime backend -> (its Python package, its module, its embedder class). ``onnx``, which
#: torch's exporter needs, is checked with every runtime (:func:`_common.runtime_available`).
RUNTIMES = {
    "onnxruntime": ("onnxruntime", "qualiclip.backends.onnxruntime_backend",
                    "OnnxRuntimeEmbedder"),
}
#: The order ``auto`` tries installed runtimes in.
PREFERRED_RUNTIMES = ("onnxruntime",)

#: Built embedders per model (a runtime session costs a second or two to create, an export
#: tens of seconds): reused while the model lives, dropped with it.
_EMBEDDERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def runtime_available(backend: str) -> bool:
    """True when ``backend``'s runtime package and ``onnx`` are installed (``torch`` always
    is)."""
    return backend == "torch" or _common.runtime_available(RUNTIMES[backend][0])


def resolve_backend(backend: str, precision: str, device: torch.device) -> tuple[str, str]:
    """``(backend, precision)`` to run with, both concrete, for the requested pair on ``device``.

    Raises:
        ValueError: unknown backend, a runtime on a non-CPU device or with reduced precision,
            or what :func:`~qualiclip.precision.resolve_precision` refuses.
        BackendUnavailableError: an explicitly requested runtime is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend in RUNTIMES:
        if device.type != "cpu":
            raise ValueError(f"backend {backend!r} runs on the CPU; use device 'cpu', or "
                             f"backend 'torch' on {device.type}")
        if precision not in ("auto", "fp32"):
            raise ValueError(f"backend {backend!r} runs exact fp32; use precision 'fp32' (or "
                             f"'auto'), or backend 'torch' for {precision}")
        if not runtime_available(backend):
            raise BackendUnavailableError(
                f"backend {backend!r} needs the {RUNTIMES[backend][0]} and onnx packages, "
                f"which are not installed: {INSTALL_HINT}")
        return backend, "fp32"
    resolved = resolve_precision(precision, device)
    if backend == "torch" or device.type != "cpu" or resolved != "fp32":
        return "torch", resolved
    for runtime in PREFERRED_RUNTIMES:
        if runtime_available(runtime):
            return runtime, "fp32"
    _hint_once()
    return "torch", "fp32"


@functools.cache
def _hint_once() -> None:
    logger.warning("QualiCLIP: scoring on the CPU with torch; ONNX Runtime gives the same "
                   "scores faster (1.1-1.6x measured on a 2-core CPU): %s", INSTALL_HINT)


def runtime_features(backend: str, model: QualiCLIP, progress: bool = True) -> FeatureBackend:
    """The image tower of ``model`` on a resolved runtime ``backend`` (a key of
    :data:`RUNTIMES`, see :func:`resolve_backend`), built once per model and reused. The torch
    backend is :class:`qualiclip.inference.TorchFeatures`, which the caller builds itself."""
    built = _EMBEDDERS.setdefault(model, {})
    if backend not in built:
        _, module, cls = RUNTIMES[backend]
        built[backend] = getattr(importlib.import_module(module), cls)(model, progress=progress)
    return built[backend]
