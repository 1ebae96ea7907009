#!/usr/bin/env bash
# Create .venv (if needed) and install the project editable with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Quiet unless it fails (setuptools' editable-install warnings are noise here)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! { .venv/bin/python -m pip install --quiet --upgrade pip && .venv/bin/python -m pip install --quiet -e ".[dev]"; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    exit 1
fi
