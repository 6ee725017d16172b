"""``qualiclip report``: HTML quality report from a scores CSV or a FiftyOne dataset field.

Registered as a ``qualiclip`` sub-command through the ``qualiclip.commands`` entry point. It
lives here, not in the library, because the ``--dataset`` path needs FiftyOne and the library
never imports it; the CSV path only uses :mod:`qualiclip.report.html`, and FiftyOne is imported only
when ``--dataset`` is given, so a CSV report stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("scores_csv", required=False,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dataset", "dataset_name", default=None,
              help="Read scores from this FiftyOne dataset instead of a CSV.")
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
def report(scores_csv, dataset_name, field, saved_view, output, n, threshold, bins, group_by,
           title) -> None:
    """Write a self-contained HTML report: score histogram, worst/best images with their pair
    scores, per-group breakdown and flagged counts.

    Give either SCORES_CSV (written by `qualiclip score`) or --dataset.
    """
    from qualiclip.report.html import ReportConfig, write_report

    if (scores_csv is None) == (dataset_name is None):
        raise click.UsageError("give either SCORES_CSV or --dataset NAME (not both)")
    config = ReportConfig(title=title, n=n, threshold=threshold, bins=bins)
    if scores_csv is not None:
        from dataclasses import replace

        from qualiclip.report.data import read_scores_csv

        try:
            rows = read_scores_csv(scores_csv, group_by=group_by)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        path = write_report(rows, output, replace(config, source=f"{scores_csv}, "
                                                                 f"{len(rows)} images"))
    else:
        import fiftyone as fo

        from qualiclip_plugin.reports.rows import write_collection_report

        if not fo.dataset_exists(dataset_name):
            raise click.ClickException(f"no FiftyOne dataset named {dataset_name!r}")
        dataset = fo.load_dataset(dataset_name)
        if saved_view and not dataset.has_saved_view(saved_view):
            known = ", ".join(dataset.list_saved_views()) or "none"
            raise click.ClickException(f"dataset {dataset_name!r} has no saved view "
                                       f"{saved_view!r} (saved views: {known})")
        collection = dataset.load_saved_view(saved_view) if saved_view else dataset
        try:
            path = write_collection_report(collection, output, field=field,
                                           group_by=group_by or None, config=config)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {path}")
