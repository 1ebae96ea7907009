"""What generated gRPC code declares: services, methods and their kinds, stubs, response types.

Everything here reads generated `*_pb2`/`*_pb2_grpc` code (or the protobuf descriptor pool it
fills) without running a server or a channel, so the client, the server and the proxy share one
answer to "which methods, of which kind, answering which message, with or without a `Result r`".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException

# --- call kinds ---

# (request streaming, response streaming) -> the kind's name, as in grpc.Channel's method factories
KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


def kind_of(handler: grpc.RpcMethodHandler) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return KINDS[(handler.request_streaming, handler.response_streaming)]


def method_handler(kind: str, behavior: Any, request_deserializer: Any = None, response_serializer: Any = None) -> Any:
    """A gRPC method handler of `kind` for `behavior(request, context)` (no (de)serializers: raw bytes)."""
    factory: Callable[..., grpc.RpcMethodHandler] = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(behavior, request_deserializer=request_deserializer, response_serializer=response_serializer)


def make_handler(original: grpc.RpcMethodHandler, behavior: Any) -> grpc.RpcMethodHandler:
    """A method handler like `original` (same kind and serializers) with a new behavior."""
    return method_handler(kind_of(original), behavior, original.request_deserializer, original.response_serializer)


# --- servicers ---


class _Capture:
    """Stands in for a grpc.Server to learn what a generated `add_XxxServicer_to_server` registers."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        # Older generated code only calls this one; grpcio's generic handler keeps its map privately
        for h in generic_handlers:
            if self.service is None and hasattr(h, "service_name"):
                self.service = h.service_name()
                self.handlers = dict(getattr(h, "_method_handlers", {}))


def capture_service(register_method: Callable[[Any, Any], None], servicer: Any) -> tuple[str, dict[str, Any]]:
    """(full service name, {method name: RpcMethodHandler}) as generated for `servicer`."""
    cap = _Capture()
    register_method(servicer, cap)
    if cap.service is None:
        raise RpcException(f"{register_method!r} registered no service", ResultCode.ERROR_MODEL_INVALID)
    return cap.service, cap.handlers


def response_class(service: str, method: str) -> type[Message]:
    """The generated response message class of a method, from the default descriptor pool."""
    desc = descriptor_pool.Default().FindServiceByName(service).methods_by_name[method]
    return message_factory.GetMessageClass(desc.output_type)


def has_result_field(cls: type[Message]) -> bool:
    """Whether a response message has the conventional `Result r` field (the one place that decides it)."""
    field = cls.DESCRIPTOR.fields_by_name.get("r")
    return field is not None and field.message_type is not None and field.message_type.full_name == "Result"


def path_has_result(path: str) -> bool:
    """`has_result_field` for the response of `/Service/method` (False for a method the pool doesn't know)."""
    service, method = path.lstrip("/").split("/", 1)
    try:
        return has_result_field(response_class(service, method))
    except KeyError:
        return False


def generated_default(manager: Any, method: str) -> Any:
    """The generated servicer's own implementation of `method` (it answers UNIMPLEMENTED), bound to manager."""
    for klass in type(manager).__mro__:
        if method in vars(klass) and klass.__module__.endswith("_pb2_grpc"):
            return getattr(klass, method).__get__(manager)

    def unimplemented(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    return unimplemented


# --- stubs ---


class MethodSpec:
    """What a generated stub declares for one method."""

    def __init__(self, kind: str, path: str, request_serializer: Any, response_deserializer: Any) -> None:
        self.kind, self.path = kind, path
        self.request_serializer, self.response_deserializer = request_serializer, response_deserializer


class _RecordingChannel:
    """Stands in for a channel to learn the methods a generated stub class declares."""

    def __getattr__(self, kind: str) -> Callable[..., MethodSpec]:
        if kind not in KINDS.values():
            raise AttributeError(kind)

        def method(path: str, request_serializer: Any = None, response_deserializer: Any = None, **_: Any) -> Any:
            return MethodSpec(kind, path, request_serializer, response_deserializer)

        return method


def stub_methods(stub_class: type) -> dict[str, MethodSpec]:
    """Method name -> spec, for a generated `XxxStub` class."""
    stub = stub_class(_RecordingChannel())
    return {name: spec for name, spec in vars(stub).items() if isinstance(spec, MethodSpec)}
