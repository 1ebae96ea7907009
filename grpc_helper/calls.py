"""The call machinery every served method goes through: which manager methods are served, the
API version check, the pending-call registry behind `current_call()` and debug dumps, 2.x call
traces, and the wrapper turning a manager method into a gRPC behavior.

This is the hot path of every call, so the wrappers do the minimum: an API version check
against the call metadata, one dict write to record the pending call, and exception-to-`Result`
conversion. Tracing costs nothing unless the service logger is at DEBUG. The server, the proxy
and the events service all build on this module; it knows nothing of them.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import typing
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from threading import get_ident
from typing import Any, NamedTuple, TypeAlias

import grpc
from google.protobuf.message import Message

# grpcio private internal (hence grpcio's bound in pyproject.toml): the state of a call its client cancelled
from grpc._server import _CANCELLED

from grpc_helper import metrics
from grpc_helper.api import Result, ResultCode
from grpc_helper.config.static import RpcStaticConfig, bool_value
from grpc_helper.errors import AccessDenied, RpcException, rc_name, result_from_exception, result_status
from grpc_helper.generated import Behavior, has_result_field, non_blocking
from grpc_helper.limits import cut, quote
from grpc_helper.metadata import KEY_API_VERSION, KEY_CLIENT, KEY_HOST, KEY_IP, KEY_USER, Metadata

# A manager's method as served: `method(request) -> response` (a response iterator for streamed
# responses; a request iterator for streamed requests). Found by introspection, so its message
# types are only known at run time.
ManagerMethod: TypeAlias = Callable[[Any], Any]

# --- which manager methods are served ---


def _return_annotation(fn: Callable[..., object]) -> object:
    try:
        return inspect.signature(fn, eval_str=True).return_annotation
    except Exception:  # unresolvable string annotations: keep the raw value
        return inspect.signature(fn).return_annotation


def _mentions_result(annotation: object) -> bool:
    if annotation is Result or annotation == "Result":
        return True
    return any(_mentions_result(a) for a in typing.get_args(annotation))


def implemented_method(manager: object, service: str, method: str) -> ManagerMethod | None:
    """The manager's bound method if it is to be served: exactly one parameter and a return annotation
    (or a `pushed_stream` method)."""
    fn: ManagerMethod | None = getattr(manager, method, None)
    if fn is None or not callable(fn):
        return None
    if is_pushed_stream(fn):
        return fn
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if len(sig.parameters) != 1 or sig.return_annotation is inspect.Signature.empty:
        return None
    if _mentions_result(_return_annotation(fn)):
        raise RpcException(
            f"{type(manager).__name__}.{method} ({service}) declares Result as return type: "
            "return a message holding a Result (e.g. ResultStatus) instead",
            ResultCode.ERROR_MODEL_INVALID,
        )
    return fn


# --- pending calls ---


class PendingCall(NamedTuple):
    """A call being served: what `current_call()` returns and what debug dumps list.

    Kept raw (nothing formatted on the hot path): a dump renders its `entry_trace()` when asked.
    """

    server: int  # id() of the serving RpcServer
    method: str  # /Service/method
    metadata: Metadata
    request: Message | str  # the request message; "<stream>" for a client-streaming call
    context: grpc.ServicerContext
    start: float

    def entry_trace(self) -> str:
        return entry_trace(trace_peer(self.metadata), method_name(self.method), self.request)


# Thread ident -> call. The sync gRPC server runs a whole call on one pool thread, so this is exact.
PENDING: dict[int, PendingCall] = {}


def current_call() -> PendingCall | None:
    """The call served by the current thread, if any (metadata, context, ...)."""
    return PENDING.get(get_ident())


# --- call traces (the format of grpc-helper 2.x) ---

# Characters of a message's text kept in a trace (then "..."): 2.x's 1024, which existing log parsers
# expect; it bounds what a hostile request adds to logs and dumps to about 1 KB per message
TRACE_MAX = 1024


def trace_message(message: object) -> str:
    """`Type{text}`: the protobuf text format on one line, cut at TRACE_MAX characters followed by "..."."""
    text = cut(str(message).replace("\n", " "), TRACE_MAX)
    return f"{type(message).__name__}{{{text}}}"


def trace_peer(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """`[client]user@host(ip) api:version` from call metadata: "unknown" for a missing field, 0 for no version.

    Only these identity keys are shown, cut short: never `authorization` nor any other metadata value.
    """
    md: dict[str, object] = dict(metadata)  # our keys have str values; any other value is shown as is
    client, user, host, ip = (md.get(k) or "unknown" for k in (KEY_CLIENT, KEY_USER, KEY_HOST, KEY_IP))
    version = md.get(KEY_API_VERSION) or 0
    return cut(f"[{client}]{user}@{host}({ip}) api:{version}")


def method_name(path: str) -> str:
    """/Service/method -> Service.method"""
    return path.lstrip("/").replace("/", ".")


def entry_trace(peer: str, name: str, request: object) -> str:
    """`[RPC] <peer> >>> Service.method (Type{text})`; a request that is not a message (a stream) as is."""
    return f"[RPC] {peer} >>> {name} ({trace_message(request) if isinstance(request, Message) else request})"


def exit_trace(peer: str, name: str, response: object) -> str:
    """`[RPC] <peer> <<< Service.method: Type{text}`"""
    return f"[RPC] {peer} <<< {name}: {trace_message(response)}"


def _traced_requests(requests: Iterable[Message], logger: logging.Logger, peer: str, name: str) -> Iterator[Message]:
    # A client-streaming call gets one entry trace per request message, as the manager reads it
    for request in requests:
        logger.debug(entry_trace(peer, name, request))
        yield request


# --- API version check ---


@dataclass(frozen=True)
class VersionRange:
    supported: int
    current: int

    def check(self, metadata: Metadata) -> Result | None:
        """An error `Result` if the call's api_version is out of range, None if fine or absent."""
        for key, value in metadata:  # noqa: B007 - value is used after the loop
            if key == KEY_API_VERSION:
                break
        else:
            return None
        try:
            version = int(value)
        except (TypeError, ValueError):
            return Result(code=ResultCode.ERROR_PARAM_INVALID, msg=f"Invalid api_version metadata: {quote(value)}")
        if version < self.supported:
            return Result(
                code=ResultCode.ERROR_API_CLIENT_TOO_OLD,
                msg=f"Client API version {version} is older than the supported version {self.supported}",
            )
        if version > self.current:
            return Result(
                code=ResultCode.ERROR_API_SERVER_TOO_OLD,
                msg=f"Client API version {version} is newer than the server's current version {self.current}",
            )
        return None


# --- waiting for a service to be loaded ---

# Above this, gRPC's "no deadline" sentinel is showing through time_remaining()
_NO_DEADLINE = 1e8


def cancelled_after_end(requests: object, settle: float) -> bool:
    """Whether the caller of a request stream that just ended normally had in fact cancelled its call.

    grpcio's server sees a cancellation in two events, the stream's end and the call's close: its request
    iterator read between them ends normally. So the close is waited for, `settle` seconds at most (a real
    end has no close until the call is answered: it pays the whole wait). Private internals of grpcio
    (its request iterator's `_state`, hence grpcio's bound in pyproject.toml); False without them."""
    state = getattr(requests, "_state", None)
    if state is None:
        return False
    with state.condition:
        return bool(state.condition.wait_for(lambda: state.client is _CANCELLED, settle))


def remaining(context: grpc.ServicerContext) -> float | None:
    """The caller's remaining deadline, in seconds (None: no deadline)."""
    left = context.time_remaining()
    return None if left is None or left > _NO_DEADLINE else left


class LoadGate:
    """Opens once a service can be served, i.e. once its manager's `_load` has run.

    The server opens its port before loading its managers: a call arriving meanwhile waits here
    (see `wait`). Served calls check `ready.is_set()` first: once open, that is all it costs.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.ready = threading.Event()  # set once loaded: the one check on the hot path
        self._settled = False  # once loaded, or once the server's start failed
        self._changed = threading.Condition()  # notified when settled, or when a waiting caller goes away
        self._failure = ""

    @classmethod
    def opened(cls) -> LoadGate:
        """A gate that is open from the start (a method with nothing to wait for)."""
        gate = cls("")
        gate.open()
        return gate

    def open(self) -> None:
        self.ready.set()
        self._settle()

    def fail(self, reason: str) -> None:
        """The service will never be loaded (`reason`): waiting calls get an error now."""
        if not self.ready.is_set():
            self._failure = reason
            self._settle()

    def _settle(self) -> None:
        with self._changed:
            self._settled = True
            self._changed.notify_all()

    def _wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait(self, context: grpc.ServicerContext) -> None:
        """Return once open. Bounded by the caller's deadline, and by `rpc-client-timeout`: then raises
        `RpcException(ERROR_REQUEST_TIMEOUT)`; a failed start raises `RpcException(ERROR_STATE_UNEXPECTED)`."""
        limit = RpcStaticConfig.CLIENT_TIMEOUT.float_val
        left = remaining(context)
        bound = limit if left is None else min(limit, left)
        deadline = time.monotonic() + bound
        # A caller that cancels, or whose deadline passes, wakes the wait up at once: its thread is free
        context.add_callback(self._wake)
        with self._changed:
            while not self._settled:
                now = time.monotonic()
                if now >= deadline or not context.is_active():  # timed out, or the caller is gone
                    msg = f"Service {self.service} is not ready: still loading after {bound:.1f}s"
                    raise RpcException(msg, ResultCode.ERROR_REQUEST_TIMEOUT)
                self._changed.wait(deadline - now)
        if not self.ready.is_set():
            msg = f"Service {self.service} is not served: {self._failure}"
            raise RpcException(msg, ResultCode.ERROR_STATE_UNEXPECTED)


# --- wrappers ---


def error_answer(
    response_cls: type[Message] | None, context: grpc.ServicerContext, result: Result, *, plain: bool = False
) -> Message:
    """The response carrying an error `result` in its `r`; for a response type without `Result r` (or unknown:
    None, a dynamic proxied service's), or for a
    caller that reads gRPC statuses only (`plain`: see `metadata.reads_results`), the call is aborted with
    the status `result_status` decides instead. Served and proxied calls answer so."""
    if not plain and response_cls is not None and has_result_field(response_cls):
        return response_cls(r=result)
    context.abort(*result_status(result, plain=plain))
    raise AssertionError("unreachable: abort() raises")


@dataclass
class CallSite:
    """Everything a wrapper needs to know about one method."""

    server_id: int
    path: str  # /Service/method
    response_cls: type[Message]
    versions: VersionRange
    logger: logging.Logger
    gate: LoadGate = field(default_factory=LoadGate.opened)  # calls wait until it opens

    def error_response(self, context: grpc.ServicerContext, result: Result) -> Message:
        """The answer to an error (see `error_answer`)."""
        return error_answer(self.response_cls, context, result)

    def failure(self, context: grpc.ServicerContext, exc: BaseException) -> Message:
        """The answer to a manager method that raised `exc` (logged: a warning for an `RpcException`);
        `AccessDenied` aborts the call with PERMISSION_DENIED instead."""
        if isinstance(exc, AccessDenied):
            self.logger.info("Refused %s: PERMISSION_DENIED, %s", self.path, exc)
            metrics.refused(grpc.StatusCode.PERMISSION_DENIED)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        if isinstance(exc, RpcException):
            self.logger.warning("%s failed: %s (%s)", self.path, exc, rc_name(exc.rc))
        else:
            self.logger.exception("%s failed with an unexpected error", self.path)
        return self.error_response(
            context, result_from_exception(exc, with_stack=bool_value(RpcStaticConfig.ERROR_STACK))
        )


def wrap_method(site: CallSite, fn: ManagerMethod, *, request_streaming: bool, response_streaming: bool) -> Behavior:
    """A gRPC behavior `(request, context)` calling `fn(request)` with version check and error conversion
    (for a `pushed_stream` method, `(request, context, respond)` calling `fn(request, stream)`).

    A call arriving before the site's gate is open (its service not loaded yet) waits for it
    (`LoadGate.wait`, a pending call meanwhile); once open, that costs one `Event.is_set()`.
    When the site's logger is at DEBUG (checked once per call), the call is traced on it: one entry
    line (one per request message for a client stream) and one exit line per response message.
    """
    if is_pushed_stream(fn):
        if request_streaming or not response_streaming:
            msg = f"{site.path}: only a server-streaming method can be a pushed stream"
            raise RpcException(msg, ResultCode.ERROR_MODEL_INVALID)
        return _pushed_behavior(site, typing.cast(Callable[[Any, PushStream], None], fn))
    if response_streaming:
        return _stream_behavior(site, fn, request_streaming=request_streaming)
    return _unary_behavior(site, fn, request_streaming=request_streaming)


def _input_tracer(site: CallSite, *, request_streaming: bool) -> Callable[[Any, str], Any]:
    """`trace(request, peer) -> request`: logs the entry trace of a request (of each request message, as
    the manager reads them, for a client stream) on the site's logger; only used when tracing."""
    logger, name = site.logger, method_name(site.path)
    if request_streaming:
        return lambda requests, peer: _traced_requests(requests, logger, peer, name)

    def trace(request: Any, peer: str) -> Any:
        logger.debug(entry_trace(peer, name, request))
        return request

    return trace


# The wrappers below copy what they use into locals of the closure: they run on every call.


def _unary_behavior(site: CallSite, fn: ManagerMethod, *, request_streaming: bool) -> Behavior:
    """`wrap_method` for a unary response: the common path is `unary_behavior` -> `serve_unary` -> `fn`."""
    pending = PENDING
    versions = site.versions
    logger = site.logger
    path = site.path
    name = method_name(path)
    sid = site.server_id
    debug = logging.DEBUG
    gate = site.gate
    ready = gate.ready.is_set
    trace_input = _input_tracer(site, request_streaming=request_streaming)

    def serve_unary(request: Any, context: grpc.ServicerContext, md: Metadata) -> Message:
        err = versions.check(md)
        if err is not None:
            return site.error_response(context, err)
        key = get_ident()
        pending[key] = PendingCall(sid, path, md, "<stream>" if request_streaming else request, context, time.time())
        try:
            if not ready():
                gate.wait(context)
            response: Message = fn(request)
            return response
        except Exception as exc:
            return site.failure(context, exc)
        finally:
            pending.pop(key, None)

    def traced_unary(request: Any, context: grpc.ServicerContext, md: Metadata) -> Message:
        peer = trace_peer(md)
        response = serve_unary(trace_input(request, peer), context, md)
        logger.debug(exit_trace(peer, name, response))
        return response

    def unary_behavior(request: Any, context: grpc.ServicerContext) -> Message:
        md = context.invocation_metadata()
        if logger.isEnabledFor(debug):
            return traced_unary(request, context, md)
        return serve_unary(request, context, md)

    return unary_behavior


def _stream_behavior(site: CallSite, fn: ManagerMethod, *, request_streaming: bool) -> Behavior:
    """`wrap_method` for a streamed response: errors become the stream's last message."""
    pending = PENDING
    versions = site.versions
    logger = site.logger
    path = site.path
    name = method_name(path)
    sid = site.server_id
    debug = logging.DEBUG
    gate = site.gate
    ready = gate.ready.is_set
    trace_input = _input_tracer(site, request_streaming=request_streaming)

    def serve_stream(request: Any, context: grpc.ServicerContext, md: Metadata) -> Generator[Message, None, None]:
        err = versions.check(md)
        if err is not None:
            yield site.error_response(context, err)
            return
        key = get_ident()
        pending[key] = PendingCall(sid, path, md, "<stream>" if request_streaming else request, context, time.time())
        try:
            if not ready():
                gate.wait(context)
            yield from fn(request)
        except Exception as exc:
            # The error becomes the stream's last message
            yield site.failure(context, exc)
        finally:
            pending.pop(key, None)

    def traced_stream(request: Any, context: grpc.ServicerContext, md: Metadata) -> Iterator[Message]:
        peer = trace_peer(md)
        responses = serve_stream(trace_input(request, peer), context, md)
        try:
            for response in responses:
                logger.debug(exit_trace(peer, name, response))
                yield response
        finally:
            responses.close()  # a cancelled stream ends the manager's iterator now, not at garbage collection

    def stream_behavior(request: Any, context: grpc.ServicerContext) -> Iterator[Message]:
        md = context.invocation_metadata()
        if logger.isEnabledFor(debug):
            return traced_stream(request, context, md)
        return serve_stream(request, context, md)

    return stream_behavior


# --- pushed streams: server streams that hold no thread between messages ---


def pushed_stream(fn: Callable[[Any, Any, PushStream], None]) -> Callable[[Any, Any, PushStream], None]:
    """Mark a manager method `method(self, request, stream: PushStream) -> None` of a server-streaming RPC
    as *pushed*: it returns at once, and its messages are sent later, from any thread, with `stream.send`.

    For streams that stay open long with little to send (event listeners): a generator method holds a
    thread for its whole life, and hundreds of threads woken together starve everything else of the GIL.
    """
    fn.pushed_stream = True  # type: ignore[attr-defined]  # read by is_pushed_stream
    return fn


def is_pushed_stream(fn: object) -> bool:
    return getattr(fn, "pushed_stream", False) is True


class PushStream:
    """The response side of a pushed stream (see `pushed_stream`), built by the server for each call.

    `send` and `end` may be called from any thread, but one at a time for a given stream (gRPC allows
    one message in flight): the manager serializes them.
    """

    __slots__ = ("_ended", "_respond", "_trace", "context")

    def __init__(self, respond: Callable[[Message | bytes | None], None], context: grpc.ServicerContext) -> None:
        self._respond = respond
        self.context = context
        self._trace: tuple[logging.Logger, str, str, type[Message]] | None = None  # set by `traced`
        self._ended = False

    def traced(self, logger: logging.Logger, peer: str, name: str, response_cls: type[Message]) -> None:
        """Trace each message sent on `logger` (DEBUG), as from `peer` for method `name`."""
        self._trace = (logger, peer, name, response_cls)

    def send(self, message: Message | bytes) -> bool:
        """Send `message`, blocking until gRPC took it; False once the call is over (nothing sent, or maybe
        not received). `bytes`: the message already serialized (its wire form), e.g. one built for many
        streams without a message object per stream (the method's handler passes bytes through as they are).
        """
        if self._ended:
            return False
        if self._trace is not None:
            logger, peer, name, cls = self._trace
            logger.debug(exit_trace(peer, name, cls.FromString(message) if isinstance(message, bytes) else message))
        # No `is_active()` first: gRPC sends nothing on a call that is over, and that costs a lock per message
        self._respond(message)
        return self.context.is_active()

    def end(self, last: Message | None = None) -> None:
        """End the call (gRPC status OK), after sending `last` if given; idempotent."""
        if self._ended:
            return
        if last is not None:
            self.send(last)
        self._ended = True
        self._respond(None)


def _pushed_behavior(site: CallSite, fn: Callable[[Any, PushStream], None]) -> Behavior:
    """`wrap_method` for a pushed stream: checks as for any call, then `fn(request, stream)` on the
    calling thread, which is free once it returns. An error becomes the stream's last message.
    (Once per stream, not per message: no copies into locals as in the wrappers above.)"""
    name = method_name(site.path)

    def pushed(request: Any, context: grpc.ServicerContext, respond: Callable[[Message | bytes | None], None]) -> None:
        md = context.invocation_metadata()
        stream = PushStream(respond, context)
        if site.logger.isEnabledFor(logging.DEBUG):
            peer = trace_peer(md)
            site.logger.debug(entry_trace(peer, name, request))
            stream.traced(site.logger, peer, name, site.response_cls)
        err = site.versions.check(md)
        if err is not None:
            stream.end(site.error_response(context, err))
            return
        key = get_ident()
        PENDING[key] = PendingCall(site.server_id, site.path, md, request, context, time.time())
        try:
            if not site.gate.ready.is_set():
                site.gate.wait(context)
            fn(request, stream)
        except Exception as exc:
            stream.end(site.failure(context, exc))
        finally:
            PENDING.pop(key, None)

    non_blocking(pushed)
    return pushed
