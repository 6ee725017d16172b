#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the whole test suite.
# The tests start their own throwaway MongoDB for FiftyOne; nothing touches the network.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FIFTYONE_DO_NOT_TRACK=true
.venv/bin/python -m ruff check .
.venv/bin/python -m pytest "$@"
