#!/usr/bin/env bash
# Create .venv-2x/: the original grpc-helper 2.3.1 from the package index, for the rolling-upgrade
# tests (tests/test_compat_2x.py). Idempotent: does nothing when the venv already holds these pins.
#
# Exit codes: 0 ready; 75 the package index is unreachable (the test skips, unless CI=true);
# anything else: the install failed.
#
# Every version is pinned and installed with --no-deps (then `pip check`), so CI is reproducible.
# grpcio and protobuf match constraints.txt: the test generates the echo sample's code for this venv
# with .venv's grpcio-tools 1.85.1, whose code needs grpcio >= 1.85.1 and protobuf >= 7.35.1, < 8.
# setuptools < 70: the original imports pkg_resources.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${COMPAT_VENV:-.venv-2x}
PINS=(
    grpc-helper==2.3.1
    grpc-helper-api==2.0.4
    grpcio==1.85.3
    protobuf==7.36.2
    argcomplete==3.7.2
    typing_extensions==4.16.0
    setuptools==69.5.1
)
STAMP="$VENV/.compat-pins"

mkdir -p "$VENV"
# Two test workers may get here at once: one creates, the other waits and finds it done
exec 9>"$VENV/.lock"
flock 9
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "${PINS[*]}" ]; then
    exit 0
fi

LOG=$(mktemp)
PROBE=$(mktemp -d)
trap 'rm -rf "$LOG" "$PROBE"' EXIT
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ] && ! "$PYTHON" -m venv "$VENV" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "compat-venv: $PYTHON -m venv $VENV failed" >&2
    exit 1
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Reachability probe: one small download of the package we install (fails fast without an index)
if ! "${PIP[@]}" download --quiet --no-deps --retries 1 --timeout 15 --dest "$PROBE" grpc-helper==2.3.1 >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "compat-venv: package index unreachable (pip download grpc-helper==2.3.1 failed)" >&2
    exit 75
fi
if ! { "${PIP[@]}" install --quiet --no-deps "${PINS[@]}" &&
    "${PIP[@]}" check &&
    "$VENV/bin/python" -I -c "import grpc_helper, grpc_helper_api; assert grpc_helper.__version__ == '2.3.1'"; } >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "compat-venv: installing the pins into $VENV failed" >&2
    exit 1
fi
echo "${PINS[*]}" >"$STAMP"
