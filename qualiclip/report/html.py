"""A self-contained HTML quality report: one file that opens in any browser, no server.

Figures are PNGs and thumbnails JPEGs, both embedded as base64 ``data:`` URIs; styles are inline;
there is no script and no external resource, so the file can be mailed or archived as is.

Every report's first line is :data:`REPORT_SIGNATURE` (:func:`is_qualiclip_report` checks it), and
all text that comes from data (paths, tags, group values, errors, title, source, pair names) goes
through :func:`escape`, line breaks included: no line of the file begins with text chosen by data.

Sections: summary counts (incl. flagged images), score histogram (figure plus its bin counts),
per-pair score distribution, the worst and best ``n`` images as thumbnail grids with their pair
scores, and a breakdown per group key (label, tag, split, ...) when rows carry groups.

Rows of videos (:attr:`~qualiclip.report.data.ReportRow.frames` set) show their worst frames:
frame number, timestamp and score, each with a thumbnail of that frame decoded from the video
(:mod:`qualiclip.report.frames`), and the video's other summaries and worst segment.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from qualiclip.images import ImageReadError, load_image
from qualiclip.prompts import PAIR_NAMES
from qualiclip.report.data import (
    ReportRow,
    extremes,
    flag_counts,
    group_stats,
    histogram,
    scored,
)
from qualiclip.report.figures import groups_png, histogram_png, pair_scores_png

#: The first line of every report this module writes (followed by ``"\n"``): how other code
#: (the plugin) knows a file is one of ours before it overwrites or serves it.
REPORT_SIGNATURE = "<!DOCTYPE html><!-- qualiclip-report -->"

#: Every character ``str.splitlines`` breaks a line at, as a numeric character reference.
_LINE_BREAKS = {ord(c): f"&#{ord(c)};" for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def escape(text: object) -> str:
    """Data -> safe HTML text or attribute value: ``html.escape`` (quotes too), then line breaks
    as character references (``"\n"`` -> ``&#10;``, ``"\r"`` -> ``&#13;``, ...), so a value
    shows as written but can never start a line of the file."""
    return html.escape(str(text), quote=True).translate(_LINE_BREAKS)


def is_qualiclip_report(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose first line is :data:`REPORT_SIGNATURE`. Reads only
    that many bytes; a missing or unreadable path is ``False``."""
    expected = (REPORT_SIGNATURE + "\n").encode("ascii")
    try:
        with open(path, "rb") as handle:
            return handle.read(len(expected)) == expected
    except OSError:
        return False


@dataclass(frozen=True)
class ReportConfig:
    """What goes into a report.

    Attributes:
        title: page title.
        n: how many worst and best images to show.
        threshold: images (and pair scores) below it are counted as flagged; scores are in
            [0, 1] and their typical range depends on the weights, so pick it per dataset.
        bins: histogram bins over [0, 1].
        thumb_size: longest thumbnail side in px.
        source: a line saying where the scores came from (CSV path, dataset field, weights).
        unit: what the rows are, in the page's texts (``"images"``, ``"videos"``).
        worst_frames: how many worst frames a video shows (for the callers that fill
            :attr:`~qualiclip.report.data.ReportRow.frames`).
    """

    title: str = "QualiCLIP quality report"
    n: int = 12
    threshold: float = 0.5
    bins: int = 20
    thumb_size: int = 160
    source: str = ""
    unit: str = "images"
    worst_frames: int = 3


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{margin-bottom:.2em} .meta{color:#666} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td.name{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure.thumb{margin:0;width:__W__px;font-size:11px;border:1px solid #ddd;padding:4px}
figure.thumb img{max-width:100%;display:block;margin:auto}
figure.thumb .path{word-break:break-all;font-weight:600}
figure.thumb table{width:100%;margin:2px 0} figure.thumb td{padding:0 .3em}
figure.thumb .missing{height:80px;background:#eee;display:flex;align-items:center;
justify-content:center;color:#888}
figure.thumb table.frames img{width:48px;display:block}
img.figure{max-width:100%} details{margin:.5em 0}
"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail(path: str, size: int) -> str | None:
    """JPEG data URI of the image shrunk to ``size`` px on its long side, ``None`` if unreadable.

    Read with the scoring reader, so the thumbnail shows what was scored (EXIF orientation,
    transparency over white, 16-bit scaled).
    """
    from PIL import Image

    try:
        image = load_image(path, max_side=size).float_tensor()
    except ImageReadError:
        return None
    pixels = image.mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=82)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _jpeg_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _frames_html(row: ReportRow, size: int) -> tuple[str | None, str]:
    """A video row's picture (its worst frame) and its worst-frames table: frame number,
    timestamp, score, each with a small thumbnail of the decoded frame."""
    from qualiclip.report.frames import frame_pictures

    pictures = frame_pictures(row.path, [f.index for f in row.frames], size)
    lines = []
    for f in row.frames:
        picture, decoded_time = pictures.get(f.index, (None, None))
        when = f.timestamp if f.timestamp is not None else decoded_time
        image = (f'<img alt="frame {f.frame}" src="{_jpeg_uri(picture)}">' if picture
                 else "not readable")
        lines.append(f'<tr class="frame" data-frame="{f.frame}" '
                     f'data-timestamp="{"" if when is None else f"{when:.3f}"}" '
                     f'data-score="{f.score:.6f}"><td>{image}</td>'
                     f"<td class=name>frame {f.frame}<br>"
                     f"{'' if when is None else f'{when:.2f} s'}</td>"
                     f"<td>{f.score:.3f}</td></tr>")
    worst = pictures.get(row.frames[0].index) if row.frames else None
    main = _jpeg_uri(worst[0]) if worst else None
    table = (f'<div>worst {len(row.frames)} frames</div><table class="frames">{"".join(lines)}'
             "</table>") if lines else ""
    return main, table


def _figure_img(png: bytes, alt: str, fig_id: str) -> str:
    uri = _data_uri(png, "image/png")
    return f'<img class="figure" id="{fig_id}" alt="{escape(alt)}" src="{uri}">'


def _thumb_grid(rows: Sequence[ReportRow], grid_id: str, config: ReportConfig,
                pair_names: Sequence[str]) -> str:
    items = []
    for rank, row in enumerate(rows, start=1):
        frames = ""
        if row.frames:  # a video: its worst frame is its picture
            uri, frames = _frames_html(row, config.thumb_size)
        else:
            uri = _thumbnail(row.path, config.thumb_size)
        picture = (f'<img alt="{escape(os.path.basename(row.path))}" src="{uri}">' if uri
                   else f'<div class="missing">{"video" if row.frames else "image"} not '
                        "readable</div>")
        pairs = "".join(
            f"<tr><td class=name>{escape(p)}</td><td>{row.pair_scores[p]:.3f}</td></tr>"
            for p in pair_names if p in row.pair_scores
        ) + "".join(
            f"<tr><td class=name>{escape(name)}</td><td>{value:.3f}</td></tr>"
            for name, value in row.summaries.items()
        )
        segment = "" if row.segment is None else (
            f'<div class="segment" data-first="{row.segment[0]}" data-last="{row.segment[1]}">'
            f"worst segment: frames {row.segment[0]}&ndash;{row.segment[1]}, mean "
            f"{row.segment[2]:.3f}</div>")
        label = "mean score" if row.frames else "score"
        items.append(
            f'<figure class="thumb" data-rank="{rank}" data-path="{escape(row.path)}" '
            f'data-score="{row.score:.6f}">{picture}<figcaption>'
            f'<div class="path">{escape(row.path)}</div>'
            f"<div>{label} <b>{row.score:.3f}</b></div><table>{pairs}</table>{segment}{frames}"
            f"</figcaption></figure>"
        )
    return f'<div class="grid" id="{grid_id}">{"".join(items)}</div>'


def _pair_names(rows: Sequence[ReportRow]) -> list[str]:
    present = {p for r in rows for p in r.pair_scores}
    return [p for p in PAIR_NAMES if p in present] + sorted(present - set(PAIR_NAMES))


def render_report(rows: Sequence[ReportRow], config: ReportConfig = ReportConfig()) -> str:
    """The report as one HTML string (see the module docstring for its sections)."""
    ok = scored(rows)
    pair_names = _pair_names(ok)
    counts, edges = histogram(rows, bins=config.bins)
    worst, best = extremes(rows, config.n)
    flags = flag_counts(rows, config.threshold)
    groups = group_stats(rows, config.threshold)

    parts = [
        REPORT_SIGNATURE,  # alone on the first line: is_qualiclip_report reads it
        "<html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(config.title)}</title>",
        f"<style>{_CSS.replace('__W__', str(config.thumb_size + 10))}</style></head><body>",
        f"<h1>{escape(config.title)}</h1>",
        f'<p class="meta">{escape(config.source)} &middot; generated '
        f"{_dt.datetime.now().isoformat(timespec='seconds')} &middot; scores in [0, 1], "
        "higher is better</p>",
        f'<h2>Summary</h2><table id="flag-counts"><tr><th>what</th><th>{escape(config.unit)}'
        "</th></tr>",
    ]
    labels = {"images": escape(config.unit), "scored": "scored",
              "failed": "not scored (errors)",
              "flagged": f"flagged: score &lt; {config.threshold:g}"}
    for key, value in flags.items():
        label = labels.get(key) or f"{escape(key[4:])} &lt; {config.threshold:g}"
        parts.append(f'<tr data-key="{escape(key)}"><td class=name>{label}</td>'
                     f"<td>{value}</td></tr>")
    parts.append("</table>")
    if ok:
        scores = [r.score for r in ok]
        parts.append(f"<p>mean {statistics.fmean(scores):.3f}, median "
                     f"{statistics.median(scores):.3f}, min {min(scores):.3f}, "
                     f"max {max(scores):.3f}</p>")

    parts.append("<h2>Score histogram</h2>")
    parts.append(_figure_img(histogram_png(counts, edges, config.threshold, config.unit),
                             "histogram of scores", "fig-histogram"))
    parts.append('<details><summary>bin counts</summary><table id="histogram-counts">'
                 f"<tr><th>from</th><th>to</th><th>{escape(config.unit)}</th></tr>")
    for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
        parts.append(f'<tr><td>{lo:.2f}</td><td>{hi:.2f}</td><td class="count">{int(c)}</td></tr>')
    parts.append("</table></details>")

    if pair_names and ok:
        parts.append("<h2>Scores per prompt pair</h2>")
        parts.append(_figure_img(pair_scores_png(ok, pair_names), "pair scores", "fig-pairs"))

    parts.append(f"<h2>Worst {len(worst)} {escape(config.unit)}</h2>")
    parts.append(_thumb_grid(worst, "worst", config, pair_names))
    parts.append(f"<h2>Best {len(best)} {escape(config.unit)}</h2>")
    parts.append(_thumb_grid(best, "best", config, pair_names))

    if groups:
        parts.append("<h2>Breakdown</h2>")
    for key, stats in groups.items():
        parts.append(f"<h3>by {escape(key)}</h3>")
        parts.append(_figure_img(groups_png(key, stats, rows), f"scores by {key}",
                                 f"fig-group-{escape(key)}"))
        parts.append(f'<table class="breakdown" data-key="{escape(key)}"><tr><th>{escape(key)}</th>'
                     f"<th>{escape(config.unit)}</th><th>mean</th><th>median</th><th>min</th>"
                     f"<th>&lt; {config.threshold:g}</th></tr>")
        for s in stats:
            parts.append(
                f'<tr data-value="{escape(s.value)}"><td class=name>{escape(s.value)}</td>'
                f'<td class="count">{s.count}</td><td>{s.mean:.3f}</td><td>{s.median:.3f}</td>'
                f"<td>{s.minimum:.3f}</td><td>{s.flagged}</td></tr>"
            )
        parts.append("</table>")

    failed = [r for r in rows if r.score is None]
    if failed:
        parts.append(f'<h2>Not scored ({len(failed)})</h2><table id="failed">')
        parts.extend(f"<tr><td class=name>{escape(r.path)}</td>"
                     f"<td class=name>{escape(r.error or '')}</td></tr>" for r in failed)
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    rows: Sequence[ReportRow], output: str | os.PathLike, config: ReportConfig = ReportConfig()
) -> Path:
    """Write :func:`render_report` to ``output`` (folders created); returns the path."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # "\n" on every OS, so the signature line is byte-identical everywhere.
    output.write_text(render_report(rows, config), encoding="utf-8", newline="\n")
    return output
