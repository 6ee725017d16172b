"""Scores made elsewhere (``qualiclip score --engine ray``'s Parquet dataset) written into a
dataset's fields, as if the scoring operator had made them.

:class:`ImportRun` is a :class:`~qualiclip_plugin.scoring.runner.ScoringRun` whose "model" is
the Parquet result: the request pipeline, ownership rule, one-run-per-field claim,
comparability check, run record, chunked bulk writes, flags and summary are the runner's own.
Only two steps differ: the record's weights and preprocessing come from the Parquet rows (all
of one run's rows carry the same), and results are matched to samples by ``filepath`` instead
of being computed. Rows whose path is no sample to do (not in the target, or already scored
with ``overwrite`` off) are counted, not written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator
from typing import Any

from qualiclip.prompts import PAIR_NAMES
from qualiclip_plugin.scoring import claims, pipeline, writing
from qualiclip_plugin.scoring.runner import MIN_PROGRESS_CHUNK, ScoringRun
from qualiclip_plugin.trust.request import DEFAULT_FIELD, DEFAULT_FLAG_TAG, RequestError


class _ImportedWeights:
    """What the runner reads from a model, taken from a Parquet result: pair names and
    ``weights_info`` (name and SHA-256 as the scoring actors recorded them)."""

    PAIR_NAMES = PAIR_NAMES

    def __init__(self, name: str | None, sha256: str | None) -> None:
        self.weights_info = {"name": name, "sha256": sha256, "format": None}


class ImportRun(ScoringRun):
    """Writes the rows of the Parquet dataset ``results`` (a folder or URI) into ``target``."""

    def __init__(self, dataset, target, request, results: str) -> None:
        super().__init__(dataset, target, request, immediate=False, checked=True)
        self.results = results
        self._record: dict[str, Any] = {}

    def _load_model(self):
        from qualiclip.ray import read_results

        try:
            table = read_results(self.results, ["weights_sha256", "preprocessing"])
        except (OSError, ValueError) as exc:
            raise RequestError(f"cannot read the Parquet results in {self.results}: "
                               f"{' '.join(str(exc).split())[:300]}") from exc
        if table.num_rows == 0:
            raise RequestError(f"{self.results} holds no results (no part-*.parquet files): "
                               "give the -o folder of 'qualiclip score --engine ray'")
        shas = set(table.column("weights_sha256").to_pylist())
        records = {json.dumps(_comparable(json.loads(text)), sort_keys=True)
                   for text in set(table.column("preprocessing").to_pylist())}
        if len(shas) > 1 or len(records) > 1:
            raise RequestError(f"{self.results} mixes results made with different weights or "
                               "settings; import each run's folder into its own field")
        self._record = json.loads(table.column("preprocessing")[0].as_py())
        return _ImportedWeights(self._record.get("weights"), shas.pop())

    def _preprocessing(self) -> dict[str, Any]:
        self.backend = self._record.get("backend", "torch")
        self.precision = self._record.get("precision", "fp32")
        return self._record

    def _score_and_write(self) -> Generator[tuple[float, str], None, tuple[int, int, int]]:
        from qualiclip.ray import read_results
        from qualiclip.scoring import ScoreResult

        req, layout = self.request, self.layout
        assert layout is not None
        ids_of: dict[str, list[str]] = {}
        for sample_id, path in zip(*self._todo.values(["id", "filepath"])):
            ids_of.setdefault(path, []).append(sample_id)
        n = sum(len(ids) for ids in ids_of.values())
        yield 0.0, f"Importing scores for {n} samples ({self.summary['target'] - n} already " \
                   "scored)"
        table = read_results(self.results)
        chunk_size = min(req.chunk_size, max(MIN_PROGRESS_CHUNK, math.ceil(n / 20)))
        done = failed = unmatched = 0
        ids: list[str] = []
        chunk: list[ScoreResult] = []

        def flush() -> None:
            nonlocal done, failed, ids, chunk
            writing.write_results(self.dataset, ids, chunk, layout)
            done += len(ids)
            failed += sum(r.error is not None or r.score is None for r in chunk)
            ids, chunk = [], []
            claims.refresh(self.dataset, req.field, self.claim_owner)

        for batch in table.to_batches(max_chunksize=chunk_size):
            for row in batch.to_pylist():
                matched = ids_of.pop(row["path"], None)  # each sample written once
                if matched is None:
                    unmatched += 1
                    continue
                result = ScoreResult(0, row["path"], score=row["score"],
                                     pair_scores={p: row[p] for p in PAIR_NAMES
                                                  if row.get(p) is not None},
                                     width=row["width"], height=row["height"],
                                     error=row["error"])
                ids += matched
                chunk += [result] * len(matched)
            if len(ids) >= chunk_size:
                flush()
                yield done / max(n, 1), f"Imported {done}/{n} samples ({failed} failed)"
        if ids:
            flush()
        self.summary.update(imported_from=self.results, rows_not_matched=unmatched,
                            samples_without_result=n - done)
        return n, done, failed


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
    """A preprocessing record without what differs between actors of one run (their device)."""
    return {k: v for k, v in record.items() if k not in ("device", "machine")}


def import_scores(sample_collection, results: str, field: str = DEFAULT_FIELD,
                  pair_scores: bool = True, overwrite: bool = False,
                  flag_percent: float | None = None, flag_threshold: float | None = None,
                  flag_field: str | None = None, flag_tag: str | None = DEFAULT_FLAG_TAG,
                  flag_view: str | None = None, chunk_size: int | None = None
                  ) -> dict[str, Any]:
    """Write the Parquet results in ``results`` (the ``-o`` folder or URI of ``qualiclip score
    --engine ray``) into ``field`` of ``sample_collection``'s samples, matched by filepath.

    The options are :func:`qualiclip_plugin.api.compute_image_quality`'s; the same request
    checks, ownership rule, claim and comparability rule apply, and the field's run record
    is written from the results' weights SHA-256 and preprocessing. Returns the run summary
    (``rows_not_matched``: result rows that matched no sample to do).

    Raises:
        RequestError: a refused request (nothing was written).
    """
    params = dict(field=field, weights="qualiclip", pair_scores=pair_scores,
                  overwrite=overwrite, flag_percent=flag_percent,
                  flag_threshold=flag_threshold, flag_field=flag_field, flag_tag=flag_tag,
                  flag_view=flag_view, chunk_size=chunk_size)
    view = sample_collection.view()
    dataset = view._root_dataset
    if dataset.media_type == "video":
        # The Ray engine's rows are one per image; a video run's frames and summaries are
        # written by the video path, which decodes the videos itself.
        raise RequestError(f"dataset '{dataset.name}' holds videos, and import_scores writes "
                           "one score per image: score it with compute_image_quality (or the "
                           "operator) instead")
    # "weights" above only passes parsing: an import loads none; its record takes the weights
    # from the results.
    request = pipeline.check(dataset, params, policy=None, delegating=False).request
    run = ImportRun(dataset, view, request, results)
    run.prepare()
    for _ in run.steps():
        pass
    return run.summary
