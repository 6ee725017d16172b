"""The three losses on hand-computed examples."""

from __future__ import annotations

import pytest
import torch
from qualiclip_train.losses import consistency_loss, level_pairs, qualiclip_loss, ranking_loss
from qualiclip_train.schedule import lr_at


def test_level_pairs():
    i, j = level_pairs(3, adjacent_only=False)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2)]
    i, j = level_pairs(3, adjacent_only=True)
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 1), (1, 2)]


def test_ranking_loss_hand_computed():
    # One image, one prompt, 3 levels: s = [0.30, 0.28, 0.29]; margin 0.05.
    s = torch.tensor([0.30, 0.28, 0.29]).view(3, 1)
    # L_pos pairs (0,1): 0.05-0.02=0.03, (0,2): 0.05-0.01=0.04, (1,2): 0.05+0.01=0.06 -> mean .13/3
    assert float(ranking_loss(s, 0.05, +1)) == pytest.approx(0.13 / 3, abs=1e-6)
    # adjacent only: (0,1) 0.03, (1,2) 0.06 -> 0.045
    assert float(ranking_loss(s, 0.05, +1, adjacent_only=True)) == pytest.approx(0.045, abs=1e-6)
    # L_neg wants an increase: (0,1): .05+.02=.07, (0,2): .05+.01=.06, (1,2): .05-.01=.04
    assert float(ranking_loss(s, 0.05, -1)) == pytest.approx(0.17 / 3, abs=1e-6)


def test_ranking_loss_zero_when_ordered_by_margin():
    s = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1]).view(5, 1)
    assert float(ranking_loss(s, 0.1, +1)) == pytest.approx(0.0, abs=1e-7)
    assert float(ranking_loss(s.flip(0), 0.1, -1)) == pytest.approx(0.0, abs=1e-7)


def test_consistency_loss_hand_computed():
    # B=1, 2 crops, L=2, P=1. Positive gaps 0.1 and 0.0, negative gaps 0.02 and 0.04.
    s_pos = torch.tensor([[[0.3], [0.2]], [[0.2], [0.2]]]).unsqueeze(0)
    s_neg = torch.tensor([[[0.10], [0.14]], [[0.12], [0.10]]]).unsqueeze(0)
    # tolerance 0: pos mean 0.05, neg mean 0.03 -> 0.5 * 0.08 = 0.04
    assert float(consistency_loss(s_pos, s_neg, 0.0)) == pytest.approx(0.04, abs=1e-6)
    # tolerance 0.03: pos (0.07 + 0) / 2 = 0.035, neg (0 + 0.01) / 2 = 0.005 -> 0.02
    assert float(consistency_loss(s_pos, s_neg, 0.03)) == pytest.approx(0.02, abs=1e-6)


def test_total_combines_parts():
    g = torch.Generator().manual_seed(0)
    s_pos, s_neg = torch.rand(2, 2, 5, 7, generator=g), torch.rand(2, 2, 5, 7, generator=g)
    parts = qualiclip_loss(s_pos, s_neg, margin=0.05, consistency_weight=0.1, tolerance=0.0)
    expected = parts["l_pos"] + parts["l_neg"] + 0.1 * parts["l_cons"]
    assert float(parts["loss"]) == pytest.approx(float(expected))
    assert float(parts["l_pos"]) == pytest.approx(float(ranking_loss(s_pos, 0.05, +1)))


def test_losses_give_gradients_in_the_right_direction():
    s = torch.tensor([0.2, 0.3]).view(2, 1).requires_grad_(True)  # wrong order for L_pos
    ranking_loss(s, 0.05, +1).backward()
    assert s.grad[0, 0] < 0 < s.grad[1, 0]  # descent raises level 1, lowers level 2


def test_lr_schedule():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 10, 100, min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 10, 100, min_lr_ratio=0.1) == pytest.approx(0.1)
    values = [lr_at(s, 1.0, 10, 100) for s in range(10, 101)]
    assert all(b <= a for a, b in zip(values, values[1:], strict=False))


def test_prompt_similarities_stay_fp32_under_bf16_autocast(tiny_checkpoint):
    """The losses' margins (0.05) are a few bf16 steps wide near 0.5, so the similarities are
    computed in fp32 even inside the training step's autocast."""
    from qualiclip_train.initial_model import PromptSimilarity, initial_model, trainable_model

    scorer = PromptSimilarity(trainable_model(initial_model(str(tiny_checkpoint)))).eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = scorer(x)
        features = scorer.model.image_features(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = scorer(x)
            mixed_features = scorer.model.image_features(x)
    assert exact.dtype == mixed.dtype == torch.float32
    # The same fp32 normalise-and-project applied to the (bf16) features, by hand.
    e = torch.nn.functional.normalize(mixed_features.float(), dim=-1)
    assert torch.allclose(mixed, e @ scorer.model.prompt_features.float().t(), atol=1e-6)
    assert features.dtype == torch.float32 and not torch.equal(mixed, exact)  # bf16 did run
