#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Safe to run again: it installs
# only when pyproject.toml or the constraints changed. Used by scripts/demo.sh and scripts/test.sh.
#
#   torch: CPU machines get torch==2.13.0. To use your own build (e.g. CUDA), install it into .venv
#   first (`python3 -m venv .venv && .venv/bin/pip install torch`); an importable torch is kept.
#   The browser test needs Debian's chromium: PXPO_BROWSER=1 (set by scripts/test.sh) installs it
#   with apt-get when /usr/bin/chromium is missing (as root, or with sudo). Never `playwright install`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "pxpo needs Python 3.10-3.12 (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)
PY

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
VENV_PY=.venv/bin/python
stamp=.venv/.pxpo-setup
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV_PY" -m pip install --quiet --upgrade pip
    if ! "$VENV_PY" -c "import torch" 2>/dev/null; then
        if command -v nvidia-smi >/dev/null 2>&1; then
            "$VENV_PY" -m pip install --quiet torch          # a CUDA build from PyPI
        else
            "$VENV_PY" -m pip install --quiet torch==2.13.0  # the CPU wheel
        fi
    fi
    "$VENV_PY" -m pip install --quiet -c requirements/constraints.txt -e ".[test]"
    echo "$want" > "$stamp"
fi

if [ "${PXPO_BROWSER:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "the browser test needs Debian's chromium: apt-get install chromium (as root)" >&2; exit 1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
