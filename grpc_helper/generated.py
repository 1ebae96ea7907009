"""What generated gRPC code declares: services, methods and their kinds, stubs, response types.

Everything here reads generated `*_pb2`/`*_pb2_grpc` code (or the protobuf descriptor pool it
fills) without running a server or a channel, so the client, the server and the proxy share one
answer to "which methods, of which kind, answering which message, with or without a `Result r`".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException

# --- call kinds ---

# The behavior of a served method, `(request, context) -> response(s)`: requests and responses are
# messages, bytes (proxied calls) or iterators of them, depending on the method's kind; a non-blocking
# stream's is `(request, context, respond) -> None` (see `non_blocking`)
Behavior: TypeAlias = Callable[..., Any]
# A method handler of any message types (handlers of all kinds and services share tables)
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # a string: grpc's classes are generic in its stubs only

# (request streaming, response streaming) -> the kind's name, as in grpc.Channel's method factories
KINDS = {
    (False, False): "unary_unary",
    (False, True): "unary_stream",
    (True, False): "stream_unary",
    (True, True): "stream_stream",
}


# Kind -> grpc's handler factory
_HANDLER_FACTORIES: dict[str, Callable[..., Handler]] = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


def kind_of(handler: Handler) -> str:
    """ "unary_unary", "unary_stream", "stream_unary" or "stream_stream"."""
    return KINDS[(handler.request_streaming, handler.response_streaming)]


def method_handler(
    kind: str,
    behavior: Behavior,
    request_deserializer: Callable[[bytes], Any] | None = None,
    response_serializer: Callable[[Any], bytes] | None = None,
) -> Handler:
    """A gRPC method handler of `kind` for `behavior(request, context)` (no (de)serializers: raw bytes)."""
    factory = _HANDLER_FACTORIES[kind]
    return factory(behavior, request_deserializer=request_deserializer, response_serializer=response_serializer)


def run_on(behavior: Behavior, pool: ThreadPoolExecutor) -> None:
    """Have the server run the calls of `behavior` on `pool` instead of its worker pool.

    grpcio experimental API: its server runs a method on `behavior.experimental_thread_pool` when that
    is a ThreadPoolExecutor (`grpc._server._select_thread_pool_for_behavior`; grpc_health's Watch uses
    the same hook). Documented nowhere but in grpcio's code, hence grpcio's bound in pyproject.toml.
    """
    behavior.experimental_thread_pool = pool  # type: ignore[attr-defined]  # a function attribute grpcio reads


def non_blocking(behavior: Behavior) -> None:
    """Have the server call a response-streaming `behavior(request, context, respond)` that returns at once.

    grpcio experimental API (`grpc._server._stream_response_in_pool`; grpc_health's Watch uses it): the
    behavior gets a third argument, `respond(message)`, which sends one message from any thread (blocking
    until gRPC took it), `respond(None)` ending the call with OK; no thread is held between messages.
    """
    behavior.experimental_non_blocking = True  # type: ignore[attr-defined]  # a function attribute grpcio reads


# The function attributes grpcio reads on a behavior (`run_on`, `non_blocking`)
_GRPCIO_OPTIONS = ("experimental_thread_pool", "experimental_non_blocking")


def copy_options(original: Behavior, wrapper: Behavior) -> None:
    """Give `wrapper` the grpcio options set on `original` (`run_on`, `non_blocking`): a behavior wrapping
    another runs where, and as, the wrapped one did."""
    for option in _GRPCIO_OPTIONS:
        if hasattr(original, option):
            setattr(wrapper, option, getattr(original, option))


def make_handler(original: Handler, behavior: Behavior) -> Handler:
    """A method handler like `original` (same kind and serializers) with a new behavior."""
    return method_handler(kind_of(original), behavior, original.request_deserializer, original.response_serializer)


def sending_serialized(original: Handler, behavior: Behavior) -> Handler:
    """`make_handler`, and the responses may also be given already serialized (`bytes`, sent as they are):
    a message built once for many streams (`calls.PushStream.send`)."""
    serializer = original.response_serializer
    if serializer is None:  # raw bytes already
        return make_handler(original, behavior)

    def serialize(response: Any) -> bytes:
        return response if response.__class__ is bytes else serializer(response)

    return method_handler(kind_of(original), behavior, original.request_deserializer, serialize)


# --- servicers ---


class _Capture:
    """Stands in for a grpc.Server to learn what a generated `add_XxxServicer_to_server` registers."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, Handler] = {}

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        self.service, self.handlers = service, dict(handlers)

    def add_generic_rpc_handlers(self, generic_handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        # Older generated code only calls this one
        for h in generic_handlers:
            if self.service is None and isinstance(h, grpc.ServiceRpcHandler):
                self.service = h.service_name()
                # grpcio private internal: the handler `grpc.method_handlers_generic_handler` makes (a
                # `grpc._utilities.DictionaryGenericHandler`) keeps its {"/Service/method": handler} map in
                # `_method_handlers`, and grpcio has no public way to list it (hence grpcio's bound in
                # pyproject.toml). Keyed here by method name, as add_registered_method_handlers gives it.
                found: dict[str, Handler] = getattr(h, "_method_handlers", {})
                self.handlers = {path.rsplit("/", 1)[-1]: handler for path, handler in found.items()}


def capture_service(register_method: Callable[[Any, Any], None], servicer: object) -> tuple[str, dict[str, Handler]]:
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


def generated_default(manager: object, method: str) -> Behavior:
    """The generated servicer's own implementation of `method` (it answers UNIMPLEMENTED), bound to manager."""
    for klass in type(manager).__mro__:
        if method in vars(klass) and klass.__module__.endswith("_pb2_grpc"):
            behavior: Behavior = getattr(klass, method).__get__(manager)
            return behavior

    def unimplemented(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")

    return unimplemented


# --- stubs ---


class MethodSpec:
    """What a generated stub declares for one method."""

    def __init__(
        self,
        kind: str,
        path: str,
        request_serializer: Callable[[Any], bytes] | None,
        response_deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self.kind, self.path = kind, path
        self.request_serializer, self.response_deserializer = request_serializer, response_deserializer


class _RecordingChannel:
    """Stands in for a channel to learn the methods a generated stub class declares."""

    def __getattr__(self, kind: str) -> Callable[..., MethodSpec]:
        if kind not in KINDS.values():
            raise AttributeError(kind)

        def method(
            path: str,
            request_serializer: Callable[[Any], bytes] | None = None,
            response_deserializer: Callable[[bytes], Any] | None = None,
            **_: object,
        ) -> MethodSpec:
            return MethodSpec(kind, path, request_serializer, response_deserializer)

        return method


def stub_methods(stub_class: type[Any]) -> dict[str, MethodSpec]:
    """Method name -> spec, for a generated `XxxStub` class."""
    stub = stub_class(_RecordingChannel())
    return {name: spec for name, spec in vars(stub).items() if isinstance(spec, MethodSpec)}
