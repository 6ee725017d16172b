"""The scoring module against an independent reference of the official formula (docs/method.md,
"Scoring contract"), plus loading both checkpoint formats."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qualiclip import load_model
from qualiclip.architecture import RN50_CONFIG, build_visual
from qualiclip.checkpoint import CheckpointError, write_checkpoint
from qualiclip.model import QualiCLIP
from qualiclip.prompts import PAIR_NAMES, PROMPT_PAIRS

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def reference_pool(pool, h: torch.Tensor) -> torch.Tensor:
    """The attention pool as CLIP writes it, minus the positional embedding: every token
    (mean token first) projected to queries, keys and values, full multi-head attention,
    output projection, first token. ``(N, C, h, w)`` -> ``(N, D)``."""
    n, c = h.shape[:2]
    seq = h.reshape(n, c, -1).permute(0, 2, 1)  # (N, L, C)
    seq = torch.cat([seq.mean(dim=1, keepdim=True), seq], dim=1)
    heads = pool.num_heads
    q = pool.q_proj(seq).reshape(n, -1, heads, c // heads).transpose(1, 2)
    k = pool.k_proj(seq).reshape(n, -1, heads, c // heads).transpose(1, 2)
    v = pool.v_proj(seq).reshape(n, -1, heads, c // heads).transpose(1, 2)
    attn = (q @ k.transpose(-1, -2) / math.sqrt(c // heads)).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(n, -1, c)
    return pool.c_proj(out)[:, 0]


def reference_scores(visual, prompt_features: torch.Tensor, x: torch.Tensor):
    """Written from docs/method.md alone: normalise, ResNet trunk, attention pool over the full
    sequence WITHOUT positional embedding (hand-written multi-head attention, first token),
    cosine similarity * 100 against the 14 prompts, softmax per pair, positive column."""
    x = (x - MEAN) / STD
    h = visual.act1(visual.bn1(visual.conv1(x)))
    h = visual.act2(visual.bn2(visual.conv2(h)))
    h = visual.act3(visual.bn3(visual.conv3(h)))
    h = visual.avgpool(h)
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        h = layer(h)
    emb = reference_pool(visual.attnpool, h)
    emb = emb / emb.norm(dim=-1, keepdim=True)
    text = prompt_features / prompt_features.norm(dim=-1, keepdim=True)
    logits = 100.0 * emb @ text.T
    pairs = torch.stack([logits[:, 0::2], logits[:, 1::2]], dim=-1)
    per_pair = pairs.softmax(dim=-1)[..., 0]
    return per_pair.mean(dim=1), per_pair


@pytest.fixture(scope="module")
def rn50_pair():
    torch.manual_seed(0)
    visual = build_visual(RN50_CONFIG).eval()
    prompts = F.normalize(torch.randn(14, 1024), dim=-1)
    return visual, prompts, QualiCLIP(visual, prompts).eval()


@pytest.mark.parametrize("size", [(224, 160), (257, 193), (96, 320), (333, 251)])
def test_full_rn50_matches_reference_at_non_square_sizes(rn50_pair, size):
    visual, prompts, model = rn50_pair
    torch.manual_seed(size[0])
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        ref_score, ref_pairs = reference_scores(visual, prompts, x)
        pairs = model.pair_scores(x)
        score = model(x)
    assert pairs.shape == (2, 7) and score.shape == (2,)
    torch.testing.assert_close(pairs, ref_pairs, atol=1e-5, rtol=0)
    torch.testing.assert_close(score, ref_score, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grid", [(1, 1), (7, 7), (15, 20), (3, 11)])
def test_pool_embedding_equals_full_sequence_attention(rn50_pair, grid):
    """``QualiCLIP.pool`` reorders the attention algebra (keys and values projected after
    mixing); the embedding itself, not only the scores, must equal CLIP's formulation."""
    visual, _, model = rn50_pair
    torch.manual_seed(grid[1])
    fmap = torch.randn(3, 2048, *grid).relu() * 2
    with torch.no_grad():
        ours, ref = model.pool(fmap), reference_pool(visual.attnpool, fmap)
    assert ours.shape == ref.shape == (3, 1024)
    torch.testing.assert_close(ours, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_every_attention_pool_parameter_gets_a_gradient(rn50_pair):
    """Training wraps the model in DistributedDataParallel, which fails on a parameter outside
    the graph: the reordered pool must keep the key bias (softmax-invariant) in it."""
    _, _, model = rn50_pair
    pool = model.visual.attnpool
    pool.zero_grad(set_to_none=True)
    model.pool(torch.randn(2, 2048, 2, 3)).sum().backward()
    missing = [name for name, p in pool.named_parameters()
               if p.requires_grad and p.grad is None and name != "positional_embedding"]
    pool.zero_grad(set_to_none=True)
    assert missing == []


def test_positional_embedding_is_really_skipped(rn50_pair):
    """The stock open_clip pool (with the positional table) must give other embeddings at 224,
    so the parity test above would catch an implementation that kept it."""
    visual, _, model = rn50_pair
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        ours = model.image_features(x)
        stock = visual((x - MEAN) / STD)
    assert not torch.allclose(ours, stock, atol=1e-3)
    # ... and the difference is far above the parity tolerance at the score level.
    gap = (model.pair_scores_from_features(ours) - model.pair_scores_from_features(stock)).abs()
    assert float(gap.max()) > 1e-3


def test_prompt_pairs_are_seven_distinct_pairs():
    assert len(PROMPT_PAIRS) == 7 and all(len(p) == 2 for p in PROMPT_PAIRS)
    flat = [t for p in PROMPT_PAIRS for t in p]
    assert len(set(flat)) == 14
    assert len(set(PAIR_NAMES)) == 7
    assert PROMPT_PAIRS[0] == ("Good photo.", "Bad photo.")
    assert PROMPT_PAIRS[3] == ("High-resolution image.", "Low-resolution image.")


def test_both_checkpoint_formats_load_to_the_same_scores(tiny_checkpoint, tiny_official_checkpoint):
    a = load_model(tiny_checkpoint, device="cpu")
    b = load_model(tiny_official_checkpoint, device="cpu")
    assert a.weights_info["format"] == "qualiclip" and b.weights_info["format"] == "official"
    assert len(a.weights_info["sha256"]) == 64
    x = torch.rand(3, 3, 70, 90)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)
    assert a.PAIR_NAMES == PAIR_NAMES
    assert not any(p.requires_grad for p in a.parameters())
    # The text tower is not kept once prompt embeddings are known.
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in a.state_dict())


def test_checkpoint_without_prompt_features_computes_them_with_text_tower(
        tmp_path, tiny_clip, tiny_prompt_features):
    from qualiclip.architecture import TINY_TEST_CONFIG

    path = tmp_path / "no_prompts.pth"
    torch.save({"format": "qualiclip-checkpoint", "format_version": 1,
                "model_config": TINY_TEST_CONFIG, "state_dict": tiny_clip.state_dict()}, path)
    model = load_model(path, device="cpu")
    torch.testing.assert_close(model.prompt_features, tiny_prompt_features, atol=1e-6, rtol=0)


def test_text_tower_uses_quick_gelu(tiny_clip):
    from open_clip.transformer import QuickGELU

    assert any(isinstance(m, QuickGELU) for m in tiny_clip.transformer.modules())


@pytest.mark.parametrize("size", [(1, 1), (8, 200), (31, 31), (32, 33)])
def test_images_smaller_than_stride_are_upscaled_not_crashing(tiny_model, size):
    with torch.no_grad():
        score = tiny_model(torch.rand(1, 3, *size))
    assert score.shape == (1,) and torch.isfinite(score).all()


def test_quality_map_shape_and_range(tiny_model):
    with torch.no_grad():
        qmap = tiny_model.quality_map(torch.rand(2, 3, 128, 96))
    assert qmap.shape == (2, 4, 3)
    assert float(qmap.min()) >= 0.0 and float(qmap.max()) <= 1.0


def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_clip, tiny_prompt_features):
    from qualiclip.architecture import TINY_TEST_CONFIG

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_model(garbage, device="cpu")
    foreign = tmp_path / "foreign.pth"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a QualiCLIP checkpoint"):
        load_model(foreign, device="cpu")
    truncated = tmp_path / "truncated.pth"
    state = {k: v for k, v in tiny_clip.state_dict().items() if "layer4" not in k}
    write_checkpoint(truncated, model_config=TINY_TEST_CONFIG, state_dict=state,
                     prompt_features=tiny_prompt_features)
    with pytest.raises(CheckpointError, match="missing weights"):
        load_model(truncated, device="cpu")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "absent.pth", device="cpu")
    narrow = tmp_path / "narrow_prompts.pth"  # prompt embeddings of another model's width
    write_checkpoint(narrow, model_config=TINY_TEST_CONFIG, state_dict=tiny_clip.state_dict(),
                     prompt_features=tiny_prompt_features[:, :-8])
    with pytest.raises(CheckpointError, match="prompt embeddings are .*-dimensional"):
        load_model(narrow, device="cpu")


def test_checkpoint_loading_refuses_pickled_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"format": "qualiclip-checkpoint", "x": Evil()}, handle)
    with pytest.raises(CheckpointError):
        load_model(path, device="cpu")


@pytest.mark.parametrize("official", [False, True])
@pytest.mark.parametrize("where", ["weight", "prompts"])
def test_checkpoint_with_non_finite_values_is_refused_as_corrupt(
        tmp_path, tiny_clip, tiny_prompt_features, official, where):
    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import read_checkpoint, write_official_checkpoint

    state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    prompts = tiny_prompt_features.clone()
    if where == "weight":
        state["visual.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        key = "visual.layer2.0.conv1.weight"
    else:
        prompts[3, 5] = float("inf")
        key = "prompt_features"
    path = tmp_path / "corrupt.pth"
    if official:
        write_official_checkpoint(path, state_dict=state, prompt_features=prompts)
        key = "prompts_features" if where == "prompts" else f"clip_model.{key}"
    else:
        write_checkpoint(path, model_config=TINY_TEST_CONFIG, state_dict=state,
                         prompt_features=prompts)
    message = rf"{path} is corrupt: tensor '{key}' holds non-finite values \(NaN/inf\)"
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_model(path, device="cpu")


def test_checkpoint_refusal_names_the_first_bad_tensor_and_spares_attention_masks(tmp_path):
    from qualiclip.checkpoint import refuse_non_finite

    raw = {"clip_model.transformer.attn_mask": torch.full((3, 3), -float("inf")).triu(1),
           "clip_model.a": torch.zeros(2), "clip_model.b": torch.tensor([1.0, float("nan")]),
           "clip_model.c": torch.tensor([float("inf")]), "clip_model.n": torch.arange(3)}
    with pytest.raises(CheckpointError, match="'clip_model.b'"):
        refuse_non_finite(raw, tmp_path / "x.pth")
    del raw["clip_model.b"], raw["clip_model.c"]
    refuse_non_finite(raw, tmp_path / "x.pth")  # masks and integer tensors pass


def test_a_sum_that_overflows_is_no_reason_to_refuse(tmp_path):
    """fp16 weights whose sum overflows are still finite: only a real NaN / inf is refused."""
    from qualiclip.checkpoint import refuse_non_finite

    big = torch.full((100,), 60000.0, dtype=torch.float16)
    assert not torch.isfinite(big.sum())
    refuse_non_finite({"clip_model.w": big}, tmp_path / "x.pth")
