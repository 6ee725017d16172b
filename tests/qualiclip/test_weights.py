"""Weights resolution and the download cache, over file:// and a closed loopback port only."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from qualiclip import load_model
from qualiclip.weights import (
    WeightsDownloadError,
    cache_dir,
    cache_filename,
    resolve_weights,
    sha256_file,
)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("QUALICLIP_CACHE")
    assert cache_dir().name == "qualiclip"


def test_url_download_is_cached_hashed_and_loadable(monkeypatch, tmp_path, tiny_checkpoint,
                                                    capsys):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    url = tiny_checkpoint.as_uri()
    path, name = resolve_weights(url, expected_sha256=_sha(tiny_checkpoint), progress=False)
    assert path.parent == tmp_path / "cache" and path.read_bytes() == tiny_checkpoint.read_bytes()
    assert name == url and sha256_file(path) == _sha(tiny_checkpoint)
    assert "SHA-256" in capsys.readouterr().err  # the digest is shown so it can be pinned
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    model = load_model(url, device="cpu", progress=False)
    assert model.weights_info["sha256"] == _sha(tiny_checkpoint)


def test_hash_mismatch_saves_nothing(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsDownloadError, match="SHA-256 mismatch"):
        resolve_weights(tiny_checkpoint.as_uri(), expected_sha256="0" * 64, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_pinned_hash_checks_local_files(tiny_checkpoint):
    with pytest.raises(WeightsDownloadError, match="mismatch"):
        resolve_weights(tiny_checkpoint, expected_sha256="f" * 64)
    path, _ = resolve_weights(tiny_checkpoint, expected_sha256=_sha(tiny_checkpoint))
    assert path == tiny_checkpoint


def test_failed_download_names_url_and_manual_placement(monkeypatch, tmp_path):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/qualiclip.pth"
    with pytest.raises(WeightsDownloadError) as info:
        resolve_weights(url, progress=False)
    message = str(info.value)
    assert url in message and str(tmp_path / "cache" / cache_filename(url)) in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_official_name_uses_a_manually_placed_file(monkeypatch, tmp_path, tiny_checkpoint,
                                                          capsys):
    """A manually placed official file is used without any network access."""
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path))
    (tmp_path / "qualiclip.pth").write_bytes(tiny_checkpoint.read_bytes())
    model = load_model("qualiclip", device="cpu")
    assert model.weights_info["name"] == "qualiclip"


def test_official_download_failure_shows_licence(monkeypatch, tmp_path, capsys):
    import qualiclip.weights as weights

    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = weights.WeightsSpec(**{**weights.OFFICIAL.__dict__,
                                  "url": f"http://127.0.0.1:{port}/qualiclip.pth"})
    monkeypatch.setitem(weights.REGISTRY, "qualiclip", spec)
    with pytest.raises(WeightsDownloadError):
        resolve_weights("qualiclip", progress=False)
    assert "CC BY-NC 4.0" in capsys.readouterr().err


def _serve_once(body: bytes, announced: int) -> tuple[str, threading.Thread]:
    """A loopback HTTP server that announces ``announced`` bytes, sends ``body`` and hangs up."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", str(announced))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):  # keep test output quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.server_address[1]}/w.pth", thread


def test_download_cut_short_is_an_error_and_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    url, thread = _serve_once(b"x" * 1000, announced=1_000_000)
    with pytest.raises(WeightsDownloadError, match="1000 of 1000000 bytes") as info:
        resolve_weights(url, progress=False)
    thread.join(5)
    assert url in str(info.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no truncated file, no temp file


def test_urls_with_the_same_file_name_do_not_share_a_cache_file(monkeypatch, tmp_path,
                                                               tiny_checkpoint):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "model.pth").write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "b" / "model.pth").write_bytes(b"another file")
    first, _ = resolve_weights((tmp_path / "a" / "model.pth").as_uri(), progress=False)
    second, _ = resolve_weights((tmp_path / "b" / "model.pth").as_uri(), progress=False)
    assert first != second and first.name.endswith("-model.pth")
    assert second.read_bytes() == b"another file"


def test_cached_weights_are_readable_by_others_as_umask_allows(monkeypatch, tmp_path,
                                                               tiny_checkpoint):
    import os
    import stat

    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path / "cache"))
    old = os.umask(0o022)
    try:
        path, _ = resolve_weights(tiny_checkpoint.as_uri(), progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone would leave 0600


def test_env_hash_pins_the_official_file_only(monkeypatch, tmp_path, tiny_checkpoint):
    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path))
    monkeypatch.setenv("QUALICLIP_SHA256", "0" * 64)
    assert resolve_weights(tiny_checkpoint)[0] == tiny_checkpoint  # your own file: not pinned
    (tmp_path / "qualiclip.pth").write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(WeightsDownloadError, match="mismatch"):
        resolve_weights("qualiclip")
    monkeypatch.setenv("QUALICLIP_SHA256", _sha(tiny_checkpoint))
    assert resolve_weights("qualiclip") == (tmp_path / "qualiclip.pth", "qualiclip")


def test_official_url_counts_as_the_official_weights(monkeypatch, tmp_path, capsys):
    """Fetching the release by its URL shows the licence and uses the same cache file."""
    import qualiclip.weights as weights

    monkeypatch.setenv("QUALICLIP_CACHE", str(tmp_path))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/qualiclip.pth"
    monkeypatch.setitem(weights.REGISTRY, "qualiclip",
                        weights.WeightsSpec(**{**weights.OFFICIAL.__dict__, "url": url}))
    with pytest.raises(WeightsDownloadError, match=str(tmp_path / "qualiclip.pth")):
        resolve_weights(url, progress=False)
    assert "CC BY-NC 4.0" in capsys.readouterr().err
