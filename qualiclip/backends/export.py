"""Export ``QualiCLIP.embed`` to ONNX once per weights, cached beside the downloaded weights.

The exported graph maps ``(N, 3, H, W)`` float32 in [0, 1] (both sides >= ``MIN_SIDE``) to
``(N, D)`` unnormalised image embeddings, with batch, height and width all dynamic: one file
serves every image size. Pair scores are not in the graph; they are computed afterwards in torch
by :meth:`qualiclip.model.QualiCLIP.pair_scores_from_features` (one place).

Cache layout, under ``<weights cache>/onnx/`` (:func:`qualiclip.weights.cache_dir`)::

    qualiclip-embed-<weights sha256[:16]>-<settings digest[:12]>.onnx
    qualiclip-embed-<weights sha256[:16]>-<settings digest[:12]>.onnx.json   # sidecar

The weights key is the checkpoint file's SHA-256 (``model.weights_info["sha256"]``, set by
:func:`qualiclip.load_model`); a model built in memory without it is keyed by a SHA-256 of its
state dict. The settings digest covers the opset, the torch version, the exporter and
:data:`EXPORT_FORMAT_VERSION`, so changing any of them makes a new file instead of reusing an
incompatible one. The sidecar records the ONNX file's own SHA-256: a truncated, corrupt or
foreign file fails that check (or fails to load in the runtime) and is exported again. Both files
are written atomically (:func:`qualiclip.files.atomic_write`), the graph first, so a reader never
sees a half-written graph, and concurrent processes at worst export twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from qualiclip.constants import MIN_SIDE
from qualiclip.files import atomic_write
from qualiclip.weights import cache_dir, sha256_file

logger = logging.getLogger(__name__)

#: Bump when the exported graph's contract changes (inputs, outputs, what ``embed`` computes):
#: every cached export of an older format is then ignored and rebuilt.
EXPORT_FORMAT_VERSION = 2  # 2: the attention pool in its cheaper order (QualiCLIP.pool)
#: ONNX opset of the export (ONNX Runtime >= 1.12 and OpenVINO >= 2022.1 run it).
DEFAULT_OPSET = 17
#: ``torch.onnx.export(..., dynamo=False)``: the TorchScript-based exporter, which takes
#: ``dynamic_axes`` directly and exports the attention pool (plain matmuls and a softmax)
#: with dynamic token counts.
EXPORTER = "torchscript"
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
PROGRESS_MESSAGE = "Exporting QualiCLIP to ONNX (once per weights)…"
#: Size of the example input traced at export; any size >= MIN_SIDE works afterwards.
_EXAMPLE_SHAPE = (2, 3, 2 * MIN_SIDE + 32, 3 * MIN_SIDE)

#: Counts real exports in this process (tests use it to check a cache hit does not re-export).
export_count = 0


class _Embed(nn.Module):
    """``model.embed`` as a module's ``forward``, for the exporter."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def state_dict_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_key(model: nn.Module) -> str:
    """The SHA-256 that identifies the weights: the checkpoint file's when known, else the state
    dict's (the latter also catches a model whose weights were changed after loading only when
    no file hash is set: a loaded model is assumed unchanged, as scoring assumes too)."""
    info = getattr(model, "weights_info", None) or {}
    sha = info.get("sha256")
    return str(sha) if sha else state_dict_sha256(model)


def export_settings(opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Everything besides the weights that determines the exported file."""
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "opset": int(opset),
        "torch": torch.__version__,
        "exporter": EXPORTER,
    }


def _settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def export_path(model: nn.Module, opset: int = DEFAULT_OPSET,
                folder: str | os.PathLike | None = None, key: str | None = None) -> Path:
    """Where the export of ``model`` with these settings lives (it may not exist yet).
    ``key``: the model's :func:`weights_key`, when already computed."""
    folder = Path(folder) if folder is not None else cache_dir() / "onnx"
    key = key or weights_key(model)
    settings = _settings_digest(export_settings(opset))
    return folder / f"qualiclip-embed-{key[:16]}-{settings[:12]}.onnx"


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    return Path(f"{onnx_path}.json")


def export_onnx(model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model.embed`` to ``path`` (atomically), batch/height/width dynamic.

    The model is exported in fp32 on CPU from a copy, so the caller's model (maybe on CUDA) is
    left untouched.
    """
    global export_count
    import copy
    import warnings

    module = _Embed(copy.deepcopy(model).float().cpu().eval())
    example = torch.rand(*_EXAMPLE_SHAPE)

    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo=True and warns about
            # it and about traced shape arithmetic; neither matters for this graph (the parity
            # tests check every size class).
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (example,), str(tmp),
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch"}},
                opset_version=opset, do_constant_folding=True, dynamo=False,
            )

    atomic_write(path, write)
    export_count += 1
    return Path(path)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached_export_is_valid(path: str | os.PathLike, weights_sha256: str,
                           settings: dict[str, Any]) -> bool:
    """True when ``path`` exists and its sidecar names these weights, these settings and the
    file's actual SHA-256 (a truncated or replaced file fails the last check)."""
    path = Path(path)
    meta = _read_sidecar(path)
    if not path.is_file() or meta is None:
        return False
    if meta.get("weights_sha256") != weights_sha256 or meta.get("settings") != settings:
        return False
    return meta.get("onnx_sha256") == sha256_file(path)


@contextlib.contextmanager
def _export_lock(path: Path):
    """Serialise exports of one file across processes where ``fcntl`` exists (POSIX); elsewhere
    concurrent exporters just both export (each write is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with _open_lock_file(Path(f"{path}.lock")) as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _open_lock_file(lock: Path):
    """The lock file opened without following a symlink: a link planted in a shared cache
    must not make this process create or open a file elsewhere. A link in its place is removed
    (only the link; its target is untouched) and a plain file made instead."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(3):
        if lock.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        try:
            return os.fdopen(os.open(lock, flags, 0o600), "a+")
        except OSError as exc:
            # ELOOP: a symlink appeared between the check and the open; remove it and retry.
            if not lock.is_symlink():
                raise OSError(f"cannot open the ONNX export lock {lock}: {exc.strerror}") from exc
    raise OSError(f"cannot open the ONNX export lock {lock}: it keeps being replaced by a "
                  "symlink; remove it and check who writes into the weights cache")


Loaded = TypeVar("Loaded")


def load_export(model: nn.Module, load: Callable[[Path], Loaded], opset: int = DEFAULT_OPSET,
                folder: str | os.PathLike | None = None,
                progress: bool = True) -> tuple[Path, Loaded]:
    """``(path, load(path))`` for the cached export of ``model.embed`` (:func:`ensure_onnx`);
    an export that passed its checksum yet the runtime cannot ``load`` is exported again, once.
    Both runtime backends load their session / compiled model through this."""
    path = ensure_onnx(model, opset=opset, folder=folder, progress=progress)
    try:
        return path, load(path)
    except Exception:  # noqa: BLE001 - whatever the runtime raises for an unloadable file
        path = ensure_onnx(model, opset=opset, folder=folder, progress=progress, force=True)
        return path, load(path)


def ensure_onnx(model: nn.Module, opset: int = DEFAULT_OPSET,
                folder: str | os.PathLike | None = None, force: bool = False,
                progress: bool = True) -> Path:
    """The path of a valid ONNX export of ``model.embed``: the cached one, or a fresh export.

    Args:
        force: export again even if the cached file passes its checks (a runtime could not
            load it).
        progress: log/print the one-time export message.
    """
    key = weights_key(model)
    path = export_path(model, opset=opset, folder=folder, key=key)
    settings = export_settings(opset)
    if not force and cached_export_is_valid(path, key, settings):
        return path
    with _export_lock(path):
        # Another process may have finished the export while we waited for the lock.
        if not force and cached_export_is_valid(path, key, settings):
            return path
        _announce(progress)
        start = time.perf_counter()
        export_onnx(model, path, opset=opset)
        meta = {
            "weights_sha256": key,
            "weights_name": (getattr(model, "weights_info", None) or {}).get("name"),
            "settings": settings,
            "onnx_sha256": sha256_file(path),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "embed_dim": int(model.prompt_features.shape[-1]),
            "export_seconds": round(time.perf_counter() - start, 2),
        }
        atomic_write(sidecar_path(path),
                     lambda tmp: tmp.write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return path


def _announce(progress: bool) -> None:
    logger.info(PROGRESS_MESSAGE)
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(PROGRESS_MESSAGE)
