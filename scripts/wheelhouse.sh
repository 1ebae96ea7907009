#!/usr/bin/env bash
# Fill wheelhouse/ with every wheel the image needs (CPython 3.11, manylinux x86_64): the runtime
# dependencies, supervisor, and the build backend, so `docker build --network none` can install
# the project without an index. Run it on a machine that reaches PyPI; copy wheelhouse/ over.
#
# The project itself is not put here as a wheel: the Dockerfile builds it from the sources in the
# build context (with the setuptools/wheel downloaded here), so the image never gets a stale copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mkdir -p wheelhouse

if [ -f pyproject.toml ]; then
    # Requirements straight from pyproject.toml: dependencies + the deploy and otel extras + the build backend
    mapfile -t REQS < <("$PYTHON" - <<'PY'
import tomllib
data = tomllib.load(open("pyproject.toml", "rb"))
extras = data["project"]["optional-dependencies"]
for req in [*data["project"]["dependencies"], *extras["deploy"], *extras["otel"], *data["build-system"]["requires"]]:
    print(req)
PY
    )
else
    echo "wheelhouse: no pyproject.toml, downloading the planned dependencies (unpinned)"
    REQS=(grpcio protobuf grpcio-health-checking grpcio-reflection supervisor setuptools wheel)
fi

# Every platform tag both possible bases accept (bookworm, glibc 2.36); "any" for pure-Python wheels
download() {
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform any "$@" "${REQS[@]}"
}
# A wheelhouse that already resolves every requirement on its own needs no index (air-gapped machines)
CHECK=$(mktemp -d)
trap 'rm -rf "$CHECK"' EXIT
if download --no-index --find-links wheelhouse --dest "$CHECK" >/dev/null 2>&1; then
    echo "wheelhouse: complete ($(find wheelhouse -maxdepth 1 -name '*.whl' | wc -l) wheels), nothing to download"
    exit 0
fi
download --dest wheelhouse
echo "wheelhouse: $(find wheelhouse -maxdepth 1 -name '*.whl' | wc -l) wheels in wheelhouse/"
