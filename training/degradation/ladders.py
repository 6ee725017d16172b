"""Degradation ladders: one composition of distortions stepped through L increasing levels.

Public API (also what sensitivity curves are built on)::

    import torch
    from qualiclip_train.degradation.ladders import apply_level, sample_ladder, apply_ladder

    g = torch.Generator().manual_seed(0)
    # one type at level 3 of a monotone 5-level ladder; x (N, 3, H, W) or (3, H, W) in [0, 1]
    y = apply_level(x, "mean_shift", level=3, generator=g)          # sign +1 by default
    # a random composition (1..4 types from distinct groups) replayed at L levels
    ladder = sample_ladder(torch.Generator().manual_seed(7))
    ys = apply_ladder(x, ladder, levels=5)                            # (5, N, 3, H, W)

Monotone ladders [ours]: for the usual types level ``l`` of ``L`` takes the published values
(L = 5) or interpolates them linearly at ``1 + 4 (l - 1) / (L - 1)``. The sign-alternating types
(mean shift, linear contrast) are ordered by distance from their neutral value ``n``: with a side
``s`` (+1/-1) drawn once per image, level ``l`` is ``n + s * reach * l / L`` where ``reach`` is the
farthest published value on that side (mean shift: 0.15 either way; linear contrast, ``n = -0.2``:
up to 0.3 above, down to -0.6 below), so every step is strictly stronger than the one before.

Replay: a :class:`Ladder` carries one seed per member; every level re-seeds from it, so the random
parts (noise pattern, blur angle, patch positions) stay fixed and only the intensity grows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from qualiclip_train.degradation.distortions import DISTORTIONS, GROUPS, Distortion, apply_value


def ladder_value(d: Distortion, level: int, levels: int = 5, sign: int = 1) -> float:
    """The parameter of ``d`` at ``level`` (1..``levels``) of a monotone ladder."""
    if not 1 <= level <= levels:
        raise ValueError(f"level must be 1..{levels}, got {level}")
    if d.signed:
        reach = max(abs(v - d.neutral) for v in d.values if (v - d.neutral) * sign > 0)
        return d.neutral + sign * reach * level / levels
    if levels == 5:
        return float(d.values[level - 1])
    pos = 0.0 if levels == 1 else 4 * (level - 1) / (levels - 1)
    lo = min(int(pos), 3)
    frac = pos - lo
    return float(d.values[lo] * (1 - frac) + d.values[lo + 1] * frac)


def apply_level(x: torch.Tensor, name: str, level: int, generator: torch.Generator,
                levels: int = 5, sign: int = 1) -> torch.Tensor:
    """Apply distortion ``name`` at ``level`` of a monotone ``levels``-step ladder.

    Args:
        x: ``(N, 3, H, W)`` or ``(3, H, W)`` in [0, 1]; the ``N`` images get identical parameters.
        generator: on ``x``'s device; the only source of randomness.
    Returns:
        same shape, dtype and device, in [0, 1].
    """
    d = DISTORTIONS[name]
    return apply_value(d, x, ladder_value(d, level, levels, sign), generator)


@dataclass(frozen=True)
class Ladder:
    """A composition replayable at any level: ``names`` applied in order, each with its own
    ``seeds`` entry and ``signs`` entry (+1/-1, used by signed types only)."""

    names: tuple[str, ...]
    seeds: tuple[int, ...]
    signs: tuple[int, ...]


def sample_ladder(generator: torch.Generator, max_distortions: int = 4,
                  types: tuple[str, ...] | None = None) -> Ladder:
    """Draw a composition: 1..``max_distortions`` types from distinct groups (ARNIQA's rule),
    in random order, each with a seed and a sign. ``generator`` is a CPU generator.

    ``types`` restricts the pool (default: all 24).
    """
    pool = types or tuple(DISTORTIONS)
    by_group: dict[str, list[str]] = {}
    for name in pool:
        by_group.setdefault(DISTORTIONS[name].group, []).append(name)
    groups = [g for g in GROUPS if g in by_group]
    count = int(torch.randint(1, min(max_distortions, len(groups)) + 1, (1,),
                              generator=generator))
    chosen = torch.randperm(len(groups), generator=generator)[:count].tolist()
    names = []
    for gi in chosen:
        members = by_group[groups[gi]]
        names.append(members[int(torch.randint(len(members), (1,), generator=generator))])
    seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
    signs = (torch.randint(0, 2, (count,), generator=generator) * 2 - 1).tolist()
    return Ladder(tuple(names), tuple(int(s) for s in seeds), tuple(int(s) for s in signs))


def single_ladder(name: str, seed: int, sign: int = 1) -> Ladder:
    """A ladder of one distortion type (used by the evaluation and sensitivity curves)."""
    return Ladder((name,), (seed,), (sign,))


def evaluation_ladder(name: str, seed: int, image: int, type_index: int) -> Ladder:
    """The single-type ladder the evaluation and the sensitivity curves give image ``image``
    for distortion number ``type_index``: its own seed (a run replays exactly), and a sign that
    alternates over images and types, so the sign-alternating types average brightening and
    darkening (or contrast up and down). One rule, so the curves and the SRCC agree."""
    return single_ladder(name, seed=seed * 100_003 + image * 101 + type_index,
                         sign=1 if (image + type_index) % 2 == 0 else -1)


def apply_ladder_level(x: torch.Tensor, ladder: Ladder, level: int,
                       levels: int = 5) -> torch.Tensor:
    """``x`` ``(N, 3, H, W)`` in [0, 1] degraded by every member of ``ladder`` at ``level``,
    clamped to [0, 1] after each (the members already clamp)."""
    for name, seed, sign in zip(ladder.names, ladder.seeds, ladder.signs, strict=True):
        g = torch.Generator(device=x.device).manual_seed(seed)
        x = apply_level(x, name, level, g, levels=levels, sign=sign)
    return x


def apply_ladder(x: torch.Tensor, ladder: Ladder, levels: int = 5) -> torch.Tensor:
    """All levels at once: ``(N, 3, H, W)`` in [0, 1] -> ``(levels, N, 3, H, W)`` in [0, 1],
    level 1 first (least degraded)."""
    return torch.stack([apply_ladder_level(x, ladder, lv, levels) for lv in range(1, levels + 1)])
