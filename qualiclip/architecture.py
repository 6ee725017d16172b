"""CLIP architectures as open_clip model configs, and builders for their towers.

A config is the plain dict open_clip uses (``embed_dim``, ``vision_cfg``, ``text_cfg``,
``quick_gelu``). Our checkpoints carry it, so a checkpoint can rebuild its own model. Only
ResNet vision towers are supported: the scoring contract relies on the attention-pool head.
Nothing here downloads anything: every weight comes from a checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: OpenAI CLIP RN50, the architecture of the official QualiCLIP release. OpenAI's text tower
#: was trained with QuickGELU, so ``quick_gelu`` must be on for correct prompt embeddings.
RN50_CONFIG: dict[str, Any] = {
    "embed_dim": 1024,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": [3, 4, 6, 3], "width": 64, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}

#: A tiny random ResNet CLIP (about 4 M parameters, mostly the token table) registered like a
#: real one, so tests and
#: smoke runs exercise the real code paths in seconds.
TINY_TEST_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}

MODEL_CONFIGS: dict[str, dict[str, Any]] = {"RN50": RN50_CONFIG, "tiny-test-rn": TINY_TEST_CONFIG}

#: Upper bounds for a model config's sizes: ten times the largest OpenAI ResNet CLIP
#: (RN50x64) or more, so any real model passes, and a typo (a width of 64000) is refused before
#: it allocates tens of gigabytes.
MODEL_LIMITS: dict[str, int] = {
    "embed_dim": 16384, "vision_cfg.width": 1024, "vision_cfg.image_size": 4096,
    "vision_cfg.layers": 256, "text_cfg.width": 16384, "text_cfg.layers": 256,
    "text_cfg.heads": 256, "text_cfg.context_length": 4096, "text_cfg.vocab_size": 1_000_000}
#: Sizes open_clip fills in when a config leaves them out.
_OPTIONAL_SIZES = ("heads", "context_length", "vocab_size", "image_size")


class ModelConfigError(ValueError):
    """A model config that cannot describe a ResNet CLIP; one line naming the bad entry."""


def _whole(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit


def check_model_config(config: Any, source: str, require_text: bool = False) -> None:
    """Refuse a model config that is not an open_clip ResNet CLIP config of sane sizes (see
    :data:`MODEL_LIMITS`), before anything is allocated for it.

    Args:
        config: the config as read (a checkpoint's ``model_config``, a JSON file, ...).
        source: what to name in the message (a file, an option).
        require_text: the text tower (``text_cfg``) must be present too (training builds it).

    Raises:
        ModelConfigError: one line naming ``source``, the bad key and the accepted form/range.
    """
    if not isinstance(config, dict):
        raise ModelConfigError(
            f"{source}: the model config must be an open_clip config dict like "
            "{'embed_dim': 1024, 'vision_cfg': {'layers': [3, 4, 6, 3], 'width': 64, ...}, "
            f"...}}, got {type(config).__name__} {str(config)[:60]!r}")
    for key, limit in MODEL_LIMITS.items():
        section, _, name = key.rpartition(".")
        if section == "text_cfg" and "text_cfg" not in config and not require_text:
            continue  # scoring needs only the image tower when prompt features are stored
        holder = config.get(section) if section else config
        if not isinstance(holder, dict):
            raise ModelConfigError(f"{source}: model config entry {section!r} must be a dict, "
                                   f"got {type(holder).__name__}")
        value = holder.get(name)
        if value is None and name in _OPTIONAL_SIZES:
            continue
        if name == "layers" and section == "vision_cfg":
            if not (isinstance(value, (list, tuple)) and len(value) == 4
                    and all(_whole(v, limit) for v in value)):
                raise ModelConfigError(
                    f"{source}: model config {key} = {str(value)[:60]} must be a list of 4 "
                    f"whole numbers in 1..{limit} (a ResNet's four stages)")
        elif not _whole(value, limit):
            raise ModelConfigError(f"{source}: model config {key} = {str(value)[:60]} must be "
                                   f"a whole number in 1..{limit}")
    vision = config["vision_cfg"]
    # The attention pool splits width * 32 channels into width // 2 heads of 64.
    if vision["width"] % 2:
        raise ModelConfigError(f"{source}: model config vision_cfg.width = {vision['width']} "
                               "must be even")
    if vision.get("image_size") is not None and vision["image_size"] % 32:
        raise ModelConfigError(f"{source}: model config vision_cfg.image_size = "
                               f"{vision['image_size']} must be a multiple of 32")
    text = config.get("text_cfg")
    if isinstance(text, dict) and text.get("heads") and text["width"] % text["heads"]:
        raise ModelConfigError(f"{source}: model config text_cfg.width = {text['width']} must "
                               f"be a multiple of text_cfg.heads = {text['heads']}")


def resolve_model_config(name_or_path: str | dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a model config given a registered name, an open_clip model name, a
    JSON file path, or a dict.

    Raises:
        ValueError: the name is unknown or the config is not a ResNet CLIP.
    """
    if isinstance(name_or_path, dict):
        config = copy.deepcopy(name_or_path)
    elif name_or_path in MODEL_CONFIGS:
        config = copy.deepcopy(MODEL_CONFIGS[name_or_path])
    elif Path(name_or_path).suffix == ".json" or Path(name_or_path).is_file():
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"model config file not found: {path}")
        config = json.loads(path.read_text())
    else:
        import open_clip

        config = open_clip.get_model_config(name_or_path)
        if config is None:
            known = ", ".join(sorted(MODEL_CONFIGS))
            raise ValueError(
                f"unknown architecture {name_or_path!r}: use one of {known}, an open_clip "
                "ResNet model name (e.g. RN50, RN101) or a JSON model config file"
            )
        config = copy.deepcopy(config)
        if name_or_path.endswith("-quickgelu") or name_or_path.startswith("RN"):
            # OpenAI's ResNet CLIPs all use QuickGELU in the text tower.
            config["quick_gelu"] = True
    layers = config.get("vision_cfg", {}).get("layers")
    if not isinstance(layers, (list, tuple)):
        raise ValueError(
            f"architecture {name_or_path!r} is not a ResNet CLIP: QualiCLIP needs a ResNet "
            "vision tower with an attention-pool head (vision_cfg.layers must be a list)"
        )
    config.setdefault("quick_gelu", True)
    return config


def build_visual(config: dict[str, Any]) -> nn.Module:
    """Build the (randomly initialised) open_clip ``ModifiedResNet`` vision tower of ``config``."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(
        config["embed_dim"], config["vision_cfg"], quick_gelu=config.get("quick_gelu", True)
    )


def build_clip(config: dict[str, Any]) -> nn.Module:
    """Build a whole (randomly initialised) open_clip ``CLIP`` with text tower for ``config``."""
    from open_clip.model import CLIP

    return CLIP(
        embed_dim=config["embed_dim"],
        vision_cfg=config["vision_cfg"],
        text_cfg=config["text_cfg"],
        quick_gelu=config.get("quick_gelu", True),
    )


@torch.no_grad()
def compute_prompt_features(clip: nn.Module, prompts: list[str]) -> torch.Tensor:
    """Encode ``prompts`` with ``clip``'s text tower.

    Returns:
        ``(len(prompts), embed_dim)`` float32, L2-normalised rows.
    """
    import open_clip

    device = next(clip.parameters()).device
    tokens = open_clip.tokenize(prompts, context_length=clip.context_length).to(device)
    was_training = clip.training
    clip.eval()
    features = clip.encode_text(tokens, normalize=True).float()
    clip.train(was_training)
    return features


def encode_embedded_text(clip: nn.Module, embedded: torch.Tensor,
                         eos: torch.Tensor) -> torch.Tensor:
    """Run ``clip``'s text tower from its word embeddings on: what ``encode_text`` does after
    its token lookup, for prompts whose words are (partly) learned vectors (CoOp-style context,
    pyiqa's QualiCLIP+ prompts).

    Args:
        embedded: ``(N, L, width)`` input embeddings, ``L <= context_length``, before the
            positional embedding. The causal mask means rows may be cut after their end token.
        eos: ``(N,)`` position of each row's end token, whose output is the text feature.

    Returns:
        ``(N, embed_dim)`` unnormalised text features (differentiable in ``embedded``).
    """
    length = embedded.shape[1]
    x = embedded + clip.positional_embedding[:length]
    mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eos]
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj
