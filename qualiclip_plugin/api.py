"""The plugin's Python API: score a FiftyOne collection from trusted Python code.

The same runner the App operator uses, without the App policy (:mod:`.trust.policy`): any local
checkpoint path or URL is accepted, as in ``qualiclip.load_model``. Everything that protects
data (field/tag ownership, one run per field, comparability of scores) applies as in the App.

Example::

    from qualiclip_plugin.api import compute_image_quality

    summary = compute_image_quality(dataset, field="quality", weights="/models/ft.pth",
                                    flag_percent=10)

Scores made on a cluster (``qualiclip score --engine ray -o OUT_DIR``) are written the same way
by ``import_scores(dataset, "OUT_DIR", field="quality")``.
"""

from __future__ import annotations

from typing import Any

from qualiclip.weights import which_weights
from qualiclip_plugin.scoring import pipeline, plans
from qualiclip_plugin.scoring.importing import import_scores  # noqa: F401 (public API)
from qualiclip_plugin.scoring.runner import ScoringRun, scored_dataset
from qualiclip_plugin.scoring.shards import queue_plan, queue_shards
from qualiclip_plugin.trust.request import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_FIELD,
    DEFAULT_FLAG_TAG,
    ScoreRequest,
)


def compute_image_quality(sample_collection, field: str = DEFAULT_FIELD,
                          weights: str | None = None, device: str | None = None,
                          batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int | None = None,
                          max_side: int | None = None, precision: str = "auto",
                          backend: str = "auto", pair_scores: bool = True, overwrite: bool = False,
                          flag_percent: float | None = None, flag_threshold: float | None = None,
                          flag_field: str | None = None, flag_tag: str | None = DEFAULT_FLAG_TAG,
                          flag_view: str | None = None, num_shards: int = 1,
                          delegate: bool = False, chunk_size: int | None = None,
                          fps: float | str | None = None, segment_seconds: float | None = None,
                          ) -> dict[str, Any]:
    """Score ``sample_collection`` (dataset or view) and write ``field`` and its companions.

    Parameters are those of the App form (docs/plugin.md, "In the App"), except that
    ``weights`` may be any name, checkpoint path or URL, and ``None`` (default) means
    ``$QUALICLIP_WEIGHTS`` if set, else the official weights. Runs here and returns the
    summary (also stored with the field's run record); ``num_shards > 1`` queues that many
    delegated operations, ``delegate=True`` queues the whole run, for
    ``fiftyone delegated launch`` (both need a persistent dataset).

    On a video dataset each video's frames are sampled at ``fps`` frames per second (default
    1; ``"all"``: every frame) and scored into ``frames.<field>``, with a per-video summary
    (``<field>`` the mean, ``<field>_min``, ``<field>_p10``, ``<field>_segments`` the worst
    ``segment_seconds``-long segment, default 3 s): docs/plugin.md, "Video datasets". A frames
    view (``to_frames``) is scored as images, into the frames dataset FiftyOne generated.

    Raises:
        RequestError: a refused request; nothing was written.
    """
    # weights=None: the library's default ($QUALICLIP_WEIGHTS, else the official weights); the
    # App's operator does not come through here and offers only what the server policy allows.
    params = dict(field=field, weights=which_weights(weights), device=device,
                  batch_size=batch_size,
                  num_workers=num_workers, max_side=max_side, precision=precision,
                  backend=backend, pair_scores=pair_scores, overwrite=overwrite,
                  flag_percent=flag_percent, flag_threshold=flag_threshold,
                  flag_field=flag_field, flag_tag=flag_tag,
                  flag_view=flag_view, num_shards=num_shards, chunk_size=chunk_size,
                  fps=fps, segment_seconds=segment_seconds)
    view = sample_collection.view()
    dataset = scored_dataset(view)
    # The operator's request pipeline, without the App policy (trusted caller).
    request = pipeline.check(dataset, params, policy=None, delegating=delegate).request
    if delegate:
        return queue_run(dataset, view, request)
    run = ScoringRun(dataset, view, request, immediate=False, checked=True)
    run.prepare()
    if request.num_shards > 1:
        return queue_shards(run, view, trusted=True)
    for _ in run.steps():
        pass
    return run.summary


def queue_run(dataset, view, request: ScoreRequest,
              delegation_target: str | None = None) -> dict[str, Any]:
    """Queue ``request`` (from a trusted Python caller) as one delegated operation; returns
    the queued operation's record."""
    token = plans.store(dataset, request, trusted=True)
    operation = queue_plan(dataset, view, token, delegation_target)
    # What foo.execute_operator returns for a queued operation: its fields as a dict.
    record = dict(vars(operation))
    record["context"] = operation.context.serialize() if operation.context else None
    return record
