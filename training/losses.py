"""QualiCLIP's three margin ranking losses (docs/method.md, "Training recipe"), pure functions.

Shapes: ``s_pos`` / ``s_neg`` are cosine similarities ``(B, 2, L, P)`` in [-1, 1]: ``B`` pristine
images, their 2 crops, ``L`` levels (level 1 = least degraded first), ``P`` prompt pairs.

* :func:`ranking_loss` with ``direction=+1`` is L_pos (``s_pos`` must fall with the level),
  with ``direction=-1`` L_neg (``s_neg`` must rise):
  ``mean over i < j of max(0, m - direction * (s[i] - s[j]))``.
* :func:`consistency_loss` is L_cons: ``mean max(0, |s[crop1] - s[crop2]| - tol)`` over both
  prompts.
* total = L_pos + L_neg + lambda * L_cons (:func:`qualiclip_loss`).
"""

from __future__ import annotations

import torch


def level_pairs(levels: int, adjacent_only: bool, device: torch.device | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(i, j)`` with ``i < j``: all pairs, or only ``(l, l + 1)``."""
    if adjacent_only:
        i = torch.arange(levels - 1, device=device)
        return i, i + 1
    i, j = torch.triu_indices(levels, levels, offset=1, device=device)
    return i, j


def ranking_loss(s: torch.Tensor, margin: float, direction: int = 1,
                 adjacent_only: bool = False) -> torch.Tensor:
    """Margin ranking over levels.

    Args:
        s: ``(..., L, P)`` similarities, level axis second to last.
        direction: +1 -> ``s`` must decrease with the level (L_pos); -1 -> increase (L_neg).
    Returns:
        scalar, >= 0; 0 when every ordered pair differs by at least ``margin`` the right way.
    """
    i, j = level_pairs(s.shape[-2], adjacent_only, s.device)
    diff = direction * (s[..., i, :] - s[..., j, :])
    return torch.relu(margin - diff).mean()


def consistency_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Crops of the same image at the same level should agree: ``(B, 2, L, P)`` each -> scalar,
    the mean over both prompts of ``max(0, |crop1 - crop2| - tolerance)``."""
    gap_pos = (s_pos[:, 0] - s_pos[:, 1]).abs()
    gap_neg = (s_neg[:, 0] - s_neg[:, 1]).abs()
    return 0.5 * (torch.relu(gap_pos - tolerance).mean() + torch.relu(gap_neg - tolerance).mean())


def qualiclip_loss(s_pos: torch.Tensor, s_neg: torch.Tensor, margin: float,
                   consistency_weight: float, tolerance: float,
                   adjacent_only: bool = False) -> dict[str, torch.Tensor]:
    """All three losses and their weighted sum, ``(B, 2, L, P)`` inputs.

    Returns:
        ``{"loss", "l_pos", "l_neg", "l_cons"}`` scalars.
    """
    l_pos = ranking_loss(s_pos, margin, +1, adjacent_only)
    l_neg = ranking_loss(s_neg, margin, -1, adjacent_only)
    l_cons = consistency_loss(s_pos, s_neg, tolerance)
    return {"loss": l_pos + l_neg + consistency_weight * l_cons,
            "l_pos": l_pos, "l_neg": l_neg, "l_cons": l_cons}
