"""Prometheus metrics of a process: the families every server and its clients update, and their exposition
over HTTP(S). (Main's per-endpoint upstream view and the events service's families are not measured yet:
issue 22.)

One registry per process (prometheus_client's default `REGISTRY`, which also holds its process and
platform collectors): several servers in one process share the families, and their calls add up.
Label values are bounded by construction: a method's labels are bound when it is registered (never from
what a caller sends), gRPC and `Result` codes are enums (a code `ResultCode` does not name is `other`).

The hot path stays cheap: a method's labelled children are looked up once, at registration
(`MethodMetrics`), so a call costs a few `inc()`/`observe()` on objects it already holds.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.message import Message
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from grpc_helper.api import ResultCode
from grpc_helper.errors import served_status
from grpc_helper.generated import Behavior, Handler, has_result_field, kind_of, make_handler, response_class

_log = logging.getLogger("grpc_helper.metrics")

# Buckets of call durations (seconds): A66's recommendation, cut to what a Python server can tell apart
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The label value standing for anything not registered or not named (an unknown `Result` code, a method
# outside the registered ones)
OTHER = "other"

_M = TypeVar("_M", bound=MetricWrapperBase)


def _family(cls: type[_M], name: str, doc: str, labels: tuple[str, ...] = (), **kwargs: Any) -> _M:
    """A family on the process registry; the one already registered under `name` if any (a module reloaded
    by a test must not fail on a duplicate)."""
    try:
        return cls(name, doc, labels, **kwargs)
    except ValueError:  # "Duplicated timeseries in CollectorRegistry"
        existing = REGISTRY._names_to_collectors.get(name)  # private, but the only lookup by name
        if not isinstance(existing, cls):
            raise
        return existing


_CALL = ("grpc_service", "grpc_method")

# --- calls served (A66 names where one matches: grpc.server.call.started, grpc.server.call.duration) ---
SERVER_STARTED = _family(Counter, "grpc_server_call_started", "Calls started, per method", _CALL)
SERVER_DURATION = _family(
    Histogram,
    "grpc_server_call_duration_seconds",
    "Duration of calls served, from the handler's start to its end, per method and gRPC status",
    (*_CALL, "grpc_status"),
    buckets=DURATION_BUCKETS,
)
SERVER_IN_FLIGHT = _family(Gauge, "grpc_helper_server_calls_in_flight", "Calls being served, per method", _CALL)
SERVER_SENT = _family(
    Counter, "grpc_helper_server_stream_messages_sent", "Messages sent on response streams, per method", _CALL
)
SERVER_RECEIVED = _family(
    Counter, "grpc_helper_server_stream_messages_received", "Messages received on request streams, per method", _CALL
)
RESULTS = _family(
    Counter,
    "grpc_helper_result",
    "Calls answered with a 2.x Result (the r.code of a unary response, of a stream's last message), per code",
    (*_CALL, "code"),
)

# --- clients (RpcClient) ---
CLIENT_DURATION = _family(
    Histogram,
    "grpc_client_call_duration_seconds",
    "Duration of RpcClient calls, retries included, per method and final gRPC status",
    (*_CALL, "grpc_status"),
    buckets=DURATION_BUCKETS,
)
CLIENT_RETRIES = _family(Counter, "grpc_helper_client_retries", "RpcClient retries (attempts after the first)", _CALL)

# --- security and limits ---
REFUSALS = _family(
    Counter,
    "grpc_helper_refusals",
    "Calls refused before reaching a manager, by reason (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED)",
    ("reason",),
)
for _reason in ("UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED"):
    REFUSALS.labels(_reason)  # every reason shown from the start (0): an alert's rate() needs the series
CERT_NOT_AFTER = _family(
    Gauge,
    "grpc_helper_tls_certificate_not_after_seconds",
    "End of validity of the server's TLS certificate in use (Unix time)",
)
RELOADS = _family(
    Counter,
    "grpc_helper_config_reloads",
    "Reloads of changed files (kind: tls, policy), by result (ok, failed)",
    ("kind", "result"),
)


def reloaded(kind: str, *, ok: bool) -> None:
    """Count one reload of `kind` (`tls`, `policy`)."""
    RELOADS.labels(kind, "ok" if ok else "failed").inc()


def refused(code: grpc.StatusCode) -> None:
    """Count one call refused with `code`."""
    REFUSALS.labels(code.name).inc()


def result_name(code: int) -> str:
    """The `code` label of a `Result` code: its `ResultCode` name, `other` for a code it does not name."""
    try:
        return ResultCode.Name(code)
    except ValueError:
        return OTHER


_OK = grpc.StatusCode.OK


class MethodMetrics:
    """The labelled children of one served method, bound once at registration."""

    __slots__ = ("_durations", "_labels", "_results", "in_flight", "received", "sent", "started")

    def __init__(self, service: str, method: str) -> None:
        self._labels = (service, f"{service}/{method}")  # grpc_method as A66: service/method
        self.started = SERVER_STARTED.labels(*self._labels)
        self.in_flight = SERVER_IN_FLIGHT.labels(*self._labels)
        self.sent = SERVER_SENT.labels(*self._labels)
        self.received = SERVER_RECEIVED.labels(*self._labels)
        self._durations: dict[grpc.StatusCode, Any] = {}
        self._results: dict[int, Any] = {}
        self.duration(_OK)
        self.result(0)

    def duration(self, code: grpc.StatusCode) -> Any:
        """The duration child of gRPC status `code` (17 at most, made on first use)."""
        child = self._durations.get(code)
        if child is None:
            child = self._durations[code] = SERVER_DURATION.labels(*self._labels, code.name)
        return child

    def result(self, code: int) -> Any:
        """The result counter child of `Result` code `code`."""
        child = self._results.get(code)
        if child is None:
            child = self._results[code] = RESULTS.labels(*self._labels, result_name(code))
        return child

    def finished(self, context: grpc.ServicerContext, start: float, *, failed: bool) -> None:
        """Record the end of a call begun at `start` (perf_counter), its status as the context tells it."""
        self.duration(served_status(context, failed=failed)).observe(time.perf_counter() - start)
        self.in_flight.dec()


def instrument(handler: Handler, service: str, method: str, *, results: bool = True) -> Handler:
    """`handler` with its calls measured under `service`/`method` (its behavior's grpcio options kept).
    `results`: the responses are messages whose `Result r` may be counted (False: raw bytes, main's forwarders)."""
    kind = kind_of(handler)
    behavior: Behavior = getattr(handler, kind)
    site = MethodMetrics(service, method)
    counts = results and has_result_field(response_class(service, method))
    if getattr(behavior, "experimental_non_blocking", False):
        measured = _pushed(site, behavior)
    elif handler.response_streaming:
        measured = _stream(site, behavior, counts=counts, request_streaming=handler.request_streaming)
    else:
        measured = _unary(site, behavior, counts=counts, request_streaming=handler.request_streaming)
    for option in ("experimental_thread_pool", "experimental_non_blocking"):  # grpcio's, see generated.py
        if hasattr(behavior, option):
            setattr(measured, option, getattr(behavior, option))
    return make_handler(handler, measured)


class _Counted:
    """A request stream counting its messages as they are read. grpcio's own request iterator is kept
    reachable as `_state` (`calls.cancelled_after_end` reads it to tell a cancellation from an end)."""

    __slots__ = ("_inc", "_requests", "_state")

    def __init__(self, requests: Iterator[Any], counter: Any) -> None:
        self._requests, self._inc = requests, counter.inc
        self._state = getattr(requests, "_state", None)

    def __iter__(self) -> _Counted:
        return self

    def __next__(self) -> Any:
        request = next(self._requests)
        self._inc()
        return request


# The wrappers below copy what they use into locals of the closure: they run on every call


def _unary(site: MethodMetrics, behavior: Behavior, *, counts: bool, request_streaming: bool) -> Behavior:
    started, in_flight, finished, result, received = (
        site.started,
        site.in_flight,
        site.finished,
        site.result,
        site.received,
    )
    perf = time.perf_counter

    def measured_unary(request: Any, context: grpc.ServicerContext) -> Any:
        started.inc()
        in_flight.inc()
        start = perf()
        failed = True
        try:
            if request_streaming:
                request = _Counted(request, received)
            response = behavior(request, context)
            failed = False
            if counts and isinstance(response, Message):
                result(response.r.code).inc()  # type: ignore[attr-defined]  # checked: has_result_field
            return response
        finally:
            finished(context, start, failed=failed)

    return measured_unary


def _stream(site: MethodMetrics, behavior: Behavior, *, counts: bool, request_streaming: bool) -> Behavior:
    started, in_flight, finished, result = site.started, site.in_flight, site.finished, site.result
    sent, received = site.sent, site.received
    perf = time.perf_counter

    def measured_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started.inc()
        in_flight.inc()
        start = perf()
        failed = True
        n = 0
        last = None
        if request_streaming:
            request = _Counted(request, received)
        responses = behavior(request, context)
        try:
            for last in responses:
                n += 1
                yield last
            failed = False
        finally:
            if hasattr(responses, "close"):
                responses.close()  # a cancelled stream ends the manager's iterator now, not at garbage collection
            sent.inc(n)
            if counts and not failed and isinstance(last, Message):
                result(last.r.code).inc()  # type: ignore[attr-defined]  # checked: has_result_field
            finished(context, start, failed=failed)

    return measured_stream


@dataclass
class _Pushed:
    """A pushed stream's count of messages and last message, until its end."""

    sent: int = 0
    last: Any = None


def _pushed(site: MethodMetrics, behavior: Behavior) -> Behavior:
    """A non-blocking server stream (`calls.pushed_stream`): measured from its start to the call's end
    (gRPC's termination callback), its messages counted as `respond` sends them."""

    def measured_pushed(request: Any, context: grpc.ServicerContext, respond: Callable[[Any], None]) -> None:
        site.started.inc()
        site.in_flight.inc()
        start = time.perf_counter()
        state = _Pushed()

        def counting(message: Any) -> None:
            if message is not None:
                state.sent += 1
                state.last = message
            respond(message)

        def done() -> None:
            site.sent.inc(state.sent)
            if isinstance(state.last, Message) and has_result_field(type(state.last)):
                site.result(state.last.r.code).inc()  # type: ignore[attr-defined]
            site.finished(context, start, failed=False)

        if not context.add_callback(done):  # already over
            done()
        behavior(request, context, counting)

    return measured_pushed


class ClientMethodMetrics:
    """The labelled children of one `RpcClient` method (`client.ClientMeter`), bound when the client binds it."""

    __slots__ = ("_durations", "_labels", "_retries")

    def __init__(self, path: str) -> None:
        service, _, method = path.lstrip("/").partition("/")
        self._labels = (service, f"{service}/{method}")
        self._retries = CLIENT_RETRIES.labels(*self._labels)
        self._durations: dict[grpc.StatusCode, Any] = {}

    def retried(self) -> None:
        self._retries.inc()

    def done(self, start: float, code: grpc.StatusCode) -> None:
        child = self._durations.get(code)
        if child is None:
            child = self._durations[code] = CLIENT_DURATION.labels(*self._labels, code.name)
        child.observe(time.monotonic() - start)


# --- exposition ---


@dataclass(frozen=True)
class ExpositionTls:
    """HTTPS for the metrics endpoint: the server's certificate and key, and the CA its scrapers' client
    certificates must be issued by (None: no client certificate asked for)."""

    cert: Path
    key: Path
    ca: Path | None


class _Exposition:
    """One HTTP(S) server of a port, shared by the servers of a process that ask for the same one."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server, self.thread, self.users = server, thread, 1


_EXPOSED: dict[tuple[str, int], _Exposition] = {}
_EXPOSED_LOCK = threading.Lock()


def expose(address: str, port: int, tls: ExpositionTls | None) -> tuple[str, int]:
    """Serve the process registry on `address`:`port` (`address` empty: every IPv4 interface), over HTTPS
    requiring a client certificate issued by `tls.ca` when `tls` is given. Returns the key to `unexpose` with
    (the port actually bound when `port` is 0). A second server of the process asking for the same address
    and port shares the first one's."""
    host = address or "0.0.0.0"
    with _EXPOSED_LOCK:
        shared = _EXPOSED.get((host, port)) if port else None
        if shared is not None:
            shared.users += 1
            return host, port
        kwargs: dict[str, Any] = {}
        if tls is not None:
            kwargs = {"certfile": str(tls.cert), "keyfile": str(tls.key)}
            if tls.ca is not None:
                kwargs.update(client_cafile=str(tls.ca), client_auth_required=True)
            kwargs["tls_min_version"] = ssl.TLSVersion.TLSv1_2
        server, thread = start_http_server(port, host, REGISTRY, **kwargs)
        bound = int(server.server_address[1])
        _EXPOSED[(host, bound)] = _Exposition(server, thread)
        scheme = "https" if tls is not None else "http"
        _log.info(
            "Metrics on %s://%s:%d/metrics%s", scheme, host, bound, " (mTLS)" if kwargs.get("client_cafile") else ""
        )
        return host, bound


def unexpose(key: tuple[str, int]) -> None:
    """Stop serving the metrics of `key` (from `expose`) once no server of the process uses it any more."""
    with _EXPOSED_LOCK:
        shared = _EXPOSED.get(key)
        if shared is None:
            return
        shared.users -= 1
        if shared.users > 0:
            return
        del _EXPOSED[key]
    shared.server.shutdown()
    shared.server.server_close()
