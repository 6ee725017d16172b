"""The resume record ``train_state.pt``: round trip, its version policy and its refusals."""

from __future__ import annotations

import pytest
import torch
from qualiclip_train.config import ConfigError
from qualiclip_train.train_state import FORMAT, VERSION, TrainState


def _state() -> TrainState:
    return TrainState(step=3, total_steps=6, visual={"conv.weight": torch.randn(2, 3)},
                      optimizer={"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []},
                      scaler={}, eval_history=[{"step": 0, "srcc": -0.25}],
                      eval_before={"srcc": -0.25, "per_group": {"blur": 0.5}},
                      config={"seed": 0, "steps": 6}, world_size=1,
                      pristine={"a.png": [10, 123]},
                      pristine_changes=[{"step": 2, "changes": ["added 1: b.png"]}])


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "train_state.pt"
    state = _state()
    state.save(path)
    back = TrainState.load(path)
    assert back.version == VERSION
    assert torch.equal(back.visual["conv.weight"], state.visual["conv.weight"])
    assert back.optimizer["state"][0]["step"] == 3.0
    for name in ("step", "total_steps", "scaler", "eval_history", "eval_before", "config",
                 "world_size", "pristine", "pristine_changes"):
        assert getattr(back, name) == getattr(state, name), name
    raw = torch.load(path, weights_only=True)  # a flat dict: torch.load(path)["step"] works
    assert raw["format"] == FORMAT and raw["version"] == VERSION and raw["step"] == 3


def test_a_state_from_before_versions_reads_as_version_0(tmp_path):
    """What the trainer wrote before the record was versioned: the same keys, no version."""
    path = tmp_path / "train_state.pt"
    raw = {k: v for k, v in torch.load(_state().save(path), weights_only=True).items()
           if k not in ("format", "version", "config", "world_size", "pristine",
                        "pristine_changes")}
    torch.save(raw, path)
    back = TrainState.load(path)
    assert back.version == 0 and back.step == 3 and back.config is None
    assert back.pristine is None and back.pristine_changes == []


def test_a_newer_version_is_refused_in_one_line(tmp_path):
    path = tmp_path / "train_state.pt"
    raw = torch.load(_state().save(path), weights_only=True)
    torch.save({**raw, "version": VERSION + 1}, path)
    with pytest.raises(ConfigError) as caught:
        TrainState.load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert f"version {VERSION + 1}, newer than this qualiclip reads ({VERSION})" in message
    assert "--overwrite" in message


@pytest.mark.parametrize(("content", "expected"), [
    (b"garbage, not a zip", "is corrupt or not a training state"),
    (b"", "is corrupt or not a training state"),
])
def test_a_garbage_file_is_refused_in_one_line(tmp_path, content, expected):
    path = tmp_path / "train_state.pt"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        TrainState.load(path)
    message = str(caught.value)
    assert "\n" not in message and f"{path} {expected}" in message and "--overwrite" in message


@pytest.mark.parametrize(("raw", "expected"), [
    ([1, 2, 3], "is not a training state ('list')"),
    ({"format": "qualiclip", "version": 1}, "is not a training state ('qualiclip')"),
    ({"format": FORMAT, "version": "1"}, "has no valid format version ('1')"),
    ({"format": FORMAT, "version": 1, "step": 1}, "missing total_steps, visual"),
])
def test_a_foreign_or_incomplete_file_is_refused_in_one_line(tmp_path, raw, expected):
    path = tmp_path / "train_state.pt"
    torch.save(raw, path)
    with pytest.raises(ConfigError) as caught:
        TrainState.load(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and expected in message


def test_save_replaces_atomically_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "train_state.pt"
    _state().save(path)
    later = _state()
    later.step = 6
    later.save(path)
    assert TrainState.load(path).step == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.pt"]
