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


@pytest.mark.parametrize(("name", "content", "looks_like"), [
    ("notes.txt", b"a note, not weights\n", "a text file"),
    ("photo.pth", None, "a JPEG image"),
    ("page.pth", b"<!DOCTYPE html><html>Rate limited</html>", "an HTML page"),
    ("empty.pth", b"", "an empty file"),
])
def test_a_file_that_is_not_a_torch_file_says_so_through_the_cli(tmp_path, tiny_checkpoint,
                                                                name, content, looks_like):
    from click.testing import CliRunner

    from qualiclip.cli import main
    from tests.conftest import make_image

    weights = tmp_path / name
    if content is None:
        from PIL import Image

        Image.open(make_image(tmp_path / "photo.jpg")).save(weights, format="JPEG")
    else:
        weights.write_bytes(content)
    image = make_image(tmp_path / "img.png")
    result = CliRunner().invoke(main, ["score", str(image), "--weights", str(weights),
                                       "--no-progress"])
    assert result.exit_code == 1 and type(result.exception) is SystemExit, result.output
    message = " ".join(result.output.split())
    assert f"{weights} is not a PyTorch checkpoint" in message and looks_like in message
    assert "Python objects" not in message and "KeyError" not in message
    assert "official QualiCLIP release" in message
    assert len(result.output.strip().splitlines()) == 1


def test_a_legacy_pickle_torch_file_is_still_read_as_a_checkpoint(tmp_path, tiny_checkpoint):
    """torch.save's pre-zip format (a pickle stream) passes the file sniffing."""
    raw = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path / "legacy.pth"
    torch.save(raw, path, _use_new_zipfile_serialization=False)
    assert read_checkpoint(path).format == "qualiclip"


def _variant(tiny_checkpoint, tmp_path, **changes):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path / "variant.pth"
    torch.save({**raw, **changes}, path)
    return path


@pytest.mark.parametrize(("fill", "expected"), [
    ("zeros", "its prompt_features are zero (all rows, so every image would score 0.5)"),
    ("one_zero_row", "its prompt_features are zero (rows [3]"),
    ("vector", "its prompt_features must be a 2-D floating-point tensor"),
])
def test_prompt_features_that_cannot_score_are_refused_at_load(tmp_path, tiny_checkpoint,
                                                                fill, expected):
    from qualiclip import load_model

    features = torch.load(tiny_checkpoint, weights_only=True)["prompt_features"].clone()
    if fill == "zeros":
        features.zero_()
    elif fill == "one_zero_row":
        features[3] = 0
    else:
        features = features.flatten()
    path = _variant(tiny_checkpoint, tmp_path, prompt_features=features)
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu", progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: {expected}") and "\n" not in message
    assert "re-export" in message


@pytest.mark.parametrize(("projection", "expected"), [
    (0.0, "are zero (all rows"),
    (1e38, "hold non-finite values"),  # finite weights whose products overflow
])
def test_prompt_features_computed_by_the_text_tower_are_checked_too(tmp_path, tiny_clip,
                                                                   projection, expected):
    """A checkpoint without stored prompt features has them computed by its text tower; a
    degenerate text tower must not score every image 0.5 (or NaN) either."""
    from qualiclip import load_model
    from qualiclip.architecture import TINY_TEST_CONFIG

    state = {k: v.clone() for k, v in tiny_clip.state_dict().items()}
    state["text_projection"].fill_(projection)
    path = tmp_path / "no-features.pth"
    torch.save({"format": "qualiclip-checkpoint", "format_version": 1,
                "model_config": TINY_TEST_CONFIG, "state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu", progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: the prompt features its text tower computes {expected}")
    assert "\n" not in message


def test_official_prompts_features_of_zeros_are_refused(tmp_path, tiny_official_checkpoint):
    raw = torch.load(tiny_official_checkpoint, weights_only=True)
    path = tmp_path / "official-zero.pth"
    torch.save({**raw, "prompts_features": torch.zeros_like(raw["prompts_features"])}, path)
    with pytest.raises(CheckpointError, match="its prompts_features are zero"):
        read_checkpoint(path)


@pytest.mark.parametrize(("config", "expected"), [
    ("RN50", "the model config must be an open_clip config dict like {'embed_dim'"),
    ({"vision_cfg": {"layers": [1, 1, 1, 1], "width": 100000, "image_size": 64},
      "embed_dim": 64}, "model config vision_cfg.width = 100000 must be a whole number in 1..1024"),
    ({"vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 64},
      "embed_dim": 10**9}, "model config embed_dim = 1000000000 must be"),
    ({"vision_cfg": {"layers": 12, "width": 8}, "embed_dim": 64},
     "vision_cfg.layers = 12 must be a list of 4 whole numbers"),
    ({"vision_cfg": [1, 2], "embed_dim": 64}, "model config entry 'vision_cfg' must be a dict"),
    ({"vision_cfg": {"layers": [1, 1, 1, 1], "width": 8, "image_size": 50}, "embed_dim": 64},
     "vision_cfg.image_size = 50 must be a multiple of 32"),
])
def test_a_bad_model_config_is_refused_before_anything_is_built(tmp_path, tiny_checkpoint,
                                                                 config, expected):
    from qualiclip import load_model

    path = _variant(tiny_checkpoint, tmp_path, model_config=config)
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu", progress=False)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message
