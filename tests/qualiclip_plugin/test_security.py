"""The App is a trust boundary: every operator execution follows the server's policy.

One test per class of attack found on a shared App server. Requests go through
``foo.execute_operator`` (what the App's Execute button reaches: ``resolve_input`` checks, then
``execute``); each must be refused with nothing written, fetched or copied.
"""

from __future__ import annotations

import http.server
import os
import threading
import uuid
from pathlib import Path

import pytest

from qualiclip_plugin import OPERATOR_URI, PLUGIN_NAME
from tests.conftest import WEIGHTS_DIR, make_image, refusal
from tests.qualiclip_plugin.test_operator import _params, _snapshot

REPORT_URI = f"{PLUGIN_NAME}/write_quality_report"
MAPS_URI = f"{PLUGIN_NAME}/compute_quality_maps"


def _execute(uri, target, **params):
    import fiftyone.operators as foo

    return lambda: foo.execute_operator(uri, ctx=dict(view=target.view(), params=params))


@pytest.fixture()
def scored(make_dataset, image_files, tiny_checkpoint):
    """A dataset of 4 images scored into ``quality`` by the plugin (Python API)."""
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:4])
    compute_image_quality(dataset, **_params(tiny_checkpoint))
    return dataset


@pytest.fixture()
def report_folder(scored):
    from qualiclip_plugin.trust.policy import AppPolicy, dataset_folder

    folder = dataset_folder(AppPolicy.current(), scored.name, str(scored._doc.id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- report files -----------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink_file", "symlink_folder"])
def test_report_cannot_escape_its_folder(how, scored, report_folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.html"
    if how == "absolute":
        name = str(victim)
    elif how == "dotdot":
        name = "../" * 12 + str(victim).lstrip("/")
    elif how == "symlink_file":  # a link planted in the folder must not be written through
        (report_folder / "evil.html").symlink_to(victim)
        name = "evil"
    else:
        report_folder.rmdir()
        report_folder.symlink_to(outside, target_is_directory=True)
        name = "victim"
    message = refusal(_execute(REPORT_URI, scored, field="quality", name=name))
    assert "report name" in message
    assert not victim.exists() and sorted(os.listdir(outside)) == []


def test_report_never_replaces_a_file_it_did_not_write(scored, report_folder, monkeypatch):
    import fiftyone.operators as foo

    theirs = report_folder / "notes.html"
    theirs.write_text("my notes")
    message = refusal(_execute(REPORT_URI, scored, field="quality", name="notes"))
    assert "did not write" in message and theirs.read_text() == "my notes"

    # Its own report is replaced by a rerun that asks to; the extension is always the plugin's.
    for _ in range(2):
        result = foo.execute_operator(REPORT_URI, ctx=dict(
            view=scored.view(), params=dict(field="quality", name="mine.pth", overwrite=True)))
        assert result.error is None, result.error
    assert (report_folder / "mine.pth.html").is_file() and not (report_folder / "mine.pth").exists()

    monkeypatch.setenv("QUALICLIP_APP_REPLACE_FILES", "1")  # the admin allows it
    result = foo.execute_operator(REPORT_URI, ctx=dict(
        view=scored.view(), params=dict(field="quality", name="notes", overwrite=True)))
    assert result.error is None and theirs.read_text().startswith("<!DOCTYPE html>")


def test_tags_cannot_put_code_at_the_start_of_a_line(scored, report_folder):
    import fiftyone.operators as foo

    payload = "x\nimport os; os.system('touch /tmp/pwned')\r\nimport sys"
    sample = scored.first()
    sample.tags.append(payload)
    sample.save()
    result = foo.execute_operator(REPORT_URI, ctx=dict(
        view=scored.view(), params=dict(field="quality", name="tags", group_by=["tags"])))
    assert result.error is None, result.error
    page = (report_folder / "tags.html").read_text()
    assert "os.system" in page  # shown, escaped
    assert not [line for line in page.splitlines() if line.lstrip().startswith("import")]


# --- weights ----------------------------------------------------------------------------------
@pytest.fixture()
def counting_server():
    """A loopback HTTP server that counts the requests it gets."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"secret internal body")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", hits
    server.shutdown()


@pytest.mark.parametrize("uri", [OPERATOR_URI, MAPS_URI])
def test_weights_urls_are_never_fetched_or_copied(uri, make_dataset, image_files,
                                                  counting_server, tmp_path):
    from qualiclip.weights import cache_dir

    url, hits = counting_server
    private = tmp_path / "private.pth"
    private.write_bytes(b"private")
    private.chmod(0o600)
    dataset = make_dataset(image_files[:2])
    cached_before = sorted(cache_dir().rglob("*")) if cache_dir().exists() else []
    for weights in (f"{url}/model.pth", f"file://{private}", f"FILE://{private}"):
        before = _snapshot(dataset)
        message = refusal(_execute(uri, dataset, weights=weights, device="cpu"))
        assert "not accepted" in message or "not among" in message, message
        assert _snapshot(dataset) == before
    assert hits == []
    assert (sorted(cache_dir().rglob("*")) if cache_dir().exists() else []) == cached_before


def test_weights_errors_do_not_reveal_what_exists(make_dataset, image_files, tmp_path):
    dataset = make_dataset(image_files[:2])
    existing = tmp_path / "there.pth"
    existing.write_bytes(b"x")
    messages = [refusal(_execute(OPERATOR_URI, dataset, weights=str(path), device="cpu"))
                .replace(str(path), "PATH").replace(path.name, "PATH")  # names only now
                for path in (existing, tmp_path / "missing.pth", Path("/etc/shadow"))]
    assert messages[0] == messages[1] == messages[2], messages
    escape = str(WEIGHTS_DIR / ".." / ".." / "etc" / "passwd")
    assert "not among" in refusal(_execute(OPERATOR_URI, dataset, weights=escape))


def test_offered_weights_with_non_finite_tensors_are_refused(make_dataset, image_files,
                                                             tiny_checkpoint):
    import torch

    dataset = make_dataset(image_files[:2])
    raw = torch.load(tiny_checkpoint, weights_only=True)
    key = next(k for k, v in raw["state_dict"].items() if v.is_floating_point())
    raw["state_dict"][key] = raw["state_dict"][key].clone().fill_(float("nan"))
    corrupt = WEIGHTS_DIR / f"corrupt-{uuid.uuid4().hex[:6]}.pth"
    torch.save(raw, corrupt)
    try:
        before = _snapshot(dataset)
        message = refusal(_execute(OPERATOR_URI, dataset, weights=str(corrupt), device="cpu"))
        assert "corrupt" in message and _snapshot(dataset) == before
    finally:
        corrupt.unlink()


# --- user data --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["flag_tag", "flag_field", "attribute_field", "error_field"])
def test_user_tags_and_fields_are_never_touched(case, make_dataset, image_files,
                                                tiny_checkpoint):
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:4])
    params = _params(tiny_checkpoint, flag_percent=50)
    if case == "flag_tag":
        sample = dataset.first()
        sample.tags = ["reviewed"]
        sample.save()
        params["flag_tag"] = "reviewed"
    elif case == "flag_field":
        dataset.add_sample_field("keep", fo.BooleanField)
        dataset.set_values("keep", [True] * len(dataset))
        params["flag_field"] = "keep"
    elif case == "attribute_field":
        dataset.set_values("quality_noise_free", [0.9] * len(dataset))
    else:
        dataset.set_values("quality_error", ["my note"] * len(dataset))
    before = _snapshot(dataset)
    message = refusal(_execute(OPERATOR_URI, dataset, **params))
    assert "not set by this plugin" in message or "not written by this plugin" in message
    assert _snapshot(dataset) == before
    with pytest.raises(Exception, match="by this plugin"):  # trusted Python callers too
        compute_image_quality(dataset, **params)
    assert _snapshot(dataset) == before


def test_a_flag_tag_the_plugin_set_can_be_reused(make_dataset, image_files, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality

    dataset = make_dataset(image_files[:4])
    compute_image_quality(dataset, **_params(tiny_checkpoint, flag_percent=50))
    summary = compute_image_quality(dataset, **_params(tiny_checkpoint, flag_percent=25,
                                                        overwrite=True))
    assert summary["flagged"] == 1 and len(dataset.match_tags("low_quality")) == 1


@pytest.mark.parametrize("param", [{"shard_index": 0, "shard_bounds": ["0" * 24, None]},
                                   {"shard_index": 0}, {"plan": "f" * 32}])
def test_shards_and_plans_cannot_come_from_a_form(param, make_dataset, image_files,
                                                  tiny_checkpoint):
    dataset = make_dataset(image_files[:3])
    before = _snapshot(dataset)
    message = refusal(_execute(OPERATOR_URI, dataset, **_params(tiny_checkpoint), **param))
    assert any(why in message for why in ("shards are planned by the plugin",
                                          "plan is unknown", "plan cannot be changed"))
    assert _snapshot(dataset) == before


def test_second_run_on_a_claimed_field_is_refused_until_the_claim_expires(
        make_dataset, image_files, tiny_checkpoint, monkeypatch):
    import fiftyone.operators as foo

    from qualiclip_plugin.scoring import claims
    from qualiclip_plugin.scoring.runner import ScoringRun

    dataset = make_dataset(image_files[:3])
    from qualiclip_plugin.trust.request import parse_request

    first = ScoringRun(dataset, dataset.view(), parse_request(_params(tiny_checkpoint)),
                       immediate=True)
    first.prepare()
    steps = first.steps()
    next(steps)  # the first run holds the claim now, mid-run
    before = _snapshot(dataset)
    message = refusal(_execute(OPERATOR_URI, dataset, **_params(tiny_checkpoint)))
    assert "being written by another run" in message
    assert _snapshot(dataset) == before
    for _ in steps:  # the first run finishes and releases the field
        pass
    assert claims.holder(dataset, "quality") is None

    # A killed run's claim is taken over once it is older than the timeout.
    monkeypatch.setenv(claims.TIMEOUT_ENV, "1")
    claims.claim(dataset, "quality", "killed-run", lifetime_s=0.01)
    result = foo.execute_operator(OPERATOR_URI, ctx=dict(
        view=dataset.view(), params=_params(tiny_checkpoint, overwrite=True)))
    assert result.error is None, result.error
    assert claims.holder(dataset, "quality") is None


@pytest.mark.parametrize("params,expected", [
    ({"num_workers": 10_000}, "num_workers"),
    ({"num_shards": 10**15}, "num_shards"),
    ({"chunk_size": 10**15}, "chunk_size"),
    ({"batch_size": 10**7}, "batch_size"),
    ({"device": "meta"}, "device"),
    ({"device": "cuda:7"}, "device"),
])
def test_resources_are_bounded_before_any_write(params, expected, make_dataset, image_files,
                                                tiny_checkpoint):
    dataset = make_dataset(image_files[:3])
    before = _snapshot(dataset)
    message = refusal(_execute(OPERATOR_URI, dataset, **{**_params(tiny_checkpoint), **params}))
    assert expected in message, message
    assert _snapshot(dataset) == before


def test_more_shards_than_samples_is_refused(make_dataset, image_files, tiny_checkpoint):
    from qualiclip_plugin.api import compute_image_quality
    from qualiclip_plugin.trust.request import RequestError

    dataset = make_dataset(image_files[:3])
    before = _snapshot(dataset)
    with pytest.raises(RequestError, match="more than the samples"):
        compute_image_quality(dataset, **_params(tiny_checkpoint, num_shards=4))
    assert _snapshot(dataset) == before


# --- non-finite -------------------------------------------------------------------------------
def test_nan_image_is_an_error_not_a_score(make_dataset, image_files, tiny_checkpoint, tmp_path):
    import numpy as np
    from PIL import Image

    pixels = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(48, 64)
    pixels[10, 10] = np.nan
    nan_tiff = tmp_path / "nan.tif"
    Image.fromarray(pixels, mode="F").save(nan_tiff)
    dataset = make_dataset([*image_files[:3], nan_tiff])
    from qualiclip_plugin.api import compute_image_quality

    summary = compute_image_quality(dataset, **_params(tiny_checkpoint, flag_percent=100))
    sample = dataset.one({"filepath": str(nan_tiff)})
    assert sample["quality"] is None and "non-finite" in sample["quality_error"]
    assert sample["quality_error"].startswith("nan.tif")  # the file, not its folder
    assert summary["scored"] == 3 and summary["failed"] == 1 and summary["flagged"] == 3
    assert sample["quality_flagged"] is None and "low_quality" not in sample.tags
    assert all(np.isfinite(v) for v in dataset.exists("quality").values("quality"))


def test_apply_model_refuses_a_non_float_label_field(make_dataset, image_files, tiny_checkpoint):
    import fiftyone as fo

    import qualiclip_plugin

    dataset = make_dataset(image_files[:2])
    dataset.add_sample_field("quality", fo.IntField)
    dataset.set_values("quality", [7, 8])
    model = qualiclip_plugin.load_model(weights=str(tiny_checkpoint), device="cpu")
    with pytest.raises(ValueError, match="IntField"):
        dataset.apply_model(model, label_field="quality")
    assert dataset.values("quality") == [7, 8]


def test_a_real_photo_still_scores_after_all_this(make_dataset, tmp_path, tiny_checkpoint):
    """The policy lets the ordinary request through: offered checkpoint, report, maps."""
    import fiftyone.operators as foo

    dataset = make_dataset([make_image(tmp_path / f"p{i}.jpg", seed=i) for i in range(3)])
    for uri, params in ((OPERATOR_URI, _params(tiny_checkpoint)),
                        (MAPS_URI, dict(weights=str(tiny_checkpoint), device="cpu")),
                        (REPORT_URI, dict(field="quality"))):
        result = foo.execute_operator(uri, ctx=dict(view=dataset.view(), params=params))
        assert result.error is None, (uri, result.error)
    assert len(dataset.exists("quality")) == 3 and len(dataset.exists("quality_map")) == 3
