"""The qualiclip CLI through click's CliRunner."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from qualiclip.cli import main
from qualiclip.prompts import PAIR_NAMES
from tests.conftest import make_image


def _mixed_folder(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    make_image(folder / "a.jpg", size=(96, 64), seed=1)
    make_image(folder / "b.png", size=(64, 64), seed=2, mode="RGBA")
    make_image(folder / "c.png", size=(80, 48), seed=3, mode="L")
    Image.new("CMYK", (40, 40), (10, 20, 30, 0)).save(folder / "d.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xffnot really a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    make_image(folder / "sub" / "deep.webp", size=(70, 50), seed=4)
    return folder


def test_score_folder_writes_csv_and_summary(tmp_path, tiny_checkpoint):
    folder = _mixed_folder(tmp_path)
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(main, ["score", str(folder), "-r", "-o", str(out), "--weights",
                                       str(tiny_checkpoint), "--precision", "fp32",
                                       "--no-progress", "--workers", "0"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(rows[0]) == ["path", "score", *PAIR_NAMES, "width", "height", "error"]
    names = sorted(r["path"].rsplit("/", 1)[-1] for r in rows)
    assert names == ["a.jpg", "b.png", "broken.jpg", "c.png", "d.jpg", "deep.webp"]
    by_name = {r["path"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["broken.jpg"]["error"] and by_name["broken.jpg"]["score"] == ""
    assert by_name["a.jpg"]["width"] == "96" and by_name["a.jpg"]["height"] == "64"
    good = [float(r["score"]) for r in rows if not r["error"]]
    # the CSV holds the library's own fp32 scores of the same files
    from qualiclip import score_images

    scored = [r for r in rows if not r["error"]]
    reference = score_images([r["path"] for r in scored], weights=str(tiny_checkpoint),
                             device="cpu", precision="fp32", num_workers=0,
                             progress=False)
    assert good == pytest.approx([r.score for r in reference], abs=1e-6)
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("scored 5, failed 1, mean ")
    assert abs(float(summary.split("mean ")[1].split()[0]) - sum(good) / 5) < 1e-4
    # How the scores were made: one line on stderr, the full record beside the CSV.
    assert "native resolution, precision fp32 on cpu" in result.stderr
    meta = json.loads((tmp_path / "scores.csv.preprocessing.json").read_text())
    assert meta["precision"] == "fp32" and meta["max_side"] is None
    assert meta["weights_sha256"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()


def test_score_non_recursive_and_jsonl(tmp_path, tiny_checkpoint):
    folder = _mixed_folder(tmp_path)
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(main, ["score", str(folder), "-o", str(out), "--weights",
                                       str(tiny_checkpoint), "--no-progress", "--max-side", "64"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and not any("deep" in r["path"] for r in rows)
    assert rows[0]["width"] == 96  # the image's own size, even with --max-side


def test_usage_errors(tmp_path, tiny_checkpoint):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["score", str(empty), "--weights", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "no images found" in result.output
    result = runner.invoke(main, ["score", str(tmp_path / "nope.jpg")])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    make_image(tmp_path / "x.png")
    result = runner.invoke(main, ["score", str(tmp_path / "x.png"), "--weights",
                                  str(tmp_path / "missing.pth")])
    assert result.exit_code == 1 and "missing.pth" in result.output
    result = runner.invoke(main, ["score", str(tmp_path / "x.png"), "--batch-size", "0"])
    assert result.exit_code == 2
    # A precision the device cannot run is a usage error, found before any weights are loaded
    # (the weights named here do not even exist).
    result = runner.invoke(main, ["score", str(tmp_path / "x.png"), "--precision", "fp16",
                                  "--device", "cpu", "--weights", str(tmp_path / "none.pth")])
    assert result.exit_code == 2 and "--precision" in result.output and "fp16" in result.output
    assert "cannot load weights" not in result.output


def test_download_and_info(tmp_path, monkeypatch, tiny_checkpoint):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    runner = CliRunner()
    result = runner.invoke(main, ["download", "--weights", tiny_checkpoint.as_uri()])
    assert result.exit_code == 0, result.output
    from qualiclip.weights import cache_filename

    assert str(tmp_path / "cache" / cache_filename(tiny_checkpoint.as_uri())) in result.output
    import hashlib

    assert hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest() in result.output
    result = runner.invoke(main, ["info"])
    assert result.exit_code == 0
    assert "qualiclip 0.1.0" in result.output and "CC BY-NC 4.0" in result.output
    assert str(tmp_path / "cache") in result.output and "torch" in result.output
    from qualiclip.backends.selection import resolve_backend

    backend, _ = resolve_backend("auto", "auto", torch.device("cpu"))
    assert f"backend:   {backend} at " in result.output  # what auto picks on this machine


def _strict_json(line: str):
    """``json.loads`` that rejects NaN / Infinity, as standard JSON parsers do."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def test_jsonl_is_valid_json_even_for_non_finite_values(tmp_path, tiny_checkpoint, monkeypatch):
    """Whatever the engine yields, every JSONL line parses as strict JSON; NaN / inf -> null,
    and such a row does not count as scored."""
    import qualiclip.scoring
    from qualiclip.scoring import ScoreResult

    image = make_image(tmp_path / "a.jpg")

    def fake_iter_scores(sources, **kwargs):
        nan, inf = float("nan"), float("inf")
        yield ScoreResult(0, str(image), score=nan, width=96, height=64,
                          pair_scores={name: (inf if i % 2 else nan)
                                       for i, name in enumerate(PAIR_NAMES)})
        yield ScoreResult(1, str(image), score=0.25, width=96, height=64,
                          pair_scores=dict.fromkeys(PAIR_NAMES, 0.25))

    monkeypatch.setattr(qualiclip.scoring, "iter_scores", fake_iter_scores)
    out = tmp_path / "x.jsonl"
    result = CliRunner().invoke(main, ["score", str(image), "-o", str(out), "--weights",
                                       str(tiny_checkpoint), "--no-progress"])
    assert result.exit_code == 0, result.output
    rows = [_strict_json(line) for line in out.read_text().splitlines()]
    assert rows[0]["score"] is None and all(rows[0][name] is None for name in PAIR_NAMES)
    assert rows[1]["score"] == 0.25
    assert result.stderr.strip().splitlines()[-1].startswith("scored 1, failed 1, mean 0.2500")


def _score(args, tiny_checkpoint):
    return CliRunner().invoke(main, ["score", *args, "--weights", str(tiny_checkpoint),
                                     "--no-progress", "--workers", "0", "--precision", "fp32"])


def test_unreadable_image_named_entries_are_error_rows_not_omitted(tmp_path, tiny_checkpoint):
    folder = tmp_path / "shots"
    folder.mkdir()
    make_image(folder / "good.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "album.jpg").mkdir()
    make_image(folder / "album.jpg" / "inside.png", seed=3)
    out = tmp_path / "flat.csv"
    result = _score([str(folder), "-o", str(out)], tiny_checkpoint)
    assert result.exit_code == 0, result.output
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(out.open())}
    assert sorted(rows) == ["album.jpg", "dangling.jpg", "good.jpg", "loop.png"]
    assert "broken symlink: its target" in rows["dangling.jpg"]["error"]
    assert "gone.jpg does not exist" in rows["dangling.jpg"]["error"]
    assert "symlink loop" in rows["loop.png"]["error"]
    assert "is a folder, not an image file" in rows["album.jpg"]["error"]
    assert rows["good.jpg"]["score"] and not rows["good.jpg"]["error"]
    assert result.stderr.strip().splitlines()[-1].startswith("scored 1, failed 3, mean ")

    # Recursive: the folder named like an image is searched, not reported.
    result = _score([str(folder), "-r", "-o", str(out)], tiny_checkpoint)
    assert result.exit_code == 0, result.output
    names = sorted(r["path"].rsplit("/", 1)[-1] for r in csv.DictReader(out.open()))
    assert names == ["dangling.jpg", "good.jpg", "inside.png", "loop.png"]
    assert result.stderr.strip().splitlines()[-1].startswith("scored 2, failed 2, mean ")


def test_a_folder_of_only_broken_links_gives_error_rows(tmp_path, tiny_checkpoint):
    folder = tmp_path / "links"
    folder.mkdir()
    (folder / "a.jpg").symlink_to(tmp_path / "nowhere.jpg")
    result = _score([str(folder)], tiny_checkpoint)
    assert result.exit_code == 0, result.output
    assert "broken symlink" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("scored 0, failed 1")


FORMULA_NAMES = ['=HYPERLINK("evil.example","y").jpg', "+cmd.png", "-minus.png", "@at.png",
                 "\ttab.png", "'quoted.png", "plain.png"]


def test_csv_cells_spreadsheets_would_evaluate_are_neutralised(tmp_path, tiny_checkpoint,
                                                               monkeypatch):
    from qualiclip.report.data import read_scores_csv

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(FORMULA_NAMES):
        make_image(folder / name, seed=i)
    (folder / "=bad.jpg").write_bytes(b"not an image")  # its error cell starts with '=' too
    monkeypatch.chdir(folder)  # relative paths: the cell starts with the file's name
    csv_out, jsonl_out = tmp_path / "s.csv", tmp_path / "s.jsonl"
    assert _score([".", "-o", str(csv_out)], tiny_checkpoint).exit_code == 0
    assert _score([".", "-o", str(jsonl_out)], tiny_checkpoint).exit_code == 0

    rows = list(csv.DictReader(csv_out.open(newline="")))
    cells = {r["path"] for r in rows}
    assert cells == {"'" + n if n[0] in "=+-@\t'" else n for n in [*FORMULA_NAMES, "=bad.jpg"]}
    assert "'=HYPERLINK(\"evil.example\",\"y\").jpg" in cells
    bad = next(r for r in rows if r["path"] == "'=bad.jpg")
    assert bad["error"].startswith("'=bad.jpg: ") and bad["score"] == ""
    for row in rows:  # numeric cells stay plain numbers
        if not row["error"]:
            assert 0 <= float(row["score"]) <= 1 and int(row["width"]) == 96
            assert all(not row[c].startswith("'") for c in PAIR_NAMES)
    # JSON Lines stay exact, and the report reads the CSV's paths back as they were.
    exact = {json.loads(line)["path"] for line in jsonl_out.read_text().splitlines()}
    assert exact == {*FORMULA_NAMES, "=bad.jpg"}
    assert {r.path for r in read_scores_csv(csv_out)} == {*FORMULA_NAMES, "=bad.jpg"}


def test_output_options_per_engine(tmp_path, tiny_checkpoint):
    """-o is a file for the local engine (a folder is refused in one line) and the Parquet
    folder for --engine ray (required there)."""
    image = make_image(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["score", str(image), "-o", str(tmp_path), "--weights",
                                       str(tiny_checkpoint), "--no-progress"])
    assert result.exit_code == 2 and "is a folder; give a .csv or .jsonl" in result.output
    result = CliRunner().invoke(main, ["score", "--engine", "ray", str(image)])
    assert result.exit_code == 2 and "-o OUT_DIR" in result.output
    result = CliRunner().invoke(main, ["score", "--engine", "ray", str(image), "-o",
                                       str(tmp_path / "out"), "--actors", "3-1"])
    assert result.exit_code == 2 and "--actors" in result.output
