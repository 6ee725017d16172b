"""Sensitivity curves: mean score versus degradation level, per distortion type, on your images.

The paper's Fig. 1 as a tool. Each sample image (centre crop, as in training and
:mod:`training.evaluation`) is degraded by each of the 24 distortion types of
:mod:`training.degradation.distortions` at levels 1..L of a monotone single-type ladder
(:mod:`training.degradation.ladders`); every degraded image is scored and the scores are
averaged over the sample. A model that tracks a distortion gives a curve falling from the
pristine score (level 0); a flat or rising curve shows a distortion the model misses on this
domain. Run it with several weights (before / after fine-tuning) to compare.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from qualiclip_train.degradation.distortions import DISTORTIONS
from qualiclip_train.degradation.ladders import apply_ladder, evaluation_ladder, ladder_value
from qualiclip_train.evaluation import center_crop, spearman_with_levels

from qualiclip.model import QualiCLIP

CSV_COLUMNS = ("weights", "type", "group", "level", "value", "mean_score", "std_score",
               "pristine_score", "n_images", "srcc")


@dataclass(frozen=True)
class SensitivityConfig:
    """How curves are computed.

    Attributes:
        crop: centre-crop side in px (the scale distortions are defined at); images with a
            shorter side are upscaled first.
        levels: ladder steps L (5 = the published values).
        seed: seeds every ladder, so a run can be replayed exactly.
        types: distortion types (default: all 24, table order).
    """

    crop: int = 224
    levels: int = 5
    seed: int = 0
    types: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CurvePoint:
    """Mean score of one (type, level) over the sample.

    ``value`` is the distortion parameter at that level (for the sign-alternating types, whose
    side alternates over images, its distance from the neutral value); ``srcc`` is the mean
    per-image Spearman correlation between level (0..L, 0 = pristine) and score for this type:
    -1 = the score falls at every step, 0 = blind to it (repeated on each level's row).
    """

    weights: str
    type: str
    group: str
    level: int
    value: float
    mean_score: float
    std_score: float
    pristine_score: float
    n_images: int
    srcc: float


@torch.no_grad()
def sensitivity_curves(model: QualiCLIP, images: Sequence[torch.Tensor],
                       config: SensitivityConfig = SensitivityConfig(),
                       weights_name: str = "") -> list[CurvePoint]:
    """Score every image at every level of every type.

    Args:
        model: an eval-mode model; runs on its own device.
        images: ``(3, H, W)`` uint8 pristine images (at least one).

    Returns:
        ``len(types) * levels`` points, type-major, level 1..L within a type.
    """
    if not images:
        raise ValueError("sensitivity needs at least one image")
    device = model.prompt_features.device
    names = config.types or tuple(DISTORTIONS)
    unknown = [n for n in names if n not in DISTORTIONS]
    if unknown:
        raise ValueError(f"unknown distortion type(s): {', '.join(unknown)}")
    pristine = []
    per_level = {n: [[] for _ in range(config.levels)] for n in names}
    srcc: dict[str, list[float]] = {n: [] for n in names}
    for i, image in enumerate(images):
        x = center_crop(image, config.crop).to(device).float().div(255)[None]
        base = float(model(x)[0])
        pristine.append(base)
        for t, name in enumerate(names):
            ladder = evaluation_ladder(name, config.seed, i, t)  # the evaluation's rule
            scores = model(apply_ladder(x, ladder, config.levels)[:, 0]).float().cpu()
            for level, s in enumerate(scores.tolist()):
                per_level[name][level].append(s)
            # Spearman over 0..L: the pristine image is the first step of the ladder.
            srcc[name].append(spearman_with_levels(torch.cat([torch.tensor([base]), scores])))
    pristine_mean = sum(pristine) / len(pristine)
    points = []
    for name in names:
        d = DISTORTIONS[name]
        type_srcc = sum(srcc[name]) / len(srcc[name])
        for level in range(1, config.levels + 1):
            s = torch.tensor(per_level[name][level - 1], dtype=torch.float64)
            points.append(CurvePoint(
                weights=weights_name, type=name, group=d.group, level=level,
                value=(abs(ladder_value(d, level, config.levels) - d.neutral) if d.signed
                       else ladder_value(d, level, config.levels)),
                mean_score=float(s.mean()),
                std_score=float(s.std(unbiased=False)),
                pristine_score=pristine_mean, n_images=len(images), srcc=type_srcc,
            ))
    return points


def write_curves_csv(points: Sequence[CurvePoint], path: str | os.PathLike) -> Path:
    """One row per point, columns :data:`CSV_COLUMNS`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for p in points:
            writer.writerow({c: getattr(p, c) for c in CSV_COLUMNS})
    return path
