"""``qualiclip report``: HTML quality report from a scores CSV or a FiftyOne dataset field.

The CSV path is the library's own (:mod:`qualiclip.report.html`), so it works in a plain install.
The ``--dataset`` path needs FiftyOne, which the library never imports: it is looked up in the
``qualiclip.report_sources`` entry-point group, which the FiftyOne plugin fills, and a missing
FiftyOne is reported in one line naming what to install.
"""

from __future__ import annotations

from dataclasses import replace
from importlib.metadata import entry_points
from pathlib import Path

import click

#: Entry-point group of report sources other packages add; ``fiftyone`` reads a dataset field.
REPORT_SOURCES = "qualiclip.report_sources"


@click.command("report")
@click.argument("scores_csv", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", "dataset_name", default=None,
              help="Read scores from this FiftyOne dataset instead of a CSV (needs the "
                   "fiftyone extra).")
@click.option("--field", default="quality", show_default=True,
              help="Score field of --dataset (pair fields <field>_<pair> are read too).")
@click.option("--view", "saved_view", default=None,
              help="A saved view of --dataset to report on instead of the whole dataset.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("qualiclip_report.html"), show_default=True,
              help="HTML file to write (self-contained: open it in any browser).")
@click.option("-n", "--n", "n", type=click.IntRange(min=1), default=12, show_default=True,
              help="How many worst and best images to show.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Scores (and pair scores) below this are counted as flagged.")
@click.option("--bins", type=click.IntRange(min=2), default=20, show_default=True,
              help="Histogram bins over [0, 1].")
@click.option("--group-by", multiple=True,
              help="Break scores down by this key; repeatable. CSV: a column (values split on "
                   "';'). Dataset: 'tags', a field or a label field [default: tags, split and "
                   "label fields found in the dataset].")
@click.option("--title", default="QualiCLIP quality report", show_default=True)
def report(scores_csv: Path | None, dataset_name: str | None, field: str,
           saved_view: str | None, output: Path, n: int, threshold: float, bins: int,
           group_by: tuple[str, ...], title: str) -> None:
    """Write a self-contained HTML report: score histogram, worst/best images with their pair
    scores, per-group breakdown and flagged counts.

    Give either SCORES_CSV (written by `qualiclip score`) or --dataset.
    """
    # Imported here, not at the top: `qualiclip --help` loads this module to list the command.
    from qualiclip.constants import VIDEO_EXTENSIONS
    from qualiclip.report.html import ReportConfig, write_report

    if (scores_csv is None) == (dataset_name is None):
        raise click.UsageError("give either SCORES_CSV or --dataset NAME (not both)")
    config = ReportConfig(title=title, n=n, threshold=threshold, bins=bins)
    try:
        if scores_csv is not None:
            from qualiclip.report.data import read_scores_csv

            rows = read_scores_csv(scores_csv, group_by=group_by)
            videos = sum(1 for r in rows if r.frames or  # a video's error row has no frames
                         Path(r.path).suffix.lower() in VIDEO_EXTENSIONS)
            unit = "videos" if videos and videos == len(rows) else \
                "images and videos" if videos else "images"
            path = write_report(rows, output, replace(
                config, unit=unit, source=f"{scores_csv}, {len(rows)} {unit}"))
        else:
            write_dataset_report = _dataset_source()
            path = write_dataset_report(dataset_name, output, field=field,
                                        saved_view=saved_view, group_by=group_by or None,
                                        config=config)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")


def _dataset_source():
    """The ``fiftyone`` report source, or a one-line error saying what to install."""
    found = {ep.name: ep for ep in entry_points(group=REPORT_SOURCES)}
    if "fiftyone" not in found:
        raise click.ClickException(
            "--dataset needs the FiftyOne plugin of this project: pip install "
            "\"qualiclip[fiftyone]\" (from a clone: pip install \".[fiftyone]\")")
    try:
        return found["fiftyone"].load()
    except ImportError as exc:  # the plugin says in one line what to install
        raise click.ClickException((str(exc).strip().splitlines() or [repr(exc)])[0]) from exc
