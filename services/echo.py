"""Echo sample service: one method of each gRPC call kind, proxied by the main server.

Run it with `grpc-helper-echo` or `python -m grpc_helper_samples.echo` (default port 54322); it
registers "echo" on the main server (`rpc-main-host`:`rpc-main-port`) once it is up.
The benchmarks go through this service: no per-call logging, no locking.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence

import grpc_helper_samples
from grpc_helper import RpcProxiedManager, RpcServiceDescriptor
from grpc_helper_samples._run import proxy_use_current_host, run_server, samples_version
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)

NAME = "echo"
DEFAULT_PORT = 54322


class EchoManager(EchoServiceServicer, RpcProxiedManager):
    """Echoes requests back: text and payload as is, with the position in streams as `index`."""

    # --- proxy registration ---
    def _proxied_services(self) -> list[str]:
        return [NAME]

    def _proxied_version(self) -> str:
        return samples_version()

    def _proxy_use_current_host(self) -> bool:
        return proxy_use_current_host()

    # --- service ---
    def echo(self, request: EchoRequest) -> EchoResponse:
        return EchoResponse(text=request.text, payload=request.payload)

    def repeat(self, request: EchoRequest) -> Iterator[EchoResponse]:
        text, payload = request.text, request.payload
        for index in range(request.count):
            yield EchoResponse(text=text, payload=payload, index=index)

    def collect(self, request: Iterable[EchoRequest]) -> EchoResponse:
        """Texts joined, payloads concatenated; `index` is the number of messages received."""
        texts: list[str] = []
        payloads: list[bytes] = []
        for message in request:
            texts.append(message.text)
            payloads.append(message.payload)
        return EchoResponse(text="".join(texts), payload=b"".join(payloads), index=len(texts))

    def chat(self, request: Iterable[EchoRequest]) -> Iterator[EchoResponse]:
        for index, message in enumerate(request):
            yield EchoResponse(text=message.text, payload=message.payload, index=index)


def descriptor(proxy: bool = False) -> RpcServiceDescriptor:
    """The echo service descriptor: served by an `EchoManager`, or proxied (on the main server)."""
    manager = EchoServiceServicer() if proxy else EchoManager()
    return RpcServiceDescriptor(
        grpc_helper_samples,
        NAME,
        EchoApiVersion,
        manager,
        add_EchoServiceServicer_to_server,
        EchoServiceStub,
        is_proxy=proxy,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the echo service until shut down; returns the process exit code."""
    return run_server(
        "grpc-helper sample echo service (proxied by the main server)", DEFAULT_PORT, lambda: [descriptor()], argv
    )


if __name__ == "__main__":
    sys.exit(main())
