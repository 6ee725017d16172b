"""``load_model``: weights (name, path or URL) -> a ready :class:`~qualiclip.model.QualiCLIP`."""

from __future__ import annotations

import os

import torch

from qualiclip.architecture import build_clip, build_visual, compute_prompt_features
from qualiclip.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_prompt_features,
    read_checkpoint,
)
from qualiclip.constants import BACKENDS
from qualiclip.model import QualiCLIP
from qualiclip.prompts import flat_prompts, pair_names_for
from qualiclip.weights import resolve_weights, sha256_file, which_weights


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    backend: str = "auto",
) -> QualiCLIP:
    """Load QualiCLIP weights into an eval-mode fp32 :class:`QualiCLIP`.

    Args:
        weights: ``"qualiclip"`` (the official release, CC BY-NC 4.0, downloaded on first use
            into the cache), a local ``.pth`` in either checkpoint format, or a URL. ``None``
            (default): ``$QUALICLIP_WEIGHTS`` if set, else ``"qualiclip"``
            (:func:`qualiclip.weights.which_weights`; docs/scoring.md, "Which weights").
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA if available).
        expected_sha256: pin the file's SHA-256 (also ``$QUALICLIP_SHA256``).
        backend: what :func:`~qualiclip.score_images` runs the image tower with for this model
            unless told otherwise (``model.backend``): ``"auto"``, ``"torch"``,
            or ``"onnxruntime"`` (see :mod:`qualiclip.backends.selection`).

    Returns:
        ``model(x)`` maps ``(N, 3, H, W)`` RGB in [0, 1] to ``(N,)`` scores in [0, 1];
        ``model.weights_info`` holds ``name``, ``path`` and ``sha256`` of the weights, and
        ``license`` where the checkpoint states one (converted QualiCLIP+ variants).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    path, name = resolve_weights(which_weights(weights), expected_sha256=expected_sha256,
                                 progress=progress)
    checkpoint = read_checkpoint(path)
    model = model_from_checkpoint(checkpoint, source=str(path))
    model.weights_info = {"name": name, "path": str(path), "sha256": sha256_file(path),
                          "format": checkpoint.format}
    if isinstance(checkpoint.metadata.get("license"), str):  # e.g. converted QualiCLIP+
        model.weights_info["license"] = checkpoint.metadata["license"]
    model.requires_grad_(False)  # inference only; training code builds its own trainable copy
    model.backend = backend
    return model.to(device or default_device()).eval()


def model_from_checkpoint(checkpoint: Checkpoint, source: str = "checkpoint") -> QualiCLIP:
    """Build the model a :class:`Checkpoint` describes; every weight comes from the checkpoint."""
    return build_model(checkpoint.model_config, checkpoint.state_dict,
                       tuple(checkpoint.prompt_pairs), prompt_features_of(checkpoint, source),
                       source)


def prompt_features_of(checkpoint: Checkpoint, source: str = "checkpoint") -> torch.Tensor:
    """The checkpoint's ``(2 P, D)`` prompt embeddings; when it stores none, computed once with
    its own (QuickGELU) text tower, which is then dropped from memory.

    Raises:
        CheckpointError: neither embeddings nor a complete text tower in the checkpoint.
    """
    if checkpoint.prompt_features is not None:
        return checkpoint.prompt_features.float()
    config = checkpoint.model_config
    if "text_cfg" not in config or "token_embedding.weight" not in checkpoint.state_dict:
        raise CheckpointError(
            f"{source} has neither prompt embeddings nor a text tower to compute them")
    clip = build_clip(config)
    _load_state(clip, checkpoint.state_dict, source, prefix="")
    features = compute_prompt_features(clip.eval(), flat_prompts(tuple(checkpoint.prompt_pairs)))
    check_prompt_features(features, f"{source}: the prompt features its text tower computes")
    return features


def build_model(model_config: dict, state_dict: dict[str, torch.Tensor],
                prompt_pairs: tuple[tuple[str, str], ...], prompt_features: torch.Tensor,
                source: str = "checkpoint") -> QualiCLIP:
    """The one way a :class:`QualiCLIP` is assembled, for scoring and for training: the image
    tower from the ``visual.*`` weights of an open_clip ``state_dict`` (every weight required),
    the ``(2 P, D)`` prompt embeddings, and column names from :func:`pair_names_for`.

    Raises:
        CheckpointError: missing or mis-shaped weights, or prompt embeddings that do not fit
            the image tower; the message names ``source``.
    """
    visual = build_visual(model_config)
    visual_state = {k[len("visual."):]: v for k, v in state_dict.items()
                    if k.startswith("visual.")}
    _load_state(visual, visual_state, source, prefix="visual.")
    width = getattr(visual, "output_dim", None)
    if (width is not None and prompt_features.ndim == 2
            and prompt_features.shape[1] != width):
        raise CheckpointError(
            f"{source}: prompt embeddings are {prompt_features.shape[1]}-dimensional but the "
            f"image tower outputs {width}; the checkpoint's prompts_features and model config "
            "do not belong together")
    pairs = tuple(prompt_pairs)
    try:
        return QualiCLIP(visual, prompt_features, pair_names=pair_names_for(pairs),
                         prompt_pairs=pairs)
    except ValueError as exc:  # prompt embeddings of the wrong shape
        raise CheckpointError(f"{source}: {exc}") from exc


def _load_state(module: torch.nn.Module, state: dict, source: str, prefix: str) -> None:
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source} does not match its architecture: {exc}") from exc
    # The text tower's attention mask is a non-persistent buffer; anything else missing means
    # the checkpoint does not match its declared architecture.
    missing = [k for k in result.missing_keys if not k.endswith("attn_mask")]
    if missing:
        raise CheckpointError(
            f"{source} does not match its architecture: {len(missing)} missing weights "
            f"(e.g. {prefix}{missing[0]})"
        )
