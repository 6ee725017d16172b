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
