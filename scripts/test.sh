#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite.
# The tests start their own throwaway MongoDB for FiftyOne; nothing touches the network.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report test renders HTML in headless Chromium (Debian's package). Install it where we can.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium for the report rendering test"
    (apt-get install -y -q chromium >/dev/null 2>&1 ||
        (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ||
        echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
export FIFTYONE_DO_NOT_TRACK=true
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest "$@"
