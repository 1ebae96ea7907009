#!/usr/bin/env bash
# Fill debhouse/ with Debian's `prometheus` package and every package it needs beyond the base image, so that
# the Prometheus image (deploy/prometheus/Dockerfile) builds with `docker build --network none`: the
# wheelhouse's counterpart (scripts/wheelhouse.sh), for scripts/build-prometheus-image.sh.
#
#   bash scripts/debhouse.sh BASE_IMAGE      # e.g. grpc-helper-base:bookworm (scripts/build-base-image.sh)
#
# apt resolves the packages in a throw-away container of the base image, with this host's apt sources and
# Acquire settings (its mirror, security updates included): exactly what installing them there would download.
# Run it on a machine that reaches a Debian mirror; copy debhouse/ over to an air-gapped one.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:?usage: debhouse.sh BASE_IMAGE}
PACKAGES=(prometheus)
mkdir -p debhouse

# A debhouse that installs on the base image on its own needs no mirror (air-gapped machines): apt's simulation,
# offline, of installing its files
complete() {
    ls debhouse/*.deb >/dev/null 2>&1 || return 1
    docker run --rm --network none --user 0 -v "$PWD/debhouse:/debhouse:ro" --entrypoint sh "$BASE" \
        -c 'apt-get install -s -qq --no-install-recommends /debhouse/*.deb' >/dev/null 2>&1
}
if complete; then
    echo "debhouse: complete ($(find debhouse -maxdepth 1 -name '*.deb' | wc -l) packages), nothing to download"
    exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs/partial"
# The host's way of reaching its mirror (its proxies; a snapshot mirror's Release files past their validity), and
# its sources instead of the base image's own
apt-config dump | grep -E '^Acquire::(Check-Valid-Until|Check-Date|https?::Proxy) ' > "$WORK/host.conf" || true
docker run --rm --network host --user 0 \
    -v /etc/apt/sources.list.d:/etc/apt/sources.list.d:ro -v /dev/null:/etc/apt/sources.list:ro \
    -v "$WORK/host.conf:/etc/apt/apt.conf.d/99host:ro" -v "$WORK/debs:/out" --entrypoint sh "$BASE" \
    -c 'apt-get update -qq && apt-get install -qq -y --download-only --no-install-recommends \
        -o Dir::Cache::archives=/out "$@" >/dev/null' sh "${PACKAGES[@]}"
rm -rf debhouse/*.deb
mv "$WORK"/debs/*.deb debhouse/
complete || { echo "debhouse: the packages downloaded do not install offline on $BASE" >&2; exit 1; }
echo "debhouse: $(find debhouse -maxdepth 1 -name '*.deb' | wc -l) packages in debhouse/ for ${PACKAGES[*]}"
