"""``load_model``: weights (name, path or URL) -> a ready :class:`~qualiclip.model.QualiCLIP`."""

from __future__ import annotations

import os

import torch

from qualiclip.architecture import build_clip, build_visual, compute_prompt_features
from qualiclip.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from qualiclip.model import QualiCLIP
from qualiclip.prompts import PAIR_NAMES, PROMPT_PAIRS, flat_prompts
from qualiclip.weights import resolve_weights, sha256_file


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    weights: str | os.PathLike = "qualiclip",
    device: str | torch.device | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> QualiCLIP:
    """Load QualiCLIP weights into an eval-mode fp32 :class:`QualiCLIP`.

    Args:
        weights: ``"qualiclip"`` (the official release, CC BY-NC 4.0, downloaded on first use
            into the cache), a local ``.pth`` in either checkpoint format, or a URL.
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA if available).
        expected_sha256: pin the file's SHA-256 (also ``$QUALICLIP_SHA256``).

    Returns:
        ``model(x)`` maps ``(N, 3, H, W)`` RGB in [0, 1] to ``(N,)`` scores in [0, 1];
        ``model.weights_info`` holds ``name``, ``path`` and ``sha256`` of the weights.
    """
    path, name = resolve_weights(weights, expected_sha256=expected_sha256, progress=progress)
    checkpoint = read_checkpoint(path)
    model = model_from_checkpoint(checkpoint, source=str(path))
    model.weights_info = {"name": name, "path": str(path), "sha256": sha256_file(path),
                          "format": checkpoint.format}
    model.requires_grad_(False)  # inference only; training code builds its own trainable copy
    return model.to(device or default_device()).eval()


def model_from_checkpoint(checkpoint: Checkpoint, source: str = "checkpoint") -> QualiCLIP:
    """Build the model a :class:`Checkpoint` describes; every weight comes from the checkpoint."""
    config = checkpoint.model_config
    pairs = tuple(checkpoint.prompt_pairs)
    features = checkpoint.prompt_features
    if features is None:
        # No stored embeddings: compute them once with the checkpoint's own (QuickGELU) text
        # tower, then let the text tower go out of scope so it is not kept in memory.
        if "text_cfg" not in config or "token_embedding.weight" not in checkpoint.state_dict:
            raise CheckpointError(
                f"{source} has neither prompt embeddings nor a text tower to compute them"
            )
        clip = build_clip(config)
        _load_state(clip, checkpoint.state_dict, source, prefix="")
        features = compute_prompt_features(clip, flat_prompts(pairs))
        visual = clip.visual
        del clip
    else:
        visual = build_visual(config)
        visual_state = {k[len("visual."):]: v for k, v in checkpoint.state_dict.items()
                        if k.startswith("visual.")}
        _load_state(visual, visual_state, source, prefix="visual.")
    names = PAIR_NAMES if pairs == PROMPT_PAIRS else _names_for(pairs)
    width = getattr(visual, "output_dim", None)
    if width is not None and features.ndim == 2 and features.shape[1] != width:
        raise CheckpointError(
            f"{source}: prompt embeddings are {features.shape[1]}-dimensional but the image "
            f"tower outputs {width}; the checkpoint's prompts_features and model config do not "
            "belong together")
    try:
        return QualiCLIP(visual, features, pair_names=names, prompt_pairs=pairs)
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


def _names_for(pairs: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Column names for custom prompt pairs: the positive prompt, lower-cased, as an identifier."""
    names = []
    for positive, _ in pairs:
        slug = "".join(c if c.isalnum() else "_" for c in positive.lower()).strip("_")
        names.append(slug or f"pair{len(names)}")
    return tuple(names)
