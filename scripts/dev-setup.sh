#!/usr/bin/env bash
# Create .venv (if needed) and install the project editable with its dev and otel extras, at the versions
# pinned in constraints.txt. Runs pip only when pyproject.toml or constraints.txt changed since the
# last successful setup (a stamp in .venv), so the scripts that call it (stack.sh up, test.sh) do
# not touch the network or the venv once it is set up.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.grpc-helper-setup
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    exit 0
fi
# Quiet unless it fails (setuptools' editable-install warnings are noise here)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! { .venv/bin/python -m pip install --quiet --upgrade pip \
    && .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev,otel]"; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    exit 1
fi
echo "$WANT" > "$STAMP"
