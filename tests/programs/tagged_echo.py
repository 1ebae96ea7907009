"""The echo sample, answering `echo` with its tag (`ECHO_TAG`) as the response's payload, so that a test
tells which replica answered each call. Usual sample command line; registers on main like the sample."""

from __future__ import annotations

import os
import sys

import grpc_helper_samples
from grpc_helper import RpcServiceDescriptor
from grpc_helper_samples._run import run_server
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub, add_EchoServiceServicer_to_server
from grpc_helper_samples.echo import NAME, EchoManager


class TaggedEcho(EchoManager):
    def echo(self, request: EchoRequest) -> EchoResponse:
        return EchoResponse(text=request.text, payload=os.environ["ECHO_TAG"].encode())


def descriptors() -> list[RpcServiceDescriptor]:
    manager = TaggedEcho()
    return [
        RpcServiceDescriptor(
            grpc_helper_samples, NAME, EchoApiVersion, manager, add_EchoServiceServicer_to_server, EchoServiceStub
        )
    ]


if __name__ == "__main__":
    sys.exit(run_server("tagged echo replica", 0, descriptors))
