#!/usr/bin/env bash
# Run the whole test suite on 2 workers (after setting up .venv). Extra arguments go to pytest.
# Tests that need Docker skip themselves when no engine is reachable (but not under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/dev-setup.sh
exec .venv/bin/python -m pytest -n 2 "$@"
