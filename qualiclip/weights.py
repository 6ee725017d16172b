"""Where weights come from: typed records for known releases, a download cache, hashing.

Nothing here runs at import time; a download happens only when a caller asks for weights that
are not cached yet.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from qualiclip.files import use_default_permissions

CACHE_ENV = "QUALICLIP_CACHE"
#: The weights used where none are given (library, CLI, training's --init, plugin, zoo model).
WEIGHTS_ENV = "QUALICLIP_WEIGHTS"
#: Pins the SHA-256 of the registered official weights (not of other files).
SHA256_ENV = "QUALICLIP_SHA256"


@dataclass(frozen=True)
class WeightsSpec:
    """One published weight file.

    Attributes:
        sha256: expected SHA-256 hex digest, or ``None`` where the publisher gives none (then the
            digest of what was downloaded is shown so the user can pin it).
    """

    name: str
    url: str
    filename: str
    license: str
    license_url: str
    sha256: str | None = None
    description: str = ""


OFFICIAL = WeightsSpec(
    name="qualiclip",
    url="https://github.com/miccunifi/QualiCLIP/releases/download/weights/qualiclip.pth",
    filename="qualiclip.pth",
    license="CC BY-NC 4.0",
    license_url="https://creativecommons.org/licenses/by-nc/4.0/",
    # The authors publish no hash and nobody on this project has verified the file: do not
    # invent one. Users can pin theirs with `expected_sha256` / QUALICLIP_SHA256.
    sha256=None,
    description=("Official QualiCLIP (CLIP RN50) by Agnolucci, Galteri and Bertini, "
                 "arXiv 2403.11176"),
)

REGISTRY: dict[str, WeightsSpec] = {OFFICIAL.name: OFFICIAL}


def which_weights(weights: str | os.PathLike | None = None) -> str:
    """The one rule for which weights to use, shared by every entry point.

    ``weights`` when given (even ``"qualiclip"``: an explicit choice beats the environment), else
    ``$QUALICLIP_WEIGHTS`` when set and not blank, else the official release (``"qualiclip"``).
    An environment variable lets an offline machine, a service or a notebook use a local
    checkpoint everywhere without repeating the path in each call or command.

    Returns:
        a registered name, a path or a URL, for :func:`resolve_weights`.
    """
    if weights is not None and os.fspath(weights) != "":
        return os.fspath(weights)
    return os.environ.get(WEIGHTS_ENV, "").strip() or OFFICIAL.name


class WeightsDownloadError(RuntimeError):
    """Weights could not be fetched; the message names the URL and how to place the file."""


def cache_dir() -> Path:
    """``$QUALICLIP_CACHE`` if set, else ``<torch hub dir>/qualiclip``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    return _torch_hub_dir() / "qualiclip"


def _torch_hub_dir() -> Path:
    """``torch.hub.get_dir()``, computed without importing torch when it is not loaded yet (the
    plugin's App forms ask for the cache folder, and importing torch there costs seconds)."""
    hub = sys.modules.get("torch.hub")
    if hub is not None:
        return Path(hub.get_dir())
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
    return Path(torch_home).expanduser() / "hub"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_url(text: str) -> bool:
    """True for ``http://``, ``https://`` and ``file://`` addresses."""
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "file")


def resolve_weights(
    weights: str | os.PathLike,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> tuple[Path, str]:
    """Turn a registered name, a local path or a URL into a local file, downloading if needed.

    ``expected_sha256`` pins any file; ``$QUALICLIP_SHA256`` pins the registered official
    weights only (so it does not get in the way of your own checkpoints).

    Returns:
        ``(path, display_name)``.
    Raises:
        FileNotFoundError: a local path that does not exist.
        WeightsDownloadError: the download failed or the hash did not match.
    """
    text = os.fspath(weights)
    spec = REGISTRY.get(text) or next((s for s in REGISTRY.values() if s.url == text), None)
    if spec is not None:
        expected = expected_sha256 or os.environ.get(SHA256_ENV) or spec.sha256
        path = download(spec.url, cache_dir() / spec.filename, expected,
                        progress=progress, license_note=_license_note(spec))
        return path, spec.name
    if is_url(text):
        return download(text, cache_dir() / cache_filename(text), expected_sha256,
                        progress=progress), text
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(REGISTRY))
        # A path that came from the environment is easy to forget: say where it came from.
        from_env = text == os.environ.get(WEIGHTS_ENV, "").strip()
        origin = f" (from ${WEIGHTS_ENV})" if from_env else ""
        raise FileNotFoundError(
            f"weights {text!r}{origin} not found: give a registered name ({known}), an existing "
            ".pth file, or an http(s) URL"
        )
    if expected_sha256:
        _check_hash(path, expected_sha256, source=str(path), downloaded=False)
    return path, str(path)


def cache_filename(url: str) -> str:
    """Cache file name for an unregistered URL: its last path part prefixed with a short hash of
    the whole URL, so ``.../a/model.pth`` and ``.../b/model.pth`` never share a file."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights.pth"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _license_note(spec: WeightsSpec) -> str:
    return (f"{spec.description}. Weights licensed {spec.license} ({spec.license_url}): "
            "non-commercial use only, with attribution; models fine-tuned from them inherit it.")


def download(
    url: str,
    destination: Path,
    expected_sha256: str | None = None,
    progress: bool = True,
    license_note: str | None = None,
) -> Path:
    """Fetch ``url`` to ``destination`` unless it is already there (hash checked when known).

    Streams to a temp file in the same folder and renames it into place only once complete
    (every byte the server announced) and verified, so an interrupted download never leaves a
    truncated file in the cache.

    Raises:
        WeightsDownloadError: unreachable URL, connection lost or body cut short, hash mismatch;
            the message names the URL and where to place the file by hand.
    """
    if destination.is_file():
        if expected_sha256:
            _check_hash(destination, expected_sha256, source=str(destination))
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    if license_note:
        print(f"Downloading QualiCLIP weights. {license_note}", file=sys.stderr)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part",
                                    dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                actual = _stream(url, out, destination.name, progress)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
                raise WeightsDownloadError(_offline_message(url, destination, exc)) from exc
        if expected_sha256 and actual.lower() != expected_sha256.lower():
            raise WeightsDownloadError(
                f"SHA-256 mismatch for {url}: expected {expected_sha256}, got {actual}. "
                "The file was not saved; check the URL or the pinned hash."
            )
        use_default_permissions(tmp)
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"Saved {destination} (SHA-256 {actual})", file=sys.stderr)
    return destination


def _stream(url: str, out: BinaryIO, label: str, progress: bool) -> str:
    """Copy the body of ``url`` into ``out`` with a progress bar; returns its SHA-256.

    Raises:
        OSError: the body ended before its announced Content-Length (a dropped connection
            looks like a normal end to ``read``, so the byte count is the only tell).
    """
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (http/https/file)
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                  disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise OSError(f"connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def _offline_message(url: str, destination: Path, exc: BaseException) -> str:
    """One line: what failed, and the three ways to go on without this download."""
    return (
        f"could not download weights from {url} ({exc}). Offline? Use a local checkpoint: "
        f"--weights PATH (qualiclip-train: --init PATH; Python: weights=PATH) or "
        f"{WEIGHTS_ENV}=PATH for every command; or copy that file to {destination} (the cache: "
        f"${CACHE_ENV} if set, else <torch hub dir>/qualiclip)."
    )


def _check_hash(path: Path, expected: str, source: str, downloaded: bool = True) -> None:
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        fix = ("Delete the file and download it again, or fix the pinned hash." if downloaded
               else "Check that this is the file you meant, or fix the pinned hash.")
        raise WeightsDownloadError(
            f"SHA-256 mismatch for {source}: expected {expected}, got {actual}. {fix}")
