#!/usr/bin/env bash
# Build the tonic test peer (tests/peers/tonic-echo: a gRPC client and server of echo.proto on Rust's tonic,
# used by tests/test_foreign_peer.py) and print the binary's path on the last line of stdout.
# `cargo build --release --locked`: the versions of the committed Cargo.lock, crates from crates.io only
# (protoc comes from the protoc-bin-vendored crate unless PROTOC names one); the target folder is
# tests/peers/tonic-echo/target (git-ignored), so a second build is incremental.
# Needs cargo (rustup); from nothing (crate downloads included), about 100 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PEER=tests/peers/tonic-echo
if ! command -v cargo >/dev/null; then
    for dir in "${CARGO_HOME:-$HOME/.cargo}/bin" /root/.cargo/bin; do
        [ -x "$dir/cargo" ] && PATH="$dir:$PATH" && break
    done
fi
command -v cargo >/dev/null || { echo "build-tonic-peer: cargo not found" >&2; exit 2; }
export CARGO_TARGET_DIR="$PWD/$PEER/target"
cargo build --release --locked --quiet --manifest-path "$PEER/Cargo.toml" >&2
echo "$CARGO_TARGET_DIR/release/tonic-echo"
