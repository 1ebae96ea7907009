#!/usr/bin/env bash
# Build the Prometheus image of `stack.sh up --observability`: Debian's `prometheus` package, the way
# build-image.sh builds the grpc-helper image. With a registry, a plain `docker build` from BASE_IMAGE (default
# python:3.11-slim, Debian bookworm: its layers shared with the grpc-helper image), apt-get from the mirror.
# Without one (air-gapped machines), from the local Debian base image (build-base-image.sh) with the packages
# of debhouse/ (debhouse.sh), with --network none.
#
# Image name: $GRPC_HELPER_PROMETHEUS_IMAGE, else the grpc-helper image's name with -prometheus
# (GRPC_HELPER_IMAGE=grpc-helper:latest gives grpc-helper-prometheus:latest).
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN_IMAGE=${GRPC_HELPER_IMAGE:-grpc-helper:latest}
IMAGE=${GRPC_HELPER_PROMETHEUS_IMAGE:-${MAIN_IMAGE%%:*}-prometheus:latest}
BASE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=${LOCAL_BASE_IMAGE:-grpc-helper-base:bookworm}
LOG=${GRPC_HELPER_BUILD_LOG:-.stack/build-prometheus.log}
mkdir -p "$(dirname "$LOG")" debhouse

build() {
    # build CONTEXT [OPTION...]: the context is the packages to install (debhouse/), or an empty folder (apt-get
    # from the mirror): nothing else of the repository goes to the engine
    local context=$1 old
    shift
    old=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    if ! docker build "$@" -t "$IMAGE" -f deploy/prometheus/Dockerfile "$context" >"$LOG" 2>&1; then
        echo "build-prometheus-image: docker build failed; the end of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        return 1
    fi
    # The image the tag named before, now untagged: removed unless a container still uses it
    if [ -n "$old" ] && [ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$old" 2>/dev/null)" ]; then
        docker image rm "$old" >/dev/null 2>&1 || true
    fi
    echo "build-prometheus-image: $IMAGE built ($(docker run --rm --network none --entrypoint prometheus "$IMAGE" \
        --version 2>&1 | head -n 1); full log in $LOG)"
}

if docker image inspect "$BASE" >/dev/null 2>&1 || docker pull "$BASE" >/dev/null 2>&1; then
    echo "build-prometheus-image: building $IMAGE from $BASE"
    EMPTY=$(mktemp -d)
    trap 'rm -rf "$EMPTY"' EXIT
    build "$EMPTY" --build-arg BASE_IMAGE="$BASE"
else
    echo "build-prometheus-image: $BASE can't be pulled (no registry?): building offline from $LOCAL_BASE"
    BASE_IMAGE="$LOCAL_BASE" bash scripts/build-base-image.sh
    bash scripts/debhouse.sh "$LOCAL_BASE"
    build debhouse --network none --build-arg BASE_IMAGE="$LOCAL_BASE"
fi
