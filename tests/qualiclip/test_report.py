"""The HTML report: its content (histogram, worst/best grids, breakdown, flags) checked against
numbers computed here independently, its self-containedness, and the CSV -> CLI path."""

from __future__ import annotations

import csv
import html
import math
import re

import numpy as np
import pytest

from qualiclip.prompts import PAIR_NAMES
from qualiclip.report.data import ReportRow, extremes, read_scores_csv
from qualiclip.report.html import (
    REPORT_SIGNATURE,
    ReportConfig,
    is_qualiclip_report,
    render_report,
    write_report,
)
from tests.conftest import make_image


def section(page: str, start: str, end: str) -> str:
    """The HTML between the first ``start`` marker and the next ``end`` marker."""
    head = page.index(start)
    return page[head:page.index(end, head)]


@pytest.fixture()
def rows(tmp_path) -> list[ReportRow]:
    """23 images with known scores (ties included), 2 splits, overlapping tags, 1 failure."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.uniform(0.05, 0.95, 22), 3)
    scores[5] = scores[6]  # a tie: order must fall back to the path
    out = []
    for i, s in enumerate(scores):
        path = make_image(tmp_path / f"im_{i:02d}.jpg", size=(48, 40), seed=i)
        tags = ("blurry",) if i % 3 == 0 else ()
        tags += ("outdoor",) if i % 2 == 0 else ()
        out.append(ReportRow(
            path=str(path), score=float(s),
            pair_scores={p: float(np.clip(s + 0.01 * k, 0, 1)) for k, p in enumerate(PAIR_NAMES)},
            groups={"split": ("train" if i < 15 else "val",), "tags": tags or ("(none)",)},
        ))
    out.append(ReportRow(path=str(tmp_path / "gone.jpg"), score=None, error="cannot open"))
    return out


def test_histogram_counts_match_the_data(rows):
    bins = 10
    page = render_report(rows, ReportConfig(bins=bins))
    table = section(page, 'id="histogram-counts"', "</table>")
    counts = [int(c) for c in re.findall(r'class="count">(\d+)<', table)]
    expected = [0] * bins
    for r in rows:
        if r.score is not None:
            expected[min(int(math.floor(r.score * bins)), bins - 1)] += 1
    assert counts == expected
    assert sum(counts) == 22  # the failed row is not in the histogram


@pytest.mark.parametrize("n", [1, 5, 11, 12, 30])
def test_worst_and_best_grids_list_the_extremes_in_order(rows, n):
    page = render_report(rows, ReportConfig(n=n))
    ok = [r for r in rows if r.score is not None]
    by_score = sorted(ok, key=lambda r: (r.score, r.path))
    n_worst = min(n, 11)  # 22 scored rows: with n > 11 the two grids split them 11 / 11
    worst = [html.unescape(p) for p in re.findall(r'data-path="([^"]+)"',
                                                  section(page, 'id="worst"', 'id="best"'))]
    assert worst == [r.path for r in by_score[:n_worst]]
    best_html = section(page, 'id="best"', "<h2")
    best = [html.unescape(p) for p in re.findall(r'data-path="([^"]+)"', best_html)]
    assert best == [r.path for r in sorted(ok, key=lambda r: (-r.score, r.path))[:n_worst]]
    assert not set(worst) & set(best)
    assert f"Worst {n_worst} images" in page and f"Best {n_worst} images" in page
    # every tile shows its score and its 7 pair scores
    first = by_score[0]
    tile = section(page, f'data-path="{html.escape(first.path)}"', "</figure>")
    assert f"<b>{first.score:.3f}</b>" in tile
    for pair, value in first.pair_scores.items():
        assert f"{pair}</td><td>{value:.3f}</td>" in tile
    assert tile.count("data:image/jpeg;base64,") == 1


def test_breakdown_groups_match(rows):
    threshold = 0.4
    page = render_report(rows, ReportConfig(threshold=threshold))
    for key in ("split", "tags"):
        table = section(page, f'class="breakdown" data-key="{key}"', "</table>")
        shown = {
            html.unescape(value): (int(count), float(mean), int(flagged))
            for value, count, mean, flagged in re.findall(
                r'data-value="([^"]+)">.*?class="count">(\d+)</td><td>([\d.]+)</td>'
                r"<td>[\d.]+</td><td>[\d.]+</td><td>(\d+)</td>", table)
        }
        expected = {}
        for r in rows:
            if r.score is None:
                continue
            for value in r.groups[key]:
                expected.setdefault(value, []).append(r.score)
        assert set(shown) == set(expected)
        for value, scores in expected.items():
            count, mean, flagged = shown[value]
            assert count == len(scores)
            assert mean == pytest.approx(np.mean(scores), abs=5e-4)
            assert flagged == sum(s < threshold for s in scores)
        means = [m for _, m, _ in shown.values()]
        assert means == sorted(means)  # worst group first
    assert 'id="fig-group-split"' in page and 'id="fig-group-tags"' in page


def test_flag_counts_and_failures(rows):
    threshold = 0.3
    page = render_report(rows, ReportConfig(threshold=threshold))
    table = section(page, 'id="flag-counts"', "</table>")
    counts = {k: int(v) for k, v in re.findall(r'data-key="([^"]+)">.*?<td>(\d+)</td>', table)}
    ok = [r for r in rows if r.score is not None]
    assert counts["images"] == 23 and counts["scored"] == 22 and counts["failed"] == 1
    assert counts["flagged"] == sum(r.score < threshold for r in ok)
    for pair in PAIR_NAMES:
        assert counts[f"low_{pair}"] == sum(r.pair_scores[pair] < threshold for r in ok)
    failed = section(page, 'id="failed"', "</table>")
    assert "gone.jpg" in failed and "cannot open" in failed


def test_report_is_self_contained(rows, tmp_path):
    path = write_report(rows, tmp_path / "out" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page and "<link" not in page and "url(" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
                           for s in sources)
    assert not re.search(r'(src|href)="(https?:|//|file:)', page)
    # 2 figures (histogram, pairs) + 2 breakdown figures; 22 scored rows < 2 x 12, so the
    # worst and best grids split them: 11 + 11 thumbnails, none shown twice
    assert page.count("data:image/png;base64,") == 4
    assert page.count("data:image/jpeg;base64,") == 22


def test_empty_input_still_renders():
    page = render_report([], ReportConfig())
    assert 'id="fig-histogram"' in page and "Worst 0 images" in page


def _write_scores_csv(path, rows):
    columns = ["path", "score", *PAIR_NAMES, "width", "height", "error", "split"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({"path": r.path, "score": "" if r.score is None else r.score,
                             **r.pair_scores, "width": 48, "height": 40,
                             "error": r.error or "", "split": ";".join(r.groups.get("split", ()))})


def test_read_scores_csv_round_trip(rows, tmp_path):
    csv_path = tmp_path / "scores.csv"
    _write_scores_csv(csv_path, rows)
    back = read_scores_csv(csv_path, group_by=["split"])
    assert [r.path for r in back] == [r.path for r in rows]
    assert [r.score for r in back] == [r.score for r in rows]
    assert back[0].pair_scores == pytest.approx(rows[0].pair_scores)
    assert back[-1].error == "cannot open" and back[-1].score is None
    assert back[0].groups == {"split": ("train",)}
    with pytest.raises(ValueError, match="missing column"):
        read_scores_csv(csv_path, group_by=["label"])


def test_thumbnails_show_transparency_over_white_like_scoring(tmp_path):
    """A fully transparent PNG is scored as white, so its thumbnail must be white too (PIL's
    plain RGB conversion would make it black)."""
    import base64
    import io

    from PIL import Image

    clear = np.zeros((40, 60, 4), dtype=np.uint8)  # black, alpha 0
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    row = ReportRow(path=str(tmp_path / "clear.png"), score=0.5,
                    pair_scores=dict.fromkeys(PAIR_NAMES, 0.5))
    page = render_report([row])
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', page).group(1)
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("RGB"))
    assert thumb.shape[2] == 3 and thumb.min() >= 250


def test_dollar_signs_in_group_labels_are_plain_text(tmp_path):
    """Tags are user data; matplotlib would parse "$...$" as math and fail on bad math."""
    path = make_image(tmp_path / "a.jpg", size=(48, 40))
    rows = [ReportRow(path=str(path), score=s, groups={"tags": (tag,)})
            for s, tag in [(0.2, "$x^$"), (0.7, r"$\frac$"), (0.5, "$5-$10")]]
    page = render_report(rows)
    assert html.escape("$x^$") in page and html.escape("$5-$10") in page


def test_csv_with_a_byte_order_mark_and_non_finite_scores(tmp_path):
    """Excel saves CSVs with a BOM; NaN / inf are no scores; out-of-range scores still land in
    a histogram bin, so the bins add up to the scored count."""
    from qualiclip.report.data import histogram

    csv_path = tmp_path / "scores.csv"
    csv_path.write_text("path,score\na.jpg,0.4\nb.jpg,nan\nc.jpg,inf\nd.jpg,1.5\ne.jpg,-0.1\n",
                        encoding="utf-8-sig")
    rows = read_scores_csv(csv_path)
    assert [r.score for r in rows] == [0.4, None, None, 1.5, -0.1]
    counts, _ = histogram(rows)
    assert counts.sum() == 3 and counts[0] == 1 and counts[-1] == 1


EVIL = "x\nimport os; os.system('touch /tmp/pwned')\n"


@pytest.mark.parametrize("breaks", ["\n", "\r", "\r\n", "\u2028", "\x0b"])
def test_data_never_starts_a_line_of_the_report(tmp_path, breaks):
    """Paths, tags, group keys and values, errors, pair names, title and source are data: each
    is shown (escaped), and none of their line breaks reaches the file."""
    evil = EVIL.replace("\n", breaks)
    good = make_image(tmp_path / "a.jpg", size=(48, 40))
    rows = [
        ReportRow(path=str(good), score=0.3, pair_scores={"sharp_image": 0.2, evil: 0.4},
                  groups={"tags": (evil, "plain"), evil: ("v",)}),
        ReportRow(path=str(tmp_path / evil), score=0.7, groups={"tags": ("plain",), evil: (evil,)}),
        ReportRow(path=evil, score=None, error=evil),
    ]
    out = write_report(rows, tmp_path / "report.html",
                       ReportConfig(title=evil, source=evil, threshold=0.5))
    page = out.read_text(encoding="utf-8")
    lines = page.splitlines()
    assert lines[0] == REPORT_SIGNATURE
    assert not [line for line in lines if line.lstrip().startswith(("import", "x"))]
    raw_lines = out.read_bytes().replace(b"\r", b"\n").split(b"\n")  # as any reader splits
    assert not [line for line in raw_lines if line.lstrip().startswith(b"import")]
    shown = html.unescape(re.sub(r"&#(\d+);", lambda m: chr(int(m[1])), page))  # keeps \x0b
    assert shown.count(evil) >= 8  # title x2, source, tag, group key, value, path, error, pair
    failed = section(shown, 'id="failed"', "</table>")
    assert failed.count(evil) == 2  # its path and its error
    assert html.escape("os.system('touch /tmp/pwned')") in page


def test_reports_start_with_the_signature_line(rows, tmp_path):
    page = render_report(rows)
    assert page.startswith(REPORT_SIGNATURE + "\n")
    assert REPORT_SIGNATURE == "<!DOCTYPE html><!-- qualiclip-report -->"
    out = write_report(rows, tmp_path / "r.html")
    assert out.read_bytes().startswith((REPORT_SIGNATURE + "\n").encode())
    assert is_qualiclip_report(out) and is_qualiclip_report(str(out))
    other = tmp_path / "other.html"
    other.write_text("<!DOCTYPE html><html><body>someone else's page</body></html>\n")
    almost = tmp_path / "almost.html"
    almost.write_text(REPORT_SIGNATURE + " but more on the first line\n")
    empty = tmp_path / "empty.html"
    empty.write_bytes(b"")
    for path in (other, almost, empty, tmp_path / "missing.html", tmp_path):
        assert not is_qualiclip_report(path), path


@pytest.mark.parametrize("k, n, n_worst, n_best", [
    (0, 3, 0, 0), (1, 3, 1, 0), (2, 3, 1, 1), (5, 3, 3, 2), (6, 3, 3, 3), (9, 3, 3, 3),
    (4, 0, 0, 0),
])
def test_extremes_never_overlap(k, n, n_worst, n_best):
    """Fewer than 2n scored rows are split, worst taking the ceil half; every row appears in at
    most one list, each list in its order."""
    rows = [ReportRow(path=f"{i}.jpg", score=i / 10) for i in range(k)]
    rows.append(ReportRow(path="failed.jpg", score=None, error="x"))
    worst, best = extremes(rows, n)
    assert [r.path for r in worst] == [f"{i}.jpg" for i in range(n_worst)]
    assert [r.path for r in best] == [f"{i}.jpg" for i in range(k - 1, k - 1 - n_best, -1)]


def test_extremes_with_tied_scores_still_never_overlap():
    """All scores equal: worst by (score, path) takes a..c, best must not take them again."""
    rows = [ReportRow(path=f"{c}.jpg", score=0.5) for c in "fedcba"]
    worst, best = extremes(rows, 3)
    assert [r.path for r in worst] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [r.path for r in best] == ["d.jpg", "e.jpg", "f.jpg"]
    worst, best = extremes(rows, 5)
    assert len(worst) == 3 and len(best) == 3 and not {*map(id, worst)} & {*map(id, best)}


def test_report_of_a_scores_csv_with_videos(tmp_path, tiny_checkpoint):
    """`qualiclip score` on videos (frame rows), an image and a file that is no video, then
    `qualiclip report`: one entry per video scored by the mean of its frame rows, with its
    lowest frames (0-based numbers and timestamps as in the CSV) whose thumbnails are the
    frames named (the test videos' brightness tells the frame); the image stays an image and
    the broken video is one failure."""
    import base64
    import csv
    import io

    from click.testing import CliRunner
    from PIL import Image

    from qualiclip.cli import main
    from tests.conftest import make_image
    from tests.qualiclip.test_video import write_video

    # flat frames whose grey tells the frame: offset + 20 + 5 n for frame n (0-based)
    videos = [write_video(tmp_path / f"clip_{i}.mp4",
                          [np.full((48, 64, 3), 15 * i + 20 + 5 * n, np.uint8)
                           for n in range(40)], 10) for i in range(2)]
    image = make_image(tmp_path / "photo.png")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video " * 50)
    scores = tmp_path / "scores.csv"
    run = CliRunner().invoke(main, ["score", str(image), *map(str, videos), str(broken),
                                    "--fps", "2", "-o", str(scores), "--weights",
                                    str(tiny_checkpoint), "--precision", "fp32",
                                    "--no-progress"])
    assert run.exit_code == 0, run.output
    out = tmp_path / "report.html"
    run = CliRunner().invoke(main, ["report", str(scores), "-o", str(out), "-n", "2"])
    assert run.exit_code == 0, run.output
    page = out.read_text()
    with scores.open() as handle:
        table = list(csv.DictReader(handle))
    assert "4 images and videos" in page
    assert re.search(r'data-key="images"><td class=name>images and videos</td><td>4</td>',
                     page)
    figures = re.findall(r'<figure class="thumb".*?</figure>', page)
    for index, video in enumerate(videos):
        frames = [r for r in table if r["path"] == str(video) and r["score"]]
        mean = np.mean([float(r["score"]) for r in frames])
        (figure,) = [f for f in figures if f'data-path="{html.escape(str(video))}"' in f]
        assert float(re.search(r'data-score="([\d.]+)"', figure)[1]) == pytest.approx(mean)
        lowest = sorted(frames, key=lambda r: (float(r["score"]), int(r["frame"])))[:3]
        shown = re.findall(r'data-frame="(\d+)" data-timestamp="([\d.]+)" data-score="([\d.]+)"'
                           r'><td><img alt="frame \d+" src="data:image/jpeg;base64,([^"]+)"',
                           figure)
        assert [(int(n), float(t)) for n, t, _, _ in shown] == \
            [(int(r["frame"]), pytest.approx(float(r["timestamp"]), abs=1e-3)) for r in lowest]
        for number, _, _, jpeg in shown:
            grey = np.median(np.asarray(Image.open(io.BytesIO(base64.b64decode(jpeg)))
                                        .convert("L")))
            assert abs(grey - (15 * index + 20 + 5 * int(number))) <= 3
    (photo,) = [f for f in figures if "photo.png" in f]
    assert "worst" not in photo and "<img" in photo
    assert "broken.mp4" in section(page, 'id="failed"', "</table>")
