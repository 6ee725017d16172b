"""Unreadable checkpoints give one short line that names the file and never advises unsafe
loading."""

from __future__ import annotations

import pickle

import pytest
import torch

from qualiclip.checkpoint import CheckpointError, read_checkpoint


class Payload:
    """Any class: unpickling it would import and run code, so weights-only loading refuses."""


def test_a_file_holding_python_objects_is_refused_without_unsafe_advice(tmp_path):
    path = tmp_path / "objects.pth"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "objects.pth" in message and "\n" not in message
    assert "weights_only" not in message and "never loaded" in message


def test_a_truncated_file_gives_one_short_line(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"cannot read weights file {path}: ")
    assert "\n" not in message and len(message) < 400


def test_a_pickle_that_is_not_a_zip_is_refused(tmp_path):
    path = tmp_path / "plain.pth"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(CheckpointError, match="plain.pth"):
        read_checkpoint(path)
