#!/usr/bin/env bash
# Build a local Debian bookworm base image (python3 3.11 + venv) with debootstrap, for machines
# where no registry image can be pulled. Idempotent: an existing image is kept unless --force.
set -euo pipefail
IMAGE=${BASE_IMAGE:-grpc-helper-base:bookworm}

if [ "${1:-}" != "--force" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build-base-image: $IMAGE already exists"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq debootstrap >/dev/null
fi
# The machine's own Debian mirror (the only one reachable on air-gapped machines)
MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /tmp/grpc-helper-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "build-base-image: debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
tar -C "$ROOTFS" -c . | docker import - "$IMAGE" >/dev/null
echo "build-base-image: $IMAGE ready"
