"""``qualiclip eval`` and ``qualiclip sensitivity`` refuse weights they cannot load with one line
naming the file, like ``qualiclip score``, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from qualiclip_train.evaluate_cli import eval_command
from qualiclip_train.sensitivity_cli import sensitivity

from tests.conftest import make_image


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nowhere" / "missing.pth"


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02 this is not a checkpoint\n" * 20)
    return path


def _eval_args(tmp_path: Path, weights: Path) -> tuple:
    for i in range(3):
        make_image(tmp_path / f"img_{i}.png", seed=i)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,mos\n" + "".join(f"img_{i}.png,{i + 1}\n" for i in range(3)))
    return eval_command, [str(labels), "--weights", str(weights), "--device", "cpu"]


def _sensitivity_args(tmp_path: Path, weights: Path) -> tuple:
    folder = tmp_path / "images"
    folder.mkdir()
    make_image(folder / "a.png", size=(64, 64))
    return sensitivity, [str(folder), "--weights", str(weights), "--device", "cpu",
                         "--crop", "32", "--type", "gaussian_blur", "-o", str(tmp_path / "out")]


@pytest.mark.parametrize("command_args", [_eval_args, _sensitivity_args],
                         ids=["eval", "sensitivity"])
@pytest.mark.parametrize("weights", [_missing, _corrupt], ids=["missing", "corrupt"])
def test_unloadable_weights_are_a_one_line_error(tmp_path, command_args, weights):
    path = weights(tmp_path)
    command, args = command_args(tmp_path, path)
    result = CliRunner().invoke(command, args)

    # an exception other than click's exit would be a traceback on a terminal
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output
    assert result.output.rstrip().splitlines()[-1] == error_lines[0]  # nothing after it
    assert error_lines[0].startswith("Error: cannot load weights")
    assert str(path) in error_lines[0]
    assert not (tmp_path / "out").exists()  # sensitivity wrote nothing
