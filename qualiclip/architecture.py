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
