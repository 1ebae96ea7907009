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

LOG=${GRPC_HELPER_BUILD_LOG:-.stack/build.log}   # the whole build output; shown when it fails
mkdir -p "$(dirname "$LOG")"

# One build at a time from this clone (e.g. two test workers each needing the image): the second waits, then
# finds every layer cached. Two at once ran two debootstraps whose apt runs failed on each other's lock
exec 9>>"$(dirname "$LOG")/build-image.lock"
flock 9

discard() { cat >/dev/null; }

build() {
    # One short line per step of the build stage on the terminal, everything in $LOG. The build stage is
    # built and tagged first (${IMAGE%%:*}-build): the final build reuses it from the cache (its own few
    # steps are quick), and no untagged intermediate image is left behind
    local target old
    : > "$LOG"
    old=$(docker image inspect -f '{{.Id}}' "$IMAGE" "${IMAGE%%:*}-build:latest" 2>/dev/null || true)
    for target in build final; do
        local opts=(-t "$IMAGE") show=cat
        if [ "$target" = build ]; then
            opts=(--target build -t "${IMAGE%%:*}-build:latest")
        else
            show=discard  # the final stage: nothing but the summary below
        fi
        if ! docker build "$@" "${opts[@]}" . 2>&1 | tee -a "$LOG" \
            | { grep --line-buffered -E '^Step [0-9]+/[0-9]+ : ' || true; } | cut -c1-100 \
            | sed -u 's/^/build-image: /' | $show; then
            echo "build-image: docker build failed; the end of $LOG:" >&2
            tail -n 40 "$LOG" >&2
            return 1
        fi
    done
    # The images these tags named before, now untagged: removed unless a container still uses one
    for id in $old; do
        if [ -z "$(docker image inspect -f '{{join .RepoTags ","}}' "$id" 2>/dev/null)" ]; then
            docker image rm "$id" >/dev/null 2>&1 || true
        fi
    done
    echo "build-image: $IMAGE built ($(grep -c 'Using cache' "$LOG") cached steps; full log in $LOG)"
}

if docker image inspect "$BASE" >/dev/null 2>&1 || docker pull "$BASE" >/dev/null 2>&1; then
    echo "build-image: building $IMAGE from $BASE"
    build --build-arg BASE_IMAGE="$BASE"
else
    echo "build-image: $BASE can't be pulled (no registry?): building offline from $LOCAL_BASE"
    BASE_IMAGE="$LOCAL_BASE" bash scripts/build-base-image.sh
    bash scripts/wheelhouse.sh
    build --network none --build-arg BASE_IMAGE="$LOCAL_BASE"
fi
