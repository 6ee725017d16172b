"""``qualiclip-train`` through CliRunner: help, early errors, a smoke run, outputs, resume."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from click.testing import CliRunner
from qualiclip_train.cli import main
from qualiclip_train.config import TrainConfig

TINY = ["--init", "random", "--arch", "tiny-test-rn", "--crop-size", "48", "--batch-size", "2",
        "--workers", "0", "--val-images", "2", "--no-progress", "--log-every", "2"]


def run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_help_lists_every_option_with_default():
    result = run(["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in text, f.name
    assert "[default: $QUALICLIP_WEIGHTS if set, else qualiclip" in text
    assert "[default: 224]" in text


@pytest.mark.parametrize("args, message", [
    (["--pristine-dir", "{tmp}/missing"], "no such folder"),
    (["--pristine-dir", "{tmp}/empty"], "no images found"),
    (["--pristine-dir", "{pristine}", "--levels", "1"], "--levels"),
    (["--pristine-dir", "{pristine}", "--batch-size", "0"], "--batch-size"),
    (["--pristine-dir", "{pristine}", "--steps", "5", "--epochs", "1"], "not both"),
    (["--pristine-dir", "{pristine}", "--init", "nonexistent.pth"], "--init"),
    (["--pristine-dir", "{pristine}", "--init", "random"], "needs --arch"),
    (["--pristine-dir", "{pristine}", "--init", "random", "--arch", "no-such-model"], "--arch"),
    (["--pristine-dir", "{pristine}", "--resume"], "nothing to resume"),
    (["--pristine-dir", "{pristine}", "--output-dir", "{tmp}/file.txt/out"], "not writable"),
])
def test_clear_errors_before_any_work(tmp_path, pristine_dir, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    filled = [a.format(tmp=tmp_path, pristine=pristine_dir) for a in args]
    if "--output-dir" not in filled:
        filled += ["--output-dir", str(tmp_path / "out")]
    result = CliRunner().invoke(main, filled)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out" / "train_state.pt").exists()


def test_smoke_run_outputs_load_and_score(tmp_path, pristine_dir):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--pristine-dir", str(pristine_dir), "--output-dir",
                                       str(out), "--steps", "4", "--export-official",
                                       "--checkpoint-every", "2", *TINY])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last == str(out / "qualiclip-finetuned.pth")
    for name in ("metrics.csv", "eval.json", "training_curves.png", "train_state.pt",
                 "qualiclip-finetuned-official.pth"):
        assert (out / name).is_file(), name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,loss,l_pos,l_neg,l_cons,lr,images_per_s") and len(rows) == 3

    from qualiclip import load_model
    from qualiclip.checkpoint import read_checkpoint

    ck = read_checkpoint(last)
    assert ck.format == "qualiclip" and ck.training_config["steps"] == 4
    assert ck.metadata["trained_steps"] == 4 and "srcc" in ck.metadata["eval_after"]
    assert ck.prompt_features.shape == (14, 64) and "token_embedding.weight" in ck.state_dict
    eval_json = json.loads((out / "eval.json").read_text())
    assert set(eval_json["after"]["per_group"]) == {"blur", "color", "compression", "noise",
                                                    "brightness", "spatial",
                                                    "sharpness_contrast"}
    model = load_model(last, device="cpu")
    scores = model(torch.rand(2, 3, 70, 90))
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    official = load_model(out / "qualiclip-finetuned-official.pth", device="cpu")
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(official(x), model(x), atol=1e-6)


@pytest.mark.parametrize("fmt", ["project", "official"])
def test_fine_tune_from_checkpoint_changes_only_the_image_tower(tmp_path, pristine_dir,
                                                                tiny_checkpoint,
                                                                tiny_official_checkpoint, fmt):
    out = tmp_path / "ft"
    source = tiny_checkpoint if fmt == "project" else tiny_official_checkpoint
    args = ["--pristine-dir", str(pristine_dir), "--output-dir", str(out), "--steps", "2",
            "--init", str(source), "--lr", "1e-3", *TINY[4:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    from qualiclip.checkpoint import read_checkpoint

    before = read_checkpoint(source)
    after = read_checkpoint(out / "qualiclip-finetuned.pth")
    # Official weights carry CC BY-NC 4.0, and the fine-tuned checkpoint says so.
    assert ("CC BY-NC 4.0" in after.metadata.get("license", "")) == (fmt == "official")
    assert torch.equal(before.prompt_features, after.prompt_features)
    assert torch.equal(before.state_dict["token_embedding.weight"],
                       after.state_dict["token_embedding.weight"])
    assert not torch.equal(before.state_dict["visual.layer1.0.conv1.weight"],
                           after.state_dict["visual.layer1.0.conv1.weight"])
    # Frozen BatchNorm: running statistics untouched while the weights moved.
    key = "visual.bn1.running_mean"
    assert torch.equal(before.state_dict[key], after.state_dict[key])


@pytest.mark.parametrize("unversioned", [False, True], ids=["record", "pre-version-state"])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, pristine_dir,
                                                               unversioned):
    """Also from a state as written before the record had a version (read as version 0)."""
    from qualiclip_train.train_state import VERSION, TrainState

    common = ["--pristine-dir", str(pristine_dir), "--steps", "6", "--checkpoint-every", "3",
              "--accum-steps", "2", *TINY]
    full, split = tmp_path / "full", tmp_path / "split"
    assert run([*common, "--output-dir", str(full)]).exit_code == 0
    first = run([*common, "--output-dir", str(split), "--stop-after", "3"])
    assert first.exit_code == 0
    state = TrainState.load(split / "train_state.pt")
    assert state.step == 3 and state.version == VERSION
    if unversioned:
        raw = torch.load(split / "train_state.pt", weights_only=True)
        del raw["format"], raw["version"]
        torch.save(raw, split / "train_state.pt")
        assert TrainState.load(split / "train_state.pt").version == 0
    assert run([*common, "--output-dir", str(split), "--resume"]).exit_code == 0
    a = TrainState.load(full / "train_state.pt")
    b = TrainState.load(split / "train_state.pt")
    assert a.step == b.step == 6 and b.version == VERSION
    for key, value in a.visual.items():
        assert torch.equal(value, b.visual[key]), key
    for key, value in a.optimizer["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, b.optimizer["state"][key][name]), (key, name)
    assert a.eval_history == b.eval_history and a.eval_before == b.eval_before
    # Logged losses agree too (step 4's window is cut by the restart, so it averages less).
    rows_full = [r.split(",")[:6] for r in (full / "metrics.csv").read_text().splitlines()]
    rows_split = [r.split(",")[:6] for r in (split / "metrics.csv").read_text().splitlines()]
    assert [r[0] for r in rows_split] == ["step", "2", "4", "6"]
    assert rows_full[:2] == rows_split[:2] and rows_full[3] == rows_split[3]


def test_torchrun_two_processes(tmp_path, pristine_dir):
    """DistributedDataParallel through torchrun (2 CPU processes, gloo) trains and writes one
    loadable checkpoint."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "qualiclip_train.cli", "--pristine-dir", str(pristine_dir),
           "--output-dir", str(out), "--steps", "2", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines() == [str(out / "qualiclip-finetuned.pth")]
    from qualiclip.checkpoint import read_checkpoint

    ck = read_checkpoint(out / "qualiclip-finetuned.pth")
    assert ck.metadata["world_size"] == 2 and ck.metadata["trained_steps"] == 2


def test_epochs_resolve_to_steps():
    from qualiclip_train.run import resolve_steps

    cfg = TrainConfig(epochs=2.5, batch_size=4, accum_steps=2)
    assert resolve_steps(cfg, n_train=100, world_size=2) == 16  # ceil(250 / 16)
    assert resolve_steps(TrainConfig(steps=7), n_train=100, world_size=1) == 7
    assert resolve_steps(TrainConfig(), n_train=100, world_size=1) == 2000


def test_resume_refuses_options_that_change_the_run(tmp_path, pristine_dir):
    """A different seed (data order and held-out split) or batch size cannot be resumed; options
    that only change logging or speed can."""
    common = ["--pristine-dir", str(pristine_dir), "--steps", "4", "--checkpoint-every", "2",
              *TINY, "--output-dir", str(tmp_path / "run")]
    assert run([*common, "--stop-after", "2"]).exit_code == 0
    state_file = tmp_path / "run" / "train_state.pt"
    saved = state_file.read_bytes()

    changed = CliRunner().invoke(main, [*common, "--resume", "--seed", "1", "--batch-size", "3"])
    assert changed.exit_code != 0
    assert "--seed: 0 -> 1" in changed.output and "--batch-size: 2 -> 3" in changed.output
    assert state_file.read_bytes() == saved  # nothing was trained or overwritten

    allowed = run([*common, "--resume", "--log-every", "1", "--checkpoint-every", "4"])
    assert allowed.exit_code == 0, allowed.output
    assert torch.load(state_file, weights_only=True)["step"] == 4


def test_resume_checks_options_before_reading_init_weights(tmp_path, pristine_dir,
                                                           tiny_checkpoint):
    """A changed --init is reported as such; the new file is never read (it would fail)."""
    common = ["--pristine-dir", str(pristine_dir), "--steps", "4", "--checkpoint-every", "2",
              "--crop-size", "48", "--batch-size", "2", "--workers", "0", "--val-images", "2",
              "--no-progress", "--output-dir", str(tmp_path / "run")]
    assert run([*common, "--init", str(tiny_checkpoint), "--stop-after", "2"]).exit_code == 0
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, [*common, "--init", str(garbage), "--resume"])
    assert result.exit_code == 1 and "--init: " in result.output
    assert "garbage.pth" in result.output and "cannot load" not in result.output


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_default_workers_fit_the_usable_cores_without_torch_warnings(tmp_path, pristine_dir):
    """On a machine (or container) with fewer usable cores than 4, the default number of
    data-loading workers is the core count, so torch prints no 'worker processes' warning."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "qualiclip_train.cli", "--pristine-dir", str(pristine_dir),
            "--output-dir", str(tmp_path / "out"), "--steps", "1", "--eval-every", "0",
            *TINY]
    del args[args.index("--workers"):args.index("--workers") + 2]  # the default
    core = min(os.sched_getaffinity(0))
    result = subprocess.run(args, capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "worker processes in total" not in result.stderr
    assert (tmp_path / "out" / "qualiclip-finetuned.pth").is_file()
