"""Does the score fall as degradation grows? Evaluation on held-out pristine images.

For every held-out image (centre crop) and every one of the 24 distortion types, a single-type
monotone ladder of L levels is scored; the Spearman correlation between level (1..L) and score is
computed per ladder and averaged overall, per group and per type. A perfect model gets -1 (score
strictly falls with every level); a model blind to quality gets about 0.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from qualiclip_train.data import fit_min_side
from qualiclip_train.degradation.distortions import DISTORTIONS
from qualiclip_train.degradation.ladders import apply_ladder, evaluation_ladder

from qualiclip.model import QualiCLIP


def spearman_with_levels(scores: torch.Tensor) -> float:
    """Spearman correlation between levels ``1..L`` and ``scores`` ``(L,)`` (ties averaged);
    0 when the scores are all equal (no information, not an error)."""
    s = scores.double()
    ranks = torch.empty_like(s)
    order = torch.argsort(s)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over runs of equal values
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    levels = torch.arange(1, len(s) + 1, dtype=torch.float64)
    r = ranks - ranks.mean()
    lv = levels - levels.mean()
    denom = math.sqrt(float((r * r).sum() * (lv * lv).sum()))
    return 0.0 if denom == 0 else float((r * lv).sum() / denom)


def center_crop(image: torch.Tensor, crop: int) -> torch.Tensor:
    """``(3, H, W)`` uint8 -> ``(3, crop, crop)`` uint8 from the centre (upscaled if smaller)."""
    image = fit_min_side(image, crop)
    h, w = image.shape[-2:]
    y, x = (h - crop) // 2, (w - crop) // 2
    return image[:, y:y + crop, x:x + crop]


@torch.no_grad()
def degradation_ranking(model: QualiCLIP, images: list[torch.Tensor], crop_size: int,
                        levels: int = 5, seed: int = 0,
                        types: tuple[str, ...] | None = None) -> dict:
    """Mean Spearman(level, score) over held-out ladders.

    Args:
        model: scores ``(N, 3, H, W)`` in [0, 1] -> ``(N,)``; put in eval mode for the duration.
        images: ``(3, H, W)`` uint8 held-out pristine images.
    Returns:
        ``{"srcc": float, "per_group": {group: float}, "per_type": {type: float},
        "ladders": int}``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    per_type: dict[str, list[float]] = defaultdict(list)
    names = types or tuple(DISTORTIONS)
    try:
        for i, image in enumerate(images):
            x = center_crop(image, crop_size).to(device).float().div(255)[None]
            for t, name in enumerate(names):
                ladder = evaluation_ladder(name, seed, i, t)
                batch = apply_ladder(x, ladder, levels)[:, 0]  # (L, 3, C, C)
                scores = model(batch).float().cpu()
                per_type[name].append(spearman_with_levels(scores))
    finally:
        model.train(was_training)
    type_means = {n: sum(v) / len(v) for n, v in per_type.items()}
    groups: dict[str, list[float]] = defaultdict(list)
    for n, v in per_type.items():
        groups[DISTORTIONS[n].group].extend(v)
    everything = [s for v in per_type.values() for s in v]
    return {"srcc": sum(everything) / max(1, len(everything)),
            "per_group": {g: sum(v) / len(v) for g, v in groups.items()},
            "per_type": type_means, "ladders": len(everything)}


def format_report(title: str, result: dict) -> str:
    """A few human-readable lines: overall and per-group mean SRCC (target -1)."""
    groups = "  ".join(f"{g}={v:+.3f}" for g, v in result["per_group"].items())
    return (f"{title}: mean SRCC(level, score) = {result['srcc']:+.3f} over {result['ladders']} "
            f"ladders (ideal -1)\n  per group: {groups}")
