"""``qualiclip eval`` (training.evaluate_cli): correlations against MOS from a CSV, any format."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from qualiclip_train.evaluate_cli import eval_command
from scipy import stats

from tests.conftest import make_image


@pytest.mark.parametrize("fmt", ["project", "official"])
def test_eval_command(tmp_path, tiny_checkpoint, tiny_official_checkpoint, tiny_model, fmt):
    import torch
    from qualiclip_train.data import load_rgb

    lines = ["path,mos"]
    for i in range(6):
        path = make_image(tmp_path / f"img{i}.png", size=(64 + 8 * i, 64), seed=i)
        lines.append(f"{path.name},{i}")
    lines.append("missing.png,3")
    (tmp_path / "mos.csv").write_text("\n".join(lines) + "\n")
    weights = tiny_checkpoint if fmt == "project" else tiny_official_checkpoint
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        result = CliRunner().invoke(eval_command, [str(tmp_path / "mos.csv"), "--weights",
                                                   str(weights), "--device", "cpu", "--json-out",
                                                   str(tmp_path / "r.json"), "--scores-out",
                                                   str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "SRCC" in result.output and "PLCC" in result.output and "KRCC" in result.output
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n"] == 6 and r["skipped"] == 1
    # Independent check: score the files directly with the library model.
    with torch.no_grad():
        scores = [float(tiny_model(load_rgb(tmp_path / f"img{i}.png")[None].float() / 255))
                  for i in range(6)]
    assert r["srcc"] == pytest.approx(stats.spearmanr(scores, list(range(6))).statistic)
