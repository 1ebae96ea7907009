"""Prometheus metrics of a process: the families every server and its clients update (calls served, main's
proxy, events, security), and their exposition over HTTP(S).

One registry per process (prometheus_client's default `REGISTRY`, which also holds its process and
platform collectors): several servers in one process share the families, and their calls add up.
Label values are bounded by construction: a method's labels are bound when it is registered (never from
what a caller sends), gRPC and `Result` codes are enums (a code `ResultCode` does not name is `other`).

The hot path stays cheap: a method's labelled children are looked up once, at registration
(`MethodMetrics`), an endpoint's when main makes its channel (`EndpointMeter`), so a call costs a few
`inc()`/`observe()` on objects it already holds. What is a state rather than an event (the events service's
queues and bytes) is read when scraped (`EventQueues`), costing nothing in between.

The same wrapper feeds the server's live view (`live`, `srv.stat`): every registered method of every server
is wrapped, its call recorded in its sliding window; the Prometheus families only when the server serves
them (`rpc-metrics-port`), else their children are `_OFF`, which counts nothing.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.message import Message
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase

from grpc_helper.api import ResultCode
from grpc_helper.errors import served_status
from grpc_helper.generated import Behavior, Handler, has_result_field, kind_of, make_handler, response_class
from grpc_helper.live import MethodWindow

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


# --- main's proxy: per proxied service (as registered: a descriptor's name, a dynamic service's gRPC name) and
# endpoint (a registered "host:port", its host resolved; a service balanced over several endpoints calls them
# through one channel, labelled with all of them: grpcio's client API does not tell which one answered) ---
_PROXIED = ("proxied_service",)
_UPSTREAM = ("proxied_service", "endpoint")
PROXY_UPSTREAM_DURATION = _family(
    Histogram,
    "grpc_helper_proxy_upstream_call_duration_seconds",
    "Duration of the calls main forwarded, from sending to the backend's last answer, per proxied service, endpoint"
    " and gRPC status",
    (*_UPSTREAM, "grpc_status"),
    buckets=DURATION_BUCKETS,
)
PROXY_UPSTREAM_FAILURES = _family(
    Counter,
    "grpc_helper_proxy_upstream_failures",
    "Forwarded calls the backend (or the connection to it) ended with a gRPC status other than OK",
    (*_UPSTREAM, "grpc_status"),
)
PROXY_ENDPOINT_SERVING = _family(
    Gauge,
    "grpc_helper_proxy_endpoint_serving",
    "1 while a registered endpoint is connected and serving (or not seen yet), 0 while it is not",
    _UPSTREAM,
)
PROXY_ENDPOINTS = _family(Gauge, "grpc_helper_proxy_endpoints", "Endpoints registered, per proxied service", _PROXIED)
PROXY_FORGOTTEN = _family(
    Counter,
    "grpc_helper_proxy_endpoints_forgotten",
    "Endpoints forgotten for not serving for rpc-proxy-stale-timeout (while their service had others)",
    _PROXIED,
)
PROXY_WAITING = _family(
    Gauge,
    "grpc_helper_proxy_calls_waiting",
    "Forwarded calls waiting for their service to be registered or for a backend to be connected",
    _PROXIED,
)
PROXY_NO_BACKEND = _family(
    Counter,
    "grpc_helper_proxy_calls_unforwarded",
    "Calls answered by main without a backend after waiting up to rpc-client-timeout, by reason"
    " (unregistered, unreachable)",
    (*_PROXIED, "reason"),
)

# --- events ---
EVENTS_SENT = _family(Counter, "grpc_helper_events_sent", "Events sent to the events service")
EVENTS_DELIVERED = _family(Counter, "grpc_helper_events_delivered", "Events written to listeners' streams")
EVENT_LISTENERS = _family(Gauge, "grpc_helper_events_listeners", "Listen streams open")
EVENTS_DROPPED = _family(
    Counter,
    "grpc_helper_events_dropped",
    "Events dropped by a bound, by the config item of that bound (a queue's, or what is retained for absent listeners)",
    ("bound",),
)
# Every bound shown from the start (0), their children bound once: a drop costs one inc()
DROPPED_QUEUE_MAX, DROPPED_QUEUE_MAX_BYTES, DROPPED_MAX_RETAINED, DROPPED_MAX_RETAINED_BYTES, DROPPED_RETAIN_TIMEOUT = (
    EVENTS_DROPPED.labels(item)
    for item in (
        "rpc-event-queue-max",
        "rpc-event-queue-max-bytes",
        "rpc-event-max-retained",
        "rpc-event-max-retained-bytes",
        "rpc-event-retain-timeout",
    )
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


class _Off:
    """What a Prometheus child is when the server serves no metrics: it counts nothing."""

    __slots__ = ()

    def inc(self, *_: float) -> None:
        pass

    def dec(self, *_: float) -> None:
        pass

    def observe(self, *_: float) -> None:
        pass


_OFF = _Off()


class MethodMetrics:
    """The labelled children of one served method, bound once at registration, and its live window."""

    __slots__ = (
        "_durations",
        "_labels",
        "_prometheus",
        "_results",
        "_window",
        "in_flight",
        "received",
        "sent",
        "started",
    )

    def __init__(
        self, service: str, method: str, window: MethodWindow | None = None, *, prometheus: bool = True
    ) -> None:
        """`window`: where the calls are also recorded (`srv.stat`); `prometheus`: the families are updated
        (False: the server serves no metrics, the children are `_OFF`)."""
        self._labels = (service, f"{service}/{method}")  # grpc_method as A66: service/method
        self._prometheus = prometheus
        self._window = window
        self._durations: dict[grpc.StatusCode, Any] = {}
        self._results: dict[int, Any] = {}
        if prometheus:
            self.started: Any = SERVER_STARTED.labels(*self._labels)
            self.in_flight: Any = SERVER_IN_FLIGHT.labels(*self._labels)
            self.sent: Any = SERVER_SENT.labels(*self._labels)
            self.received: Any = SERVER_RECEIVED.labels(*self._labels)
            self.duration(_OK)
            self.result(0)
        else:
            self.started = self.in_flight = self.sent = self.received = _OFF

    def duration(self, code: grpc.StatusCode) -> Any:
        """The duration child of gRPC status `code` (17 at most, made on first use)."""
        child = self._durations.get(code)
        if child is None:
            child = SERVER_DURATION.labels(*self._labels, code.name) if self._prometheus else _OFF
            self._durations[code] = child
        return child

    def result(self, code: int) -> Any:
        """The result counter child of `Result` code `code`."""
        child = self._results.get(code)
        if child is None:
            child = self._results[code] = RESULTS.labels(*self._labels, result_name(code)) if self._prometheus else _OFF
        return child

    def finished(self, context: grpc.ServicerContext, start: float, *, failed: bool, rc: int = 0) -> None:
        """Record the end of a call begun at `start` (perf_counter), its status as the context tells it; `rc`:
        the `Result` code it answered (0 when none)."""
        code = served_status(context, failed=failed)
        elapsed = time.perf_counter() - start
        self.duration(code).observe(elapsed)
        self.in_flight.dec()
        if self._window is not None:
            self._window.record(elapsed, ok=code is _OK and not rc)


def instrument(
    handler: Handler,
    service: str,
    method: str,
    *,
    results: bool = True,
    window: MethodWindow | None = None,
    prometheus: bool = True,
) -> Handler:
    """`handler` with its calls measured under `service`/`method` (its behavior's grpcio options kept).
    `results`: the responses are messages whose `Result r` may be counted (False: raw bytes, main's forwarders);
    `window`: the method's live window, fed too; `prometheus`: the Prometheus families are updated."""
    kind = kind_of(handler)
    behavior: Behavior = getattr(handler, kind)
    site = MethodMetrics(service, method, window, prometheus=prometheus)
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
        rc = 0
        try:
            if request_streaming:
                request = _Counted(request, received)
            response = behavior(request, context)
            failed = False
            if counts and isinstance(response, Message):
                rc = response.r.code  # type: ignore[attr-defined]  # checked: has_result_field
                result(rc).inc()
            return response
        finally:
            finished(context, start, failed=failed, rc=rc)

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
            rc = 0
            if counts and not failed and isinstance(last, Message):
                rc = last.r.code  # type: ignore[attr-defined]  # checked: has_result_field
                result(rc).inc()
            finished(context, start, failed=failed, rc=rc)

    return measured_stream


def _pushed(site: MethodMetrics, behavior: Behavior) -> Behavior:
    """A non-blocking server stream (`calls.pushed_stream`): measured from its start to the call's end
    (gRPC's termination callback), its messages counted as `respond` sends them."""

    def measured_pushed(request: Any, context: grpc.ServicerContext, respond: Callable[[Any], None]) -> None:
        site.started.inc()
        site.in_flight.inc()
        start = time.perf_counter()
        sent, last = 0, None

        def counting(message: Any) -> None:  # on every message: closure cells, cheaper than attributes
            nonlocal sent, last
            if message is not None:
                sent += 1
                last = message
            respond(message)

        def done() -> None:
            site.sent.inc(sent)
            rc = 0
            if isinstance(last, Message) and has_result_field(type(last)):
                rc = last.r.code  # type: ignore[attr-defined]
                site.result(rc).inc()
            site.finished(context, start, failed=False, rc=rc)

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


# --- main's proxy ---


class EndpointMeter:
    """The upstream children of one proxied service's endpoint (or endpoints, for a balanced channel), shared by
    the servers of the process and counted (`endpoint_meter`, `release_endpoint`): once the last user lets it go
    (the endpoint no longer registered), its series go too. Endpoints come and go with their addresses: none is
    left behind."""

    __slots__ = ("_durations", "_failures", "_labels", "serving", "users")

    def __init__(self, service: str, endpoint: str) -> None:
        self._labels = (service, endpoint)
        self._durations: dict[grpc.StatusCode, Any] = {}
        self._failures: dict[grpc.StatusCode, Any] = {}
        self.serving: Any = None  # the health gauge's child, for a registered endpoint (see `ProxyMeter`)
        self.users = 0
        self._duration(_OK)

    def _duration(self, code: grpc.StatusCode) -> Any:
        child = self._durations[code] = PROXY_UPSTREAM_DURATION.labels(*self._labels, code.name)
        return child

    def done(self, start: float, code: grpc.StatusCode) -> None:
        """Record a forwarded call sent at `start` (perf_counter) and ended with `code`."""
        child = self._durations.get(code)
        if child is None:
            child = self._duration(code)
        child.observe(time.perf_counter() - start)
        if code is not _OK:
            failures = self._failures.get(code)
            if failures is None:
                failures = self._failures[code] = PROXY_UPSTREAM_FAILURES.labels(*self._labels, code.name)
            failures.inc()

    def _remove(self) -> None:
        for code in list(self._durations):
            PROXY_UPSTREAM_DURATION.remove(*self._labels, code.name)
        for code in list(self._failures):
            PROXY_UPSTREAM_FAILURES.remove(*self._labels, code.name)
        if self.serving is not None:
            PROXY_ENDPOINT_SERVING.remove(*self._labels)


_ENDPOINTS: dict[tuple[str, str], EndpointMeter] = {}
_ENDPOINTS_LOCK = threading.Lock()


def endpoint_meter(service: str, endpoint: str) -> EndpointMeter:
    """The meter of `endpoint` ("host:port", or several joined by commas) of proxied service `service`, to
    `release_endpoint` once no longer used."""
    with _ENDPOINTS_LOCK:
        meter = _ENDPOINTS.get((service, endpoint))
        if meter is None:
            meter = _ENDPOINTS[service, endpoint] = EndpointMeter(service, endpoint)
        meter.users += 1
        return meter


def release_endpoint(meter: EndpointMeter) -> None:
    """Let go of a meter from `endpoint_meter`: the last user removes its series."""
    with _ENDPOINTS_LOCK:
        meter.users -= 1
        if meter.users > 0:
            return
        del _ENDPOINTS[meter._labels]
        meter._remove()


@dataclass
class _Registered:
    meter: EndpointMeter
    serving: bool  # what this registry counts in the endpoint's health gauge


class ProxyMeter:
    """What one proxy registry (one server) adds to main's proxy families: its registered endpoints and their
    health, its waits for a backend. Gauges move by steps, never set: the servers of a process add up."""

    def __init__(self) -> None:
        self._registered: dict[tuple[str, str], _Registered] = {}

    def added(self, service: str, endpoint: str) -> None:
        """`endpoint` of `service` registered (serving, as trusted until seen); nothing if it already was."""
        if (service, endpoint) in self._registered:
            return
        meter = endpoint_meter(service, endpoint)
        if meter.serving is None:
            meter.serving = PROXY_ENDPOINT_SERVING.labels(service, endpoint)
        meter.serving.inc()
        self._registered[service, endpoint] = _Registered(meter, serving=True)
        PROXY_ENDPOINTS.labels(service).inc()
        PROXY_FORGOTTEN.labels(service)  # shown from the first registration (0): an alert's rate() needs it

    def removed(self, service: str, endpoint: str) -> None:
        """`endpoint` of `service` no longer registered."""
        registered = self._registered.pop((service, endpoint), None)
        if registered is None:
            return
        if registered.serving:
            registered.meter.serving.dec()
        PROXY_ENDPOINTS.labels(service).dec()
        release_endpoint(registered.meter)

    def health(self, service: str, endpoint: str, *, serving: bool) -> None:
        """The health of a registered endpoint, as last seen."""
        registered = self._registered.get((service, endpoint))
        if registered is None or registered.serving == serving:
            return
        registered.serving = serving
        if serving:
            registered.meter.serving.inc()
        else:
            registered.meter.serving.dec()

    @staticmethod
    def forgotten(service: str) -> None:
        """An endpoint of `service` forgotten for not serving (`rpc-proxy-stale-timeout`)."""
        PROXY_FORGOTTEN.labels(service).inc()

    @staticmethod
    def waiting(service: str) -> Any:
        """The gauge of the calls of `service` waiting for a backend (inc() then dec() around a wait)."""
        return PROXY_WAITING.labels(service)

    @staticmethod
    def unforwarded(service: str, *, registered: bool) -> None:
        """A call of `service` answered without a backend: none registered, or none reached in time."""
        PROXY_NO_BACKEND.labels(service, "unreachable" if registered else "unregistered").inc()

    def close(self) -> None:
        """The registry shuts down: what it counted goes."""
        for service, endpoint in list(self._registered):
            self.removed(service, endpoint)


# --- events ---


class QueuesSource(Protocol):
    """What `EventQueues` reads of an events service."""

    def queue_sizes(self) -> Iterable[tuple[bool, int]]:
        """(retained, bytes pending) of each of its queues."""
        ...


class EventQueues:
    """A collector of the events services' queues, read when scraped: live and retained queues, and the bytes of
    their pending events (summed over the events services of the process)."""

    _QUEUES = ("grpc_helper_events_queues", "Event queues, live (a listener drains it) or retained (waiting for one)")
    _BYTES = ("grpc_helper_events_queued_bytes", "Bytes of the events pending in queues, live or retained")

    def __init__(self) -> None:
        self._sources: weakref.WeakSet[QueuesSource] = weakref.WeakSet()  # a service forgotten is not counted

    def add(self, source: QueuesSource) -> None:
        """Count the queues of `source` until `discard`."""
        self._sources.add(source)

    def discard(self, source: QueuesSource) -> None:
        self._sources.discard(source)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(*self._QUEUES, labels=["state"])
        yield GaugeMetricFamily(*self._BYTES, labels=["state"])

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, sizes = [0, 0], [0, 0]  # [live, retained]
        for source in list(self._sources):
            for retained, size in source.queue_sizes():
                counts[retained] += 1
                sizes[retained] += size
        for (name, doc), values in ((self._QUEUES, counts), (self._BYTES, sizes)):
            family = GaugeMetricFamily(name, doc, labels=["state"])
            family.add_metric(["live"], values[0])
            family.add_metric(["retained"], values[1])
            yield family


def _event_queues() -> EventQueues:
    collector = EventQueues()
    try:
        REGISTRY.register(collector)
    except ValueError:  # a module reloaded by a test: the one registered first
        existing = REGISTRY._names_to_collectors.get(EventQueues._QUEUES[0])  # private, the only lookup by name
        assert existing is not None
        return existing  # type: ignore[return-value]  # the same class, as loaded before
    return collector


EVENT_QUEUES = _event_queues()


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
