"""A trainer that never destroys a run: each refusal of ``qualiclip-train`` and its one line."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from click.testing import CliRunner
from qualiclip_train.cli import main
from qualiclip_train.data import find_images, split_holdout

from tests.training.test_cli import TINY


def invoke(args: list[str]):
    return CliRunner().invoke(main, args)


def one_line_error(result) -> str:
    """The error the CLI printed; fails if it is a traceback rather than a message."""
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, MemoryError)
    assert type(result.exception) is SystemExit, repr(result.exception)  # click's clean exit
    return " ".join(result.output.split())


@pytest.fixture()
def run_args(tmp_path, pristine_dir):
    return ["--pristine-dir", str(pristine_dir), "--output-dir", str(tmp_path / "run"),
            "--steps", "2", "--checkpoint-every", "1", "--eval-every", "0", *TINY]


def test_new_run_into_a_finished_run_is_refused_unless_overwrite(tmp_path, run_args):
    assert invoke(run_args).exit_code == 0
    ckpt = tmp_path / "run" / "qualiclip-finetuned.pth"
    before = ckpt.read_bytes()
    message = one_line_error(invoke(run_args))
    assert "already holds a run" in message and "--overwrite" in message
    assert ckpt.read_bytes() == before  # nothing touched
    assert invoke([*run_args, "--overwrite"]).exit_code == 0
    assert "--resume" in one_line_error(invoke([*run_args, "--overwrite", "--resume"]))


def test_new_run_into_a_training_state_is_refused(tmp_path, run_args):
    assert invoke([*run_args, "--stop-after", "1"]).exit_code == 0
    state = tmp_path / "run" / "train_state.pt"
    saved = state.read_bytes()
    assert "train_state.pt" in one_line_error(invoke(run_args))
    assert state.read_bytes() == saved
    assert invoke([*run_args, "--resume"]).exit_code == 0


def test_resume_refuses_a_changed_pristine_set_listing_the_differences(tmp_path, run_args,
                                                                      pristine_dir):
    from tests.conftest import make_image

    assert invoke([*run_args, "--stop-after", "1"]).exit_code == 0
    make_image(pristine_dir / "new_one.png", seed=99)
    (pristine_dir / "img_0.jpg").unlink()
    make_image(pristine_dir / "img_1.png", size=(90, 90), seed=42)  # replaced content
    message = one_line_error(invoke([*run_args, "--resume"]))
    assert "added 1: new_one.png" in message
    assert "removed 1: img_0.jpg" in message
    assert "changed 1: img_1.png" in message and "--allow-changed-pristine" in message

    allowed = invoke([*run_args, "--resume", "--allow-changed-pristine"])
    assert allowed.exit_code == 0, allowed.output
    state = torch.load(tmp_path / "run" / "train_state.pt", weights_only=True)
    assert state["step"] == 2
    assert state["pristine_changes"][0]["step"] == 1
    assert "added 1: new_one.png" in state["pristine_changes"][0]["changes"]


def test_unreadable_held_out_image_is_skipped_with_a_warning(tmp_path, pristine_dir, caplog):
    from qualiclip_train.data import load_rgb

    from qualiclip.images import ImageReadError

    # A PNG cut in half: its header parses (so the file is listed) but its pixels do not decode.
    victim = pristine_dir / "img_3.png"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(ImageReadError):
        load_rgb(victim)
    paths = find_images(pristine_dir)
    seed = next(s for s in range(50) if victim in split_holdout(paths, 2, s)[1])
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(tmp_path / "run"),
            "--steps", "1", "--eval-every", "0", *TINY, "--seed", str(seed)]
    with caplog.at_level(logging.WARNING, logger="qualiclip_train"):
        result = invoke(args)
    assert result.exit_code == 0, result.output
    assert any("held-out" in r.getMessage() and "img_3.png" in r.getMessage()
               for r in caplog.records)
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["after"]["ladders"] > 0  # the other held-out image was evaluated


def test_corrupt_train_state_is_one_line(tmp_path, run_args):
    assert invoke([*run_args, "--stop-after", "1"]).exit_code == 0
    state = tmp_path / "run" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:1000])  # a copy cut short
    message = one_line_error(invoke([*run_args, "--resume"]))
    assert "train_state.pt is corrupt" in message
    torch.save({"step": 1}, state)  # readable, but not a training state
    assert "missing total_steps" in one_line_error(invoke([*run_args, "--resume"]))


@pytest.mark.parametrize(("config", "expected"), [
    ("RN50", "not a usable model config"),  # a JSON string, not an object
    ({"embed_dim": 64, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 640000},
      "text_cfg": {"width": 64, "layers": 1}}, "vision_cfg.width = 640000"),
    ({"embed_dim": 64, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 8},
      "text_cfg": "big"}, "'text_cfg' must be a dict"),
])
def test_bad_arch_config_is_one_line(tmp_path, pristine_dir, config, expected):
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(config))
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(tmp_path / "run"),
            "--steps", "1", *TINY]
    args[args.index("tiny-test-rn")] = str(arch)
    assert expected in one_line_error(invoke(args))


def test_checkpoint_with_a_string_or_absurd_model_config_is_one_line(tmp_path, pristine_dir,
                                                                     tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=False)
    base = ["--pristine-dir", str(pristine_dir), "--output-dir", str(tmp_path / "run"),
            "--steps", "1", "--crop-size", "48", "--workers", "0", "--no-progress"]
    for bad, expected in (("RN50", "must be an open_clip config dict"),
                          ({**raw["model_config"], "embed_dim": 10**9}, "embed_dim")):
        path = tmp_path / "bad.pth"
        torch.save({**raw, "model_config": bad}, path)
        message = one_line_error(invoke([*base, "--init", str(path)]))
        assert expected in message and "bad.pth" in message


@pytest.mark.parametrize(("option", "value", "allowed"), [
    ("--lr", "nan", "a finite number in (0, 1]"),
    ("--lr", "1e308", "a finite number in (0, 1]"),
    ("--lr", "-1e-5", "a finite number in (0, 1]"),
    ("--epochs", "nan", "a finite number in (0, 1e+06]"),
    ("--epochs", "inf", "a finite number in (0, 1e+06]"),
    ("--steps", "0", "a whole number in 1..1000000000"),
    ("--batch-size", "-3", "a whole number in 1..4096"),
    ("--accum-steps", "0", "a whole number in 1..65536"),
    ("--weight-decay", "nan", "a finite number in [0, 1]"),
    ("--warmup-steps", "-1", "a whole number in 0..1000000000"),
    ("--min-lr-ratio", "inf", "a finite number in [0, 1]"),
    ("--margin", "nan", "a finite number in [0, 2]"),
    ("--margin", "-0.1", "a finite number in [0, 2]"),
    ("--consistency-weight", "inf", "a finite number in [0, 1e+06]"),
    ("--consistency-tolerance", "nan", "a finite number in [0, 2]"),
    ("--levels", "1", "a whole number in 2..64"),
    ("--crop-size", "100000", "a whole number in 32..4096"),
    ("--seed", "-5", "a whole number in 0..9223372036854775807"),
    ("--workers", "-1", "a whole number in 0..1024"),
])
def test_bad_numeric_option_is_clicks_one_line_and_creates_no_folder(tmp_path, pristine_dir,
                                                                     option, value, allowed):
    out = tmp_path / "new" / "run"
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(out), *TINY]
    if option in args:  # TINY sets it: replace its value
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    message = one_line_error(invoke(args))
    assert f"Invalid value for '{option}': must be {allowed}, got " in message
    assert not (tmp_path / "new").exists()


def test_a_run_refused_after_validation_leaves_no_output_folder(tmp_path, pristine_dir):
    """--init names an existing file, which passes the option check; reading it fails only
    in the run: the output folder must not have been made by then."""
    notes = tmp_path / "notes.pth"
    notes.write_text("not weights\n")
    out = tmp_path / "new" / "run"
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(out), "--steps", "1",
            "--crop-size", "48", "--workers", "0", "--no-progress", "--init", str(notes)]
    assert "is not a PyTorch checkpoint" in one_line_error(invoke(args))
    assert not (tmp_path / "new").exists()


def test_output_dir_under_a_file_is_refused(tmp_path, pristine_dir):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(blocker / "run"), *TINY]
    message = one_line_error(invoke(args))
    assert "Invalid value for '--output-dir'" in message
    assert f"not writable: {blocker} is a file" in message
