"""What an operator execution may do on this server: the admin's policy for App requests.

Operators run inside the FiftyOne App server, which teams share; whoever opens the App fills the
forms. Every operator execution therefore goes through this policy (an operator cannot tell an
App request from ``foo.execute_operator``); Python callers who need free paths and URLs use
:mod:`qualiclip_plugin.api`, ``apply_model``, the library or the CLI.

Settings (environment variables of the App server / delegated workers, or the same keys in
lower case without the prefix in the App config's ``plugins`` section for ``@qualiclip/qualiclip``;
environment variables win):

==============================  ===============================================================
``QUALICLIP_APP_WEIGHTS``       registered weight names App users may load, comma-separated
                                (default ``qualiclip``; ``none`` for none)
``QUALICLIP_APP_WEIGHTS_DIRS``  folders (``os.pathsep``-separated) whose ``.pth``/``.pt`` files
                                App users may load (default: the weights cache only); checkpoints
                                calibrated from the App go into ``calibrated/`` of the first one
                                (only when this is set)
``QUALICLIP_APP_DOWNLOADS``     ``1`` (default) lets the server download registered weights
                                missing from the cache; ``0`` forbids it
``QUALICLIP_APP_OUTPUT_DIR``    root of the files App users make (reports); each dataset gets
                                its own folder inside (default ``~/fiftyone/qualiclip``)
``QUALICLIP_APP_REPLACE_FILES``  ``1`` lets App users replace files in that folder that this
                                plugin did not write (default ``0``)
``QUALICLIP_APP_MAX_WORKERS``   most decode worker processes a form may ask for (default: the
                                number of CPUs)
==============================  ===============================================================

URLs (``http``, ``https``, ``file``) are never accepted from an operator. Refusals never say
whether a path outside the allowed folders exists. This module imports neither torch nor
fiftyone at the top: App forms call it on every keystroke.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qualiclip.weights import REGISTRY, cache_dir, is_url  # torch-free module
from qualiclip_plugin import PLUGIN_NAME
from qualiclip_plugin.trust.errors import RequestError

ENV_PREFIX = "QUALICLIP_APP_"
CHECKPOINT_SUFFIXES = (".pth", ".pt")
#: How many checkpoint files the form lists (a folder of thousands must not stall the form).
MAX_LISTED_CHECKPOINTS = 200
#: How deep below an allowed folder checkpoint files are looked for.
MAX_LISTING_DEPTH = 3
REPORT_SUFFIX = ".html"
#: Used with ``fullmatch``: ``$`` alone also matches before a trailing newline.
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,99}")
#: A failed download is shown in the form for this long, instead of being retried on each run.
DOWNLOAD_FAILURE_MEMORY_S = 600.0


class PolicyError(RequestError):
    """A request that the server's policy for App requests does not allow."""


@dataclass(frozen=True)
class AppPolicy:
    """The admin's settings for operator executions (see the module docstring)."""

    registered: tuple[str, ...]
    weights_dirs: tuple[Path, ...]
    downloads: bool
    output_root: Path
    replace_files: bool
    max_workers: int
    #: The admin named the weights folders (``weights_dirs`` is not just the default cache):
    #: only then may App users write checkpoints (calibration) into the first one.
    weights_dirs_set: bool = False

    @classmethod
    def current(cls) -> AppPolicy:
        """The policy from the environment and the App config's plugin settings."""
        settings = _plugin_settings()

        def setting(key: str) -> Any:
            value = os.environ.get(ENV_PREFIX + key.upper())
            return value if value is not None else settings.get(key)

        names = setting("weights")
        registered = ("qualiclip",) if names is None else _split_names(names)
        dirs = setting("weights_dirs")
        weights_dirs = (tuple(Path(d).expanduser() for d in _split_paths(dirs)) if dirs
                        else (cache_dir(),))
        root = setting("output_dir") or os.path.join(
            os.environ.get("FIFTYONE_DEFAULT_DATASET_DIR") or "~/fiftyone", "qualiclip")
        max_workers = _whole(setting("max_workers"), os.cpu_count() or 1)
        return cls(registered=registered, weights_dirs=weights_dirs,
                    downloads=_flag(setting("downloads"), True),
                    output_root=Path(str(root)).expanduser(),
                    replace_files=_flag(setting("replace_files"), False),
                    max_workers=max(0, max_workers), weights_dirs_set=bool(dirs))


# --- weights --------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsChoice:
    """One entry of the form's weights list: ``value`` goes into the request."""

    value: str
    label: str


def weights_choices(policy: AppPolicy) -> list[WeightsChoice]:
    """Registered names the policy allows, then checkpoint files in the allowed folders."""
    choices = [WeightsChoice(name, f"{name} (official, {REGISTRY[name].license})")
               for name in policy.registered if name in REGISTRY]
    registered_files = {spec.filename for spec in REGISTRY.values()}
    for folder in policy.weights_dirs:
        root = _real_folder(folder)
        if root is None:
            continue
        for path in _checkpoints_in(root):
            if path.parent == root and path.name in registered_files:
                continue  # a cached registered file: listed under its name above
            # The label names the file inside its allowed folder, never the server's folders.
            choices.append(WeightsChoice(str(path), f"{path.relative_to(root)} (checkpoint)"))
            if len(choices) >= MAX_LISTED_CHECKPOINTS:
                return choices
    return choices


def check_weights(value: str, policy: AppPolicy) -> str:
    """``value`` from a form -> a registered name or the real path of an allowed checkpoint.

    Raises:
        PolicyError: a URL, a name or path the policy does not allow, or no such checkpoint
            inside the allowed folders. Paths outside them get one message whether they exist
            or not.
    """
    text = str(value).strip()
    if text in policy.registered and text in REGISTRY:
        return text
    if is_url(text) or "://" in text:
        raise PolicyError(f"weights {_short(text)!r}: addresses are not accepted from the App on "
                          "this server; choose weights from the list")
    if text in REGISTRY:
        raise PolicyError(f"weights {text!r} are not offered on this server; choose weights "
                          "from the list")
    real = _inside(text, policy.weights_dirs)
    name = _short(_file_name(text))  # never the server's folders (the dropdown's values)
    if real is None:
        raise PolicyError(f"weights {name!r} are not among the weights this server "
                          "offers; choose weights from the list (admins add folders with "
                          f"{ENV_PREFIX}WEIGHTS_DIRS)")
    if real.suffix.lower() not in CHECKPOINT_SUFFIXES or not real.is_file():
        raise PolicyError(f"weights {name!r}: no such checkpoint file (.pth or .pt) in "
                          "the folders this server offers; choose weights from the list")
    return str(real)


_FAILED_DOWNLOADS: dict[str, tuple[float, str]] = {}


def remember_failed_download(name: str, message: str) -> None:
    """Record that downloading registered weights ``name`` failed, for the next forms."""
    _FAILED_DOWNLOADS[name] = (time.monotonic(), message)


def weights_unavailable(weights: str, policy: AppPolicy) -> str | None:
    """Why registered weights cannot be loaded on this server now, or ``None``.

    Checkpoint paths are checked by :func:`check_weights`; this covers registered names that
    are not cached: downloads forbidden, or a download that failed recently.
    """
    spec = REGISTRY.get(weights)
    if spec is None or (cache_dir() / spec.filename).is_file():
        return None
    if not policy.downloads:
        return (f"Weights {weights!r} are not available on this server: they are not in its "
                "weights cache and downloads from the App are turned off. Choose a checkpoint "
                f"from the list, or ask the server's admin to place {spec.filename} in the "
                "weights cache")
    failed = _FAILED_DOWNLOADS.get(weights)
    if failed is not None and time.monotonic() - failed[0] < DOWNLOAD_FAILURE_MEMORY_S:
        return (f"Weights {weights!r} are not available on this server: the last download "
                f"failed ({failed[1]}). Choose a checkpoint from the list, or ask the "
                f"server's admin to place {spec.filename} in the weights cache")
    return None


def weights_note(weights: str) -> str:
    """One line for the form: cached or to be downloaded, and the licence."""
    spec = REGISTRY.get(weights)
    if spec is None:
        return f"Checkpoint {Path(weights).name}"
    if (cache_dir() / spec.filename).is_file():
        return f"Weights {weights!r} are cached on this server ({spec.license})"
    return (f"Weights {weights!r} are not cached on this server yet: the first run downloads "
            f"them. Licence {spec.license}: non-commercial use only")


# --- files ----------------------------------------------------------------------------------
def dataset_folder(policy: AppPolicy, dataset_name: str, dataset_id: str) -> Path:
    """The folder files made from the App for one dataset go into (not created here): the
    name's slug, readable, plus a short hash of the dataset's ID, so no two datasets share a
    folder (names that slug alike, or a dataset deleted and made again under its name)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip(".-")[:60] or "dataset"
    short = hashlib.sha256(str(dataset_id).encode()).hexdigest()[:10]
    return policy.output_root / f"{slug}-{short}"


def output_file(policy: AppPolicy, dataset_name: str, dataset_id: str, name: str) -> Path:
    """Where a report called ``name`` (a file name from a form) is written.

    The extension is the plugin's (``.html``); the path is resolved (symlinks, ``..``) and must
    stay inside the dataset's folder (:func:`dataset_folder`). Whether an existing file there
    may be replaced is the ownership rule's (:func:`qualiclip_plugin.trust.protection.
    report_file`).

    Raises:
        PolicyError: a path instead of a name, or a name that escapes the folder.
    """
    raw = str(name)
    text = raw.strip(" ")
    stem = text[:-len(REPORT_SUFFIX)] if text.lower().endswith(REPORT_SUFFIX) else text
    # Control characters (a trailing newline too) are refused, not stripped away.
    if not _FILE_NAME.fullmatch(stem) or ".." in stem or not raw.isprintable():
        raise PolicyError(f"report name {_short(text)!r}: give a plain file name (letters, digits, "
                          "'.', '_', '-', spaces), not a path; it is saved as .html in this "
                          "dataset's report folder")
    folder = dataset_folder(policy, dataset_name, dataset_id)
    path = folder / (stem + REPORT_SUFFIX)
    root = policy.output_root.expanduser().resolve()
    # Resolve what exists: a planted symlink (folder or file) must not lead outside the root.
    if not _is_within(path.resolve(), root) or path.is_symlink():
        raise PolicyError(f"report name {_short(text)!r} cannot be used: it does not lead to a "
                          "plain file in this dataset's report folder")
    return path


#: The folder, inside the first admin-configured weights folder, calibrated checkpoints go into
#: (the scoring form lists it: depth 1 of :data:`MAX_LISTING_DEPTH`).
CALIBRATED_FOLDER = "calibrated"


def calibrated_checkpoint_file(policy: AppPolicy, name: str) -> Path:
    """Where the calibrated checkpoint ``name`` (a file name from a form) is written:
    ``<first weights folder>/calibrated/<name>.pth``, resolved and confined to that folder.
    Whether an existing file there may be replaced is the ownership rule's
    (:func:`qualiclip_plugin.trust.protection.calibrated_file`).

    Raises:
        PolicyError: no weights folder configured by the admin, a path instead of a name, or a
            name that does not lead to a plain file in that folder.
    """
    if not policy.weights_dirs_set or not policy.weights_dirs:
        raise PolicyError("no weights folder is configured on this server, so a calibrated "
                          "checkpoint has nowhere to go: ask its admin to set "
                          f"{ENV_PREFIX}WEIGHTS_DIRS (it is written into the first folder)")
    raw = str(name)
    text = raw.strip(" ")
    stem = text[:-4] if text.lower().endswith(".pth") else text
    if not _FILE_NAME.fullmatch(stem) or ".." in stem or not raw.isprintable():
        raise PolicyError(f"checkpoint name {_short(text)!r}: give a plain file name (letters, "
                          "digits, '.', '_', '-', spaces), not a path; it is saved as .pth in "
                          "the server's weights folder")
    root = _real_folder(policy.weights_dirs[0])
    if root is None:
        raise PolicyError("the server's weights folder does not exist: ask its admin to "
                          f"create the first folder of {ENV_PREFIX}WEIGHTS_DIRS")
    path = root / CALIBRATED_FOLDER / (stem + ".pth")
    # Resolve what exists: a planted symlink (folder or file) must not lead outside the root.
    if not _is_within(path.resolve(), root) or path.is_symlink():
        raise PolicyError(f"checkpoint name {_short(text)!r} cannot be used: it does not lead "
                          "to a plain file in the server's weights folder")
    return path


# --- numbers --------------------------------------------------------------------------------
def check_workers(num_workers: int | None, policy: AppPolicy) -> None:
    """Decode workers are processes on the server: at most the admin's (CPU-count) limit."""
    if num_workers is not None and num_workers > policy.max_workers:
        raise PolicyError(f"num_workers must be at most {policy.max_workers} on this server "
                          f"(got {num_workers})")


# --- helpers --------------------------------------------------------------------------------
def _checkpoints_in(folder: Path) -> list[Path]:
    """Checkpoint files under ``folder`` (real paths inside it), sorted, depth-limited.
    Entries that cannot be resolved (a symlink loop, a dangling link) are skipped: one bad
    entry must not break every form that lists weights."""
    root = _real_folder(folder)
    if root is None:
        return []
    found = []
    for current, dirs, files in os.walk(root):
        depth = len(Path(current).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_LISTING_DEPTH \
            else []
        for name in sorted(files):
            path = Path(current) / name
            if path.suffix.lower() in CHECKPOINT_SUFFIXES and not name.startswith("."):
                try:
                    real = path.resolve()
                    usable = _is_within(real, root) and real.is_file()
                except (OSError, RuntimeError):  # RuntimeError: a symlink loop
                    continue
                if usable:
                    found.append(real)
            if len(found) >= MAX_LISTED_CHECKPOINTS:
                return found
    return found


def _real_folder(folder: Path) -> Path | None:
    """``folder`` resolved, or ``None`` when it is not a folder or cannot be resolved."""
    try:
        root = folder.expanduser().resolve()
        return root if root.is_dir() else None
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None


def _inside(text: str, folders: tuple[Path, ...]) -> Path | None:
    """The real path ``text`` names inside one of ``folders`` (relative names are taken
    relative to each folder), or ``None``."""
    candidate = Path(text).expanduser()
    for folder in folders:
        try:
            root = folder.expanduser().resolve()
            real = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (OSError, RuntimeError):  # symlink loops
            continue
        if _is_within(real, root):
            return real
    return None


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _file_name(text: str) -> str:
    """The last part of a path as given (``\\`` or ``/`` separated)."""
    return text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or text


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _split_names(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    names = tuple(str(i).strip() for i in items if str(i).strip())
    return () if names in ((), ("none",)) else names


def _split_paths(value: Any) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(os.pathsep)
    return [str(i).strip() for i in items if str(i).strip()]


def _flag(value: Any, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in ("0", "false", "no", "off")


def _whole(value: Any, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _plugin_settings() -> dict[str, Any]:
    """This plugin's section of the App config's ``plugins`` settings (empty if none)."""
    try:
        import fiftyone as fo

        settings = (fo.app_config.plugins or {}).get(PLUGIN_NAME) or {}
    except Exception:  # no App config: environment variables only
        return {}
    return dict(settings) if isinstance(settings, dict) else {}
