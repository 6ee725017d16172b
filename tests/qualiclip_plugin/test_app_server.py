"""End to end through FiftyOne's App server: the HTTP requests the App's operator menu sends."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from qualiclip_plugin import OPERATOR_URI
from tests.app_server import running_app_server
from tests.qualiclip_plugin.test_operator import TOL


@pytest.fixture(scope="module")
def app_server(plugin_link, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    try:
        with running_app_server(log, env={"QUALICLIP_APP_DOWNLOADS": "0"}) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


def _post(url: str, route: str, payload: dict) -> bytes:
    request = urllib.request.Request(url + route, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def test_app_lists_resolves_and_executes(app_server, make_dataset, tiny_checkpoint,
                                         reference_scores):
    dataset = make_dataset()
    base = {"dataset_name": dataset.name, "view": [], "selected": [], "selected_labels": []}

    listed = json.loads(_post(app_server, "/operators", {"dataset_name": dataset.name}))
    ours = [op for op in listed["operators"] if op["uri"] == OPERATOR_URI]
    assert ours, listed["errors"]
    assert ours[0]["config"]["execute_as_generator"] is True

    form = json.loads(_post(app_server, "/operators/resolve-type", {
        **base, "operator_uri": OPERATOR_URI, "target": "inputs",
        "params": {"flag_mode": "percent"}}))
    props = form["type"]["properties"]
    for name in ("view_target", "field", "weights", "device", "batch_size", "max_side",
                 "pair_scores", "overwrite", "flag_mode", "flag_percent", "delegate"):
        assert name in props, name
    assert props["delegate"]["default"] is False  # small target: immediate by default

    params = {"view_target": "DATASET", "field": "quality", "weights": str(tiny_checkpoint),
              "device": "cpu", "precision": "fp32", "batch_size": 4, "pair_scores": True,
              "overwrite": False, "flag_mode": "percent", "flag_percent": 25, "delegate": False}
    body = _post(app_server, "/operators/execute/generator",
                 {**base, "operator_uri": OPERATOR_URI, "params": params})
    messages = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert not any("ERROR" in str(m.get("type")) for m in messages), messages
    triggered = [m.get("body", {}).get("operator_uri", "") for m in messages]
    assert "set_progress" in triggered and "reload_dataset" in triggered, triggered
    labels = [m["body"]["params"]["label"] for m in messages
              if m.get("body", {}).get("operator_uri") == "set_progress"]
    assert labels[0].startswith("Loading the QualiCLIP model"), labels  # before the slow load
    shown = [m["body"]["params"] for m in messages
             if m.get("body", {}).get("operator_uri") == "show_output"]
    assert shown and shown[0]["results"]["scored"] == len(dataset) - 1
    assert shown[0]["results"]["failed"] == 1
    mean = shown[0]["results"]["mean"]
    assert mean == round(mean, 4) and 0 < mean < 1  # rounded for people
    assert all(value is not None for value in shown[0]["results"].values())  # no empty rows
    # The App reads `outputs` with Property.fromJSON: a Property ({"type": {"name": ...}}),
    # not a bare Object ({"name": "Object", "properties": ...}).
    outputs = shown[0]["outputs"]
    assert outputs["type"]["name"] == "Object", outputs
    assert {"scored", "failed", "mean"} <= set(outputs["type"]["properties"])

    dataset.reload()
    for sample in dataset.exists("quality"):
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)
    assert len(dataset.exists("quality")) == len(dataset) - 1
    assert len(dataset.match_tags("low_quality")) == 3


def test_large_target_defaults_to_delegation_and_keeps_a_run_button(app_server, make_dataset,
                                                                    image_files,
                                                                    tiny_checkpoint):
    """Above IMMEDIATE_MAX_SAMPLES the form's "delegate" defaults on. The execution options must
    still allow immediate execution: with the App's default settings (no orchestrator
    registered, legacy orchestrators off) a delegated-only operator gets no run button at all.
    Execute then queues the run, because the operator forces delegation for that form."""
    from fiftyone.operators.delegated import DelegatedOperationService

    from qualiclip_plugin.trust.request import IMMEDIATE_MAX_SAMPLES

    paths = (image_files * (IMMEDIATE_MAX_SAMPLES // len(image_files) + 1))
    dataset = make_dataset(paths[:IMMEDIATE_MAX_SAMPLES + 1])
    base = {"dataset_name": dataset.name, "view": [], "selected": [], "selected_labels": [],
            "operator_uri": OPERATOR_URI}

    form = json.loads(_post(app_server, "/operators/resolve-type", {
        **base, "target": "inputs", "params": {}}))
    assert form["type"]["properties"]["delegate"]["default"] is True

    params = {"view_target": "DATASET", "weights": str(tiny_checkpoint), "device": "cpu",
              "delegate": True}
    for delegate in (True, False, None):
        sent = {**params, "delegate": delegate} if delegate is not None else {
            k: v for k, v in params.items() if k != "delegate"}
        options = json.loads(_post(app_server, "/operators/resolve-execution-options",
                                   {**base, "params": sent}))
        assert options["allow_immediate_execution"] is True, (delegate, options)
        assert options["allow_delegated_execution"] is True, (delegate, options)
        assert options["default_choice_to_delegated"] is (delegate is not False), (delegate,
                                                                                   options)
    assert options["orchestrator_registration_enabled"] is True  # the App's default settings

    # The App's Execute button with the form's default: queued, nothing scored in the server.
    body = _post(app_server, "/operators/execute/generator", {**base, "params": params})
    result = json.loads(body)
    assert result.get("delegated") is True, result
    service = DelegatedOperationService()
    ops = service.list_operations(dataset_name=dataset.name)
    try:
        assert [op.run_state for op in ops] == ["queued"]
        assert len(dataset.exists("quality")) == 0
    finally:
        for op in ops:
            service.delete_operation(op.id)


def test_operator_icons_exist_in_both_layouts(app_server, make_dataset):
    """Each operator's icon is a path inside the plugin folder: served by the App under the
    plugin's server path (the package layout the tests install), and present next to the
    repository root's fiftyone.yml (the `fiftyone plugins download` layout)."""
    import yaml

    repo = Path(__file__).resolve().parents[2]
    dataset = make_dataset()
    listed = json.loads(_post(app_server, "/operators", {"dataset_name": dataset.name}))
    ours = {op["uri"]: op for op in listed["operators"]
            if op["uri"].startswith("@qualiclip/qualiclip/")}
    manifest = yaml.safe_load((repo / "fiftyone.yml").read_text())
    assert sorted(uri.rsplit("/", 1)[-1] for uri in ours) == sorted(
        manifest["operators"] + manifest["panels"])  # a panel is an operator to the App
    plugins = json.loads(urllib.request.urlopen(app_server + "/plugins", timeout=30).read())
    [plugin] = [p for p in plugins["plugins"] if p["name"] == "@qualiclip/qualiclip"]
    for uri, op in ours.items():
        icon = op["config"]["icon"]
        assert icon and icon.startswith("/") and icon.endswith(".svg"), (uri, icon)
        with urllib.request.urlopen(app_server + plugin["server_path"] + icon,
                                    timeout=30) as response:
            served = response.read()
        assert b"<svg" in served, uri
        for manifest_dir in (repo, repo / "qualiclip_plugin"):
            assert (manifest_dir / icon.lstrip("/")).read_bytes() == served, (manifest_dir, icon)


# --- what App users see: refusals inline, defaults from the last run, one-sentence failures ---
def _form(app_server, dataset, params, uri=OPERATOR_URI):
    base = {"dataset_name": dataset.name, "view": [], "selected": [], "selected_labels": []}
    form = json.loads(_post(app_server, "/operators/resolve-type", {
        **base, "operator_uri": uri, "target": "inputs", "params": params}))
    return form["type"]["properties"]


def _cannot_run(props) -> str | None:
    box = props.get("cannot_run")
    if box is None:
        return None
    assert box["view"]["name"] == "Error" and box["view"]["label"] == "Cannot run", box
    assert box["invalid"] is True  # the server refuses to execute it as well
    return box["view"]["description"]


def test_unavailable_weights_are_refused_in_the_form(app_server, make_dataset, tiny_checkpoint):
    """This server may not download (QUALICLIP_APP_DOWNLOADS=0) and has no cached official
    weights: the form defaults to the checkpoint it offers, and says so for the official
    weights before anything runs."""
    dataset = make_dataset()
    props = _form(app_server, dataset, {})
    assert props["weights"]["default"] == str(tiny_checkpoint)
    assert _cannot_run(props) is None
    props = _form(app_server, dataset, {"weights": "qualiclip"})
    message = _cannot_run(props)
    assert message and message.startswith("Weights 'qualiclip' are not available on this server")
    base = {"dataset_name": dataset.name, "view": [], "selected": [], "selected_labels": [],
            "operator_uri": OPERATOR_URI}
    with pytest.raises(urllib.error.HTTPError):  # Execute anyway: refused, nothing written
        _post(app_server, "/operators/execute/generator",
              {**base, "params": {"weights": "qualiclip"}})
    assert len(dataset.exists("quality")) == 0 and dataset.list_runs() == []
    assert _cannot_run(_form(app_server, dataset, {"weights": str(tiny_checkpoint)})) is None


def test_form_defaults_to_the_last_run_and_refuses_mixed_settings(app_server, make_dataset,
                                                                  image_files, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:3])
    compute_image_quality(dataset, weights=str(tiny_checkpoint), device="cpu", max_side=64,
                          batch_size=3, pair_scores=False)
    props = _form(app_server, dataset, {})
    assert props["weights"]["default"] == str(tiny_checkpoint)
    assert props["max_side"]["default"] == 64 and props["batch_size"]["default"] == 3
    assert props["pair_scores"]["default"] is False
    assert _cannot_run(props) is None
    assert props["weights_note"]["view"]["label"] == "Checkpoint tiny.pth"
    message = _cannot_run(_form(app_server, dataset, {"max_side": 128}))
    assert message and "other settings" in message and "max_side: 64 -> 128" in message
    assert str(tiny_checkpoint.parent) not in message


def test_delegation_says_how_to_run_and_follow_the_job(app_server, make_dataset):
    dataset = make_dataset()
    props = _form(app_server, dataset, {"delegate": True, "weights": "qualiclip"})
    assert "fiftyone delegated launch" in props["delegation_help"]["view"]["label"]
    assert "fiftyone delegated list" in props["delegation_help"]["view"]["label"]


def test_a_failure_during_execution_is_one_sentence(app_server, make_dataset, image_files):
    from tests.conftest import WEIGHTS_DIR

    dataset = make_dataset(image_files[:2])
    bad = WEIGHTS_DIR / "not-a-checkpoint.pth"
    bad.write_bytes(b"\x00garbage" * 100)
    try:
        params = {"weights": str(bad), "device": "cpu"}
        assert _cannot_run(_form(app_server, dataset, params)) is None  # only loading tells
        base = {"dataset_name": dataset.name, "view": [], "selected": [],
                "selected_labels": [], "operator_uri": OPERATOR_URI}
        body = _post(app_server, "/operators/execute/generator", {**base, "params": params})
    finally:
        bad.unlink()
    messages = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    assert b"Traceback" not in body and not any("ERROR" in str(m.get("type"))
                                                for m in messages), body[:2000]
    [shown] = [m["body"]["params"] for m in messages
               if m.get("body", {}).get("operator_uri") == "show_output"]
    props = shown["outputs"]["type"]["properties"]
    assert list(props) == ["error"] and shown["results"] == {}  # no empty result rows
    sentence = props["error"]["view"]["description"]
    assert "cannot load weights 'not-a-checkpoint.pth'" in sentence and "\n" not in sentence
    assert str(WEIGHTS_DIR) not in sentence
    assert len(dataset.exists("quality")) == 0


def test_report_lands_in_its_folder_and_the_app_serves_it(app_server, make_dataset,
                                                          image_files, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:3])
    summary = compute_image_quality(dataset, weights=str(tiny_checkpoint), device="cpu")
    uri = "@qualiclip/qualiclip/write_quality_report"
    props = _form(app_server, dataset, {}, uri=uri)
    assert props["name"]["default"] == "quality-report" and _cannot_run(props) is None
    base = {"dataset_name": dataset.name, "view": [], "selected": [], "selected_labels": [],
            "operator_uri": uri}
    result = json.loads(_post(app_server, "/operators/execute", {**base, "params": {}}))
    assert result["result"]["report"] == "quality-report.html", result
    with urllib.request.urlopen(app_server + result["result"]["href"], timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.read().startswith(b"<!DOCTYPE html>")
    # The dialog rounds numbers (the stored summary keeps them exact).
    assert summary["mean"] != round(summary["mean"], 4)
