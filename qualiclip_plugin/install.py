"""``qualiclip plugin install|uninstall|path``: make a pip-installed plugin visible to FiftyOne.

FiftyOne only discovers plugins inside ``fo.config.plugins_dir`` (``$FIFTYONE_PLUGINS_DIR``), not
in site-packages, so the install command links this package's folder (which carries its own
``fiftyone.yml``) there. A symlink rather than a copy keeps the plugin in step with upgrades of
the package; FiftyOne follows symlinks and checks the entry module's *real* path lies inside the
plugin folder's real path, which holds because the whole package folder is linked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

#: Folder name created inside the plugins directory.
LINK_NAME = "qualiclip"


def package_dir() -> Path:
    """The installed ``qualiclip_plugin`` folder (the one holding the package ``fiftyone.yml``)."""
    return Path(__file__).resolve().parent


def plugins_dir() -> Path:
    """FiftyOne's plugins directory (``fo.config.plugins_dir``)."""
    import fiftyone as fo

    if not fo.config.plugins_dir:
        raise click.ClickException(
            "FiftyOne has no plugins directory configured: set FIFTYONE_PLUGINS_DIR")
    return Path(fo.config.plugins_dir).expanduser()


def install_plugin(target_dir: Path | None = None, force: bool = False) -> Path:
    """Link the plugin folder into ``target_dir`` (default: FiftyOne's plugins directory).

    Returns the link's path. Raises :class:`click.ClickException` if something other than our
    own link is in the way and ``force`` is false.
    """
    target_dir = Path(target_dir) if target_dir is not None else plugins_dir()
    target_dir.mkdir(parents=True, exist_ok=True)
    link = target_dir / LINK_NAME
    source = package_dir()
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == source:
            return link
        if not force:
            raise click.ClickException(
                f"{link} already exists and is not a link to {source}; "
                "rerun with --force to replace it")
        _remove(link)
    os.symlink(source, link, target_is_directory=True)
    return link


def uninstall_plugin(target_dir: Path | None = None) -> Path | None:
    """Remove the link made by :func:`install_plugin`; returns it, or ``None`` if absent.

    Only a symlink is removed: a folder placed there by ``fiftyone plugins download`` is the
    user's to delete with ``fiftyone plugins delete``.
    """
    target_dir = Path(target_dir) if target_dir is not None else plugins_dir()
    link = target_dir / LINK_NAME
    if not link.is_symlink():
        return None
    link.unlink()
    return link


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


@click.group("plugin")
def plugin_group() -> None:
    """Install the QualiCLIP FiftyOne plugin into FiftyOne's plugins directory."""


@plugin_group.command("install")
@click.option("--plugins-dir", "target_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Default: FiftyOne's plugins directory (FIFTYONE_PLUGINS_DIR).")
@click.option("--force", is_flag=True, help="Replace whatever is at the link's place.")
def install_command(target_dir: Path | None, force: bool) -> None:
    """Link the plugin folder into FiftyOne's plugins directory and say where."""
    link = install_plugin(target_dir, force=force)
    click.echo(f"Linked {link} -> {package_dir()}")
    click.echo("Restart the FiftyOne App; the operator is 'Compute image quality (QualiCLIP)'.")


@plugin_group.command("uninstall")
@click.option("--plugins-dir", "target_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Default: FiftyOne's plugins directory (FIFTYONE_PLUGINS_DIR).")
def uninstall_command(target_dir: Path | None) -> None:
    """Remove the link made by `qualiclip plugin install`."""
    link = uninstall_plugin(target_dir)
    click.echo(f"Removed {link}" if link else "No qualiclip plugin link found; nothing removed")


@plugin_group.command("path")
def path_command() -> None:
    """Print the plugin folder that `install` links."""
    click.echo(str(package_dir()))


@plugin_group.command("import-scores")
@click.argument("dataset_name", metavar="DATASET")
@click.argument("results", metavar="OUT_DIR")
@click.option("--field", default="quality", show_default=True, help="Score field to write.")
@click.option("--overwrite", is_flag=True,
              help="Also replace scores already in the field (default: fill only missing ones).")
@click.option("--no-pair-scores", is_flag=True, help="Write the overall score only.")
@click.option("--flag-percent", type=click.FloatRange(0, 100, min_open=True), default=None,
              help="Flag the worst PERCENT %% of the dataset's scored samples.")
@click.option("--flag-threshold", type=click.FloatRange(0, 1), default=None,
              help="Flag samples scoring below this.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None,
              help="Samples written per bulk write. [default: 1000]")
def import_scores_command(dataset_name: str, results: str, field: str, overwrite: bool,
                          no_pair_scores: bool, flag_percent: float | None,
                          flag_threshold: float | None, chunk_size: int | None) -> None:
    """Write a 'qualiclip score --engine ray' Parquet result (OUT_DIR) into a dataset's
    fields by filepath, with the plugin's run record, ownership and claim rules: the fields
    end as if the scoring operator had made them."""
    import fiftyone as fo

    from qualiclip_plugin.scoring.importing import import_scores
    from qualiclip_plugin.trust.errors import RequestError

    if not fo.dataset_exists(dataset_name):
        raise click.BadParameter(f"no FiftyOne dataset named {dataset_name!r} (see "
                                 "'fiftyone datasets list')", param_hint="DATASET")
    try:
        summary = import_scores(fo.load_dataset(dataset_name), results, field=field,
                                pair_scores=not no_pair_scores, overwrite=overwrite,
                                flag_percent=flag_percent, flag_threshold=flag_threshold,
                                chunk_size=chunk_size)
    except RequestError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from exc
    click.echo(f"imported {summary.get('scored', 0)} scores ({summary.get('failed', 0)} failed) "
               f"into '{field}'; {summary.get('rows_not_matched', 0)} result rows matched no "
               f"sample to do, {summary.get('samples_without_result', 0)} samples had no row")
