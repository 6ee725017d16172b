"""``qualiclip eval``: SRCC / PLCC / KRCC of a model against MOS from a CSV.

Registered as a ``qualiclip`` subcommand through the ``qualiclip.commands`` entry point group, so
the library's CLI never imports this package.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import click


@click.command("eval")
@click.argument("csv_path", metavar="CSV", type=click.Path(exists=True, dir_okay=False))
@click.option("--weights", "-w", default=None, metavar="NAME|PATH|URL",
              help="Official name 'qualiclip', a checkpoint path (either format) or a URL. "
                   "[default: $QUALICLIP_WEIGHTS if set, else qualiclip]")
@click.option("--root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder relative image paths are resolved against [default: the CSV's folder].")
@click.option("--device", default=None, help="cuda, cpu, ... [default: CUDA if available].")
@click.option("--scores-out", type=click.Path(dir_okay=False), default=None,
              help="Also write per-image (path, mos, score) to this CSV.")
@click.option("--json-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the correlations to this JSON file.")
def eval_command(csv_path: str, weights: str | None, root: str | None, device: str | None,
                 scores_out: str | None, json_out: str | None) -> None:
    """Correlate QualiCLIP scores with human MOS listed in CSV (columns: path, mos).

    Prints SRCC, PLCC (after a 4-parameter logistic fit) and KRCC; higher is better.
    """
    from qualiclip.mos import correlations, read_mos_csv, score_files

    try:
        rows = read_mos_csv(csv_path, root)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    from qualiclip.cli import load_model_or_fail

    model = load_model_or_fail(weights, device)
    scores = score_files(model, [p for p, _ in rows])
    kept = [(p, m, s) for (p, m), s in zip(rows, scores, strict=True) if s is not None]
    try:
        result = correlations([s for _, _, s in kept], [m for _, m, _ in kept])
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    result["skipped"] = len(rows) - len(kept)
    result["weights"] = model.weights_info.get("name", weights)
    if scores_out:
        with open(scores_out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "mos", "score"])
            writer.writerows((str(p), m, f"{s:.6f}") for p, m, s in kept)
    if json_out:
        Path(json_out).write_text(json.dumps(result, indent=2))
    click.echo(f"images: {result['n']} (skipped {result['skipped']})")
    click.echo(f"SRCC {result['srcc']:.4f}  PLCC {result['plcc']:.4f}  KRCC {result['krcc']:.4f}")
