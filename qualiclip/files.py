"""File-system helpers shared by the weights cache and checkpoint writing (no torch here, so
:mod:`qualiclip.weights` stays importable without it)."""

from __future__ import annotations

import os
from pathlib import Path


def use_default_permissions(path: Path) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode a plain ``open`` would have given it
    (0666 less the umask), so checkpoints and cached weights in a shared folder stay readable."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
