"""Calibrate a QualiCLIP model to one person's taste from their ratings (QualiCLIP+-style).

The image tower stays frozen: every rated image is embedded **once** (fp32, native resolution,
exactly as ``qualiclip score`` embeds it) and the embeddings are reused by every fold and the
final fit. What is learned is a CoOp-style context: ``n_ctx`` word vectors shared by all the
antonym prompts, put in front of each prompt's words (``[SOS] ctx_1 .. ctx_n Good photo. [EOS]``)
and run through the checkpoint's own frozen text tower. The result is new prompt features, so a
calibrated checkpoint is an ordinary checkpoint of this project's format (same image tower, same
pair names, new ``prompt_features``) that every entry point loads unchanged.

Whether it helps is measured by k-fold cross-validation over the rated images (an image rated
twice counts once, with its mean rating, so no image is ever on both sides of a fold): on each
fold the context is learned from the other folds only, and the base model's and the calibrated
model's SRCC / PLCC with the held-out ratings are compared. Without a clear gain no checkpoint is
written unless asked (``force``).

Loss, optimiser and schedule follow QualiCLIP+ in pyiqa (Adam, lr 2e-3, cosine decay, MSE +
PLCC loss); ratings are mapped to [0, 1] with the training images' own min / max.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qualiclip.architecture import encode_embedded_text
from qualiclip.constants import LOGIT_SCALE

#: Fewest distinct rated images calibration accepts: with 5 folds that leaves 4 held-out images
#: per fold, the least a rank correlation means anything on.
MIN_IMAGES = 20
#: Default folds of the cross-validation.
DEFAULT_FOLDS = 5
#: Default context length; 4 words start from "a photo of a" (CoOp's initialisation), so the
#: untrained prompts read "a photo of a Good photo." and score close to the base model.
DEFAULT_N_CTX = 4
_CTX_INIT = "a photo of a"
#: The mean held-out SRCC must rise by at least this much for calibration to count as better.
DEFAULT_MIN_GAIN = 0.02
#: Rating words accepted besides numbers (good/bad labels), mapped to 1 / 0.
LABELS = {"good": 1.0, "bad": 0.0, "yes": 1.0, "no": 0.0}
_PATH_COLUMNS = ("path", "filepath", "image", "file", "filename")
_RATING_COLUMNS = ("rating", "score", "mos", "label", "quality")


class CalibrationError(ValueError):
    """Ratings or weights calibration cannot use; the message is one line saying what to do."""


# --- ratings --------------------------------------------------------------------------------
def read_ratings(csv_path: str | os.PathLike,
                 root: str | os.PathLike | None = None) -> list[tuple[Path, float]]:
    """``(image path, rating)`` rows of a CSV with a header naming a path column (``path``,
    ``filepath``, ``image``, ``file``) and a rating column (``rating``, ``score``, ``mos``,
    ``label``). Ratings are numbers (higher = better, any scale: 1-5, 0-100) or the labels
    ``good`` / ``bad``. Relative paths are resolved against ``root`` (default: the CSV's folder).

    Raises:
        CalibrationError: missing file or columns, or a rating that is neither (names the line).
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise CalibrationError(f"ratings file not found: {csv_path}")
    base = Path(root) if root is not None else csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if not rows:
        raise CalibrationError(f"{csv_path} is empty: give a CSV with columns path,rating")
    header = [c.strip().lower() for c in rows[0]]
    p_col = next((header.index(c) for c in _PATH_COLUMNS if c in header), None)
    r_col = next((header.index(c) for c in _RATING_COLUMNS if c in header), None)
    if p_col is None or r_col is None:
        raise CalibrationError(f"{csv_path}: the first line must name the columns, e.g. "
                               f"'path,rating' (found {','.join(header)[:80]!r})")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        text = row[r_col].strip() if r_col < len(row) else ""
        value = LABELS.get(text.lower())
        if value is None:
            try:
                value = float(text)
            except ValueError:
                value = math.nan
        if not math.isfinite(value):
            raise CalibrationError(f"{csv_path}:{line}: rating {text!r} is not a number or "
                                   "good/bad: fix or remove the line")
        path = Path(row[p_col].strip()).expanduser()
        out.append((path if path.is_absolute() else base / path, value))
    return out


def mean_rating_per_image(ratings: Sequence[tuple[Path | str, float]]
                          ) -> tuple[list[Path], list[float]]:
    """Unique images (first-seen order) and their mean rating: an image rated twice must not
    land in a training fold and its held-out fold at once."""
    sums: dict[Path, list[float]] = {}
    for path, value in ratings:
        sums.setdefault(Path(path), []).append(float(value))
    return list(sums), [sum(v) / len(v) for v in sums.values()]


def check_ratings(values: Sequence[float], folds: int = DEFAULT_FOLDS) -> None:
    """Refuse ratings calibration cannot learn from, in one line each: fewer than
    :data:`MIN_IMAGES` distinct images (or fewer than 4 per fold), or all equal.

    Args:
        values: one (mean) rating per distinct image.
    """
    needed = max(MIN_IMAGES, 4 * folds)
    if len(values) < needed:
        raise CalibrationError(
            f"too few ratings: {len(values)} rated image(s), calibration needs at least "
            f"{needed} ({folds} folds of 4 or more); about 50 give a useful result")
    if max(values) == min(values):
        raise CalibrationError(
            f"all {len(values)} ratings are equal ({values[0]:g}): calibration learns from "
            "differences, so rate some images better and some worse")


def kfold_indices(n: int, folds: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``folds`` ``(train, test)`` index lists over ``range(n)``: a seeded shuffle cut into
    near-equal test folds; each index is held out exactly once and never trains its own fold."""
    if not 2 <= folds <= n:
        raise CalibrationError(f"folds must be in 2..{n} (the number of rated images), "
                               f"got {folds}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    tests = [sorted(order[i::folds]) for i in range(folds)]
    return [([i for i in range(n) if i not in set(test)], test) for test in tests]


# --- features -------------------------------------------------------------------------------
def image_features(model: nn.Module, paths: Sequence[Path],
                   cache: str | os.PathLike | None = None) -> torch.Tensor:
    """``(N, D)`` float32 unnormalised embeddings of ``paths`` from the frozen image tower, in
    fp32 at native resolution through the scoring engine (the same pixels and numbers as
    ``qualiclip score``). With ``cache`` (a file), embeddings already computed for the same
    weights and an unchanged file (size, mtime) are read from it and new ones added.

    Raises:
        CalibrationError: an image cannot be read (names it).
    """
    from qualiclip.inference import group_by_shape, make_scorer, read_image

    sha = getattr(model, "weights_info", {}).get("sha256", "")
    stored: dict[str, torch.Tensor] = {}
    cache_path = Path(cache) if cache is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            raw = torch.load(cache_path, map_location="cpu", weights_only=True)
            if isinstance(raw, dict) and raw.get("weights_sha256") == sha:
                stored = dict(raw.get("features") or {})
        except Exception:  # noqa: BLE001 - a broken cache is recomputed, never trusted
            stored = {}

    def key(path: Path) -> str:
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"

    keys = []
    for path in paths:
        try:
            keys.append(key(path))
        except OSError as exc:
            raise CalibrationError(f"{path}: cannot read it ({exc.strerror or exc}); fix the "
                                   "path or remove its rating") from exc
    scorer = make_scorer(model, precision="fp32", backend="torch", keep_features=True,
                         progress=False)
    todo = [i for i, k in enumerate(keys) if k not in stored]
    for start in range(0, len(todo), 16):  # a few decoded images in memory at a time
        decoded = [read_image(paths[i], index=i) for i in todo[start:start + 16]]
        for image in decoded:
            if image.error is not None:
                raise CalibrationError(f"{paths[image.index]}: {image.error}; fix the file or "
                                       "remove its rating")
        for group in group_by_shape(decoded):
            for scored in scorer.score(group):
                if scored.features is None:
                    raise CalibrationError(f"{paths[scored.image.index]}: {scored.error}")
                stored[keys[scored.image.index]] = scored.features.float().clone()
    if cache_path is not None and todo:
        from qualiclip.checkpoint import atomic_torch_save

        atomic_torch_save({"weights_sha256": sha, "features": stored}, cache_path)
    return torch.stack([stored[k] for k in keys])


# --- learnable prompt context ---------------------------------------------------------------
class PromptContext(nn.Module):
    """CoOp-style prompts: ``n_ctx`` learnable word vectors (shared by all prompts) after the
    start token, then each prompt's own words, through a frozen open_clip text tower.

    Args:
        clip: an open_clip ``CLIP`` whose text tower is used (never trained).
        prompts: the ``2 P`` prompt texts, pos/neg interleaved.
        n_ctx: learnable context words.
        init: a ``(n_ctx, width)`` starting context; default: the word embeddings of
            "a photo of a" when ``n_ctx == 4``, else small random vectors (std 0.02), as CoOp.
    """

    def __init__(self, clip: nn.Module, prompts: Sequence[str], n_ctx: int = DEFAULT_N_CTX,
                 init: torch.Tensor | None = None) -> None:
        super().__init__()
        import open_clip

        if n_ctx < 1:
            raise CalibrationError(f"n_ctx must be >= 1, got {n_ctx}")
        placeholder = " ".join(["X"] * n_ctx)
        tokens = open_clip.tokenize([f"{placeholder} {p}" for p in prompts],
                                    context_length=clip.context_length)
        # The text tower is causal: the end token's output never sees the padding after it,
        # so the sequence is cut just past the longest prompt (77 -> ~12 positions).
        self.length = int(tokens.argmax(dim=-1).max()) + 1
        self.register_buffer("tokens", tokens[:, :self.length].clone(), persistent=False)
        self.clip = clip
        clip.requires_grad_(False)
        width = clip.token_embedding.weight.shape[1]
        if init is None:
            if n_ctx == len(_CTX_INIT.split()):
                init_tokens = open_clip.tokenize([_CTX_INIT])[0, 1:1 + n_ctx]
                init = clip.token_embedding(init_tokens).detach().clone()
            else:
                g = torch.Generator().manual_seed(0)
                init = 0.02 * torch.randn(n_ctx, width, generator=g)
        if tuple(init.shape) != (n_ctx, width):
            raise CalibrationError(f"context must be ({n_ctx}, {width}), got {tuple(init.shape)}")
        self.context = nn.Parameter(init.float().clone())

    @property
    def n_ctx(self) -> int:
        return self.context.shape[0]

    def forward(self) -> torch.Tensor:
        """``(2 P, D)`` L2-normalised prompt features for the current context."""
        clip = self.clip
        embedded = clip.token_embedding(self.tokens)
        ctx = self.context.unsqueeze(0).expand(embedded.shape[0], -1, -1)
        x = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + self.n_ctx:]], dim=1)
        x = encode_embedded_text(clip, x, self.tokens.argmax(dim=-1))
        return F.normalize(x.float(), dim=-1)


def scores_from(features: torch.Tensor, prompt_features: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` image embeddings and ``(2 P, D)`` normalised prompt features -> ``(N,)``
    scores in [0, 1], differentiable in the prompt features. The same formula as
    :meth:`qualiclip.model.QualiCLIP.pair_scores_from_features` (the test suite checks that a
    written checkpoint scores exactly these values)."""
    logits = LOGIT_SCALE * F.normalize(features.float(), dim=-1) @ prompt_features.t()
    return logits.unflatten(-1, (prompt_features.shape[0] // 2, 2)).softmax(-1)[..., 0].mean(-1)


def _plcc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p, t = pred - pred.mean(), target - target.mean()
    return 1 - (p * t).sum() / (p.norm() * t.norm() + 1e-8)


def fit_context(learner: PromptContext, features: torch.Tensor, ratings: torch.Tensor,
                steps: int = 200, lr: float = 2e-3) -> torch.Tensor:
    """Learn ``learner``'s context from ``(N, D)`` embeddings and ``(N,)`` ratings (any scale;
    mapped to [0, 1] with their own min / max). Adam, cosine-decayed ``lr``, loss MSE + (1 -
    PLCC), full batch. Returns the ``(2 P, D)`` prompt features it ends with."""
    low, high = float(ratings.min()), float(ratings.max())
    target = (ratings.float() - low) / (high - low)
    optimiser = torch.optim.Adam([learner.context], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps))
    for _ in range(steps):
        pred = scores_from(features, learner())
        loss = F.mse_loss(pred, target) + _plcc_loss(pred, target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        return learner()


# --- the whole procedure --------------------------------------------------------------------
@dataclass
class CalibrationReport:
    """What calibration measured and wrote.

    Attributes:
        folds: one dict per fold: ``n_train``, ``n_test``, ``before`` and ``after`` (each
            ``{"srcc", "plcc"}`` on the held-out images).
        before, after: the folds' mean SRCC / PLCC of the base and the calibrated model.
        improved: the mean held-out SRCC rose by at least ``min_gain``.
        n_ratings, n_images: rows given; distinct images (a repeated image's ratings averaged).
        base_sha256: SHA-256 of the base weights file.
        written: where the checkpoint was written, or ``None``.
    """

    folds: list[dict[str, Any]]
    before: dict[str, float]
    after: dict[str, float]
    improved: bool
    n_ratings: int
    n_images: int
    base_sha256: str
    min_gain: float
    written: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """The cross-validated before/after table, one line per fold and a mean line."""
        lines = [f"{'fold':>5} {'images':>6} {'SRCC before':>12} {'SRCC after':>11} "
                 f"{'PLCC before':>12} {'PLCC after':>11}"]
        for i, fold in enumerate(self.folds, start=1):
            lines.append(f"{i:>5} {fold['n_test']:>6} {fold['before']['srcc']:>12.3f} "
                         f"{fold['after']['srcc']:>11.3f} {fold['before']['plcc']:>12.3f} "
                         f"{fold['after']['plcc']:>11.3f}")
        lines.append(f"{'mean':>5} {self.n_images:>6} {self.before['srcc']:>12.3f} "
                     f"{self.after['srcc']:>11.3f} {self.before['plcc']:>12.3f} "
                     f"{self.after['plcc']:>11.3f}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: better or not, by how much, and what was written."""
        gain = self.after["srcc"] - self.before["srcc"]
        if self.improved:
            head = f"calibration beats the base model: held-out SRCC {gain:+.3f}"
        else:
            head = (f"calibration does not beat the base model: held-out SRCC {gain:+.3f} "
                    f"(needs {self.min_gain:+.3f})")
        tail = (f"; written to {self.written}" if self.written is not None
                else "; no checkpoint written (force to write one anyway)")
        return head + tail

    def as_metadata(self) -> dict[str, Any]:
        """The provenance stored in a calibrated checkpoint's ``metadata['calibration']``."""
        return {"base_sha256": self.base_sha256, "n_ratings": self.n_ratings,
                "n_images": self.n_images, "folds": self.folds, "before": self.before,
                "after": self.after, "improved": self.improved, "min_gain": self.min_gain,
                **self.settings}


def _correlations(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    from qualiclip.mos import correlations

    if float(pred.max() - pred.min()) == 0 or float(target.max() - target.min()) == 0:
        return {"srcc": 0.0, "plcc": 0.0}  # undefined correlation: no agreement shown
    with warnings.catch_warnings():  # the logistic fit may overflow exp() on a few points
        warnings.simplefilter("ignore", RuntimeWarning)
        c = correlations(pred.tolist(), target.tolist())
    return {"srcc": round(c["srcc"], 6), "plcc": round(c["plcc"], 6)}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(sum(r[k] for r in rows) / len(rows), 6) for k in ("srcc", "plcc")}


def calibrate(
    ratings: Sequence[tuple[str | os.PathLike, float]] | str | os.PathLike,
    weights: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    *,
    folds: int = DEFAULT_FOLDS,
    n_ctx: int = DEFAULT_N_CTX,
    steps: int = 200,
    lr: float = 2e-3,
    min_gain: float = DEFAULT_MIN_GAIN,
    force: bool = False,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    provenance: dict[str, Any] | None = None,
) -> CalibrationReport:
    """Cross-validate prompt-context calibration on ``ratings`` and, when it beats the base
    model (or ``force``), fit it on all ratings and write a calibrated checkpoint to ``output``.

    Args:
        ratings: ``(image path, rating)`` pairs (higher = better, any scale, or 1 / 0 for
            good / bad) or a CSV file for :func:`read_ratings`.
        weights: the base weights, as :func:`qualiclip.load_model` takes them; they need the
            text tower (the official release has it).
        output: where to write the checkpoint (``None``: report only).
        folds: cross-validation folds over the distinct rated images.
        n_ctx, steps, lr: the learned context's length and its optimisation.
        min_gain: the mean held-out SRCC gain that counts as better.
        force: write the checkpoint even when calibration does not beat the base.
        cache: a file to keep image embeddings in between runs (keyed by weights and file).
        device: where the image tower embeds the images (default: CUDA if available); the
            fits, a few thousand small matrix products each, run on the CPU.
        provenance: JSON-able entries added to the written checkpoint's
            ``metadata['calibration']`` (a caller's own record: where the ratings came from).

    Raises:
        CalibrationError: too few or constant ratings, an unreadable image, or base weights
            without a text tower; one line each.
    """
    from qualiclip.architecture import build_clip
    from qualiclip.checkpoint import read_checkpoint, write_checkpoint
    from qualiclip.loading import _load_state, load_model
    from qualiclip.prompts import flat_prompts

    if not isinstance(ratings, (str, os.PathLike)):
        rows = [(Path(p), float(r)) for p, r in ratings]
    else:
        rows = read_ratings(ratings)
    paths, values = mean_rating_per_image(rows)
    check_ratings(values, folds)
    model = load_model(weights, device=device, progress=False)
    info = model.weights_info
    checkpoint = read_checkpoint(info["path"])
    config = checkpoint.model_config
    if "text_cfg" not in config or "token_embedding.weight" not in checkpoint.state_dict:
        raise CalibrationError(
            f"{info['path']} has no text tower (only fixed prompt features), and calibration "
            "learns its prompts through one: calibrate the official weights or a checkpoint "
            "that keeps the text tower")
    clip = build_clip(config)
    _load_state(clip, checkpoint.state_dict, info["path"], prefix="")
    clip.eval().requires_grad_(False)
    prompts = flat_prompts(tuple(checkpoint.prompt_pairs))

    features = image_features(model, paths, cache=cache).cpu()
    target = torch.tensor(values, dtype=torch.float32)
    with torch.no_grad():
        base_scores = scores_from(features, model.prompt_features.cpu())

    torch.manual_seed(seed)
    fold_rows = []
    for train, test in kfold_indices(len(paths), folds, seed):
        learner = PromptContext(clip, prompts, n_ctx)
        prompt_features = fit_context(learner, features[train], target[train], steps, lr)
        with torch.no_grad():
            calibrated = scores_from(features[test], prompt_features)
        fold_rows.append({"n_train": len(train), "n_test": len(test),
                          "before": _correlations(base_scores[test], target[test]),
                          "after": _correlations(calibrated, target[test])})
    before = _mean([f["before"] for f in fold_rows])
    after = _mean([f["after"] for f in fold_rows])
    report = CalibrationReport(
        folds=fold_rows, before=before, after=after,
        improved=after["srcc"] - before["srcc"] >= min_gain, n_ratings=len(rows),
        n_images=len(paths), base_sha256=info["sha256"], min_gain=min_gain,
        settings={"base_weights": info.get("name", ""), "method": "prompt-context (CoOp)",
                  "n_ctx": n_ctx, "steps": steps, "lr": lr, "folds_k": folds, "seed": seed,
                  "loss": "mse+plcc"})
    if output is not None and (report.improved or force):
        learner = PromptContext(clip, prompts, n_ctx)
        prompt_features = fit_context(learner, features, target, steps, lr)
        metadata = dict(checkpoint.metadata)
        metadata.pop("created", None)
        metadata.pop("qualiclip_version", None)
        metadata["calibration"] = {**(provenance or {}), **report.as_metadata(),
                                   "context": learner.context.detach().clone()}
        report.written = write_checkpoint(
            output, model_config=config, state_dict=checkpoint.state_dict,
            prompt_features=prompt_features, prompt_pairs=tuple(checkpoint.prompt_pairs),
            training_config=checkpoint.training_config, metadata=metadata)
    return report
