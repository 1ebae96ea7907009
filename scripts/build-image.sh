#!/usr/bin/env bash
# Build the grpc-helper image (one image for every service).
#
# With a registry, this is a plain `docker build` from BASE_IMAGE (default python:3.11-slim).
# Without one (air-gapped machines), it builds a local Debian base image with debootstrap and a
# wheelhouse of every dependency, then builds with --network none.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${GRPC_HELPER_IMAGE:-grpc-helper:latest}
BASE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=${LOCAL_BASE_IMAGE:-grpc-helper-base:bookworm}

if docker image inspect "$BASE" >/dev/null 2>&1 || docker pull "$BASE" >/dev/null 2>&1; then
    echo "build-image: building $IMAGE from $BASE"
    docker build --build-arg BASE_IMAGE="$BASE" -t "$IMAGE" .
else
    echo "build-image: $BASE can't be pulled (no registry?): building offline from $LOCAL_BASE"
    BASE_IMAGE="$LOCAL_BASE" bash scripts/build-base-image.sh
    bash scripts/wheelhouse.sh
    docker build --network none --build-arg BASE_IMAGE="$LOCAL_BASE" -t "$IMAGE" .
fi
