"""One scoring run over a FiftyOne collection: validate, score with :mod:`qualiclip`, write.

The operator (App or Python) and nothing else drives this; it never computes a score itself.
Order of work, so that a refused request changes nothing:

1. :meth:`ScoringRun.prepare` checks everything (target, field types, weights, precision,
   comparability with scores already in the field) and loads the model; it writes nothing.
2. :meth:`ScoringRun.steps` records provenance, then scores the samples still to do with
   :func:`qualiclip.scoring.iter_scores` and writes every ``chunk_size`` results in bulk,
   yielding ``(fraction, label)`` progress; then flags, and stores a summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import fiftyone as fo
from bson import ObjectId
from fiftyone import ViewField as F

from qualiclip_plugin import provenance, writing
from qualiclip_plugin.request import RequestError, ScoreRequest


class ScoringRun:
    """Scores ``target`` (a view of ``dataset``) as ``request`` says.

    Args:
        immediate: running inside the App server: decode in-process (no worker processes).
    """

    def __init__(self, dataset: fo.Dataset, target: Any, request: ScoreRequest,
                 immediate: bool) -> None:
        self.dataset = dataset
        self.request = request
        self.immediate = immediate
        self.target = _restrict_to_shard(target, request.shard_bounds)
        self.model = None
        self.layout: writing.FieldLayout | None = None
        self.description: dict[str, Any] | None = None
        self.summary: dict[str, Any] = {}
        self._todo = None

    # --- 1. checks, no writes -------------------------------------------------------------
    def prepare(self) -> None:
        """Validate and load the model; raises :class:`RequestError` with a readable message."""
        req = self.request
        if self.dataset.media_type not in ("image", None):
            raise RequestError(f"dataset '{self.dataset.name}' holds {self.dataset.media_type} "
                               "samples; QualiCLIP scores images")
        total = self.target.count()
        if total == 0:
            raise RequestError("the target holds no samples: nothing to score (check the "
                               "target choice, the current view or the selection)")
        self.model = self._load_model()
        pair_names = list(self.model.PAIR_NAMES) if req.pair_scores else []
        self.layout = writing.FieldLayout.for_field(req.field, pair_names, req.flag_field)
        problems = writing.schema_conflicts(self.dataset, self.layout)
        if problems:
            raise RequestError("cannot write the scores: " + "; ".join(problems)
                               + ". Choose another field name.")

        from qualiclip.precision import resolve_precision
        from qualiclip.scoring import describe_preprocessing

        device = next(self.model.parameters()).device
        try:
            precision = resolve_precision(req.precision, device)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        preprocessing = describe_preprocessing(self.model, req.max_side, precision, device)
        self.description = provenance.describe_run(
            req.field, self.model.weights_info, preprocessing, list(self.model.PAIR_NAMES),
            options={"batch_size": req.batch_size, "pair_scores": req.pair_scores,
                     "flag_percent": req.flag_percent, "flag_threshold": req.flag_threshold,
                     "flag_field": req.flag_field, "flag_tag": req.flag_tag,
                     "num_shards": req.num_shards})
        self._check_comparable()
        self._todo = self.target if req.overwrite else self.target.exists(req.field, False)
        self.summary = {"field": req.field, "target": total, "to_score": self._todo.count(),
                        "run_key": provenance.run_key(req.field)}

    def _load_model(self):
        from qualiclip_plugin.model_cache import get_model

        try:
            return get_model(self.request.weights, self.request.device)
        except Exception as exc:  # missing file, bad checkpoint, offline download, bad device
            raise RequestError(f"cannot load weights {self.request.weights!r}: {exc}") from exc

    def _check_comparable(self) -> None:
        req = self.request
        why = provenance.incompatibility(provenance.recorded(self.dataset, req.field),
                                         self.description)
        if why is None:
            return
        existing = self.dataset.exists(req.field).count()
        replaced = self.target.exists(req.field).count() if req.overwrite else 0
        if existing > replaced:
            raise RequestError(
                f"field '{req.field}' holds {existing} scores made with other settings ({why}); "
                "mixing them would make scores look comparable when they are not. Write to a "
                "new field, or set overwrite on a target that covers all of them")

    # --- 2. writes ---------------------------------------------------------------------------
    def steps(self) -> Iterator[tuple[float, str]]:
        """Run; yields ``(fraction done, label)`` after each written chunk and at the end."""
        from qualiclip.scoring import iter_scores

        req, layout = self.request, self.layout
        assert layout is not None and self._todo is not None, "call prepare() first"
        started = time.perf_counter()
        provenance.record(self.dataset, self.description)
        writing.declare_fields(self.dataset, layout)
        ids, paths = self._todo.values(["id", "filepath"])
        n = len(ids)
        num_workers = 0 if self.immediate else req.num_workers
        yield 0.0, f"Scoring {n} samples ({self.summary['target'] - n} already scored)"

        scored = failed = 0
        chunk: list = []
        done = 0
        results = iter_scores(paths, model=self.model, batch_size=req.batch_size,
                              num_workers=num_workers, max_side=req.max_side,
                              precision=req.precision, progress=False)
        for result in results:
            chunk.append(result)
            if len(chunk) >= req.chunk_size:
                writing.write_results(self.dataset, ids[done:done + len(chunk)], chunk, layout)
                done += len(chunk)
                failed += sum(r.error is not None for r in chunk)
                chunk = []
                yield done / max(n, 1), f"Scored {done}/{n} samples"
        if chunk:
            writing.write_results(self.dataset, ids[done:done + len(chunk)], chunk, layout)
            done += len(chunk)
            failed += sum(r.error is not None for r in chunk)
        scored = done - failed

        flagged = None
        if req.flagging and req.shard_index is None:
            yield 1.0, "Flagging low-quality samples"
            result = writing.flag_low_quality(self.dataset, self.target, layout, req.flag_tag,
                                              percent=req.flag_percent,
                                              threshold=req.flag_threshold)
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
            fields=[layout.score, layout.error, *layout.pairs.values()]
            + ([layout.flag] if layout.flag else []),
            seconds=round(time.perf_counter() - started, 3),
        )
        provenance.save_summary(self.dataset, req.field, self.summary)
        yield 1.0, f"Done: {scored} scored, {failed} failed"


def plan_shards(todo: Any, num_shards: int) -> list[tuple[str, str | None]]:
    """Split ``todo`` into at most ``num_shards`` contiguous sample-ID ranges ``[lo, hi)``.

    ObjectId hex strings sort like the IDs themselves, so each range is one indexed ``_id``
    match; ranges of equal sample counts, the last open-ended.
    """
    ids = sorted(todo.values("id"))
    if not ids:
        return []
    size = math.ceil(len(ids) / num_shards)
    starts = ids[::size]
    return [(lo, starts[i + 1] if i + 1 < len(starts) else None) for i, lo in enumerate(starts)]


def _restrict_to_shard(target: Any, bounds: tuple[str, str | None] | None) -> Any:
    if not bounds:
        return target
    lo, hi = bounds
    expr = F("_id") >= ObjectId(lo)
    if hi is not None:
        expr = expr & (F("_id") < ObjectId(hi))
    return target.match(expr)
