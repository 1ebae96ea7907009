"""A client that pings far too often for a server with gRPC's default keepalive enforcement: the negative control of
the `too_many_pings` detector (tests/test_unconfigured_peers.py). A keepalive ping every second, with or without calls
or data: such a server answers the third with a `too_many_pings` GOAWAY, which gRPC logs on this process's stderr.

Usage: ping_flood.py HOST:PORT SECONDS   (one call to connect, then idle pings for SECONDS)
"""

from __future__ import annotations

import sys
import time

import grpc

from grpc_helper_samples.api import EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

AGGRESSIVE = [
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


def main(argv: list[str]) -> int:
    target, seconds = argv[0], float(argv[1])
    with grpc.insecure_channel(target, options=AGGRESSIVE) as channel:
        EchoServiceStub(channel).echo(EchoRequest(text="connect"), timeout=10)
        time.sleep(seconds)  # idle on purpose: the pings are the point, this process's life bounds them
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
