"""Sensitivity curves: the table's shape and values, a curve that must fall, the CLI outputs."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from qualiclip_train.degradation.distortions import DISTORTIONS
from qualiclip_train.sensitivity import SensitivityConfig, sensitivity_curves

from tests.synthetic import smooth_image


def _uint8_images(n: int, size: int = 96) -> list[torch.Tensor]:
    return [(smooth_image(200 + i, size)[0] * 255).round().byte() for i in range(n)]


def test_noise_curve_falls_for_a_model_that_sees_noise(probe_model):
    """With prompts that separate clean from noisy images, the three additive noise types must
    give falling curves: levels applied in order, scores averaged per level."""
    images = _uint8_images(3)
    noise_types = ("white_noise", "white_noise_ycbcr", "multiplicative_noise")
    points = sensitivity_curves(probe_model, images, SensitivityConfig(crop=64, types=noise_types))
    assert [(p.type, p.level) for p in points] == [(t, lv) for t in noise_types
                                                   for lv in range(1, 6)]
    white = [p for p in points if p.type == "white_noise"]
    curve = [white[0].pristine_score] + [p.mean_score for p in white]
    assert curve[-1] < curve[0] - 0.05
    assert all(b <= a + 1e-3 for a, b in zip(curve, curve[1:], strict=False)), curve
    assert white[0].srcc < -0.8
    # Independent check of one point: level 5 of white noise by hand, same seeds as the curves.
    from qualiclip_train.degradation.ladders import apply_ladder, single_ladder
    from qualiclip_train.evaluation import center_crop

    by_hand = []
    for i, image in enumerate(images):
        x = center_crop(image, 64).float().div(255)[None]
        ladder = single_ladder("white_noise", seed=i * 101, sign=1 if i % 2 == 0 else -1)
        by_hand.append(float(probe_model(apply_ladder(x, ladder, 5)[4, 0][None])[0]))
    assert white[-1].mean_score == pytest.approx(np.mean(by_hand), abs=1e-5)
    assert white[-1].std_score == pytest.approx(np.std(by_hand), abs=1e-5)


def test_cli_writes_24_types_by_5_levels(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_uint8_images(3, size=72)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"

    from qualiclip.cli import main

    result = CliRunner().invoke(main, [
        "sensitivity", str(folder), "--weights", str(tiny_checkpoint), "--device", "cpu",
        "--crop", "64", "--sample", "10", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    with (out / "sensitivity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 * 5
    assert {(r["type"], int(r["level"])) for r in rows} == {(t, lv) for t in DISTORTIONS
                                                             for lv in range(1, 6)}
    for r in rows:
        assert r["weights"] == str(tiny_checkpoint)
        assert r["group"] == DISTORTIONS[r["type"]].group
        assert int(r["n_images"]) == 3  # the broken file was skipped
        d = DISTORTIONS[r["type"]]
        # sign-alternating types: the distance from their neutral value, growing linearly
        # to the farthest published value on the positive side
        assert float(r["value"]) == pytest.approx(d.values[int(r["level"]) - 1]
                                                  if not d.signed else
                                                  max(v - d.neutral for v in d.values)
                                                  * int(r["level"]) / 5)
    assert len({r["pristine_score"] for r in rows}) == 1  # one pristine mean for every type
    # ... the model's mean score of the centre crops of the three readable images
    from qualiclip_train.evaluation import center_crop

    from qualiclip import load_model

    model = load_model(tiny_checkpoint, device="cpu")
    with torch.no_grad():
        pristine = [float(model(center_crop(x, 64).float().div(255)[None])[0])
                    for x in _uint8_images(3, size=72)]
    assert float(rows[0]["pristine_score"]) == pytest.approx(sum(pristine) / 3, abs=1e-5)
    # one SRCC per type, repeated on each level's row
    assert all(len({r["srcc"] for r in rows if r["type"] == t}) == 1 for t in DISTORTIONS)
    # a degradation changes the scores: not every curve is flat at the pristine score
    assert any(abs(float(r["mean_score"]) - float(r["pristine_score"])) > 1e-4 for r in rows)
    png = Image.open(out / "sensitivity.png")
    assert png.format == "PNG" and png.size[0] > 800 and png.size[1] > 600
    pixels = np.asarray(png.convert("L"))
    assert (pixels < 128).mean() > 0.01  # curves and axes were drawn


def test_cli_keeps_runs_with_the_same_checkpoint_name_apart(tiny_checkpoint, tmp_path):
    """Every training run writes qualiclip-finetuned.pth: two runs compared in one call must
    stay two curves, labelled by the path given."""
    import shutil

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_uint8_images(2, size=72)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"p{i}.png")
    runs = [tmp_path / "runs" / name / "qualiclip-finetuned.pth" for name in ("a", "b")]
    for path in runs:
        path.parent.mkdir(parents=True)
        shutil.copy(tiny_checkpoint, path)

    from qualiclip.cli import main

    result = CliRunner().invoke(main, [
        "sensitivity", str(folder), "--weights", str(runs[0]), "--weights", str(runs[1]),
        "--device", "cpu", "--crop", "64", "--type", "saturation_hsv", "-o", str(tmp_path / "o"),
    ])
    assert result.exit_code == 0, result.output
    with (tmp_path / "o" / "sensitivity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["weights"] for r in rows] == [str(runs[0])] * 5 + [str(runs[1])] * 5
    # HSV saturation is not a sign-alternating ladder: its last level (-0.4) keeps its sign.
    assert [float(r["value"]) for r in rows[:5]] == [0.4, 0.2, 0.1, 0.0, -0.4]


def test_plot_labels_are_the_shortest_distinct_path_tails():
    from qualiclip_train.sensitivity_plot import short_labels

    names = ["qualiclip", "/x/runs/a/qualiclip-finetuned.pth", "/x/runs/b/qualiclip-finetuned.pth",
             "/y/other.pth"]
    assert short_labels(names) == {
        "qualiclip": "qualiclip", "/y/other.pth": "y/other.pth",
        "/x/runs/a/qualiclip-finetuned.pth": "a/qualiclip-finetuned.pth",
        "/x/runs/b/qualiclip-finetuned.pth": "b/qualiclip-finetuned.pth",
    }
    assert short_labels(["same", "same"]) == {"same": "same"}
