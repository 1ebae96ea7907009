#!/usr/bin/env bash
# Run the whole test suite on 2 workers (after setting up .venv). Extra arguments go to pytest.
# Tests that need Docker skip themselves when no engine is reachable (but not under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/dev-setup.sh
# Container tests share one compose stack: keep them on one worker (xdist_group)
exec .venv/bin/python -m pytest -n 2 --dist loadgroup "$@"
