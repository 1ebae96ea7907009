"""`grpc-helper call`: any method of any service a server describes by reflection, its request given as JSON.

The request and response types come from the server's reflection (grpcio-reflection's v1alpha client: main
answers for its own services and for the dynamic services registered on it, see `proxy.reflection`), so no
generated code is needed. Unary and server-streaming methods; client and bidirectional streaming ones are
refused (one JSON request on the command line can't feed a stream). Imported by the `call` command only: the
rest of the operator CLI (the container health probe) stays without grpc_reflection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException, rpc_error_to_exception
from grpc_helper.generated import has_result_field
from grpc_helper.metadata import Metadata


class _WithMetadata(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `metadata` (token, client name, routing keys) to every call of a channel: the reflection client's
    calls, which take none of their own, included."""

    def __init__(self, metadata: Metadata) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class Method(NamedTuple):
    """A method found by reflection: its path, request and response classes, and whether it streams responses."""

    path: str
    request_cls: type[Message]
    response_cls: type[Message]
    server_streaming: bool


def parse_target(target: str) -> tuple[str, str]:
    """(service, method) of `Service/Method` (grpcurl's `Service.Method` too, split at the last dot)."""
    service, sep, method = target.removeprefix("/").rpartition("/")
    if not sep:
        service, sep, method = target.rpartition(".")
    if not (service and method):
        raise RpcException(f"Invalid method {target!r}: expected SERVICE/METHOD", ResultCode.ERROR_PARAM_INVALID)
    return service, method


def find_method(channel: grpc.Channel, target: str, timeout: float) -> Method:
    """`target`'s types, asked of the server's reflection service (waiting up to `timeout` to reach it)."""
    service, name = parse_target(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)  # the reflection client has no deadline
    except grpc.FutureTimeoutError:
        raise RpcException(f"Can't reach the server within {timeout:g}s", ResultCode.ERROR_RPC) from None
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    try:
        method = pool.FindServiceByName(service).methods_by_name.get(name)
    except grpc.RpcError as exc:
        raise rpc_error_to_exception(exc, "server reflection") from exc
    except KeyError:  # the server's reflection does not know the service
        method = None
    if method is None:
        msg = f"No method {name} in service {service} (as the server's reflection describes it)"
        raise RpcException(msg, ResultCode.ERROR_ITEM_UNKNOWN)
    if method.client_streaming:
        raise RpcException(
            f"{service}/{name} takes a stream of requests: not supported (unary and server streaming only)",
            ResultCode.ERROR_PARAM_INVALID,
        )
    return Method(
        f"/{service}/{name}",
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
        method.server_streaming,
    )


def call(channel: grpc.Channel, target: str, body: str, metadata: Metadata, timeout: float) -> Iterator[dict[str, Any]]:
    """The responses of `target` called with the JSON request `body` on `channel` (with `metadata`), as dicts of
    proto field names. A response's `Result r` with an error code (2.x's shape) raises `RpcException`."""
    channel = grpc.intercept_channel(channel, _WithMetadata(metadata))
    method = find_method(channel, target, timeout)
    try:
        request = json_format.Parse(body or "{}", method.request_cls())
    except json_format.ParseError as exc:
        raise RpcException(f"Invalid request for {method.path}: {exc}", ResultCode.ERROR_PARAM_INVALID) from exc
    serializer, deserializer = method.request_cls.SerializeToString, method.response_cls.FromString
    try:
        responses: Iterator[Message]
        if method.server_streaming:
            responses = channel.unary_stream(method.path, serializer, deserializer)(request, timeout=timeout)
        else:
            responses = iter([channel.unary_unary(method.path, serializer, deserializer)(request, timeout=timeout)])
        for response in responses:
            yield _as_dict(response)
    except grpc.RpcError as exc:
        raise rpc_error_to_exception(exc, method.path) from exc


def _as_dict(response: Message) -> dict[str, Any]:
    if has_result_field(type(response)):
        r = response.r  # type: ignore[attr-defined]  # a `Result r` field, checked just above
        if r.code != ResultCode.OK:
            raise RpcException(r.msg, r.code)
    return json_format.MessageToDict(
        response, always_print_fields_with_no_presence=True, preserving_proto_field_name=True
    )
