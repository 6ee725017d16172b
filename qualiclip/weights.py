"""Where weights come from: typed records for known releases, a download cache, hashing.

Nothing here runs at import time; a download happens only when a caller asks for weights that
are not cached yet.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "QUALICLIP_CACHE"


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


class WeightsDownloadError(RuntimeError):
    """Weights could not be fetched; the message names the URL and how to place the file."""


def cache_dir() -> Path:
    """``$QUALICLIP_CACHE`` if set, else ``<torch hub dir>/qualiclip``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "qualiclip"


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(str(text)).scheme in ("http", "https", "file")


def resolve_weights(
    weights: str | os.PathLike,
    expected_sha256: str | None = None,
    progress: bool = True,
) -> tuple[Path, str]:
    """Turn a registered name, a local path or a URL into a local file, downloading if needed.

    Returns:
        ``(path, display_name)``.
    Raises:
        FileNotFoundError: a local path that does not exist.
        WeightsDownloadError: the download failed or the hash did not match.
    """
    text = os.fspath(weights)
    expected = expected_sha256 or os.environ.get("QUALICLIP_SHA256") or None
    if text in REGISTRY:
        spec = REGISTRY[text]
        path = download(spec.url, cache_dir() / spec.filename, expected or spec.sha256,
                        progress=progress, license_note=_license_note(spec))
        return path, spec.name
    if is_url(text):
        name = Path(urllib.parse.urlparse(text).path).name or "weights.pth"
        return download(text, cache_dir() / name, expected, progress=progress), text
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(REGISTRY))
        raise FileNotFoundError(
            f"weights {text!r} not found: give a registered name ({known}), an existing "
            ".pth file, or an http(s) URL"
        )
    if expected:
        _check_hash(path, expected, source=str(path))
    return path, str(path)


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

    Streams to a temp file in the same folder and renames it into place only once complete and
    verified, so an interrupted download never leaves a truncated file in the cache.
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
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 (http/https/file)
            except (urllib.error.URLError, OSError) as exc:
                raise WeightsDownloadError(_offline_message(url, destination, exc)) from exc
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm.auto import tqdm

                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                          desc=destination.name, disable=not progress) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        actual = digest.hexdigest()
        if expected_sha256 and actual.lower() != expected_sha256.lower():
            raise WeightsDownloadError(
                f"SHA-256 mismatch for {url}: expected {expected_sha256}, got {actual}. "
                "The file was not saved; check the URL or the pinned hash."
            )
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"Saved {destination} (SHA-256 {actual})", file=sys.stderr)
    return destination


def _offline_message(url: str, destination: Path, exc: BaseException) -> str:
    return (
        f"could not download weights from {url} ({exc}). If this machine is offline, download "
        f"that file elsewhere and place it at {destination} (or set {CACHE_ENV} to the folder "
        "holding it, or pass the file path as weights)."
    )


def _check_hash(path: Path, expected: str, source: str) -> None:
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise WeightsDownloadError(
            f"SHA-256 mismatch for {source}: expected {expected}, got {actual}. Delete the file "
            "and download it again, or fix the pinned hash."
        )
