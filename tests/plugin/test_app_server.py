"""End to end through FiftyOne's App server: the HTTP requests the App's operator menu sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from qualiclip_plugin import OPERATOR_URI
from tests.plugin.test_operator import TOL
from tests.private_mongod import free_port


@pytest.fixture(scope="module")
def app_server(plugin_link, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--port", str(port),
             "--address", "127.0.0.1"], env=os.environ.copy(), stdout=out,
            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()
            break
        except urllib.error.HTTPError:
            break  # the server answers
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"App server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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
    shown = [m["body"]["params"]["results"] for m in messages
             if m.get("body", {}).get("operator_uri") == "show_output"]
    assert shown and shown[0]["scored"] == len(dataset) - 1 and shown[0]["failed"] == 1

    dataset.reload()
    for sample in dataset.exists("quality"):
        assert sample["quality"] == pytest.approx(reference_scores[sample.filepath].score,
                                                  abs=TOL)
    assert len(dataset.exists("quality")) == len(dataset) - 1
    assert len(dataset.match_tags("low_quality")) == 3
