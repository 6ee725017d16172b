"""Starting weights for training and the trainable scoring model built from them.

The image tower is wrapped in the library's :class:`~qualiclip.model.QualiCLIP`, so training
scores images through exactly the pooling the inference uses (attention pool without positional
embedding). The text tower is only used once, to compute the prompt embeddings; it is then
dropped from memory (its weights are kept for the output checkpoint).
"""

from __future__ import annotations

import os
import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import torch
from qualiclip_train.config import check_model_config
from torch import nn

from qualiclip.architecture import build_clip, compute_prompt_features, resolve_model_config
from qualiclip.checkpoint import read_checkpoint
from qualiclip.loading import build_model, prompt_features_of
from qualiclip.model import QualiCLIP
from qualiclip.prompts import PROMPT_PAIRS, flat_prompts
from qualiclip.weights import (
    OFFICIAL,
    WEIGHTS_ENV,
    WeightsDownloadError,
    resolve_weights,
    which_weights,
)

_NC_LICENSE = (f"{OFFICIAL.license} ({OFFICIAL.license_url}), inherited from the official "
               "QualiCLIP weights")


@dataclass
class InitialModel:
    """Everything training starts from.

    Attributes:
        state_dict: open_clip CLIP keys (``visual.*`` always, text tower when the source has it).
        prompt_features: ``(2 P, D)`` L2-normalised, pos/neg interleaved; fixed during training.
    """

    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    prompt_pairs: tuple[tuple[str, str], ...]
    prompt_features: torch.Tensor
    source: str
    license: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _from_clip(clip: nn.Module, config: dict[str, Any], source: str,
               license: str | None = None) -> InitialModel:
    features = compute_prompt_features(clip.eval(), flat_prompts(PROMPT_PAIRS))
    return InitialModel(config, clip.state_dict(), PROMPT_PAIRS, features, source, license)


def initial_model(init: str | None, arch: str | None = None, seed: int = 0) -> InitialModel:
    """Resolve ``--init``: ``"qualiclip"``, ``"openai"``, ``"random"`` (with ``arch``), a path or
    a URL; ``None`` = the default weights (``$QUALICLIP_WEIGHTS``, else ``"qualiclip"``).

    ``"random"`` seeds torch's global generator with ``seed`` before building (the one place
    training touches global RNG state, so a random init is reproducible).

    Raises:
        WeightsDownloadError: weights that must be downloaded and cannot be (offline).
    """
    init = which_weights(init)
    if init == "random":
        config = resolve_model_config(arch or "RN50")
        torch.manual_seed(seed)
        return _from_clip(build_clip(config), config, f"random init ({arch})")
    if init == "openai":
        import open_clip

        clip = open_clip.create_model(OPENAI_MODEL, pretrained=_openai_checkpoint())
        return _from_clip(clip, resolve_model_config("RN50"), "OpenAI CLIP RN50",
                          license="MIT (OpenAI CLIP weights)")
    path, name = resolve_weights(init)
    ck = read_checkpoint(path)
    # A checkpoint carries its own architecture: refuse a malformed or absurd one in one line
    # before building it (a width of 64000 would try to allocate tens of gigabytes).
    check_model_config(ck.model_config, f"--init {init}")
    license = _NC_LICENSE if (init == "qualiclip" or ck.format == "official") else None
    if ck.metadata.get("license"):
        license = ck.metadata["license"]
    # The library's reader: a text tower with missing weights is refused, not half-loaded.
    features = prompt_features_of(ck, f"--init {init}")
    return InitialModel(ck.model_config, dict(ck.state_dict), tuple(ck.prompt_pairs),
                        features, f"{name}", license)


#: open_clip's name for OpenAI's CLIP RN50 (QuickGELU, as OpenAI trained it), tag ``openai``.
OPENAI_MODEL = "RN50-quickgelu"
#: How long to wait for the Hugging Face Hub to accept a connection before calling it offline.
HUB_CONNECT_TIMEOUT_S = 10


def _openai_checkpoint() -> str:
    """Local file of OpenAI's CLIP RN50: from the Hugging Face cache, else downloaded.

    open_clip alone would retry an unreachable Hub five times per candidate file (about a minute
    offline) and then raise a generic error; here a cached file is used without asking the Hub,
    and an unreachable Hub fails at once with what to do instead.

    Raises:
        WeightsDownloadError: not cached and the Hub cannot be reached (or the download failed).
    """
    import open_clip.pretrained as pretrained
    from huggingface_hub import constants, try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = pretrained.get_pretrained_cfg(OPENAI_MODEL, "openai")
    repo, filename = os.path.split(cfg["hf_hub"])  # "timm/resnet50_clip.openai/": no filename
    for name in (HF_SAFE_WEIGHTS_NAME, filename or HF_WEIGHTS_NAME):
        cached = try_to_load_from_cache(repo, name)
        if isinstance(cached, str):  # else None, or a marker for "known not to exist"
            return cached
    endpoint = constants.ENDPOINT
    problem = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else _unreachable(endpoint, HUB_CONNECT_TIMEOUT_S))
    if problem is None:
        try:
            return pretrained.download_pretrained(cfg)
        except Exception as exc:  # the Hub's errors have no common base worth naming
            problem = " ".join(str(exc).split())
    raise WeightsDownloadError(
        f"--init openai: OpenAI CLIP RN50 ({repo}) is not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and could not be downloaded from {endpoint} ({problem}). "
        f"Offline? Start from a local checkpoint with --init PATH (or set ${WEIGHTS_ENV} and "
        "leave --init out), or run --init openai once on a connected machine and copy its "
        "Hugging Face cache here (HF_HOME sets where it is).")


def _unreachable(url: str, timeout: float) -> str | None:
    """Why a TCP connection to ``url``'s host cannot be opened, or ``None`` when it can. Fails
    in milliseconds where the name does not resolve or the port is closed."""
    parts = urllib.parse.urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{parts.hostname}:{port}: {exc}"


def trainable_model(initial: InitialModel) -> QualiCLIP:
    """A :class:`QualiCLIP` whose visual tower holds the initial weights and requires grad.

    Assembled by :func:`qualiclip.loading.build_model`, the path scoring loads checkpoints
    with, so training scores images exactly as inference will (same pooling, pair names).
    """
    model = build_model(initial.model_config, initial.state_dict, initial.prompt_pairs,
                        initial.prompt_features, initial.source)
    model.visual.requires_grad_(True)
    # The scoring pool skips the positional embedding, so it gets no gradient: freeze it (it
    # stays as in the source checkpoint, and DDP would otherwise wait for its gradient).
    model.visual.attnpool.positional_embedding.requires_grad_(False)
    return model


class PromptSimilarity(nn.Module):
    """``(N, 3, H, W)`` in [0, 1] -> ``(N, 2 P)`` cosine similarities to the prompts (pos, neg
    interleaved). A module of its own so DistributedDataParallel sees one forward."""

    def __init__(self, model: QualiCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The scoring model's own methods (similarities in fp32 even under AMP: the margins,
        # 0.05, are only a few bf16 rounding steps wide at similarities near 0.5).
        return self.model.prompt_similarities(self.model.image_features(x))


def set_train_mode(model: nn.Module, train_bn: bool) -> None:
    """Training mode, but BatchNorm layers keep their running statistics unless ``train_bn``."""
    model.train()
    if not train_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
