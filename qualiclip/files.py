"""File-system helpers shared by the weights cache, checkpoint writing and folder scans (no
torch here, so :mod:`qualiclip.weights` and the CLI stay importable without it)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from qualiclip.constants import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


def use_default_permissions(path: Path) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode a plain ``open`` would have given it
    (0666 less the umask), so checkpoints and cached weights in a shared folder stay readable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Make ``path`` by ``write(temp_path)`` into a fresh file in the same folder, then rename.

    A reader never sees a half-written file, a crash leaves the previous file intact, and a
    symlink at ``path`` is replaced, not followed. Folders are created; the file gets the
    default permissions (:func:`use_default_permissions`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        use_default_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def image_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files in ``folder`` (by extension, :data:`~qualiclip.constants.IMAGE_EXTENSIONS`;
    sub-folders only with ``recursive``), sorted, so every scan of a folder lists it alike
    (``qualiclip score``, the training split, the sensitivity sample)."""
    root = Path(folder).expanduser()
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern)
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_entries(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """What a scan of ``folder`` should report a row for: the :func:`image_files`, plus the
    entries named like images that are not readable files (a dangling symlink, a symlink loop,
    a folder named ``x.jpg``), so a report accounts for every image-named entry instead of
    omitting some silently (the scorer turns each into an error row). With ``recursive`` a
    folder named like an image is searched like any other, so it gets no row of its own.
    Sorted like :func:`image_files`."""
    root = Path(folder).expanduser()
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern)
                  if p.suffix.lower() in IMAGE_EXTENSIONS
                  and (p.is_file() or p.is_symlink() or (not recursive and p.is_dir())))


def video_files(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Video files in ``folder`` (by extension, :data:`~qualiclip.constants.VIDEO_EXTENSIONS`;
    sub-folders only with ``recursive``), sorted like :func:`image_files`."""
    root = Path(folder).expanduser()
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in root.glob(pattern)
                  if p.suffix.lower() in VIDEO_EXTENSIONS and (p.is_file() or p.is_symlink()))


#: First characters that make a spreadsheet (Excel, LibreOffice, Google Sheets) evaluate a CSV
#: cell as a formula: a file named ``=HYPERLINK("http://x","y").jpg`` would become a live link
#: (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that no spreadsheet evaluates: a text starting with one of
    :data:`FORMULA_STARTS` gets a leading ``'`` (OWASP's rule; spreadsheets show the text
    without it). A text already starting with ``'`` gets one too, so
    :func:`from_spreadsheet_safe` restores every text exactly. Numbers pass unchanged."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, "'")):
        return "'" + value
    return value


def from_spreadsheet_safe(cell: str) -> str:
    """The text :func:`spreadsheet_safe` was given: one leading ``'`` removed."""
    return cell[1:] if cell.startswith("'") else cell
