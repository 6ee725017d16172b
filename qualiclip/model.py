"""The QualiCLIP scoring module: a CLIP ResNet image tower plus fixed antonym prompt embeddings.

Scoring contract (official release; docs/method.md, "Scoring contract"):

* input ``(N, 3, H, W)`` RGB in [0, 1] at any size; normalised with CLIP's mean / std;
* the ResNet's attention pool runs **without** its positional embedding, which is what lets
  any ``H x W`` through (the 7x7 table is skipped, not interpolated);
* ``logits = 100 * normalise(e) @ t.T`` with ``t`` the checkpoint's normalised prompt embeddings
  (pos, neg interleaved), reshaped ``(N, P, 2)``, softmax over the pair, positive column ->
  ``(N, P)`` pair scores; the quality score is their mean. Higher is better.

The module is plain fp32; mixed precision is the inference engine's business
(:mod:`qualiclip.scoring`). Similarities and softmax always run in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qualiclip.constants import CLIP_MEAN, CLIP_STD, LOGIT_SCALE, MIN_SIDE
from qualiclip.prompts import PAIR_NAMES, PROMPT_PAIRS


def upscale_to_min_side(x: torch.Tensor, min_side: int = MIN_SIDE,
                        max_value: float = 1.0) -> torch.Tensor:
    """Images whose shorter side is below ``min_side`` px are upscaled (bicubic, aspect ratio
    kept, values clamped to [0, ``max_value``]) so the shorter side is ``min_side``; others
    pass unchanged. ``(N, C, H, W)`` float in, same layout out.

    Such images carry too little content to judge; the upscale makes them score (low, as a
    blurry image does) instead of crashing the backbone. Training's crops use it on the 0..255
    scale (``max_value=255``).
    """
    h, w = x.shape[-2:]
    if min(h, w) >= min_side:
        return x
    scale = min_side / min(h, w)
    size = (max(min_side, round(h * scale)), max(min_side, round(w * scale)))
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False).clamp_(0, max_value)


def overall_score(pair_scores: torch.Tensor) -> torch.Tensor:
    """``(..., P)`` pair scores in [0, 1] -> ``(...)`` quality scores: their mean (the official
    rule; the only place it is taken)."""
    return pair_scores.mean(dim=-1)


class QualiCLIP(nn.Module):
    """No-reference image quality model.

    Args:
        visual: an open_clip ``ModifiedResNet`` (weights loaded).
        prompt_features: ``(2 * P, D)`` L2-normalised prompt embeddings, pos/neg interleaved.
        pair_names: ``P`` short names, one per antonym pair.
        prompt_pairs: the ``P`` ``(positive, negative)`` prompt texts.
    """

    PAIR_NAMES: tuple[str, ...] = PAIR_NAMES

    def __init__(
        self,
        visual: nn.Module,
        prompt_features: torch.Tensor,
        pair_names: tuple[str, ...] = PAIR_NAMES,
        prompt_pairs: tuple[tuple[str, str], ...] = PROMPT_PAIRS,
    ) -> None:
        super().__init__()
        if prompt_features.ndim != 2 or prompt_features.shape[0] != 2 * len(pair_names):
            raise ValueError(
                f"prompt_features must be (2 * {len(pair_names)}, D), got "
                f"{tuple(prompt_features.shape)}"
            )
        self.visual = visual
        self.PAIR_NAMES = tuple(pair_names)
        self.prompt_pairs = tuple(prompt_pairs)
        self.register_buffer("prompt_features", F.normalize(prompt_features.float(), dim=-1))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))
        #: Set by :func:`qualiclip.load_model`: where the weights came from (name, path, sha256).
        self.weights_info: dict[str, str] = {}
        #: The backend scoring uses for this model unless told otherwise (``load_model``).
        self.backend = "auto"

    # --- image tower -----------------------------------------------------------------------
    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """ResNet trunk. ``(N, 3, H, W)`` in [0, 1], any size -> ``(N, C, ~H/32, ~W/32)``."""
        return self.trunk(upscale_to_min_side(x))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Normalisation and ResNet trunk for inputs whose sides are all >= ``MIN_SIDE``.

        ``(N, 3, H, W)`` in [0, 1] -> ``(N, C, ~H/32, ~W/32)``. No data-dependent branch, so an
        exported graph (ONNX) of it serves every input size.
        """
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        v = self.visual
        x = v.stem(x)
        x = v.layer1(x)
        x = v.layer2(x)
        x = v.layer3(x)
        return v.layer4(x)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Attention pooling **without** the positional embedding.

        ``(N, C, h, w)`` -> ``(N, D)`` unnormalised image embedding: the official attention
        pool's output for its first (mean) token, the only one CLIP keeps.

        Computed in an algebraically equal, cheaper order. With one query per head, its scores
        ``q_h . (W_k,h x_t + b_k,h)`` equal ``(W_k,h^T q_h) . x_t + q_h . b_k,h``, and since the
        attention weights sum to one the attended value ``sum_t p_t (W_v,h x_t + b_v,h)`` equals
        ``W_v,h (sum_t p_t x_t) + b_v,h``. So the key and value projections are applied to the
        query and to one mixed token per head instead of to all ``hw + 1`` tokens: about 50 M
        instead of 4.8 G multiply-adds (CLIP's full-sequence pool) at 640x480, equal to it within
        float rounding (~1e-6). The key-bias term is the same for every token, so softmax ignores
        it; it is kept so that every parameter stays in the graph, as DistributedDataParallel
        requires when training.
        """
        pool = self.visual.attnpool
        heads = pool.num_heads
        n, channels = fmap.shape[:2]
        head_dim = channels // heads
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, hw, C)
        mean = tokens.mean(dim=1, keepdim=True)  # (N, 1, C)
        tokens = torch.cat([mean, tokens], dim=1)  # (N, T, C), T = hw + 1
        # per-head matrices as batched matmuls (heads first); no tensor is repeated per head
        query = pool.q_proj(mean[:, 0]).view(n, heads, head_dim).transpose(0, 1)  # (heads, N, d)
        query = query * head_dim ** -0.5
        key_weight = pool.k_proj.weight.view(heads, head_dim, channels)
        value_weight = pool.v_proj.weight.view(heads, head_dim, channels)
        key_direction = (query @ key_weight).transpose(0, 1)  # (N, heads, C)
        key_bias = (query * pool.k_proj.bias.view(heads, 1, head_dim)).sum(-1)  # (heads, N)
        scores = key_direction @ tokens.transpose(1, 2) + key_bias.t().unsqueeze(-1)
        attention = scores.softmax(dim=-1)  # (N, heads, T)
        mixed = (attention @ tokens).transpose(0, 1)  # (heads, N, C)
        values = (mixed @ value_weight.transpose(1, 2)).transpose(0, 1)  # (N, heads, d)
        values = values.reshape(n, channels) + pool.v_proj.bias
        return pool.c_proj(values)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1], sides >= ``MIN_SIDE`` -> ``(N, D)`` unnormalised image
        embeddings. What the inference backends run (and export): no upscale branch."""
        return self.pool(self.trunk(x))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1], any size -> ``(N, D)`` unnormalised image embeddings."""
        return self.embed(upscale_to_min_side(x))

    # --- scoring ---------------------------------------------------------------------------
    def prompt_similarities(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` embeddings -> ``(..., 2 P)`` cosine similarities to the prompts (pos, neg
        interleaved), in fp32 even under autocast: bf16 similarities near 0.5 are only a few
        rounding steps apart, and the scores and training margins live at that scale."""
        with torch.autocast(features.device.type, enabled=False):
            e = F.normalize(features.float(), dim=-1)
            return e @ self.prompt_features.float().t()

    def pair_scores_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` embeddings -> ``(..., P)`` per-pair scores in [0, 1], computed in fp32.

        The one place pair scores are made: scoring, the FiftyOne model, quality maps, MOS
        evaluation and training's evaluation all come through here.
        """
        with torch.autocast(features.device.type, enabled=False):
            logits = LOGIT_SCALE * self.prompt_similarities(features)
            logits = logits.unflatten(-1, (len(self.PAIR_NAMES), 2))
            return logits.softmax(dim=-1)[..., 0]

    def pair_scores(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, P)`` scores, one column per ``PAIR_NAMES`` entry."""
        return self.pair_scores_from_features(self.image_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` RGB in [0, 1] -> ``(N,)`` quality scores in [0, 1], higher is better."""
        return overall_score(self.pair_scores(x))

    def quality_map(self, x: torch.Tensor) -> torch.Tensor:
        """Local quality: ``(N, 3, H, W)`` in [0, 1] -> ``(N, h, w)`` in [0, 1] (``h ~ H/32``).

        Each cell of the final feature map is projected like the pooled token would be (the
        attention pool's value and output projections, as in MaskCLIP) and scored against the
        same prompts with the same formula, then averaged over pairs. A local score for
        comparing regions of one image, not a calibrated measurement: values are not on the
        scale of the global score.
        """
        fmap = self.feature_map(x)
        pool = self.visual.attnpool
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, hw, C)
        local = pool.c_proj(pool.v_proj(tokens))
        scores = overall_score(self.pair_scores_from_features(local))
        return scores.reshape(fmap.shape[0], *fmap.shape[-2:])
