"""Delegated runs (queued, then executed as `fiftyone delegated launch` would) and sharding."""

from __future__ import annotations

import pytest

from tests.qualiclip_plugin.test_operator import TOL, _params


def _run_queue(dataset):
    from fiftyone.operators.delegated import DelegatedOperationService

    DelegatedOperationService().execute_queued_operations(dataset_name=dataset.name)


def _ops(dataset):
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService().list_operations(dataset_name=dataset.name)


def test_delegated_run(make_dataset, operator, tiny_checkpoint, reference_scores):
    dataset = make_dataset()
    queued = operator(dataset, **_params(tiny_checkpoint, flag_percent=25), delegate=True)
    assert queued["run_state"] == "queued"
    assert len(dataset.exists("quality")) == 0  # nothing happens until a worker runs it
    _run_queue(dataset)
    ops = _ops(dataset)
    assert [op.run_state for op in ops] == ["completed"], [op.result.error for op in ops]
    assert ops[0].result.result["scored"] == len(dataset) - 1
    dataset.reload()
    for sample in dataset.exists("quality"):
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)
    assert len(dataset.match_tags("low_quality")) == 3  # ceil(12 * 25%)


def test_sharded_run_splits_work_over_operations(make_dataset, operator, tiny_checkpoint,
                                                 reference_scores):
    dataset = make_dataset()
    operator(dataset.limit(2), **_params(tiny_checkpoint))  # already scored: not re-queued
    summary = operator(dataset, **_params(tiny_checkpoint, num_shards=3))
    assert summary["queued_shards"] == 3 and summary["to_score"] == len(dataset) - 2
    ops = _ops(dataset)
    assert len(ops) == 3
    # Queued shards hold the field together: another run into it is refused meanwhile, and
    # their params are only a plan token (ranges and settings are stored server-side).
    assert all(set(op.context.request_params["params"]) == {"plan", "delegate"} for op in ops)
    with pytest.raises(Exception, match="being written by another run"):
        operator(dataset, **_params(tiny_checkpoint))
    _run_queue(dataset)
    from qualiclip_plugin.scoring import claims

    assert claims.holder(dataset, "quality") is None  # the last shard released it
    ops = _ops(dataset)
    assert all(op.run_state == "completed" for op in ops)
    per_shard = sorted(op.result.result["to_score"] for op in ops)
    assert sum(per_shard) == len(dataset) - 2 and per_shard[-1] - per_shard[0] <= 1
    dataset.reload()
    assert len(dataset.exists("quality")) == len(dataset) - 1  # all but the broken file
    for sample in dataset.exists("quality"):
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)


def test_sharded_overwrite_with_new_settings(make_dataset, operator, tiny_checkpoint):
    """Replacing every score with new settings over shards: the shards do not refuse their
    ranges (the queuing run checked the whole target) and no old score survives."""
    dataset = make_dataset()
    operator(dataset, **_params(tiny_checkpoint))
    old = dict(zip(dataset.values("id"), dataset.values("quality"), strict=True))
    summary = operator(dataset, **_params(tiny_checkpoint, max_side=48, overwrite=True,
                                          num_shards=2))
    assert summary["queued_shards"] == 2
    dataset.reload()
    assert len(dataset.exists("quality")) == 0  # old scores cleared before the shards run
    _run_queue(dataset)
    ops = _ops(dataset)
    assert [op.run_state for op in ops] == ["completed"] * 2, [op.result.error for op in ops]
    dataset.reload()
    assert len(dataset.exists("quality")) == len(dataset) - 1
    assert dataset.get_run_info("qualiclip_quality").config.max_side == 48
    changed = sum(abs(old[s.id] - s["quality"]) > TOL for s in dataset.exists("quality"))
    assert changed >= 8


@pytest.mark.parametrize("how", [{"delegate": True}, {"num_shards": 2}])
def test_non_persistent_dataset_is_not_queued(operator, image_files, tiny_checkpoint, how):
    """A worker process cannot open a non-persistent dataset: refuse instead of queueing."""
    import fiftyone as fo

    dataset = fo.Dataset()  # not persistent
    try:
        dataset.add_samples([fo.Sample(filepath=str(p)) for p in image_files[:3]])
        with pytest.raises(Exception, match="not persistent"):
            operator(dataset, **_params(tiny_checkpoint), **how)
        assert _ops(dataset) == [] and len(dataset.exists("quality")) == 0
    finally:
        dataset.delete()
