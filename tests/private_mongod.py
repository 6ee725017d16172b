"""A throwaway MongoDB for FiftyOne: its bundled ``mongod`` on a free loopback port.

Shared by the test session (``tests/conftest.py``), ``benchmarks/bench_plugin.py`` and
``docs/make_app_screenshot.py``. It finds ``mongod`` without importing fiftyone, so callers can
still point FiftyOne's environment variables at the new server before its config is loaded.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mongod(folder: Path, timeout: float = 60,
                 port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``mongod`` with its data and log under ``folder`` on ``port`` (default: a free one);
    wait until it accepts connections.

    Returns:
        ``(process, uri)``; the caller terminates the process.
    Raises:
        RuntimeError: fiftyone or its ``mongod`` is missing, or the server exited early.
    """
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or spec.origin is None:
        raise RuntimeError("fiftyone is not installed: run `bash scripts/setup.sh`")
    mongod = Path(spec.origin).parent / "db" / "bin" / "mongod"
    if not mongod.is_file():
        raise RuntimeError(
            f"FiftyOne's mongod is missing ({mongod}): run `bash scripts/setup.sh`, which "
            "installs a MongoDB build that runs on this machine"
        )
    db_dir = folder / "db"
    db_dir.mkdir(parents=True)
    log = folder / "mongod.log"
    port = port or free_port()
    process = subprocess.Popen(
        [str(mongod), "--dbpath", str(db_dir), "--port", str(port), "--bind_ip", "127.0.0.1",
         "--logpath", str(log)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"mongodb://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"mongod exited; see {log}") from None
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError(f"mongod did not accept connections within {timeout:.0f} s; see {log}")
