"""The scoring form in the real App: it keeps the user's choices while the field name is typed,
and a sharded background run on the whole dataset, started with Schedule, scores every sample
once the delegated workers run.

The App servers run with the package's policy (``conftest.py``: only the tiny checkpoint copy is
offered, the official weights are unavailable); the Schedule test starts its own server with
``FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true`` (the App shows Schedule only then).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.app.conftest import APP_CHECKPOINT_NAME, serve_app


def test_form_keeps_a_checkpoint_when_the_field_name_is_typed(app, app_dataset, app_server):
    from playwright.sync_api import expect

    dataset, _ = app_dataset
    app.open_dataset(dataset.name)
    app.open_operator()
    with app.step("the server can load only the checkpoint: it is the default, no refusal"):
        expect(app.form_field("Weights")).to_contain_text(APP_CHECKPOINT_NAME)
        expect(app.error_box()).to_have_count(0)
        labels = app.weights_choices()
        assert all(str(app_server.weights_dir) not in label for label in labels), labels
    with app.step("choose fp32, then type a new output field name key by key"):
        app.choose("Precision", "fp32")
        field = app.form_field("Output field").locator("input")
        field.fill("")
        field.press_sequentially("sharpness_v2", delay=80)
        app.page.wait_for_timeout(1500)  # let the last form update arrive
    with app.step("Weights and Precision are still the chosen ones"):
        expect(app.form_field("Weights")).to_contain_text(APP_CHECKPOINT_NAME)
        expect(app.form_field("Precision")).to_contain_text("fp32")
        expect(app.error_box()).to_have_count(0)
        expect(app.execute_button()).to_be_enabled()


def _in_a_thread(work) -> None:
    """Run ``work`` in a thread of its own: Playwright's sync API keeps an event loop running in
    this one, and the delegated service starts its own with ``asyncio.run``."""
    errors = []

    def target():
        try:
            work()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=600)
    assert not thread.is_alive(), "the delegated workers did not finish in 10 minutes"
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def scheduling_server(browser_requirements, plugin_link, app_weights_dir,  # noqa: F811
                      tmp_path_factory):
    """An App server that offers Schedule (legacy orchestrators allowed)."""
    yield from serve_app(tmp_path_factory.mktemp("scheduling_server"), app_weights_dir,
                         FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true")


def test_sharded_background_run_on_the_whole_dataset(browser, scheduling_server, app_dataset,
                                                     monkeypatch, tmp_path):
    """Schedule a 2-shard run on the whole dataset from the form; the workers (this process,
    as `fiftyone delegated launch` would) re-check it under the same policy and score every
    sample."""
    from fiftyone.operators.delegated import DelegatedOperationService
    from playwright.sync_api import expect

    from tests.app.app_ui import AppUI

    dataset, _ = app_dataset
    # The workers apply the same App policy as the server that queued the run.
    monkeypatch.setenv("QUALICLIP_APP_WEIGHTS_DIRS", str(scheduling_server.weights_dir))
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.add_init_script("window.IS_PLAYWRIGHT = true;")
    app = AppUI(context.new_page(), scheduling_server, shots_dir=tmp_path / "screenshots")
    service = DelegatedOperationService()
    try:
        app.open_dataset(dataset.name)
        app.open_operator()
        with app.step("choose the checkpoint, run in the background in 2 shards"):
            app.choose_weights(APP_CHECKPOINT_NAME)
            app.form_field("Run in the background (delegated)").locator("input").check()
            expect(app.form_field("Shards")).to_be_visible()
            app.fill("Shards", "2")
            app.page.wait_for_timeout(1000)
            expect(app.error_box()).to_have_count(0)
        with app.step("press Schedule: one operation is queued"):
            # The split button's primary is Execute; Schedule is in its menu (the arrow).
            split = app.form().get_by_role("group", name="split button")
            split.get_by_role("button").last.click()
            app.page.get_by_role("menuitem").filter(has_text="Schedule").first.click()
            # (the form() locator finds the dialog by its Execute button: not any more)
            button = app.page.get_by_role("button", name="Schedule", exact=True)
            expect(button).to_be_enabled()
            button.click()
            deadline = time.time() + 30
            while not service.list_operations(dataset_name=dataset.name):
                assert time.time() < deadline, "nothing was queued"
                time.sleep(0.5)
    finally:
        context.close()
    for _ in range(2):  # the scheduled run queues its shards, then the shards run
        _in_a_thread(lambda: service.execute_queued_operations(dataset_name=dataset.name))
    ops = service.list_operations(dataset_name=dataset.name)
    assert len(ops) == 3, [(op.run_state, op.result.error if op.result else None) for op in ops]
    assert all(op.run_state == "completed" for op in ops), [
        op.result.error for op in ops if op.result is not None]
    dataset.reload()
    assert len(dataset.exists("quality")) == len(dataset)
