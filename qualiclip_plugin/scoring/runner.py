"""One scoring run over a FiftyOne collection: validate, score with :mod:`qualiclip`, write.

The operator (App or Python) and nothing else drives this; it never computes a score itself.
Order of work, so that a refused request changes nothing:

1. :meth:`ScoringRun.prepare` checks everything (target, field types, weights, precision,
   comparability with scores already in the field, the flag view's name) and loads the model;
   it writes nothing.
2. :meth:`ScoringRun.steps` records provenance, then scores the samples still to do with
   :func:`qualiclip.scoring.iter_scores` and writes every ``chunk_size`` results in bulk,
   yielding ``(fraction, label)`` progress; then flags, and stores a summary.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from qualiclip.weights import WeightsDownloadError, cache_dir  # torch-free
from qualiclip_plugin.model_cache import get_model
from qualiclip_plugin.scoring import claims, videos, writing
from qualiclip_plugin.trust import protection, provenance
from qualiclip_plugin.trust.policy import remember_failed_download
from qualiclip_plugin.trust.request import RequestError, ScoreRequest

#: Smallest number of samples written (and reported) at a time; see ``_write_steps``.
MIN_PROGRESS_CHUNK = 16


class ScoringRun:
    """Scores ``target`` (a view of ``dataset``) as ``request`` says.

    Args:
        immediate: running inside the App server: decode in-process (no worker processes).
        claim_owner: the claim on the field this run writes under (see :mod:`.claims`); shards
            share their queuing run's. ``None``: a claim of its own.
        slices: this run is one of ``slices`` tasks scoring slices of one target side by side
            (FiftyOne Enterprise's distributed execution): they share ``claim_owner``, the last
            to finish releases it, and none of them flags (each sees only its slice).
        checked: the request pipeline (:mod:`.pipeline`) has checked ownership and the claim
            for this execution; :meth:`prepare` does not repeat them.
    """

    def __init__(self, dataset: fo.Dataset, target: Any, request: ScoreRequest,
                 immediate: bool, claim_owner: str | None = None, slices: int = 1,
                 checked: bool = False) -> None:
        self.dataset = dataset
        self.request = request
        self.immediate = immediate
        self.claim_owner = claim_owner or claims.new_owner()
        self.slices = slices
        self.checked = checked
        self.target = _restrict_to_shard(target, request.shard_bounds)
        self.model = None
        #: What runs the image tower, and at which precision (resolved by :meth:`prepare`).
        self.backend, self.precision = "torch", "fp32"
        self.layout: writing.FieldLayout | None = None
        self.description: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {}
        self._todo = None
        self._replace_all = False  # set by prepare(): old scores to clear before scoring

    # --- 1. checks, no writes -------------------------------------------------------------
    def prepare(self) -> None:
        """Validate and load the model; raises :class:`RequestError` with a readable message."""
        req = self.request
        if self.dataset.media_type not in ("image", "video", None):
            raise RequestError(f"dataset '{self.dataset.name}' holds {self.dataset.media_type} "
                               "samples; QualiCLIP scores images and videos")
        if getattr(self.target, "_is_generated", False) and not _is_frames_of(self.target,
                                                                             self.dataset):
            # Patches and clips have IDs of their own that match no sample of the dataset the
            # scores are written to. A frames view is scored as the image dataset FiftyOne
            # generated for it (scored_dataset), whose samples are those frames.
            raise RequestError("the target is a generated view (patches or clips); score the "
                               "images or videos themselves: run on the dataset, on a view of "
                               "its samples, or on its frames (to_frames)")
        total = self.target.count()
        if total == 0:
            raise RequestError("the target holds no samples: nothing to score (check the "
                               "target choice, the current view or the selection)")
        if not self.checked:
            self._check_claim()
        check_device(req.device)
        self.model = self._load_model()
        pair_names = list(self.model.PAIR_NAMES) if req.pair_scores else []
        video = self.dataset.media_type == "video"
        self.layout = writing.FieldLayout.for_field(req.field, pair_names, req.flag_field,
                                                    video=video)
        if not self.checked:
            protection.check_writable(self.dataset, self.layout, req,
                                      ownership=req.shard_index is None)

        preprocessing = self._preprocessing()
        self.description = provenance.describe_run(
            req.field, self.model.weights_info, preprocessing, list(self.model.PAIR_NAMES),
            options={"batch_size": req.batch_size, "pair_scores": req.pair_scores,
                     "flag_percent": req.flag_percent, "flag_threshold": req.flag_threshold,
                     "flag_field": req.flag_field, "flag_tag": req.flag_tag,
                     "backend": req.backend,
                     "num_shards": req.num_shards,
                     # A video run's record says so: its frame and summary fields are its own.
                     **({"video": True} if video else {})})
        # Compared like the weights (provenance.COMPARABLE_KEYS); None for images.
        self.description.update(fps=req.fps if video else None,
                                segment_seconds=req.segment_seconds if video else None)
        if req.flag_view:
            protection.check_saved_view(self.dataset, req.flag_view)
        self._replace_all = self._check_comparable()
        self.target = _frozen(self.dataset, self.target, self.layout)
        self._todo = self.target if req.overwrite else self.target.exists(req.field, False)
        to_score = self._todo.count()
        if req.num_shards > 1 and req.shard_index is None and req.num_shards > max(1, to_score):
            raise RequestError(f"num_shards ({req.num_shards}) is more than the samples to "
                               f"score ({to_score}); use at most {max(1, to_score)}")
        self.summary = {"field": req.field, "target": total, "to_score": to_score,
                        "run_key": provenance.run_key(req.field)}

    @property
    def todo(self) -> Any:
        """The samples this run scores (after :meth:`prepare`)."""
        return self._todo

    def _check_claim(self) -> None:
        """Refuse early when another run writes the field (taken for real in :meth:`steps`)."""
        claims.check_free(self.dataset, self.request.field, self.claim_owner)

    def _load_model(self):
        return load_model(self.request.weights, self.request.device)

    def _preprocessing(self) -> dict[str, Any]:
        """Resolve precision and backend for the loaded model; the preprocessing record
        (:meth:`qualiclip.inference.Preprocessing.describe`) the run is recorded with."""
        # The runtime (torch, ONNX) loads here, not at import: the App imports this module.
        from qualiclip.backends import BackendUnavailableError
        from qualiclip.backends.selection import resolve_backend
        from qualiclip.inference import Preprocessing

        req = self.request
        device = next(self.model.parameters()).device
        try:
            self.backend, self.precision = resolve_backend(req.backend, req.precision, device)
        except (ValueError, BackendUnavailableError) as exc:
            raise RequestError(str(exc)) from exc
        return Preprocessing(max_side=req.max_side, precision=self.precision,
                             device=str(device), backend=self.backend
                             ).describe(self.model.weights_info)

    def _check_comparable(self) -> bool:
        """Refuse to mix scores made differently into one field.

        Returns:
            True when the field holds scores made with other settings that this run replaces
            (``overwrite`` over all of them): they are cleared before scoring, so a run cut off
            half-way and resumed never leaves old and new scores side by side.
        """
        req = self.request
        if req.shard_index is not None:  # the run that queued the shards checked the target
            return False
        existing = self.dataset.exists(req.field).count()
        if existing == 0:
            return False
        old = provenance.recorded(self.dataset, req.field)
        why = (provenance.incompatibility(old, self.description) if old is not None else
               "no record of how they were made: written by apply_model or another tool")
        if why is None:
            return False
        replaced = self.target.exists(req.field).count() if req.overwrite else 0
        if existing > replaced:
            raise provenance.mixing_refusal(req.field, existing, why)
        return True

    def clear_replaced_scores(self) -> None:
        """Unset the old scores an overwrite with new settings replaces (see
        :meth:`_check_comparable`); called once all checks have passed, before scoring."""
        if not self._replace_all:
            return
        assert self.layout is not None
        schema = writing.flat_schema(self.dataset)
        fields = [name for name in self.layout.score_fields() if name in schema]
        if fields:
            writing.clear_fields(self.target, fields)  # only the target's samples
        self._replace_all = False

    # --- 2. writes ---------------------------------------------------------------------------
    def steps(self) -> Iterator[tuple[float, str]]:
        """Run; yields ``(fraction done, label)`` after each written chunk and at the end.

        The field is claimed first (a second run on it is refused) and released at the end,
        whatever happens; a shard hands its part of the claim back instead.
        """
        req, layout = self.request, self.layout
        assert layout is not None and self._todo is not None, "call prepare() first"
        started = time.perf_counter()
        claims.claim(self.dataset, req.field, self.claim_owner,
                     label=f"{'part' if self.partial else 'run'} into '{req.field}'",
                     shards=self.slices if self.slices > 1 else None)
        try:
            yield from self._write_steps(started)
        finally:
            if self.partial:
                claims.finish_shard(self.dataset, req.field, self.claim_owner)
            else:
                claims.release(self.dataset, req.field, self.claim_owner)

    @property
    def partial(self) -> bool:
        """A shard or a distributed slice: scores part of a target, shares a claim, no flags."""
        return self.request.shard_index is not None or self.slices > 1

    def _write_steps(self, started: float) -> Iterator[tuple[float, str]]:
        req, layout = self.request, self.layout
        assert layout is not None and self._todo is not None
        self.clear_replaced_scores()
        provenance.record(self.dataset, self.description)
        writing.declare_fields(self.dataset, layout)
        n, done, failed = yield from self._score_and_write()
        scored = done - failed

        flagged = None
        if req.flagging and self.partial:
            self.summary["note"] = ("Flags are applied to whole targets only: when all parts "
                                    "are done, run again on the target with overwrite off")
        if req.flagging and not self.partial:
            yield 1.0, "Flagging low-quality samples"
            result = writing.flag_low_quality(self.dataset, self.target, layout,
                                              percent=req.flag_percent,
                                              threshold=req.flag_threshold)
            if req.flag_tag:
                protection.move_tag(self.dataset, self.target, req.flag_tag,
                                    result.flagged_ids)
            flagged = len(result.flagged_ids)
            self.summary["flag_cutoff"] = result.cutoff
            if req.flag_view:
                writing.save_flag_view(self.dataset, req.flag_view, layout)
        # Sorting and range-filtering a big dataset in the App needs an index (idempotent).
        self.dataset.create_index(layout.score)

        mean = self.target.mean(layout.score) if self.target.exists(layout.score).count() \
            else None
        self.summary.update(
            scored=scored, skipped=self.summary["target"] - n, failed=failed,
            mean=None if mean is None else float(mean), flagged=flagged,
            fields=layout.all_fields(),
            seconds=round(time.perf_counter() - started, 3),
        )
        provenance.save_summary(self.dataset, req.field, self.summary)
        yield 1.0, f"Done: {scored} scored, {failed} failed"

    def _score_and_write(self) -> Generator[tuple[float, str], None, tuple[int, int, int]]:
        """Score the samples to do and write them chunk by chunk, yielding progress; returns
        ``(samples to do, written, failed)``."""
        from qualiclip.scoring import iter_scores

        req, layout = self.request, self.layout
        assert layout is not None
        if layout.video:
            return (yield from videos.score_and_write(self))
        ids, paths = self._todo.values(["id", "filepath"])
        n = len(ids)
        # Inside the App server, decode in-process unless the caller asked for workers.
        num_workers = 0 if self.immediate and req.num_workers is None else req.num_workers
        yield 0.0, f"Scoring {n} samples ({self.summary['target'] - n} already scored)"

        # At least ~20 progress steps (and writes) per run, so small App runs show progress too.
        chunk_size = min(req.chunk_size, max(MIN_PROGRESS_CHUNK, math.ceil(n / 20)))
        failed = 0
        chunk: list = []
        done = 0
        results = iter_scores(paths, model=self.model, batch_size=req.batch_size,
                              num_workers=num_workers, max_side=req.max_side,
                              precision=self.precision, backend=self.backend, progress=False)
        for result in results:
            chunk.append(result)
            if len(chunk) >= chunk_size:
                writing.write_results(self.dataset, ids[done:done + len(chunk)], chunk, layout)
                done += len(chunk)
                failed += sum(r.error is not None for r in chunk)
                chunk = []
                claims.refresh(self.dataset, req.field, self.claim_owner)
                yield done / max(n, 1), f"Scored {done}/{n} samples ({failed} failed)"
        if chunk:
            writing.write_results(self.dataset, ids[done:done + len(chunk)], chunk, layout)
            done += len(chunk)
            failed += sum(r.error is not None for r in chunk)
        return n, done, failed


def _frozen(dataset: fo.Dataset, target: Any, layout: writing.FieldLayout) -> Any:
    """``target`` pinned to the samples it holds now, where its stages read a field this run
    writes: ``dataset.exists("quality", False)`` would otherwise be empty again once scored, and
    flags and the mean would be computed over nothing. Stages that do not mention those fields
    (the usual case) are kept as they are; matching by name over-approximates, which is safe."""
    if isinstance(target, fo.Dataset):
        return target
    stages = json.dumps(target._serialize(), default=str)  # every stage with its full kwargs
    if not any(name in stages for name in layout.all_fields()):
        return target
    return dataset.select(target.values("id"))


def load_model(weights: str, device: str | None):
    """The (cached) model for ``weights`` on ``device``; raises :class:`RequestError` with one
    sentence. A failed download is remembered, so the next App forms show it inline."""
    try:
        return get_model(weights, device)
    except WeightsDownloadError as exc:
        reason = first_sentence(exc, hide=_server_folders(weights))
        remember_failed_download(weights, reason)
        raise RequestError(f"cannot load weights {weights!r}: {reason} Ask the server's admin "
                           "to place the file in the weights cache") from exc
    except Exception as exc:  # missing file, bad checkpoint, bad device
        raise RequestError(f"cannot load weights {provenance.weights_label(weights)!r}: "
                           f"{first_sentence(exc, hide=_server_folders(weights))}") from exc


def _server_folders(weights: str) -> list[str]:
    """Folders App users need not see in messages: the checkpoint's and the weights cache."""
    return [os.path.dirname(weights), str(cache_dir())]


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before any model is built on it."""
    if device is None or device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise RequestError(f"device {device!r} is not available here ({count} CUDA "
                               "devices); leave device empty to use CUDA when available")
    elif device == "mps" and not torch.backends.mps.is_available():
        raise RequestError("device 'mps' is not available here; leave device empty")


def first_sentence(exc: BaseException, hide: Sequence[str] = ()) -> str:
    """An exception's first sentence, for App users: no traceback, no chained detail, and the
    ``hide`` folders removed from paths (file names stay)."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    for folder in hide:
        if folder:
            text = text.replace(folder.rstrip(os.sep) + os.sep, "")
    end = text.find(". ")
    return (text[:end + 1] if end > 0 else text)[:300]


def scored_dataset(collection: Any) -> fo.Dataset:
    """The dataset a run on ``collection`` writes into: its root dataset, except for a frames
    view (``to_frames``), whose frames FiftyOne generated as an image dataset of their own;
    scores go there, into sample fields, as for any image dataset."""
    if getattr(collection, "_is_frames", False):
        return collection._dataset
    return collection._root_dataset


def _is_frames_of(target: Any, dataset: fo.Dataset) -> bool:
    return bool(getattr(target, "_is_frames", False)) and target._dataset.name == dataset.name


def _restrict_to_shard(target: Any, bounds: tuple[str, str | None] | None) -> Any:
    if not bounds:
        return target
    lo, hi = bounds
    expr = F("_id") >= ObjectId(lo)
    if hi is not None:
        expr = expr & (F("_id") < ObjectId(hi))
    return target.match(expr)
