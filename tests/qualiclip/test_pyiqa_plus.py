"""pyiqa's QualiCLIP+ checkpoints, converted (qualiclip.pyiqa_plus, ``qualiclip
convert-pyiqa``).

No real QualiCLIP+ file can be downloaded here, so the tests write synthetic files of exactly
pyiqa's layout from the tiny random model of tests/conftest.py: a random learned context, and
the start token / prompt words / end token / padding as the tiny model's own word embeddings of
the tokenised ``"X X ... X <prompt>"`` (what pyiqa's PromptLearner stores). The expected scores
come from :func:`pyiqa_reference`, written here from pyiqa's forward pass (prompt assembly,
full 77-token text tower, CLIP's own logit scale divided by the temperature 2, softmax per
pair, mean) and open_clip's own image tower with its positional embedding zeroed (pyiqa's
``pos_embedding=False``): none of it calls the converter.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from qualiclip import load_model, score_images
from qualiclip.checkpoint import CheckpointError, read_checkpoint, write_official_checkpoint
from qualiclip.cli import main
from qualiclip.constants import CLIP_MEAN, CLIP_STD
from qualiclip.prompts import PAIR_NAMES, flat_prompts
from qualiclip.pyiqa_plus import PYIQA_LICENSE, convert_pyiqa_plus
from qualiclip.weights import OFFICIAL, sha256_file
from tests.conftest import make_image

N_CTX = 16
PROMPTS = flat_prompts()


def _tokens(n_ctx: int) -> torch.Tensor:
    import open_clip

    return open_clip.tokenize([" ".join(["X"] * n_ctx) + " " + p for p in PROMPTS])


def write_plus_file(path: Path, clip: torch.nn.Module, *, shared: bool = False, seed: int = 0,
                    module_prefix: bool = False, n_ctx: int = N_CTX) -> Path:
    """A file of pyiqa's QualiCLIP+ layout for ``clip``: random context (one per prompt, or
    one shared), prefix and suffix from ``clip``'s own word table."""
    with torch.no_grad():
        embedded = clip.token_embedding(_tokens(n_ctx))
    width = embedded.shape[-1]
    g = torch.Generator().manual_seed(seed)
    ctx = 0.1 * torch.randn((n_ctx, width) if shared else (len(PROMPTS), n_ctx, width),
                            generator=g)
    params = {"prompt_learner.ctx": ctx,
              "prompt_learner.token_prefix": embedded[:, :1].clone(),
              "prompt_learner.token_suffix": embedded[:, 1 + n_ctx:].clone()}
    if module_prefix:  # as saved from DataParallel; pyiqa strips it
        params = {f"module.{k}": v for k, v in params.items()}
    torch.save({"params": params}, path)
    return path


@torch.no_grad()
def pyiqa_reference(clip: torch.nn.Module, plus_file: Path,
                    images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pyiqa's QualiCLIP+ forward on ``(N, 3, 64, 64)`` images in [0, 1]: ``(N,)`` scores and
    ``(N, 7)`` pair scores."""
    import open_clip

    params = {k.removeprefix("module."): v
              for k, v in torch.load(plus_file, weights_only=True)["params"].items()}
    ctx = params["prompt_learner.ctx"]
    prefix, suffix = params["prompt_learner.token_prefix"], params["prompt_learner.token_suffix"]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(len(PROMPTS), -1, -1)
    n_ctx = ctx.shape[1]
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    name_lens = [len(tokenizer.encode(p)) for p in PROMPTS]
    sequences = []
    for i, name_len in enumerate(name_lens):
        sequences.append(torch.cat([prefix[i:i + 1], ctx[i:i + 1, :n_ctx // 2],
                                    suffix[i:i + 1, :name_len], ctx[i:i + 1, n_ctx // 2:],
                                    suffix[i:i + 1, name_len:]], dim=1))
    x = torch.cat(sequences) + clip.positional_embedding
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
    text = x[torch.arange(x.shape[0]), _tokens(n_ctx).argmax(dim=-1)] @ clip.text_projection

    visual = copy.deepcopy(clip.visual)
    visual.attnpool.positional_embedding.zero_()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    image = visual((images - mean) / std)
    image = image / image.norm(dim=-1, keepdim=True)
    text = text / text.norm(dim=-1, keepdim=True)
    logits = (clip.logit_scale.exp() * image @ text.t()).reshape(len(images), -1, 2)
    probs = torch.exp(logits / 2)
    pairs = (probs / probs.sum(dim=-1, keepdim=True))[..., 0]
    return pairs.mean(dim=1), pairs


@pytest.fixture(scope="module", params=[math.log(100.0), math.log(1 / 0.07)],
                ids=["scale100", "scale14"])
def base(request, tmp_path_factory, tiny_clip, tiny_prompt_features):
    """The tiny model with a given CLIP logit scale, in the official flat format (whole CLIP):
    100 as QualiCLIP's file, and open_clip's initial 1/0.07 (a converter assuming 50 fails)."""
    clip = copy.deepcopy(tiny_clip)
    with torch.no_grad():
        clip.logit_scale.fill_(request.param)
    path = tmp_path_factory.mktemp("base") / "qualiclip_tiny.pth"
    write_official_checkpoint(path, state_dict=clip.state_dict(),
                              prompt_features=tiny_prompt_features)
    return clip, path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[list[Path], torch.Tensor]:
    """64x64 PNGs (the tiny tower's native grid, so open_clip's pool takes them) and their
    pixels in [0, 1]."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [make_image(folder / f"p{i}.png", size=(64, 64), seed=i) for i in range(6)]
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"),
                                                      dtype=np.float32) / 255).permute(2, 0, 1)
                          for p in paths])
    return paths, pixels


@pytest.mark.parametrize("shared,module_prefix", [(False, False), (False, True), (True, False)],
                         ids=["per-prompt", "module-prefix", "shared-context"])
def test_converted_checkpoint_scores_as_pyiqa(tmp_path, base, photos, shared, module_prefix):
    clip, base_path = base
    plus = write_plus_file(tmp_path / "QualiCLIP+_koniq.pth", clip, shared=shared,
                           module_prefix=module_prefix)
    out = tmp_path / "plus.pth"
    convert_pyiqa_plus(plus, base_path, out)

    paths, pixels = photos
    expected, expected_pairs = pyiqa_reference(clip, plus, pixels)
    results = score_images(paths, model=load_model(out, device="cpu"), precision="fp32",
                           backend="torch", num_workers=0, progress=False)
    scores = torch.tensor([r.score for r in results])
    pairs = torch.tensor([[r.pair_scores[n] for n in PAIR_NAMES] for r in results])
    assert (scores - expected).abs().max() < 1e-5
    assert (pairs - expected_pairs).abs().max() < 1e-5
    # not a vacuous match: the variant scores differently from its base
    base_scores = score_images(paths, model=load_model(base_path, device="cpu"),
                               precision="fp32", backend="torch", num_workers=0,
                               progress=False)
    assert max(abs(a.score - b.score) for a, b in zip(results, base_scores)) > 1e-3


def test_onnx_backend_scores_the_converted_checkpoint_as_pyiqa(tmp_path, base, photos):
    """The exported graph is the image tower alone, so the converted prompts serve it too."""
    pytest.importorskip("onnxruntime")
    clip, base_path = base
    plus = write_plus_file(tmp_path / "QualiCLIP+_flive.pth", clip, seed=3)
    out = convert_pyiqa_plus(plus, base_path, tmp_path / "flive.pth").output
    paths, pixels = photos
    expected, _ = pyiqa_reference(clip, plus, pixels)
    results = score_images(paths, model=load_model(out, device="cpu"), precision="fp32",
                           backend="onnxruntime", num_workers=0, progress=False)
    assert (torch.tensor([r.score for r in results]) - expected).abs().max() < 1e-4


def test_provenance_and_licences(tmp_path, base):
    clip, base_path = base
    plus = write_plus_file(tmp_path / "QualiCLIP+_spaq.pth", clip)
    out = tmp_path / "spaq.pth"
    result = convert_pyiqa_plus(plus, base_path, out)
    checkpoint = read_checkpoint(out)
    record = checkpoint.metadata["pyiqa_plus"]
    assert record["source_sha256"] == sha256_file(plus) == result.source_sha256
    assert record["base_sha256"] == sha256_file(base_path)
    assert record["variant"] == "qualiclip+-spaq" and record["n_ctx"] == N_CTX
    assert record["prefix_difference"] == 0.0  # its prefix is the base's start token
    licences = {entry["license"] for entry in record["licenses"]}
    assert licences == {PYIQA_LICENSE, OFFICIAL.license}
    # the image and text towers are the base's, so it can be calibrated like the base
    assert {k for k in checkpoint.state_dict} == set(clip.state_dict())
    info = load_model(out, device="cpu").weights_info
    assert PYIQA_LICENSE in info["license"] and OFFICIAL.license in info["license"]


def test_cli_converts_and_scoring_shows_the_licences(tmp_path, base, photos):
    clip, base_path = base
    plus = write_plus_file(tmp_path / "QualiCLIP+_clive.pth", clip)
    out = tmp_path / "clive.pth"
    result = CliRunner().invoke(main, ["convert-pyiqa", str(plus), "--weights", str(base_path),
                                       "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "qualiclip+-clive" in result.stdout
    assert f"source sha256: {sha256_file(plus)}" in result.stdout
    assert PYIQA_LICENSE in result.stdout and OFFICIAL.license in result.stdout
    paths, _ = photos
    scored = CliRunner().invoke(main, ["score", str(paths[0]), "--weights", str(out),
                                       "--precision", "fp32", "--no-progress", "--workers", "0"])
    assert scored.exit_code == 0, scored.output
    assert f"weights licence: {PYIQA_LICENSE}" in scored.stderr


def _edited(path: Path, clip, edit) -> Path:
    write_plus_file(path, clip)
    raw = torch.load(path, weights_only=True)
    edit(raw["params"])
    torch.save(raw, path)
    return path


def _width(params):
    params["prompt_learner.ctx"] = torch.zeros(len(PROMPTS), N_CTX, 32)


def _suffix(params):
    params["prompt_learner.token_suffix"] = params["prompt_learner.token_suffix"][:, :-1]


LAYOUTS = {
    "missing key": (lambda p: p.pop("prompt_learner.token_prefix"), "missing "
                    "prompt_learner.token_prefix"),
    "extra key": (lambda p: p.update({"prompt_learner.meta_net": torch.zeros(3)}),
                  "unexpected prompt_learner.meta_net"),
    "other width": (_width, "32-wide but the base weights' text tower is 64-wide"),
    "short suffix": (_suffix, "prompt_learner.token_suffix has shape (14, 59, 64), expected "
                     "(14, 60, 64)"),
    "wrong prompt count": (lambda p: p.update({"prompt_learner.ctx": torch.zeros(12, N_CTX, 64)}),
                           "prompt_learner.ctx has shape (12, 16, 64)"),
    "integer ctx": (lambda p: p.update({"prompt_learner.ctx": torch.zeros(14, N_CTX, 64,
                                                                          dtype=torch.long)}),
                    "prompt_learner.ctx must be a floating-point tensor"),
    "NaN": (lambda p: p["prompt_learner.ctx"].view(-1)[5].fill_(float("nan")),
            "is corrupt: tensor 'prompt_learner.ctx' holds non-finite values"),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_wrong_layouts_are_refused_in_one_line(tmp_path, base, case):
    clip, base_path = base
    edit, expected = LAYOUTS[case]
    plus = _edited(tmp_path / "QualiCLIP+_koniq.pth", clip, edit)
    with pytest.raises(CheckpointError) as error:
        convert_pyiqa_plus(plus, base_path, tmp_path / "out.pth")
    message = str(error.value)
    assert expected in message and str(plus) in message and "\n" not in message
    assert not (tmp_path / "out.pth").exists()


def test_other_files_are_refused_in_one_line(tmp_path, base):
    _, base_path = base
    photo = make_image(tmp_path / "photo.jpg")
    cases = {photo: "it looks like a JPEG image): give a QualiCLIP+ .pth file",
             base_path: "is not a pyiqa QualiCLIP+ file: expected a 'params' dict",
             tmp_path / "missing.pth": "weights file not found"}
    for path, expected in cases.items():
        result = CliRunner().invoke(main, ["convert-pyiqa", str(path), "--weights",
                                           str(base_path), "-o", str(tmp_path / "o.pth")])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.output
    assert "score with it directly" in CliRunner().invoke(
        main, ["convert-pyiqa", str(base_path), "--weights", str(base_path), "-o",
               str(tmp_path / "o.pth")]).output


def test_base_without_text_tower_is_refused(tmp_path, base, tiny_checkpoint):
    clip, _ = base
    from qualiclip.architecture import TINY_TEST_CONFIG
    from qualiclip.checkpoint import write_checkpoint

    visual_only = write_checkpoint(
        tmp_path / "visual.pth", model_config={k: v for k, v in TINY_TEST_CONFIG.items()
                                               if k != "text_cfg"},
        state_dict={k: v for k, v in clip.state_dict().items() if k.startswith("visual.")},
        prompt_features=read_checkpoint(tiny_checkpoint).prompt_features)
    plus = write_plus_file(tmp_path / "QualiCLIP+_koniq.pth", clip)
    with pytest.raises(CheckpointError, match="has no text tower"):
        convert_pyiqa_plus(plus, visual_only, tmp_path / "out.pth")


def test_pyiqa_file_given_as_weights_says_to_convert_it(tmp_path, base):
    clip, _ = base
    plus = write_plus_file(tmp_path / "QualiCLIP+_koniq.pth", clip, module_prefix=True)
    with pytest.raises(CheckpointError) as error:
        load_model(plus, device="cpu")
    assert "qualiclip convert-pyiqa" in str(error.value) and "\n" not in str(error.value)
