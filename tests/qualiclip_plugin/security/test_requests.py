"""The scoring request pipeline as a hostile App user meets it: one check per execution,
workers that re-check, plan tokens that cannot be replayed, sharded runs on every target, and
oversized or odd inputs refused in one sentence.

Requests go through ``foo.execute_operator`` (what the App's Execute and Schedule buttons
reach: ``resolve_input``, then ``execute`` or a queued operation), and queued operations run as
``fiftyone delegated launch`` runs them (``DelegatedOperationService``), against the session's
real database, with real images and a tiny real checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest

from qualiclip_plugin import OPERATOR_URI
from tests.conftest import WEIGHTS_DIR, refusal
from tests.qualiclip_plugin.test_operator import _params, _snapshot

REPO = Path(__file__).resolve().parents[3]


def _execute(target, delegate: bool = False, ctx_extra: dict | None = None, **params):
    import fiftyone.operators as foo

    return foo.execute_operator(OPERATOR_URI, ctx=dict(view=target.view(), params=params,
                                                       **(ctx_extra or {})),
                                request_delegation=delegate)


def _service():
    from fiftyone.operators.delegated import DelegatedOperationService

    return DelegatedOperationService()


def _run_queue(dataset) -> None:
    _service().execute_queued_operations(dataset_name=dataset.name)


def _ops(dataset):
    return _service().list_operations(dataset_name=dataset.name)


def _errors(dataset) -> list:
    return [op.result.error for op in _ops(dataset) if op.result is not None and op.result.error]


# --- one pipeline per execution ----------------------------------------------------------------
def test_one_app_request_runs_its_policy_checks_once(make_dataset, image_files, tiny_checkpoint,
                                                     monkeypatch):
    """Execute in the App: the form's checks (resolve_input) are the execution's checks; the
    policy is read and asked about the weights once, and the pipeline runs once."""
    from qualiclip_plugin.scoring import pipeline
    from qualiclip_plugin.trust import policy, request

    calls = {"current": 0, "check_weights": 0, "pipeline": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(policy.AppPolicy, "current",
                        staticmethod(counted("current", policy.AppPolicy.current)))
    monkeypatch.setattr(request, "check_weights", counted("check_weights", request.check_weights))
    monkeypatch.setattr(pipeline, "check_weights", counted("check_weights",
                                                           pipeline.check_weights))
    monkeypatch.setattr(pipeline, "check", counted("pipeline", pipeline.check))
    dataset = make_dataset(image_files[:3])
    result = _execute(dataset, **_params(tiny_checkpoint))
    assert result.error is None, result.error
    dataset.reload()
    assert len(dataset.exists("quality")) == 3
    assert calls == {"current": 1, "check_weights": 1, "pipeline": 1}


def test_a_worker_rechecks_and_stores_one_sentence(make_dataset, image_files, tiny_checkpoint,
                                                   monkeypatch, tmp_path):
    """A run queued from the App is checked again where it runs: the admin removed the
    checkpoint folder from the policy meanwhile. The operation fails with the refusal's one
    sentence (no traceback, no server folder) and writes nothing."""
    dataset = make_dataset(image_files[:3])
    queued = _execute(dataset, delegate=True, **_params(tiny_checkpoint))
    assert queued.error is None, queued.error
    before = _snapshot(dataset)
    elsewhere = tmp_path / "other_weights"
    elsewhere.mkdir()
    monkeypatch.setenv("QUALICLIP_APP_WEIGHTS_DIRS", str(elsewhere))
    _run_queue(dataset)
    [op] = _ops(dataset)
    assert op.run_state == "failed"
    error = op.result.error
    assert "not among the weights this server offers" in error, error
    assert "\n" not in error and "Traceback" not in error
    assert str(WEIGHTS_DIR) not in error and str(REPO) not in error
    assert _snapshot(dataset) == before


# --- sharded runs: every target, App and Python ------------------------------------------------
# Python callers queue shards directly: they have no Schedule button.
@pytest.mark.parametrize(("target", "schedule"), [
    (target, schedule) for target in ("DATASET", "CURRENT_VIEW", "SELECTED_SAMPLES", "python")
    for schedule in ((False,) if target == "python" else (False, True))])
def test_sharded_runs_score_every_sample_of_every_target(target, schedule, make_dataset,
                                                         image_files, tiny_checkpoint):
    """``num_shards=2`` from the App form (Execute, or Schedule: the worker queues the shards)
    and from Python; the workers run and every sample of the target is scored (the broken
    image gets its error). The whole-dataset target failed in the worker before."""
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.scoring import claims

    dataset = make_dataset(image_files[:7])  # the broken file is the 6th
    view = dataset.skip(1)
    selected = dataset.values("id")[2:6]
    expected = {"DATASET": dataset.values("id"), "CURRENT_VIEW": view.values("id"),
                "SELECTED_SAMPLES": selected, "python": view.values("id")}[target]
    params = _params(tiny_checkpoint, num_shards=2, pair_scores=False)
    if target == "python":
        summary = compute_image_quality(view, **params)
        assert summary["queued_shards"] == 2
    else:
        ctx_extra = {"selected": selected} if target == "SELECTED_SAMPLES" else {}
        result = _execute(view if target == "CURRENT_VIEW" else dataset, delegate=schedule,
                          ctx_extra=ctx_extra, view_target=target, **params)
        assert result.error is None, result.error
    for _ in range(2):  # a scheduled run queues its shards when its worker runs
        _run_queue(dataset)
    ops = _ops(dataset)
    assert all(op.run_state == "completed" for op in ops), _errors(dataset)
    dataset.reload()
    done = set(dataset.exists("quality").values("id")) | set(
        dataset.exists("quality_error").values("id"))
    assert done == set(expected)
    assert claims.holder(dataset, "quality") is None  # the last shard released the field


# --- plan tokens -------------------------------------------------------------------------------
@pytest.fixture()
def queued_shards(make_dataset, image_files, tiny_checkpoint):
    """A dataset whose sharded run (2 shards, queued from the App form) waits for workers."""
    dataset = make_dataset(image_files[:6])
    result = _execute(dataset, **_params(tiny_checkpoint, num_shards=2))
    assert result.error is None, result.error
    ops = _ops(dataset)
    assert len(ops) == 2
    return dataset, [op.context.request_params["params"]["plan"] for op in ops]


def _claim(dataset):
    from qualiclip_plugin.scoring import claims

    return claims.holder(dataset, "quality")


def _queue_raw(dataset, params):
    """Queue an operation directly in FiftyOne's queue, as a hostile client of the queue could
    (no ``resolve_input`` on the way in)."""
    from fiftyone.operators.executor import ExecutionContext

    request_params = dict(dataset_name=dataset.name, dataset_id=str(dataset._doc.id),
                          view=dataset.view()._serialize(), params=params, delegated=True)
    return _service().queue_operation(operator=OPERATOR_URI, label="replay",
                                      delegation_target=None,
                                      context=ExecutionContext(request_params=request_params))


def test_plan_tokens_cannot_be_replayed(queued_shards, tiny_official_checkpoint):
    dataset, tokens = queued_shards
    claim = _claim(dataset)
    assert claim is not None and claim["pending_shards"] == 2
    # Sent from a form: refused inline, whether run at once, queued, or with other weights.
    for delegate, extra in ((False, {}), (True, {}),
                            (True, {"weights": str(tiny_official_checkpoint)})):
        message = refusal(lambda d=delegate, e=extra: _execute(dataset, delegate=d,
                                                               plan=tokens[0], **e))
        assert "plan" in message, message
    # Queued behind the form's back: its worker refuses, before the real shards run ...
    _queue_raw(dataset, {"plan": tokens[0], "delegate": True})
    _run_queue(dataset)
    states = sorted(op.run_state for op in _ops(dataset))
    assert states == ["completed", "completed", "failed"], _errors(dataset)
    [error] = _errors(dataset)
    assert "already been used" in error and "\n" not in error
    dataset.reload()
    # ... the two shards scored each sample once (the replay did no work) ...
    summaries = [op.result.result for op in _ops(dataset) if op.run_state == "completed"]
    assert sum(s["to_score"] for s in summaries) == len(dataset)
    assert len(dataset.exists("quality")) == len(dataset) - 1  # all but the broken file
    assert _claim(dataset) is None
    # ... and once the run is over, its tokens are dead.
    _queue_raw(dataset, {"plan": tokens[1], "delegate": True})
    _run_queue(dataset)
    assert len(_errors(dataset)) == 2


def test_a_replay_while_shards_wait_neither_works_nor_frees_the_field(queued_shards):
    """A replayed token queued as a new operation, executed before the real shards: refused
    without touching the shared claim (so a second run cannot start on the field early)."""
    from fiftyone.operators.executor import ExecutionRunState

    dataset, tokens = queued_shards
    real = [op.id for op in _ops(dataset)]
    replay = _queue_raw(dataset, {"plan": tokens[0], "delegate": True})
    _service().execute_operation(replay)
    assert _service().get(replay.id).run_state == ExecutionRunState.FAILED
    claim = _claim(dataset)
    assert claim is not None and claim["pending_shards"] == 2
    assert len(dataset.exists("quality")) == 0
    for op_id in real:
        _service().execute_operation(_service().get(op_id))
    assert all(_service().get(i).run_state == ExecutionRunState.COMPLETED for i in real)
    dataset.reload()
    assert len(dataset.exists("quality")) == len(dataset) - 1


def test_a_shard_token_expires_with_its_run(queued_shards):
    """The sharded run ended (its claim released: cancelled, or taken over after the timeout)
    before a shard ran: the shard's token is refused and nothing is written."""
    from qualiclip_plugin.scoring import claims

    dataset, _ = queued_shards
    claims.release(dataset, "quality", _claim(dataset)["owner"])
    _run_queue(dataset)
    errors = _errors(dataset)
    assert len(errors) == 2 and all("has ended" in e for e in errors), errors
    assert len(dataset.exists("quality")) == 0


# --- oversized and odd inputs ------------------------------------------------------------------
HUGE = 10**400


@pytest.mark.parametrize("params,name", [
    ({"batch_size": HUGE}, "batch_size"), ({"num_workers": HUGE}, "num_workers"),
    ({"max_side": HUGE}, "max_side"), ({"chunk_size": HUGE}, "chunk_size"),
    ({"num_shards": HUGE}, "num_shards"),
    ({"flag_mode": "percent", "flag_percent": HUGE}, "flag_percent"),
    ({"flag_mode": "threshold", "flag_threshold": -HUGE}, "flag_threshold"),
    ({"field": "q" * 5000}, "field"), ({"field": "quality\n"}, "field"),
    ({"flag_mode": "percent", "flag_percent": 10, "flag_field": "f" * 5000}, "flag_field"),
])
def test_oversized_and_odd_values_are_one_sentence_refusals(params, name, make_dataset,
                                                            image_files, tiny_checkpoint):
    dataset = make_dataset(image_files[:3])
    before = _snapshot(dataset)
    message = refusal(lambda: _execute(dataset, **{**_params(tiny_checkpoint), **params}))
    assert message.startswith("Validation error") and name in message, message
    assert len(message) < 400 and "\n" not in message.split("Reason: ")[-1]
    assert _snapshot(dataset) == before


def test_the_longest_allowed_field_name_scores_and_is_indexed(make_dataset, image_files,
                                                              tiny_checkpoint):
    from qualiclip_plugin.trust.request import MAX_FIELD_NAME

    dataset = make_dataset(image_files[:3])
    field = "q" * MAX_FIELD_NAME
    result = _execute(dataset, **_params(tiny_checkpoint, field=field))
    assert result.error is None, result.error
    dataset.reload()
    assert len(dataset.exists(field)) == 3 and f"{field}_high_resolution" in \
        dataset.get_field_schema()
    assert field in dataset.list_indexes()


def test_report_name_with_a_trailing_newline_is_refused(tmp_path):
    from qualiclip_plugin.trust.policy import AppPolicy, PolicyError, output_file

    policy = AppPolicy.current()
    with pytest.raises(PolicyError, match="plain file name"):
        output_file(policy, "dataset", "0" * 24, "report\n")
    assert output_file(policy, "dataset", "0" * 24, "report").name == "report.html"


def test_a_shorter_claim_timeout_frees_a_crashed_runs_field(make_dataset, image_files,
                                                            tiny_checkpoint, monkeypatch):
    """A run crashed holding the field under the default 30 minutes; the admin sets
    QUALICLIP_CLAIM_TIMEOUT=1: the field is free a second later, not 30 minutes later."""
    from qualiclip_plugin.scoring import claims

    dataset = make_dataset(image_files[:3])
    monkeypatch.delenv(claims.TIMEOUT_ENV, raising=False)
    claims.claim(dataset, "quality", "crashed-run")
    monkeypatch.setenv(claims.TIMEOUT_ENV, "1")
    time.sleep(1.2)
    assert claims.holder(dataset, "quality") is None
    result = _execute(dataset, **_params(tiny_checkpoint))
    assert result.error is None, result.error
    assert len(dataset.exists("quality")) == 3


def test_an_onnx_export_lock_that_is_a_symlink_is_not_followed(tiny_model, tmp_path):
    from qualiclip.backends.export import ensure_onnx, export_path

    if importlib.util.find_spec("onnx") is None:
        pytest.skip("onnx is not installed")
    folder = tmp_path / "onnx"
    folder.mkdir()
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    lock = Path(f"{export_path(tiny_model, folder=folder)}.lock")
    lock.symlink_to(victim)
    path = ensure_onnx(tiny_model, folder=folder, progress=False)
    assert path.is_file()
    assert not victim.exists()  # following the link would have created it
    assert lock.is_file() and not lock.is_symlink()


def test_a_symlink_loop_in_the_weights_folder_breaks_no_form(make_dataset, image_files,
                                                            tiny_checkpoint):
    """A loop among the allowed folder's entries is skipped: the scoring and maps forms still
    list the weights and run, and no message shows the server's folder."""
    import fiftyone.operators as foo

    from qualiclip_plugin import PLUGIN_NAME
    from qualiclip_plugin.trust.policy import AppPolicy, weights_choices

    loop_a, loop_b = WEIGHTS_DIR / "loop_a.pth", WEIGHTS_DIR / "loop_b.pth"
    loop_dir = WEIGHTS_DIR / "loop_dir"
    try:
        loop_a.symlink_to(loop_b)
        loop_b.symlink_to(loop_a)
        loop_dir.symlink_to(loop_dir)
        choices = weights_choices(AppPolicy.current())
        assert str(tiny_checkpoint) in [c.value for c in choices]
        assert all(str(WEIGHTS_DIR) not in c.label for c in choices)
        dataset = make_dataset(image_files[:2])
        result = _execute(dataset, **_params(tiny_checkpoint))
        assert result.error is None, result.error
        maps = foo.execute_operator(
            f"{PLUGIN_NAME}/compute_quality_maps",
            ctx=dict(view=dataset.view(), params=dict(weights=str(tiny_checkpoint),
                                                      device="cpu")))
        assert maps.error is None, maps.error
        message = refusal(lambda: _execute(dataset, **{**_params(tiny_checkpoint),
                                                        "weights": "loop_a.pth"}))
        assert str(WEIGHTS_DIR) not in message
    finally:
        for link in (loop_a, loop_b, loop_dir):
            if link.is_symlink():
                link.unlink()


@pytest.mark.parametrize("max_side", ["abc", -5, 3])
def test_zoo_max_side_is_refused_at_load(max_side, tiny_checkpoint, tmp_path):
    spec = importlib.util.spec_from_file_location("qualiclip_zoo_source",
                                                  REPO / "zoo" / "__init__.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    with pytest.raises(ValueError, match="max_side") as caught:
        zoo.load_model("qualiclip", str(tmp_path / "model.json"), weights=str(tiny_checkpoint),
                       max_side=max_side, device="cpu")
    assert "\n" not in str(caught.value)


# --- forms -------------------------------------------------------------------------------------
def _form(dataset, **params):
    import fiftyone.operators as foo
    from fiftyone.operators.executor import ExecutionContext

    ctx = ExecutionContext(request_params=dict(dataset_name=dataset.name, params=params))
    return foo.get_operator(OPERATOR_URI).resolve_input(ctx).type.properties


def test_form_defaults_to_weights_the_server_can_load(make_dataset, image_files,
                                                      tiny_checkpoint, monkeypatch):
    """Official weights neither cached nor downloadable: a loadable checkpoint is the default
    and the form can run as it opens."""
    monkeypatch.setenv("QUALICLIP_APP_DOWNLOADS", "0")
    dataset = make_dataset(image_files[:2])
    form = _form(dataset)
    default = form["weights"].default
    assert default != "qualiclip" and Path(default).parent == WEIGHTS_DIR.resolve()
    assert "cannot_run" not in form


def test_typing_a_new_field_keeps_the_chosen_weights_and_precision(make_dataset, image_files,
                                                                   tiny_checkpoint,
                                                                   tiny_official_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:2])
    compute_image_quality(dataset, **_params(tiny_checkpoint))  # 'quality' has a record
    chosen = dict(weights=str(tiny_official_checkpoint), precision="bf16")
    for field in ("q", "qu", "quality", "quality_new"):
        form = _form(dataset, field=field, **chosen)
        assert form["weights"].default == chosen["weights"], field
        assert form["precision"].default == "bf16", field
    # Opened fresh on the scored field, the form offers that field's last settings.
    assert _form(dataset)["weights"].default == str(tiny_checkpoint)
    assert os.path.basename(str(tiny_checkpoint)) in str(tiny_checkpoint)
