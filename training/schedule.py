"""Learning-rate schedule: linear warmup then cosine decay, as a pure function."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Linear from ``base_lr / warmup_steps`` to ``base_lr`` over ``warmup_steps``, then cosine down
    to ``min_lr_ratio * base_lr`` at ``total_steps``.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
