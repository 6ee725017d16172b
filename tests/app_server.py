"""A FiftyOne App server on a free loopback port, for the App-server and browser tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.private_mongod import free_port


@contextmanager
def running_app_server(log: Path, env: dict[str, str] | None = None,
                       timeout: float = 120) -> Iterator[str]:
    """Start ``python -m fiftyone.server.main`` (its output in ``log``), yield its URL once it
    answers, stop it afterwards. ``env`` adds to this process's environment.

    Raises:
        RuntimeError: it exited or did not answer within ``timeout`` s (with the log's tail).
    """
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--port", str(port),
             "--address", "127.0.0.1"], env={**os.environ, **(env or {})}, stdout=out,
            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # it answers
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("App server did not start:\n"
                                       + log.read_text(errors="replace")[-3000:]) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
