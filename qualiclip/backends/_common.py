"""What the runtime backends share: input checks, thread defaults and the missing-runtime hint."""

from __future__ import annotations

import importlib.util

import torch

from qualiclip.constants import MIN_SIDE

#: The extra that installs the default CPU runtime, ONNX Runtime (pyproject
#: ``[project.optional-dependencies]``; docs/backends.md says why that one).
INSTALL_HINT = 'pip install "qualiclip[cpu-fast]"'
#: The extra for the OpenVINO backend (not installed by the set-up script).
OPENVINO_INSTALL_HINT = 'pip install "qualiclip[openvino]"'


class BackendUnavailableError(ImportError):
    """The runtime of a backend is not installed; the message says how to install it."""


def module_available(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def unavailable(backend: str, package: str, exc: BaseException | None = None,
                hint: str = INSTALL_HINT) -> BackendUnavailableError:
    """The one-line error for a backend whose runtime (or the exporter's ``onnx``) is missing."""
    reason = f" ({exc})" if exc is not None and str(exc) else ""
    return BackendUnavailableError(
        f"backend {backend!r} needs the {package} package, which is not installed{reason}: "
        f"{hint}"
    )


def require_onnx(hint: str = INSTALL_HINT) -> None:
    """torch's ONNX exporter needs the ``onnx`` package; raise the one-line hint without it."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise unavailable("export", "onnx", exc, hint=hint) from exc


def runtime_available(package: str) -> bool:
    """True when a runtime ``package`` and ``onnx`` (the exporter needs it) are installed."""
    return module_available(package) and module_available("onnx")


def import_runtime(backend: str, package: str, hint: str = INSTALL_HINT):
    """Import a runtime ``package`` (checking ``onnx`` too), or raise the one-line hint."""
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise unavailable(backend, package, exc, hint=hint) from exc
    require_onnx(hint)
    return module


def default_threads() -> int:
    """Intra-op threads of the runtimes: torch's own setting (by default the number of physical
    cores), so ``torch.set_num_threads`` steers every backend alike."""
    return max(1, torch.get_num_threads())


def check_batch(batch: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``batch`` is ``(N, 3, H, W)`` with ``H, W >= MIN_SIDE``."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected a (N, 3, H, W) batch, got shape {tuple(batch.shape)}")
    if min(batch.shape[-2:]) < MIN_SIDE:
        raise ValueError(
            f"both sides must be >= {MIN_SIDE} px (upscale first: "
            f"qualiclip.model.upscale_to_min_side); got {tuple(batch.shape[-2:])}"
        )


def to_numpy(batch: torch.Tensor):
    """A C-contiguous float32 numpy view (or copy) of ``batch`` on the CPU."""
    return batch.detach().to("cpu", torch.float32).contiguous().numpy()
