#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite.
# The tests start their own throwaway MongoDB for FiftyOne; nothing touches the network.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests (report rendering in tests/qualiclip, the FiftyOne App driven by Playwright in
# tests/app) use headless Chromium, Debian's package. Install it where we can; they skip without
# it, except with CI=true, where they fail.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing chromium for the browser tests"
    (apt-get install -y -q chromium >/dev/null 2>&1 ||
        (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) ||
        echo "warning: could not install chromium; the browser tests will be skipped (fail with CI=true)" >&2
fi
# The App shows video datasets only with FFmpeg's ffprobe on the PATH (the video browser test).
if ! command -v ffprobe >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "==> installing ffmpeg (ffprobe) for the App's video test"
    (apt-get install -y -q --no-install-recommends ffmpeg >/dev/null 2>&1 ||
        (apt-get update -q >/dev/null 2>&1 &&
            apt-get install -y -q --no-install-recommends ffmpeg >/dev/null 2>&1)) ||
        echo "warning: could not install ffmpeg; the App video test will be skipped (fail with CI=true)" >&2
fi
export FIFTYONE_DO_NOT_TRACK=true
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest "$@"
