#!/usr/bin/env bash
# Fill wheelhouse/ with every wheel the image needs (CPython 3.11, manylinux x86_64): the runtime
# dependencies, supervisor, and the build backend, so `docker build --network none` can install
# the project without an index.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p wheelhouse

# Requirements straight from pyproject.toml: dependencies + the deploy extra + the build backend
mapfile -t REQS < <("$PYTHON" - <<'PY'
import tomllib
data = tomllib.load(open("pyproject.toml", "rb"))
for req in [*data["project"]["dependencies"], *data["project"]["optional-dependencies"]["deploy"],
            *data["build-system"]["requires"]]:
    print(req)
PY
)

"$PYTHON" -m pip download --quiet --dest wheelhouse --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    "${REQS[@]}"
echo "wheelhouse: $(ls wheelhouse/*.whl | wc -l) wheels"
