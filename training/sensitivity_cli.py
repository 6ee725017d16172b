"""``qualiclip sensitivity``: score-vs-level curves for the 24 distortion types on your images.

Registered as a ``qualiclip`` sub-command through the ``qualiclip.commands`` entry point (the
library's CLI never imports training code).
"""

from __future__ import annotations

import random
from pathlib import Path

import click


def load_sample(paths: list[Path], sample: int, seed: int, max_side: int | None) -> list:
    """Up to ``sample`` readable images drawn at random (seeded) from ``paths``, as ``(3, H, W)``
    uint8 tensors; unreadable files are skipped with a warning."""
    import torch

    from qualiclip.images import ImageReadError, load_image

    chosen = sorted(paths) if len(paths) <= sample else \
        sorted(random.Random(seed).sample(sorted(paths), sample))
    images = []
    for path in chosen:
        try:
            loaded = load_image(path, max_side=max_side, as_uint8=True)
        except ImageReadError as exc:
            click.echo(f"skipped: {exc}", err=True)
            continue
        t = loaded.tensor
        images.append(t if t.dtype == torch.uint8 else (t * 255).round().clamp(0, 255).byte())
    return images


@click.command("sensitivity")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "--recursive", is_flag=True, help="Also use images in sub-folders.")
@click.option("--weights", multiple=True, metavar="NAME|PATH|URL",
              help="Weights to test (name, .pth or URL); repeat to compare, e.g. before and "
                   "after fine-tuning: one line per weights in each panel. [default: "
                   "$QUALICLIP_WEIGHTS if set, else qualiclip]")
@click.option("-o", "--output-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("sensitivity"), show_default=True,
              help="Writes sensitivity.csv and sensitivity.png here.")
@click.option("--sample", type=click.IntRange(min=1), default=32, show_default=True,
              help="Images drawn at random (seeded) from PATHS.")
@click.option("--crop", type=click.IntRange(min=32), default=224, show_default=True,
              help="Centre-crop side; distortions are defined at 224 px.")
@click.option("--max-side", type=click.IntRange(min=32), default=None,
              help="Downscale images to this longer side before cropping (default: native "
                   "resolution, as the model scores).")
@click.option("--levels", type=click.IntRange(min=2), default=5, show_default=True,
              help="Ladder steps (5 = the published values).")
@click.option("--type", "types", multiple=True,
              help="Only these distortion types (repeatable) [default: all 24].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cuda, cpu ... [default: cuda if available]")
def sensitivity(paths, recursive, weights, output_dir, sample, crop, max_side, levels, types,
                seed, device) -> None:
    """Plot and tabulate mean score vs degradation level for each distortion type, averaged
    over a sample of your images: which degradations the model tracks on your domain (falling
    curves, srcc near -1) and which it misses (flat curves, srcc near 0).

    Cost: images x types x levels forward passes (32 x 24 x 5 = 3,840 crops by default).
    """
    from qualiclip_train.sensitivity import SensitivityConfig, sensitivity_curves, write_curves_csv
    from qualiclip_train.sensitivity_plot import plot_curves

    from qualiclip.cli import collect_images, load_model_or_fail
    from qualiclip.weights import which_weights

    weights = tuple(weights) or (which_weights(),)  # named here: the name labels the curves
    files = collect_images(paths, recursive)
    images = load_sample(files, sample, seed, max_side)
    if not images:
        raise click.ClickException("no readable images in PATHS")
    config = SensitivityConfig(crop=crop, levels=levels, seed=seed, types=tuple(types) or None)
    points = []
    for w in weights:
        model = load_model_or_fail(w, device)
        name = str(w)  # as given: fine-tuned runs all write qualiclip-finetuned.pth
        click.echo(f"{name}: {len(images)} images x {len(config.types or [0] * 24)} types x "
                   f"{levels} levels", err=True)
        try:
            points += sensitivity_curves(model, images, config, weights_name=name)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        del model
    csv_path = write_curves_csv(points, output_dir / "sensitivity.csv")
    png_path = plot_curves(points, output_dir / "sensitivity.png")
    click.echo(f"wrote {csv_path} and {png_path}")
