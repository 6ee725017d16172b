"""One rule for which weights every entry point uses: the explicit argument, else
``$QUALICLIP_WEIGHTS``, else the official release (docs/scoring.md, "Which weights").

Each entry point runs with ``QUALICLIP_WEIGHTS`` naming one tiny checkpoint ("env") while the
weights cache holds a different tiny network under the official file name ("official"), so
nothing is downloaded and an entry point that ignores the variable loads the decoy: the test
sees which of the two networks was used. The download and ``--init openai`` failures are
provoked with a loopback port nobody listens on.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import make_image

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Setting:
    env: Path       # $QUALICLIP_WEIGHTS
    official: Path  # the cached stand-in for the official weights
    images: list[Path]
    tmp: Path

    def label(self, used: str) -> str:
        """``"env"`` or ``"official"`` for a reported weights name or path."""
        if used == str(self.env):
            return "env"
        if used in ("qualiclip", str(self.official)):
            return "official"
        raise AssertionError(f"unexpected weights {used!r}")


@pytest.fixture(scope="module")
def decoy_official(tmp_path_factory) -> Path:
    """A tiny network other than ``tiny_checkpoint``'s (other seed), as the cache's official
    file: an entry point that ignores ``$QUALICLIP_WEIGHTS`` loads it instead of downloading."""
    import torch

    from qualiclip.architecture import TINY_TEST_CONFIG, build_clip, compute_prompt_features
    from qualiclip.checkpoint import write_checkpoint
    from qualiclip.prompts import flat_prompts
    from qualiclip.weights import OFFICIAL

    torch.manual_seed(99)
    clip = build_clip(TINY_TEST_CONFIG).eval()
    cache = tmp_path_factory.mktemp("cache")
    return write_checkpoint(cache / OFFICIAL.filename, model_config=TINY_TEST_CONFIG,
                            state_dict=clip.state_dict(),
                            prompt_features=compute_prompt_features(clip, flat_prompts()))


@pytest.fixture()
def setting(tmp_path, monkeypatch, tiny_checkpoint, decoy_official) -> Setting:
    monkeypatch.setenv("QUALICLIP_WEIGHTS", str(tiny_checkpoint))
    monkeypatch.setenv("QUALICLIP_CACHE", str(decoy_official.parent))
    monkeypatch.delenv("QUALICLIP_SHA256", raising=False)
    images = [make_image(tmp_path / f"img_{i}.png", size=(64, 48), seed=i) for i in range(5)]
    return Setting(tiny_checkpoint, decoy_official, images, tmp_path)


def _weights_args(weights: str | None) -> list[str]:
    return [] if weights is None else ["--weights", weights]


def _by_scores(s: Setting, scores: list[float]) -> str:
    """Which of the two networks gave ``scores`` for ``s.images``."""
    import qualiclip

    for name, path in (("env", s.env), ("official", s.official)):
        model = qualiclip.load_model(path, device="cpu")
        reference = [r.score for r in qualiclip.score_images(
            s.images, model=model, precision="fp32", progress=False, num_workers=0)]
        if scores == pytest.approx(reference, abs=1e-5):
            return name
    raise AssertionError(f"scores {scores} match neither network")


# --- entry points: each runs with weights=None (the default) or an explicit choice ----------
def lib_load_model(s: Setting, weights: str | None) -> str:
    import qualiclip

    return s.label(qualiclip.load_model(weights, device="cpu").weights_info["path"])


def lib_score_images(s: Setting, weights: str | None) -> str:
    import qualiclip

    results = qualiclip.score_images(s.images, weights=weights, device="cpu", precision="fp32",
                                     progress=False, num_workers=0)
    return s.label(results.preprocessing["weights"])


def lib_iter_scores(s: Setting, weights: str | None) -> str:
    import qualiclip

    return _by_scores(s, [r.score for r in qualiclip.iter_scores(
        s.images, weights=weights, device="cpu", precision="fp32", progress=False,
        num_workers=0)])


def cli_score(s: Setting, weights: str | None) -> str:
    from qualiclip.cli import main

    out = s.tmp / "scores.csv"
    result = CliRunner().invoke(main, ["score", *map(str, s.images), "-o", str(out),
                                       "--device", "cpu", "--precision", "fp32", "--workers",
                                       "0", "--no-progress", *_weights_args(weights)])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_name(out.name + ".preprocessing.json").read_text())
    return s.label(meta["weights"])


def cli_download(s: Setting, weights: str | None) -> str:
    from qualiclip.cli import main

    result = CliRunner().invoke(main, ["download", *_weights_args(weights)])
    assert result.exit_code == 0, result.output
    path = next(line.split(None, 1)[1] for line in result.output.splitlines()
                if line.startswith("path:"))
    return s.label(path)


def cli_eval(s: Setting, weights: str | None) -> str:
    from qualiclip_train.evaluate_cli import eval_command

    labels = s.tmp / "labels.csv"
    labels.write_text("path,mos\n" + "".join(f"{p.name},{i + 1}\n"
                                             for i, p in enumerate(s.images)))
    out = s.tmp / "eval.json"
    result = CliRunner().invoke(eval_command, [str(labels), "--device", "cpu", "--json-out",
                                               str(out), *_weights_args(weights)])
    assert result.exit_code == 0, result.output
    return s.label(json.loads(out.read_text())["weights"])


def cli_sensitivity(s: Setting, weights: str | None) -> str:
    from qualiclip_train.sensitivity_cli import sensitivity

    out = s.tmp / "sensitivity"
    result = CliRunner().invoke(sensitivity, [str(s.images[0]), "--device", "cpu", "--crop",
                                              "32", "--levels", "2", "--type", "gaussian_blur",
                                              "-o", str(out), *_weights_args(weights)])
    assert result.exit_code == 0, result.output
    with open(out / "sensitivity.csv", newline="") as handle:
        (used,) = {row["weights"] for row in csv.DictReader(handle)}
    return s.label(used)


def train_init(s: Setting, weights: str | None) -> str:
    """``qualiclip-train`` without ``--init`` starts from the default weights: the options as
    the command parses them, then the initial model they load (a full run is tested in
    tests/training/test_cli.py)."""
    from qualiclip_train.cli import main
    from qualiclip_train.config import TrainConfig
    from qualiclip_train.initial_model import initial_model

    args = ["--pristine-dir", str(s.tmp), "--output-dir", str(s.tmp / "out")]
    context = main.make_context("qualiclip-train",
                                args + ([] if weights is None else ["--init", weights]))
    cfg = TrainConfig(**context.params)
    source = initial_model(cfg.init).source
    assert s.label(source) == s.label(cfg.init)
    return s.label(cfg.init)


def plugin_load_model(s: Setting, weights: str | None) -> str:
    import qualiclip_plugin

    model = qualiclip_plugin.load_model(weights=weights, device="cpu")
    return s.label(model.config.weights)


def plugin_api(s: Setting, weights: str | None) -> str:
    import fiftyone as fo

    from qualiclip_plugin.api import compute_image_quality

    dataset = fo.Dataset()
    dataset.add_samples([fo.Sample(filepath=str(p)) for p in s.images])
    compute_image_quality(dataset, field="quality", weights=weights, device="cpu",
                          precision="fp32", pair_scores=False, num_workers=0)
    scores = dataset.values("quality")
    dataset.delete()
    return _by_scores(s, scores)


def _zoo_source():
    spec = importlib.util.spec_from_file_location("qualiclip_zoo_rule",
                                                  REPO / "zoo" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def zoo_load_model(s: Setting, weights: str | None) -> str:
    model = _zoo_source().load_model("qualiclip", str(s.tmp / "zoo.json"), weights=weights,
                                     device="cpu")
    return s.label(model.config.weights)


#: ``entry(setting, weights) -> "env" | "official"``: which network the entry point used.
ENTRY_POINTS: list = [
    lib_load_model, lib_score_images, lib_iter_scores, cli_score, cli_download, cli_eval,
    cli_sensitivity, train_init, plugin_load_model, zoo_load_model,
    pytest.param(plugin_api, marks=pytest.mark.db),
]


@pytest.mark.parametrize("entry", ENTRY_POINTS,
                         ids=lambda e: getattr(e, "__name__", None))
def test_env_weights_are_the_default_and_an_explicit_choice_wins(setting, entry):
    assert entry(setting, None) == "env"
    # Even the official name, given explicitly, beats the environment.
    assert entry(setting, "qualiclip") == "official"


def test_no_env_means_the_official_weights(setting, monkeypatch):
    monkeypatch.setenv("QUALICLIP_WEIGHTS", "  ")  # blank counts as unset
    assert lib_load_model(setting, None) == "official"
    assert cli_score(setting, None) == "official"


def test_zoo_download_records_the_env_weights(setting):
    record_path = setting.tmp / "zoo" / "model.json"
    _zoo_source().download_model("qualiclip", str(record_path))
    record = json.loads(record_path.read_text())
    assert record["path"] == str(setting.env)


def test_info_names_the_default_weights(setting):
    from qualiclip.cli import main

    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert f"default:   {setting.env} (set by $QUALICLIP_WEIGHTS)" in result.output


# --- failures: one line that says where the weights came from and what to do ---------------
def _closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _single_error_line(output: str) -> str:
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    assert output.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def test_env_weights_missing_is_named(setting, monkeypatch):
    from qualiclip.cli import main

    missing = setting.tmp / "nowhere.pth"
    monkeypatch.setenv("QUALICLIP_WEIGHTS", str(missing))
    result = CliRunner().invoke(main, ["score", str(setting.images[0]), "--device", "cpu"])
    assert result.exit_code == 1
    line = _single_error_line(result.output)
    assert f"{str(missing)!r} (from $QUALICLIP_WEIGHTS) not found" in line


def test_failed_download_names_both_ways_to_use_a_local_checkpoint(setting, tmp_path,
                                                                   monkeypatch):
    """The official weights cannot be fetched (their address: a closed loopback port)."""
    from qualiclip.cli import main
    from qualiclip.weights import OFFICIAL, REGISTRY

    monkeypatch.delenv("QUALICLIP_WEIGHTS")
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "empty-cache"))
    url = f"http://127.0.0.1:{_closed_port()}/qualiclip.pth"
    monkeypatch.setitem(REGISTRY, OFFICIAL.name, dataclasses.replace(OFFICIAL, url=url))
    started = time.monotonic()
    result = CliRunner().invoke(main, ["score", str(setting.images[0]), "--device", "cpu",
                                       "--no-progress"])
    assert time.monotonic() - started < 30
    assert result.exit_code == 1
    line = _single_error_line(result.output)
    assert url in line
    assert "--weights PATH" in line and "QUALICLIP_WEIGHTS=PATH" in line
    assert str(tmp_path / "empty-cache" / OFFICIAL.filename) in line
    assert not list((tmp_path / "empty-cache").glob("*"))  # no partial file left behind


def test_train_init_openai_offline_fails_fast_in_one_line(tmp_path):
    """No Hugging Face Hub (a closed loopback port) and an empty cache: one line within
    seconds, not a minute of retries and a traceback."""
    from tests.training.conftest import write_pristine

    pristine = write_pristine(tmp_path / "pristine", 4)
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
           "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    cli = Path(sys.executable).parent / "qualiclip-train"
    started = time.monotonic()
    done = subprocess.run([str(cli), "--pristine-dir", str(pristine), "--output-dir",
                           str(tmp_path / "out"), "--init", "openai", "--steps", "1",
                           "--crop-size", "48", "--batch-size", "1", "--val-images", "1",
                           "--workers", "0", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr[-2000:]
    line = _single_error_line(done.stderr)
    assert "--init openai" in line and "127.0.0.1" in line
    assert "--init PATH" in line and "$QUALICLIP_WEIGHTS" in line
    assert str(tmp_path / "hf") in line  # where the cache is
    assert elapsed < 40, f"took {elapsed:.0f} s"  # open_clip's own retries take about 52 s


def test_train_init_openai_uses_the_cache_without_the_hub(tmp_path, monkeypatch):
    """A cached OpenAI checkpoint is used as is: no request to the (unreachable) Hub."""
    from huggingface_hub import constants
    from qualiclip_train.initial_model import _openai_checkpoint

    snapshot = tmp_path / "models--timm--resnet50_clip.openai" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    cached = snapshot / "open_clip_model.safetensors"
    cached.write_bytes(b"stand-in")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert _openai_checkpoint() == str(cached)


def test_train_env_weights_missing_is_named(tmp_path, monkeypatch):
    from qualiclip_train.cli import main

    from tests.training.conftest import write_pristine

    missing = tmp_path / "nowhere.pth"
    monkeypatch.setenv("QUALICLIP_WEIGHTS", str(missing))
    result = CliRunner().invoke(main, ["--pristine-dir", str(write_pristine(tmp_path / "p", 2)),
                                       "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert f"{str(missing)!r} (from $QUALICLIP_WEIGHTS) is neither" in result.output
