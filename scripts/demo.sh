#!/usr/bin/env bash
# Set up the environment, then score a folder of images and write a CSV.
#
#   bash scripts/demo.sh [FOLDER] [OUTPUT.csv]
#
# Without FOLDER it scores the real-world sample photos that ship with scikit-image (installed
# as a FiftyOne dependency): portraits, animals, scans, greyscale, RGBA, GIF and TIFF files.
# Weights: the official release (CC BY-NC 4.0, downloaded once into the cache), or set
# QUALICLIP_WEIGHTS to a local checkpoint path.
set -euo pipefail
# Arguments are relative to where the script was called from, not to the repository.
FOLDER_ARG=${1:+$(realpath -m -- "$1")}
OUTPUT=$(realpath -m -- "${2:-scores.csv}")
cd "$(dirname "$0")/.."
bash scripts/setup.sh
FOLDER=${FOLDER_ARG:-$(.venv/bin/python -c 'import os, skimage.data as d; print(os.path.dirname(d.__file__))')}
.venv/bin/qualiclip score "$FOLDER" -r -o "$OUTPUT"  # weights: $QUALICLIP_WEIGHTS, else official
echo "==> wrote $OUTPUT; lowest scores first:"
.venv/bin/python - "$OUTPUT" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["score"]]
for r in sorted(rows, key=lambda r: float(r["score"]))[:10]:
    print(f'{float(r["score"]):.3f}  {r["path"]}')
PY
