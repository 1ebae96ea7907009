#!/usr/bin/env bash
# Build a local Debian bookworm base image (python3 3.11 + venv) with debootstrap, for machines
# where no registry image can be pulled. Idempotent: an existing image is kept unless --force.
#
#   sudo bash scripts/build-base-image.sh [--force]     # image name: $BASE_IMAGE (grpc-helper-base:bookworm)
#
# Python in this image is Debian's /usr/bin/python3 (3.11), not python:3.11-slim's /usr/local/bin.
set -euo pipefail
IMAGE=${BASE_IMAGE:-grpc-helper-base:bookworm}
FORCE=0
case "${1:-}" in
    "") ;;
    --force) FORCE=1 ;;
    *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "build-base-image: $IMAGE already exists (--force to rebuild)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "build-base-image: debootstrap needs root (run with sudo)" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    # Another apt run (e.g. the machine's own at boot) may hold the lock: wait for it rather than fail
    apt-get -o DPkg::Lock::Timeout=300 update -qq
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq debootstrap >/dev/null
fi
# The machine's own Debian mirror (the only one reachable on air-gapped machines): first URIs entry
MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1 | cut -d' ' -f1)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

ROOTFS=$(mktemp -d /tmp/grpc-helper-rootfs.XXXXXX)
cleanup() {
    # debootstrap mounts proc/sys in the target; never rm -rf through a leftover mount
    grep -o " $ROOTFS/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT
# Interrupted (Ctrl-C, a kill): exit, so that the EXIT trap removes the half-built root filesystem
trap 'exit 130' INT
trap 'exit 143' TERM

echo "build-base-image: debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >/dev/null
# What official slim images drop too: downloaded .debs, apt lists (apt-get update restores them),
# docs (copyright files kept), man pages and translations
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
find "$ROOTFS"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete

# An imported image has no config: give it the usual PATH and shell, like registry images
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "build-base-image: $IMAGE ready ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
