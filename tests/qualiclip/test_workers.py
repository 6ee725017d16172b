"""Default decode workers never exceed the CPU cores this process may use (its affinity),
which is what torch checks before warning about too many DataLoader workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"),
                                    reason="needs os.sched_setaffinity (Linux)")

PROBE = """
import os, torch
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one usable core, as under taskset
os.cpu_count = lambda: 64  # the machine's count, which the affinity mask narrows
from qualiclip.inference import default_num_workers, usable_cpus
print(usable_cpus(), default_num_workers(1000, torch.device("cuda")),
      default_num_workers(1000, torch.device("cpu")))
"""


@needs_affinity
def test_library_default_counts_the_cores_this_process_may_use():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    # One core: no worker beside a CPU model, one beside a GPU model (never 32 of 64 cores).
    assert out == ["1", "1", "0"]
