"""Convert pyiqa's QualiCLIP+ checkpoints into ordinary checkpoints of this project's format.

QualiCLIP+ (the authors' opinion-aware variants, shipped by pyiqa as ``qualiclip+``,
``qualiclip+-clive``, ``-flive``, ``-spaq``) keeps QualiCLIP's image and text towers frozen and
learns 16 context word vectors per prompt from human quality scores. A pyiqa file
(``QualiCLIP+_koniq.pth`` ...) holds only those prompts: ``torch.load(file)["params"]`` is

* ``prompt_learner.ctx`` ``(2 P, n_ctx, width)``: one context per prompt (``(n_ctx, width)``
  when shared by all prompts);
* ``prompt_learner.token_prefix`` ``(2 P, 1, width)``: the word embedding of the start token;
* ``prompt_learner.token_suffix`` ``(2 P, context_length - 1 - n_ctx, width)``: the word
  embeddings of the tokenised ``"X X ... X <prompt>"`` after the start token and the ``n_ctx``
  placeholders (the prompt's words, the end token, padding);

with ``P = 7`` antonym pairs in :data:`~qualiclip.prompts.PROMPT_PAIRS` order (positive first)
and ``width`` the text tower's (512 for RN50). Prompt ``i``, whose text is ``name_len`` BPE
tokens, enters the text tower as ``[prefix, ctx[:n_ctx//2], suffix[:name_len],
ctx[n_ctx//2:], suffix[name_len:]]`` and its feature is the output at the end token, position
``1 + n_ctx + name_len``.

pyiqa scores with ``exp(logit_scale) / 2`` (CLIP's logit scale, 100 for QualiCLIP, divided by a
temperature of 2) where QualiCLIP's scoring contract uses a fixed 100. Only the difference of a
pair's two logits matters (a softmax over two logits is a sigmoid of their difference), so the
converter stores, per pair, two unit vectors whose difference is the text features' difference
times ``(exp(logit_scale) / 2) / 100``: every entry point, which scores with 100, then gives
pyiqa's numbers exactly, with no new field in the checkpoint format (docs/calibration.md,
"QualiCLIP+ variants").

The converted file is the base checkpoint (image and text towers, so it can be calibrated too)
with these prompt features; its ``metadata["pyiqa_plus"]`` records the source file's SHA-256,
the variant, the base's SHA-256, the scale, the learned context and both licences.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qualiclip.checkpoint import CheckpointError

#: pyiqa's temperature: its logits are CLIP's ``exp(logit_scale) * cos`` divided by this.
PYIQA_TEMPERATURE = 2.0
#: pyiqa's licence (the QualiCLIP+ prompt weights are released as pyiqa weights).
PYIQA_LICENSE = "CC BY-NC-SA 4.0"
PYIQA_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
#: The released files, pyiqa's model name for each and the dataset its prompts learned from.
VARIANTS: dict[str, tuple[str, str]] = {
    "QualiCLIP+_koniq.pth": ("qualiclip+", "KonIQ-10k"),
    "QualiCLIP+_clive.pth": ("qualiclip+-clive", "LIVE in the Wild (CLIVE)"),
    "QualiCLIP+_flive.pth": ("qualiclip+-flive", "FLIVE (PaQ-2-PiQ)"),
    "QualiCLIP+_spaq.pth": ("qualiclip+-spaq", "SPAQ"),
}
_KEYS = ("prompt_learner.ctx", "prompt_learner.token_prefix", "prompt_learner.token_suffix")
_EXPECTED = ("give a QualiCLIP+ .pth file as pyiqa releases it (QualiCLIP+_koniq.pth, "
             "QualiCLIP+_clive.pth, QualiCLIP+_flive.pth or QualiCLIP+_spaq.pth)")


@dataclass
class PlusPrompts:
    """The prompt weights of a pyiqa QualiCLIP+ file.

    Attributes:
        ctx: ``(2 P, n_ctx, width)`` learned context, one per prompt (a shared context is
            repeated).
        prefix: ``(2 P, 1, width)`` start-token embeddings.
        suffix: ``(2 P, L - 1 - n_ctx, width)`` prompt words, end token, padding.
        shared_ctx: the file stored one context for all prompts.
    """

    ctx: torch.Tensor
    prefix: torch.Tensor
    suffix: torch.Tensor
    shared_ctx: bool = False

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[1]


@dataclass
class Conversion:
    """What :func:`convert_pyiqa_plus` read and wrote."""

    output: Path
    variant: str
    dataset: str
    source_sha256: str
    base_sha256: str
    effective_scale: float
    licenses: list[dict[str, str]]
    prefix_difference: float

    def license_lines(self) -> list[str]:
        """One line per licence the converted checkpoint is under."""
        return [f"{entry['what']}: {entry['license']} ({entry['url']})" for entry in self.licenses]


def _shape(tensor: Any) -> str:
    return str(tuple(tensor.shape)) if isinstance(tensor, torch.Tensor) else type(tensor).__name__


def read_plus_prompts(path: str | os.PathLike, n_prompts: int, width: int,
                      context_length: int) -> PlusPrompts:
    """Read and check the prompt weights of a pyiqa QualiCLIP+ file.

    Args:
        n_prompts: ``2 P``, the prompts the base scores with (14).
        width, context_length: the base text tower's (512 and 77 for RN50).

    Raises:
        CheckpointError: not a torch file, not this layout (keys, shapes, dtypes), a width
            other than the base text tower's, or non-finite values; one line naming ``path``.
    """
    from qualiclip.checkpoint import load_torch_file, refuse_non_finite

    path = Path(path)
    raw = load_torch_file(path, _EXPECTED)
    params = raw.get("params") if isinstance(raw, dict) else None
    if not isinstance(params, dict):
        found = (f"keys {', '.join(map(str, list(raw)[:4]))}" if isinstance(raw, dict)
                 else type(raw).__name__)
        hint = (" (it is a QualiCLIP checkpoint already: score with it directly)"
                if isinstance(raw, dict) and ("format" in raw or "prompts_features" in raw)
                else "")
        raise CheckpointError(f"{path} is not a pyiqa QualiCLIP+ file: expected a 'params' "
                              f"dict of prompt_learner.* tensors, found {found}{hint}")
    # pyiqa strips DataParallel's "module." prefix when it loads; do the same.
    params = {str(k).removeprefix("module."): v for k, v in params.items()}
    missing = [k for k in _KEYS if k not in params]
    extra = sorted(k for k in params if k not in _KEYS)
    if missing or extra:
        what = (f"missing {', '.join(missing)}" if missing else "") + (
            "; " if missing and extra else "") + (
            f"unexpected {', '.join(extra[:3])}" if extra else "")
        raise CheckpointError(f"{path} is not a pyiqa QualiCLIP+ file ({what}): expected "
                              f"exactly {', '.join(_KEYS)}")
    ctx, prefix, suffix = (params[k] for k in _KEYS)
    for key, tensor in zip(_KEYS, (ctx, prefix, suffix)):
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise CheckpointError(f"{path}: {key} must be a floating-point tensor, got "
                                  f"{_shape(tensor)} {getattr(tensor, 'dtype', '')}".rstrip())
    refuse_non_finite(params, path)
    shared = ctx.ndim == 2
    if shared:
        ctx = ctx.unsqueeze(0).expand(n_prompts, -1, -1)
    if ctx.ndim != 3 or ctx.shape[0] != n_prompts or ctx.shape[1] < 1:
        raise CheckpointError(
            f"{path}: prompt_learner.ctx has shape {_shape(params[_KEYS[0]])}, expected "
            f"({n_prompts}, n_ctx, width) (one context per prompt) or (n_ctx, width)")
    n_ctx, found_width = ctx.shape[1], ctx.shape[2]
    if found_width != width:
        raise CheckpointError(
            f"{path}: its prompts are {found_width}-wide but the base weights' text tower is "
            f"{width}-wide: give the base these prompts were learned on (--weights, the "
            "official QualiCLIP RN50 weights for pyiqa's files)")
    expected = {"prompt_learner.token_prefix": (n_prompts, 1, width),
                "prompt_learner.token_suffix": (n_prompts, context_length - 1 - n_ctx, width)}
    for key, tensor in zip(_KEYS[1:], (prefix, suffix)):
        if tuple(tensor.shape) != expected[key]:
            raise CheckpointError(
                f"{path}: {key} has shape {_shape(tensor)}, expected {expected[key]} for "
                f"{n_prompts} prompts, {n_ctx} context tokens and a {context_length}-token "
                "text tower: not a QualiCLIP+ file for these base weights")
    return PlusPrompts(ctx.float(), prefix.float(), suffix.float(), shared_ctx=shared)


def name_lengths(prompts: list[str]) -> list[int]:
    """BPE tokens of each prompt's text (``"Good photo."`` -> 3), as CLIP's tokenizer splits it
    (start and end tokens not counted)."""
    import open_clip

    tokens = open_clip.tokenize(prompts)
    return [int(row.argmax()) - 1 for row in tokens]  # the end token has the largest id


@torch.no_grad()
def plus_text_features(clip: nn.Module, plus: PlusPrompts, prompts: list[str]) -> torch.Tensor:
    """The text features pyiqa's QualiCLIP+ computes: each prompt's words between the two halves
    of its context, through ``clip``'s frozen text tower.

    Returns:
        ``(2 P, embed_dim)`` float32, L2-normalised rows, pos/neg interleaved.
    """
    from qualiclip.architecture import encode_embedded_text

    half = plus.n_ctx // 2
    lengths = name_lengths(prompts)
    if max(lengths) >= plus.suffix.shape[1]:  # its end token would fall off the sequence
        raise CheckpointError(f"a prompt of {max(lengths)} tokens does not fit after "
                              f"{plus.n_ctx} context tokens in the text tower's context")
    rows = [torch.cat([plus.prefix[i], plus.ctx[i, :half], plus.suffix[i, :n],
                       plus.ctx[i, half:], plus.suffix[i, n:]])
            for i, n in enumerate(lengths)]
    eos = torch.tensor([1 + plus.n_ctx + n for n in lengths])
    was_training = clip.training
    clip.eval()
    features = encode_embedded_text(clip, torch.stack(rows), eos).float()
    clip.train(was_training)
    return F.normalize(features, dim=-1)


def pair_equivalent_features(features: torch.Tensor, ratio: float) -> torch.Tensor:
    """Unit prompt features that score at QualiCLIP's logit scale exactly as ``features`` score
    at ``ratio`` times it.

    A pair's score is ``softmax(s * (e.t_pos, e.t_neg))[0] = sigmoid(s * e.(t_pos - t_neg))``,
    so only ``t_pos - t_neg`` matters. For unit ``a, b`` the sum ``a + b`` is orthogonal to
    ``d = a - b``; ``m +- ratio * d / 2`` with ``m`` along ``a + b`` of length
    ``sqrt(1 - ratio^2 |d|^2 / 4)`` are unit vectors whose difference is ``ratio * d``.

    Args:
        features: ``(2 P, D)`` L2-normalised, pos/neg interleaved.
        ratio: wanted scale / QualiCLIP's scale, in ``(0, 1]`` for any features (larger only
            while ``ratio * |d| <= 2``).

    Returns:
        ``(2 P, D)`` float32 unit rows, pos/neg interleaved.
    """
    pos, neg = features.float()[0::2], features.float()[1::2]
    diff = ratio * (pos - neg) / 2
    half = diff.norm(dim=-1, keepdim=True)
    if bool((half > 1).any()):
        raise CheckpointError(f"logit scale ratio {ratio:g} is too large to express with unit "
                              "prompt features")
    mid = pos + neg
    # a pair of opposite prompts has no sum direction: any unit vector orthogonal to d serves
    for i in (mid.norm(dim=-1) < 1e-6).nonzero().flatten().tolist():
        axis = torch.zeros_like(pos[i])
        axis[int(diff[i].abs().argmin())] = 1.0
        mid[i] = axis - (axis @ diff[i]) / (diff[i] @ diff[i]).clamp_min(1e-30) * diff[i]
    mid = F.normalize(mid, dim=-1) * (1 - half ** 2).clamp_min(0).sqrt()
    out = torch.empty_like(features, dtype=torch.float32)
    out[0::2], out[1::2] = mid + diff, mid - diff
    return out


def variant_of(path: Path) -> tuple[str, str]:
    """``(pyiqa model name, dataset)`` for a released file name, ``("qualiclip+ (unknown
    variant)", "unknown")`` for another name."""
    return VARIANTS.get(path.name, ("qualiclip+ (unknown variant)", "unknown"))


def convert_pyiqa_plus(source: str | os.PathLike, weights: str | os.PathLike | None,
                       output: str | os.PathLike, variant: str | None = None) -> Conversion:
    """Convert a pyiqa QualiCLIP+ file into a checkpoint of this project's format that every
    entry point (library, CLI, plugin, zoo source, ONNX export, calibration) loads as it is.

    Args:
        source: the pyiqa file (``QualiCLIP+_koniq.pth`` ...).
        weights: the base QualiCLIP weights, as :func:`qualiclip.load_model` takes them
            (default: ``$QUALICLIP_WEIGHTS``, else the official release); they need the text
            tower. pyiqa's files were learned on the official release.
        output: where to write the converted checkpoint.
        variant: the variant's name for the provenance (default: from the file name).

    Raises:
        CheckpointError: either file unusable (one line naming it and what to do).
    """
    import open_clip

    from qualiclip.architecture import build_clip
    from qualiclip.checkpoint import check_prompt_features, read_checkpoint, write_checkpoint
    from qualiclip.constants import LOGIT_SCALE
    from qualiclip.loading import _load_state
    from qualiclip.prompts import PROMPT_PAIRS, flat_prompts
    from qualiclip.weights import OFFICIAL, resolve_weights, sha256_file, which_weights

    source = Path(source)
    base_path, base_name = resolve_weights(which_weights(weights), progress=True)
    base = read_checkpoint(base_path)
    config = base.model_config
    if "text_cfg" not in config or "token_embedding.weight" not in base.state_dict:
        raise CheckpointError(
            f"{base_path} has no text tower (only fixed prompt features), and QualiCLIP+ "
            "prompts run through one: give the official QualiCLIP weights as --weights")
    if tuple(tuple(p) for p in base.prompt_pairs) != PROMPT_PAIRS:
        raise CheckpointError(f"{base_path} scores with other prompts than QualiCLIP's 7 pairs; "
                              "QualiCLIP+ prompts extend those: give the official weights")
    prompts = flat_prompts(PROMPT_PAIRS)
    text = config["text_cfg"]
    plus = read_plus_prompts(source, len(prompts), int(text["width"]),
                             int(text.get("context_length") or 77))
    clip = build_clip(config)
    _load_state(clip, base.state_dict, str(base_path), prefix="")
    features = plus_text_features(clip, plus, prompts)

    # pyiqa multiplies by CLIP's own exp(logit_scale) (100 in QualiCLIP's file) and divides by
    # its temperature; QualiCLIP's contract fixes 100. Express the ratio in the features.
    log_scale = base.state_dict.get("logit_scale")
    clip_scale = (math.exp(float(log_scale)) if isinstance(log_scale, torch.Tensor)
                  else LOGIT_SCALE)
    effective = clip_scale / PYIQA_TEMPERATURE
    stored = pair_equivalent_features(features, effective / LOGIT_SCALE)
    check_prompt_features(stored, f"{source}: the converted prompt features")

    # pyiqa built token_prefix from its base's word table; a different base shows here.
    sos = clip.token_embedding.weight[int(open_clip.tokenize([""])[0, 0])]
    prefix_difference = float((plus.prefix - sos.detach().float()).abs().max())

    name, dataset = variant_of(source)
    licenses = [
        {"what": "QualiCLIP+ prompt weights, released with pyiqa", "license": PYIQA_LICENSE,
         "url": PYIQA_LICENSE_URL},
        {"what": "QualiCLIP weights, image and text towers", "license": OFFICIAL.license,
         "url": OFFICIAL.license_url},
    ]
    source_sha = sha256_file(source)
    base_sha = sha256_file(base_path)
    metadata = dict(base.metadata)
    for key in ("created", "qualiclip_version"):
        metadata.pop(key, None)
    metadata["license"] = " + ".join(f"{e['license']} ({e['what']})" for e in licenses)
    metadata["pyiqa_plus"] = {
        "variant": variant or name, "dataset": dataset, "source_file": source.name,
        "source_sha256": source_sha, "base_weights": base_name, "base_sha256": base_sha,
        "n_ctx": plus.n_ctx, "shared_context": plus.shared_ctx,
        "clip_logit_scale": clip_scale, "temperature": PYIQA_TEMPERATURE,
        "effective_scale": effective,
        "features": (f"per pair, unit vectors whose difference is the text features' "
                     f"difference x {effective / LOGIT_SCALE:g}, so the fixed scale "
                     f"{LOGIT_SCALE:g} scores as pyiqa's {effective:g}"),
        "text_features": features.clone(),
        "context": (plus.ctx[0] if plus.shared_ctx else plus.ctx).contiguous().clone(),
        "prefix_difference": prefix_difference, "licenses": licenses,
    }
    written = write_checkpoint(output, model_config=config, state_dict=base.state_dict,
                               prompt_features=stored, prompt_pairs=PROMPT_PAIRS,
                               training_config=base.training_config, metadata=metadata)
    return Conversion(output=written, variant=variant or name, dataset=dataset,
                      source_sha256=source_sha, base_sha256=base_sha, effective_scale=effective,
                      licenses=licenses, prefix_difference=prefix_difference)
