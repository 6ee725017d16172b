"""Reading and writing QualiCLIP checkpoints, in both formats.

* **official** (``qualiclip.pth`` of the authors' release): a flat state dict with
  ``clip_model.<open_clip CLIP key>`` for the whole OpenAI CLIP and ``prompts_features``
  ``(14, D)``. The architecture is not stored; it is inferred from tensor shapes the way OpenAI's
  loader does (attention heads = width / 64).
* **qualiclip** (this project's own): a dict with ``format == "qualiclip-checkpoint"``, the
  open_clip ``model_config``, the CLIP ``state_dict`` (at least the ``visual.*`` keys),
  ``prompt_pairs``, their ``prompt_features`` and free-form ``training_config`` / ``metadata``.

Both are read with ``torch.load(weights_only=True)``: a checkpoint can never run code. A file
with a NaN / inf in any floating-point tensor is refused as corrupt: every score it gave would be
NaN, or quietly wrong.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qualiclip.architecture import ModelConfigError, check_model_config
from qualiclip.files import atomic_write
from qualiclip.prompts import PROMPT_PAIRS

FORMAT_NAME = "qualiclip-checkpoint"
FORMAT_VERSION = 1
_OFFICIAL_PREFIX = "clip_model."


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and what to do."""


@dataclass
class Checkpoint:
    """The parts of a checkpoint a model is rebuilt from.

    Attributes:
        model_config: open_clip model config dict (see :mod:`qualiclip.architecture`).
        state_dict: open_clip ``CLIP`` keys -> tensors (``visual.*`` always present).
        prompt_pairs: the antonym pairs, positive first.
        prompt_features: ``(2 * len(prompt_pairs), embed_dim)`` L2-normalised, ordered
            pos, neg, pos, neg, ...; ``None`` when the text tower must compute them.
        format: ``"official"`` or ``"qualiclip"``.
    """

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    prompt_pairs: tuple[tuple[str, str], ...] = PROMPT_PAIRS
    prompt_features: torch.Tensor | None = None
    format: str = "qualiclip"
    training_config: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def _load_failure(exc: Exception) -> str:
    """One short line for why ``torch.load`` failed. Torch's own text spans many lines and, for
    files holding arbitrary objects, suggests ``weights_only=False``, which would let the file
    run code: never repeat that advice."""
    text = str(exc)
    if "weights_only" in text or "Weights only load failed" in text:
        return ("it holds Python objects besides tensors, which are never loaded (they could "
                "run code)")
    first = " ".join(text.split("\n", 1)[0].split())
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


#: How the files ``torch.load`` reads begin: a zip archive (``torch.save``'s format since
#: torch 1.6), or the legacy pickle stream (protocol 2..5, or the text opcodes of protocols 0/1
#: pickling torch's magic number first).
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02", b"\x80\x03", b"\x80\x04",
                      b"\x80\x05", b"L119547037146038801333356L")
#: Leading bytes of files commonly passed as weights by mistake, to say what the file is.
_KNOWN_STARTS = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"),
                 (b"GIF8", "a GIF image"), (b"RIFF", "a RIFF (WebP/WAV) file"),
                 (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"),
                 (b"\x93NUMPY", "a NumPy .npy array"), (b"\x89HDF", "an HDF5 (Keras .h5) file"))


def _not_torch_file(path: Path) -> str | None:
    """What ``path`` is when it cannot be a ``torch.save`` file at all (``None`` when it may be):
    torch's own error for, say, a text file is ``KeyError: 101`` and for a JPEG the advice about
    Python objects, neither of which says what is wrong."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if any(head.startswith(start) for start in _TORCH_FILE_STARTS):
        return None
    if not head:
        return "an empty file"
    for start, kind in _KNOWN_STARTS:
        if head.startswith(start):
            return kind
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "an HTML page (a failed download?)"
    if head.lstrip().startswith((b"{", b"[")):
        return "a JSON/text file"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of another kind"
    return "a text file"


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read either checkpoint format from ``path``.

    Raises:
        CheckpointError: missing, unreadable, not a QualiCLIP checkpoint, or corrupt (a NaN /
            inf in a floating-point tensor; the message names the first such tensor).
    """
    path = Path(path)
    raw = load_torch_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a QualiCLIP checkpoint (found {type(raw).__name__})")
    refuse_non_finite(raw, path)
    for key in ("prompt_features", "prompts_features"):
        if raw.get(key) is not None:
            check_prompt_features(raw[key], f"{path}: its {key}")
    if raw.get("format") == FORMAT_NAME:
        checkpoint = _from_project_format(raw, path)
    elif any(isinstance(k, str) and k.startswith(_OFFICIAL_PREFIX) for k in raw):
        checkpoint = _from_official_format(raw, path)
    elif _is_pyiqa_plus(raw):
        raise CheckpointError(
            f"{path} holds only pyiqa's QualiCLIP+ prompt weights, no image tower: convert it "
            f"once with 'qualiclip convert-pyiqa {path} --weights BASE -o OUT.pth' "
            "(docs/calibration.md, \"QualiCLIP+ variants\") and score with OUT.pth")
    else:
        raise CheckpointError(
            f"{path} is not a QualiCLIP checkpoint: expected the official format (clip_model.* "
            f"keys and prompts_features) or this project's format (format={FORMAT_NAME!r})"
        )
    try:  # before a model is built: an absurd size would allocate gigabytes first
        check_model_config(checkpoint.model_config, f"{path}")
    except ModelConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    return checkpoint


def load_torch_file(
    path: Path,
    expected: str = ("give a .pth file written by torch.save, the official QualiCLIP release or "
                     "one written by qualiclip-train"),
) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with one-line errors: a missing file,
    one that is not a ``torch.save`` file at all (saying what it looks like, then ``expected``),
    or one torch cannot read. Used for every weights file this library reads.

    Raises:
        CheckpointError: one line naming ``path`` and what to do.
    """
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        kind = _not_torch_file(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read weights file {path}: {exc.strerror or exc}") from exc
    if kind is not None:
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint (neither a zip nor a pickle file; it looks like "
            f"{kind}): {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(
            f"cannot read weights file {path}: {_load_failure(exc)}. Is it a complete QualiCLIP "
            ".pth file? Delete it and download again if it was cut off."
        ) from exc


def _is_pyiqa_plus(raw: dict[str, Any]) -> bool:
    """A pyiqa QualiCLIP+ file: ``params`` holding ``prompt_learner.*`` keys (maybe behind a
    DataParallel ``module.`` prefix)."""
    params = raw.get("params")
    return isinstance(params, dict) and any(
        isinstance(k, str) and k.removeprefix("module.").startswith("prompt_learner.")
        for k in params)


def check_prompt_features(features: Any, what: str) -> None:
    """Refuse prompt embeddings that cannot score: not a 2-D tensor, or a row that is zero or
    holds NaN / inf. A zero row normalises to zero, so its prompt's similarity is 0 for every
    image; all-zero features score every image 0.5, silently.

    Args:
        features: expected ``(2 P, D)`` floating point.
        what: names them in the message (``"<file>: its prompt_features"``).

    Raises:
        CheckpointError: one line naming ``what`` and what to do.
    """
    redo = ("re-export the checkpoint with the prompt features its text tower computes "
            "(qualiclip.architecture.compute_prompt_features)")
    if not isinstance(features, torch.Tensor) or not features.is_floating_point() \
            or features.ndim != 2:
        found = (f"a {features.dtype} tensor of shape {tuple(features.shape)}"
                 if isinstance(features, torch.Tensor) else type(features).__name__)
        raise CheckpointError(f"{what} must be a 2-D floating-point tensor (2 x pairs, dim), got "
                              f"{found}: {redo}")
    if not bool(torch.isfinite(features).all()):
        raise CheckpointError(f"{what} hold non-finite values (NaN/inf), so no score would be "
                              f"meaningful: {redo}")
    zero = (features.float().abs().amax(dim=-1) == 0).nonzero().flatten().tolist()
    if zero:
        effect = ("all rows, so every image would score 0.5" if len(zero) == features.shape[0]
                  else f"rows {zero[:8]}, so those prompts would ignore the image")
        raise CheckpointError(f"{what} are zero ({effect}): {redo}")


def _tensors(raw: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` for the top-level tensors of a loaded file and those one dict down
    (this project's ``state_dict``), keyed as the file spells them."""
    for key, value in raw.items():
        if isinstance(value, torch.Tensor):
            yield str(key), value
        elif isinstance(value, dict):
            yield from ((str(k), v) for k, v in value.items() if isinstance(v, torch.Tensor))


def _all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN / inf. A finite sum proves it (any NaN or inf makes the sum
    NaN or inf) at a seventh of an elementwise pass's cost (measured: 0.04 s vs 0.24 s for the
    102 M parameters of CLIP RN50 on 2 cores); only a non-finite sum, which may also be a
    harmless overflow (fp16), gets the exact elementwise check."""
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def refuse_non_finite(raw: dict[str, Any], path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` at the first floating-point tensor of a loaded checkpoint
    that holds a NaN or inf. Attention masks are exempt: their ``-inf`` entries are by design.
    """
    for key, tensor in _tensors(raw):
        if (tensor.is_floating_point() and not key.endswith("attn_mask")
                and not _all_finite(tensor)):
            raise CheckpointError(
                f"{path} is corrupt: tensor {key!r} holds non-finite values (NaN/inf). Delete "
                "the file and download it again (or re-export it from training)")


def _from_project_format(raw: dict[str, Any], path: Path) -> Checkpoint:
    version = raw.get("format_version", 0)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}; this qualiclip reads up to "
            f"{FORMAT_VERSION}: upgrade qualiclip"
        )
    for key in ("model_config", "state_dict"):
        if key not in raw:
            raise CheckpointError(f"{path} is missing {key!r}: the checkpoint is incomplete")
    pairs = tuple(tuple(p) for p in raw.get("prompt_pairs") or PROMPT_PAIRS)
    return Checkpoint(
        model_config=raw["model_config"],
        state_dict=raw["state_dict"],
        prompt_pairs=pairs,  # type: ignore[arg-type]
        prompt_features=raw.get("prompt_features"),
        format="qualiclip",
        training_config=raw.get("training_config"),
        metadata=dict(raw.get("metadata") or {}),
    )


def _from_official_format(raw: dict[str, Any], path: Path) -> Checkpoint:
    state = {k[len(_OFFICIAL_PREFIX):]: v for k, v in raw.items() if k.startswith(_OFFICIAL_PREFIX)}
    try:
        config = infer_model_config(state)
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot infer a ResNet CLIP from its keys ({exc})") from exc
    return Checkpoint(
        model_config=config,
        state_dict=state,
        prompt_features=raw.get("prompts_features"),
        format="official",
    )


def infer_model_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Infer an open_clip ResNet CLIP config from a (prefix-free) CLIP state dict, as OpenAI's
    loader does: vision heads = width * 32 / 64, text heads = width / 64."""
    layers = [
        len({m.group(1) for k in state if (m := re.match(rf"visual\.layer{i}\.(\d+)\.", k))})
        for i in (1, 2, 3, 4)
    ]
    if not all(layers):
        raise ValueError("no ResNet visual.layer1..4 keys")
    width = state["visual.conv1.weight"].shape[0] * 2
    grid = round((state["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
    embed_dim = state["visual.attnpool.c_proj.weight"].shape[0]
    config: dict[str, Any] = {
        "embed_dim": embed_dim,
        "quick_gelu": True,
        "vision_cfg": {"image_size": grid * 32, "layers": layers, "width": width,
                       "patch_size": None},
    }
    if "token_embedding.weight" in state:
        text_width = state["ln_final.weight"].shape[0]
        text_layers = len({m.group(1) for k in state
                           if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))})
        config["text_cfg"] = {
            "context_length": state["positional_embedding"].shape[0],
            "vocab_size": state["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": text_layers,
        }
    return config


def write_checkpoint(
    path: str | os.PathLike,
    *,
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    prompt_features: torch.Tensor,
    prompt_pairs: tuple[tuple[str, str], ...] = PROMPT_PAIRS,
    training_config: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint in this project's format, atomically (temp file + rename).

    Args:
        state_dict: open_clip ``CLIP`` keys; ``visual.*`` required, text tower optional.
        prompt_features: ``(2 * len(prompt_pairs), D)``, L2-normalised, pos/neg interleaved.
    """
    from qualiclip import __version__

    meta = {"qualiclip_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    meta.update(metadata or {})
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": model_config,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
        "prompt_pairs": [list(p) for p in prompt_pairs],
        "prompt_features": prompt_features.detach().float().cpu().contiguous(),
        "training_config": training_config,
        "metadata": meta,
    }
    return atomic_torch_save(payload, path)


def write_official_checkpoint(
    path: str | os.PathLike, *, state_dict: dict[str, torch.Tensor], prompt_features: torch.Tensor
) -> Path:
    """Write the authors' flat format (``clip_model.*`` + ``prompts_features``), atomically.
    ``state_dict`` should hold the whole CLIP (text tower included) to match the release."""
    payload: dict[str, Any] = {
        _OFFICIAL_PREFIX + k: v.detach().cpu().contiguous() for k, v in state_dict.items()
    }
    payload["prompts_features"] = prompt_features.detach().float().cpu().contiguous()
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the target folder, then rename: a reader never sees a
    half-written file, and a crash leaves the previous file intact."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
