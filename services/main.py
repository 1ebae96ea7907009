"""Main sample server: the single entry point of the reference deployment.

Run it with `grpc-helper-main` or `python -m grpc_helper_samples.main` (default port 54321). It
serves the default services (with events) and proxies the echo and notes services, which register
on it when they start. Its config service also reaches their user items (e.g. `notes-max-count`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from grpc_helper import RpcServiceDescriptor
from grpc_helper_samples import echo, notes
from grpc_helper_samples._run import run_server

DEFAULT_PORT = 54321


def descriptors() -> list[RpcServiceDescriptor]:
    """The proxied sample services."""
    return [echo.descriptor(proxy=True), notes.descriptor(proxy=True)]


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until shut down; returns the process exit code."""
    return run_server(
        "grpc-helper sample main server: proxies the echo and notes services",
        DEFAULT_PORT,
        descriptors,
        argv,
        with_events=True,
    )


if __name__ == "__main__":
    sys.exit(main())
