"""Distributed execution (FiftyOne Enterprise 2.11+): the operator allows it, with task bounds,
and each task scores exactly the slice ``ctx.target_view()`` gives it.

Open-source FiftyOne cannot split an operation, so a task is played here the way Enterprise
runs one: a delegated execution of the operator whose view is one slice of the dataset.
"""

from __future__ import annotations

import pytest

from tests.qualiclip_plugin.test_delegated import _ops, _run_queue
from tests.qualiclip_plugin.test_operator import TOL, _params


def _queue_slice(view, tiny_checkpoint, **extra):
    import fiftyone.operators as foo

    from qualiclip_plugin import OPERATOR_URI

    result = foo.execute_operator(
        OPERATOR_URI, ctx=dict(view=view, params=_params(tiny_checkpoint, delegate=True,
                                                         **extra)),
        request_delegation=True)
    result.raise_exceptions()


def _scored_ids(dataset) -> set[str]:
    """Samples a run wrote: a score, or an error for the broken file."""
    return set(dataset.exists("quality").values("id")) | set(
        dataset.exists("quality_error").values("id"))


def test_operator_declares_distributed_execution(monkeypatch, operator):
    import fiftyone.operators as foo

    seen = {}

    class Recording(foo.OperatorConfig):  # open-source FiftyOne drops the flag: record it
        def __init__(self, name, **kwargs):
            seen.update(kwargs)
            super().__init__(name, **kwargs)

    monkeypatch.setattr(foo, "OperatorConfig", Recording)
    assert type(operator).config.fget(operator).name == "compute_image_quality"
    assert seen["allow_distributed_execution"] is True
    assert seen["allow_delegated_execution"] is True


@pytest.mark.parametrize("size, expected", [
    (500, None),  # immediate-sized: not worth two model loads
    (1999, None),
    (2000, (2, 2, 2)),
    (100_000, (2, 100, 10)),
    (10_000_000, (2, 256, 256)),
])
def test_task_bounds(size, expected):
    from qualiclip_plugin.scoring.operator import distributed_task_bounds

    bounds = distributed_task_bounds(size)
    if expected is None:
        assert bounds is None
    else:
        assert (bounds["min_distributed_tasks"], bounds["max_distributed_tasks"],
                bounds["recommended_distributed_tasks"]) == expected


def test_each_slice_scores_only_its_samples(make_dataset, tiny_checkpoint, reference_scores):
    from qualiclip_plugin.trust import provenance
    from qualiclip_plugin.trust.provenance import COMPARABLE_KEYS

    dataset = make_dataset()
    first, second = dataset.limit(6), dataset.skip(6)
    first_ids, second_ids = set(first.values("id")), set(second.values("id"))

    _queue_slice(first, tiny_checkpoint)
    _run_queue(dataset)
    dataset.reload()
    assert _scored_ids(dataset) == first_ids
    after_first = provenance.recorded(dataset, "quality")

    _queue_slice(second, tiny_checkpoint)
    _run_queue(dataset)
    ops = _ops(dataset)
    assert [op.run_state for op in ops] == ["completed"] * 2, [op.result.error for op in ops]
    assert sorted(op.result.result["scored"] + op.result.result["failed"] for op in ops) == [6, 7]
    dataset.reload()
    assert _scored_ids(dataset) == first_ids | second_ids

    # One record describes every slice's scores: same weights, preprocessing and precision.
    after_second = provenance.recorded(dataset, "quality")
    assert dataset.list_runs() == [provenance.run_key("quality")]
    assert {k: after_second[k] for k in COMPARABLE_KEYS} == \
        {k: after_first[k] for k in COMPARABLE_KEYS}
    for sample in dataset.exists("quality"):  # and they equal one run over everything
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)


def test_slice_with_other_settings_is_refused(make_dataset, tiny_checkpoint):
    """Two tasks queued on an empty field with settings that differ: whichever runs second
    would mix differently made scores into the field, so it fails and writes nothing."""
    dataset = make_dataset()
    first, second = dataset.limit(6), dataset.skip(6)
    # (explicit max_side both times: a request without one takes the field's recorded one)
    _queue_slice(first, tiny_checkpoint, max_side=64)
    _queue_slice(second, tiny_checkpoint, max_side=48)
    _run_queue(dataset)
    ops = _ops(dataset)
    assert sorted(op.run_state for op in ops) == ["completed", "failed"]
    failed = next(op for op in ops if op.run_state == "failed")
    assert "max_side" in str(failed.result.error)
    done = next(op for op in ops if op.run_state == "completed")
    dataset.reload()
    expected = first if done.result.result["target"] == 6 else second
    assert _scored_ids(dataset) == set(expected.values("id"))


@pytest.mark.parametrize("size, delegate, distributed", [
    (100_000, None, True),  # big target: delegated by default, and may be split
    (100_000, False, False),  # run immediately: nothing to split
    (300, True, False),  # too small to be worth splitting
])
def test_execution_options_carry_the_bounds(monkeypatch, operator, size, delegate,
                                            distributed):
    from types import SimpleNamespace

    from qualiclip_plugin.scoring import operator as operators

    monkeypatch.setattr(operators, "_target_size", lambda ctx: size)
    params = {} if delegate is None else {"delegate": delegate}
    # No dataset: the form's size is patched above, and an image dataset is not a frames view.
    context = SimpleNamespace(params=params, dataset=None, target_view=lambda: None)
    options = operator.resolve_execution_options(context)
    assert options.default_choice_to_delegated is (delegate is not False)
    if distributed:
        assert (options.max_distributed_tasks, options.recommended_distributed_tasks) == (100, 10)
    else:
        assert options.max_distributed_tasks is None


def test_slices_running_side_by_side_share_the_field(make_dataset, tiny_checkpoint,
                                                     reference_scores):
    """Enterprise runs the tasks of one operation at the same time: they share one claim (a
    task must not be refused as "another run"), the last one releases it, another run is
    refused meanwhile, and no task flags (each sees only its slice)."""
    from qualiclip_plugin.scoring import claims
    from qualiclip_plugin.scoring.runner import ScoringRun
    from qualiclip_plugin.trust.request import RequestError, parse_request

    dataset = make_dataset()
    request = parse_request(_params(tiny_checkpoint, flag_percent=50))
    owner = claims.shared_owner(dataset, request.to_params(), "parent-op")
    assert owner == claims.shared_owner(dataset, request.to_params(), "parent-op")
    assert owner != claims.shared_owner(dataset, request.to_params(), "another-op")
    first = ScoringRun(dataset, dataset.limit(6), request, immediate=True, claim_owner=owner,
                       slices=2)
    second = ScoringRun(dataset, dataset.skip(6), request, immediate=True, claim_owner=owner,
                        slices=2)
    first.prepare()
    steps = first.steps()
    next(steps)  # the first task holds the field
    second.prepare()  # its sibling is not "another run"
    with pytest.raises(RequestError, match="being written by another run"):
        ScoringRun(dataset, dataset, request, immediate=True).prepare()
    for _ in second.steps():
        pass
    assert claims.holder(dataset, "quality") is not None  # the first task still runs
    for _ in steps:
        pass
    assert claims.holder(dataset, "quality") is None
    assert len(dataset.exists("quality_flagged")) == 0  # declared, never set
    assert len(dataset.match_tags("low_quality")) == 0
    assert "whole targets only" in first.summary["note"]
    for sample in dataset.exists("quality"):
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)


def test_tags_the_panel_wrote_count_as_the_plugins(make_dataset, image_files, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.panel import data as panel_data
    from qualiclip_plugin.trust.protection import plugin_made

    dataset = make_dataset(image_files[:4])
    compute_image_quality(dataset, **_params(tiny_checkpoint))  # no flag tag recorded
    assert "low_quality" not in plugin_made(dataset)[1]
    panel_data.tag_below(dataset, dataset, "quality", 1.0, "low_quality")
    assert "low_quality" in plugin_made(dataset)[1]
    summary = compute_image_quality(dataset, **_params(tiny_checkpoint, flag_percent=50,
                                                        overwrite=True))
    assert summary["flagged"] == 2
