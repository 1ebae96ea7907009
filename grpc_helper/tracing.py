"""OpenTelemetry traces of the calls a process serves, makes and forwards, and of the events it sends and
receives (issue 22). OpenTelemetry is optional: the `otel` extra (`pip install grpc-helper[otel]`) brings the
API, the SDK and the OTLP exporter.

Off unless configured, and decided when a server starts, a client is made, a forwarder or an events listener
is made (`configured()`), never per call: unconfigured, nothing is wrapped, and a call pays nothing (nothing
of OpenTelemetry is even imported). Configured means either of OpenTelemetry's standard ways:

- the application set a tracer provider (`trace.set_tracer_provider`, or `opentelemetry-instrument`) before
  its servers and clients start;
- `OTEL_TRACES_EXPORTER` names exporters (`otlp`, `console`, ...; not `none`): with no provider set, the
  first server or client of the process sets the SDK's up from the `OTEL_*` variables (`OTEL_SERVICE_NAME`,
  `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, the exporters' own, e.g. `OTEL_EXPORTER_OTLP_*`;
  `otlp` is OTLP/gRPC, or OTLP/HTTP with `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL=http/protobuf`), each exporter
  behind a `BatchSpanProcessor`.

`OTEL_SDK_DISABLED=true` turns it off either way. Installed but not sampling (e.g. `parentbased_always_off`),
a trace's first span is made, not recorded, and its context propagated; a span the sampler would drop for its
unsampled parent is not made at all (`Tracing.child`): the parent's context goes on instead.

Spans, with the rpc semantic conventions' attributes (`rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`), named `<service>/<method>`:
- SERVER: every call of a registered method (`Tracing.instrument`), the child of the caller's context (the
  W3C `traceparent` of its metadata, through the global propagator), current while the manager runs. A 2.x
  error answer (gRPC OK, `r.code` set) has status ERROR and `grpc_helper.result_code`;
- CLIENT: every `RpcClient` attempt (`Tracing.client_call`), its context injected in the call's metadata;
- main's forwarded calls: their SERVER span, and a CLIENT span for the backend call (`Upstream`), injected
  in place of the caller's `traceparent`: main's span is the backend span's parent;
- events: `send` puts the sender's context in the event it queues, as `traceparent` (and `tracestate`)
  properties (`Tracing.carry`), so every delivered event carries it; a listener's `on_event` runs in a
  CONSUMER span `process <event name>`, the root of its own trace, with a link to the sender's span
  (`Tracing.processing`): one event may reach many listeners, long after it was sent.

Why not the official `opentelemetry-instrumentation-grpc` here (it suits plain grpcio channels and servers):
its server interceptor makes a new handler per call, losing the per-method thread pools and the non-blocking
streams grpcio options give our behaviors (`generated.run_on`, `non_blocking`); its client interceptor turns a
streamed response into a generator (no `cancel()`, which `ResponseStream` and listeners need); neither fits
main's byte forwarder. See README's Observability.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from types import FunctionType
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import Message

from grpc_helper._version import installed_version
from grpc_helper.api import Event, ResultCode
from grpc_helper.errors import RpcException, error_status, rc_name, served_status
from grpc_helper.generated import (
    Behavior,
    Handler,
    copy_options,
    has_result_field,
    kind_of,
    make_handler,
    response_class,
)
from grpc_helper.metadata import Metadata

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, SpanKind, Tracer

__all__ = ["Tracing", "Upstream", "configured", "disable"]

_log = logging.getLogger("grpc_helper.tracing")

# The rpc semantic conventions' attribute names (opentelemetry-semantic-conventions has them in a private
# `_incubating` module only)
RPC_SYSTEM = "rpc.system"
RPC_SERVICE = "rpc.service"
RPC_METHOD = "rpc.method"
RPC_GRPC_STATUS_CODE = "rpc.grpc.status_code"
# Ours: the 2.x `Result` code of an error answer (gRPC OK hides it), by name
RESULT_CODE = "grpc_helper.result_code"
# The messaging conventions' (events)
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION = "messaging.operation.type"
MESSAGING_DESTINATION = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"

# The statuses that make a SERVER span an error (semantic conventions for gRPC); any non-OK one a CLIENT span's
_SERVER_ERRORS = frozenset(
    (
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    )
)
_OK = grpc.StatusCode.OK
_RESULT_OK = int(ResultCode.OK)  # looked up once: an enum wrapper's attribute is a slow lookup
_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
_EXPORTERS_GROUP = "opentelemetry_traces_exporter"  # the SDK's entry points naming exporters

_lock = threading.Lock()
_disabled = False
_current: tuple[object, Tracing] | None = None  # (the provider, its Tracing): one per provider


def disable() -> None:
    """No tracing in this process, whatever is configured (the operator CLI: a health probe is no trace)."""
    global _disabled
    _disabled = True


def _exporter_names() -> list[str]:
    names = [n.strip() for n in os.environ.get(_TRACES_EXPORTER, "").split(",")]
    return [n for n in names if n and n.lower() != "none"]


def configured() -> Tracing | None:
    """The process's tracing, None when none is configured (see the module doc). Cheap when off: call it
    once per server, client or forwarder, never per call."""
    global _current
    if _disabled or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = _exporter_names()
    if not names and "opentelemetry.trace" not in sys.modules:
        return None  # no provider can have been set without importing it: nothing configured
    try:
        from opentelemetry import trace
    except ImportError:
        _log.warning("%s is set, but OpenTelemetry is not installed (grpc-helper[otel]): no traces", _TRACES_EXPORTER)
        return None
    with _lock:
        provider = trace.get_tracer_provider()
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            if not names:
                return None
            provider = _provider_from_env(names)
            trace.set_tracer_provider(provider)
        if _current is None or _current[0] is not provider:
            _current = (provider, Tracing(provider.get_tracer("grpc_helper", installed_version())))
            _warn_official_patches()
        return _current[1]


def _provider_from_env(names: list[str]) -> Any:
    """The SDK's tracer provider as the `OTEL_*` variables describe it, exporting to `names`."""
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        msg = f"{_TRACES_EXPORTER} is set, but the OpenTelemetry SDK is not installed (grpc-helper[otel])"
        raise RpcException(msg, ResultCode.ERROR_PARAM_INVALID) from exc
    exporters = [_exporter_class(name)() for name in names]  # all found before anything is made of them
    provider = TracerProvider(resource=Resource.create())  # sampler: OTEL_TRACES_SAMPLER(_ARG)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _log.info("Traces exported to %s (%s)", ", ".join(names), _TRACES_EXPORTER)
    return provider


def _exporter_class(name: str) -> Callable[[], Any]:
    """The exporter `name` of `OTEL_TRACES_EXPORTER`, from the SDK's entry points (as its own configuration
    does: `otlp` is OTLP/gRPC unless the protocol variables say http/protobuf)."""
    if name == "otlp":
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        name = "otlp_proto_http" if (protocol or "grpc").strip() == "http/protobuf" else "otlp_proto_grpc"
    from importlib.metadata import entry_points  # slow to import: only when exporters are named

    found = entry_points(group=_EXPORTERS_GROUP, name=name)
    if not found:
        known = sorted(ep.name for ep in entry_points(group=_EXPORTERS_GROUP))
        msg = f"{_TRACES_EXPORTER}: no trace exporter {name!r} is installed (installed: {', '.join(known) or 'none'})"
        raise RpcException(msg, ResultCode.ERROR_PARAM_INVALID)
    exporter: Callable[[], Any] = next(iter(found)).load()
    return exporter


def _warn_official_patches() -> None:
    """grpcio patched by the official instrumentation (`opentelemetry-instrument` enables it when installed)
    would trace our calls twice, and break what `Tracing` keeps (see the module doc)."""
    for name in ("server", "insecure_channel", "secure_channel"):
        function = getattr(grpc, name)  # replaced by a function of another module, or wrapped (wrapt)
        if not isinstance(function, FunctionType) or not function.__module__.startswith("grpc"):
            _log.warning(
                "grpc.%s is instrumented by another library (opentelemetry-instrumentation-grpc?): grpc-helper traces"
                " its own calls; set OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=grpc_client,grpc_server",
                name,
            )
            return


class _Site:
    """What every span of one method shares, made once: its name, kind and attributes."""

    __slots__ = ("attributes", "kind", "name", "tracing")

    def __init__(self, tracing: Tracing, path: str, kind: SpanKind) -> None:
        service, _, method = path.lstrip("/").partition("/")
        self.tracing, self.kind, self.name = tracing, kind, f"{service}/{method}"
        self.attributes = {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method}

    def start(self, parent: Context | None = None) -> Span:
        return self.tracing.tracer.start_span(self.name, parent, self.kind, self.attributes)

    def injected(self, span: Span | None, metadata: Metadata, drop: frozenset[str] = frozenset()) -> Metadata:
        """`metadata` (less the keys of `drop`) with `span`'s context (None: the current one)."""
        carrier: dict[str, str] = {}
        t = self.tracing
        t.inject(carrier, context=t.set_span_in_context(span) if span is not None else None)
        kept = tuple((k, v) for k, v in metadata if k not in drop) if drop else metadata
        return kept + tuple(carrier.items())

    def end(self, span: Span, code: grpc.StatusCode, *, server: bool) -> None:
        if span.is_recording():
            span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
            if code is not _OK and (not server or code in _SERVER_ERRORS):
                span.set_status(self.tracing.error(code.name))
        span.end()

    def result(self, span: Span, response: object) -> None:
        """A 2.x error answer (gRPC OK, `r.code` set): ERROR, with the code's name."""
        code = response.r.code if isinstance(response, Message) else _RESULT_OK  # type: ignore[attr-defined]
        if code != _RESULT_OK and span.is_recording():
            name = rc_name(code)
            span.set_attribute(RESULT_CODE, name)
            span.set_status(self.tracing.error(name))


class _MetadataGetter:
    """Reads a propagator's keys from call metadata ((key, value) pairs), for `extract`."""

    def get(self, carrier: Iterable[tuple[str, str | bytes]], key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, str | bytes]]) -> list[str]:
        return [k for k, _ in carrier]


class Tracing:
    """A configured tracer and the OpenTelemetry functions its spans use (imported once, here only)."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace.status import Status, StatusCode

        self.tracer = tracer
        self.attach, self.detach = context.attach, context.detach
        self.inject, self.extract = propagate.inject, propagate.extract
        self.set_span_in_context, self.current_span = trace.set_span_in_context, trace.get_current_span
        self.use_span, self.link, self.kinds = trace.use_span, trace.Link, trace.SpanKind
        self.empty = context.Context()  # no parent: a new trace
        self._status, self._error = Status, StatusCode.ERROR
        # The keys the propagators set (traceparent, tracestate, baggage...), replaced when forwarding
        self.fields = frozenset(propagate.get_global_textmap().fields)
        self._getter = _MetadataGetter()
        # Whether the sampler drops whatever an unsampled parent starts (the SDK's ParentBased, by default): such a
        # span need not be made (see `child`). Its description is the sampler's public account of its rules
        sampler = getattr(tracer, "sampler", None)
        rules = sampler.get_description() if sampler is not None else ""
        self._follows = all(f"{p}ParentNotSampled:AlwaysOffSampler" in rules for p in ("remote", "local"))
        # Whether it drops every trace's first span (always_off, parentbased_always_off): no trace is started here
        self._no_roots = rules == "AlwaysOffSampler" or rules.startswith("ParentBased{root:AlwaysOffSampler,")

    def error(self, description: str) -> Any:
        return self._status(self._error, description)

    def server_context(self, metadata: Iterable[tuple[str, str | bytes]]) -> Context:
        """The caller's context, from its call metadata (none sent: an empty one, extracted at no cost)."""
        fields = self.fields
        if not any(key in fields for key, _ in metadata):
            return self.empty
        return self.extract(metadata, getter=self._getter)  # type: ignore[arg-type]  # a Getter, duck-typed

    def child(self, site: _Site, parent: Context | None) -> Span | None:
        """A span of `site`, the child of `parent` (None: the current context); None instead of a span the sampler
        would drop anyway (made, it records nothing and costs about what a recorded span's start does): one whose
        parent is not sampled (its context, passed on instead, carries the same decision downstream), or, with a
        sampler that drops every root, one without a parent (no trace starts here: the next hop decides)."""
        if self._follows or self._no_roots:
            context = self.current_span(parent).get_span_context()
            if context.is_valid:
                if self._follows and not context.trace_flags.sampled:
                    return None
            elif self._no_roots:
                return None
        return site.start(parent)

    def served(self, site: _Site, metadata: Iterable[tuple[str, str | bytes]]) -> tuple[Span | None, Context]:
        """A served call's span (see `child`) and the context its code runs in."""
        parent = self.server_context(metadata)
        span = self.child(site, parent)
        return span, (self.set_span_in_context(span, parent) if span is not None else parent)

    # --- served calls ---
    def instrument(self, handler: Handler, service: str, method: str, *, results: bool) -> Handler:
        """`handler` with a SERVER span around each call (its grpcio options kept). `results`: its responses are
        messages, which may carry a 2.x `Result` (False: raw bytes, main's forwarders)."""
        site = _Site(self, f"/{service}/{method}", self.kinds.SERVER)
        results = results and has_result_field(response_class(service, method))
        behavior: Behavior = getattr(handler, kind_of(handler))
        if getattr(behavior, "experimental_non_blocking", False):
            traced = self._pushed(site, behavior)
        elif handler.response_streaming:
            traced = self._stream(site, behavior, results=results)
        else:
            traced = self._unary(site, behavior, results=results)
        copy_options(behavior, traced)
        return make_handler(handler, traced)

    def _unary(self, site: _Site, behavior: Behavior, *, results: bool) -> Behavior:
        attach, detach, served = self.attach, self.detach, self.served
        end, result = site.end, site.result

        def traced_unary(request: Any, context: grpc.ServicerContext) -> Any:
            span, current = served(site, context.invocation_metadata())
            token = attach(current)
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                if results and span is not None:
                    result(span, response)
                return response
            finally:
                detach(token)
                if span is not None:
                    end(span, served_status(context, failed=failed), server=True)

        return traced_unary

    def _stream(self, site: _Site, behavior: Behavior, *, results: bool) -> Behavior:
        attach, detach, served = self.attach, self.detach, self.served
        end, result = site.end, site.result

        def traced_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            span, current = served(site, context.invocation_metadata())
            failed = True
            last = None
            # Current only while the manager's code runs (each next()): between messages, gRPC's thread is not ours
            token = attach(current)
            try:
                responses = behavior(request, context)
            finally:
                detach(token)
            try:
                while True:
                    token = attach(current)
                    try:
                        last = next(responses)
                    except StopIteration:
                        break
                    finally:
                        detach(token)
                    yield last
                failed = False
                if results and span is not None:
                    result(span, last)
            finally:
                if hasattr(responses, "close"):
                    responses.close()  # a cancelled stream ends the manager's iterator now
                if span is not None:
                    end(span, served_status(context, failed=failed), server=True)

        return traced_stream

    def _pushed(self, site: _Site, behavior: Behavior) -> Behavior:
        """A non-blocking server stream (`calls.pushed_stream`): its span ends with the call (gRPC's callback)."""
        attach, detach, served = self.attach, self.detach, self.served

        def traced_pushed(request: Any, context: grpc.ServicerContext, respond: Callable[[Any], None]) -> None:
            span, current = served(site, context.invocation_metadata())
            if span is not None:
                recorded = span

                def done() -> None:
                    site.end(recorded, served_status(context, failed=False), server=True)

                if not context.add_callback(done):  # already over
                    done()
            token = attach(current)
            try:
                behavior(request, context, respond)
            finally:
                detach(token)

        return traced_pushed

    # --- calls made ---
    def client_call(self, multicallable: Callable[..., Any], path: str, *, streaming: bool) -> Callable[..., Any]:
        """`multicallable` (an `RpcClient` method's) with a CLIENT span per call, injected in its metadata.
        `streaming`: its response is a stream, whose span ends with it."""
        return _TracedCall(multicallable, _Site(self, path, self.kinds.CLIENT), streaming=streaming)

    def upstream(self, service: str, method: str) -> Upstream:
        """The spans of main's backend calls of `/service/method` (see `Upstream`)."""
        return Upstream(_Site(self, f"/{service}/{method}", self.kinds.CLIENT))

    # --- events ---
    def carry(self, event: Event) -> Event:
        """`event` with the current context as properties (`traceparent`...), to be queued: a copy, unless there
        is no current span, or the sender put a context in it already (a client's own)."""
        if not self.current_span().get_span_context().is_valid:
            return event
        if any(p.name in self.fields for p in event.properties):
            return event
        carrier: dict[str, str] = {}
        self.inject(carrier)
        carried = Event()
        carried.CopyFrom(event)
        for name, value in carrier.items():
            carried.properties.add(name=name, value=value)
        return carried

    def processing(self, event: Event, seq: int) -> AbstractContextManager[Any]:
        """The CONSUMER span a listener handles `event` in (current meanwhile): a trace of its own, linked to the
        sender's span when the event carries its context."""
        carrier = {p.name: p.value for p in event.properties if p.name in self.fields}
        links: list[Any] = []
        if carrier:
            sender = self.current_span(self.extract(carrier)).get_span_context()
            if sender.is_valid:
                links.append(self.link(sender))
        attributes = {
            MESSAGING_SYSTEM: "grpc_helper",
            MESSAGING_OPERATION: "process",
            MESSAGING_DESTINATION: event.name,
        }
        if seq:
            attributes[MESSAGING_MESSAGE_ID] = str(seq)
        span = self.tracer.start_span(f"process {event.name}", self.empty, self.kinds.CONSUMER, attributes, links)
        return self.use_span(span, end_on_exit=True)


class Upstream:
    """The CLIENT spans of main's calls to a backend for one method: the child of the forwarded call's SERVER
    span (current), injected in the forwarded metadata in place of the caller's context."""

    __slots__ = ("_site",)

    def __init__(self, site: _Site) -> None:
        self._site = site

    def start(self, metadata: Metadata) -> tuple[Span | None, Metadata]:
        """A span for a backend call (see `Tracing.child`), and `metadata` carrying it (the caller's context keys
        replaced). No span: the current context is passed on; when it is the caller's own, as it came."""
        site = self._site
        tracing = site.tracing
        span = tracing.child(site, None)
        if span is None:
            current = tracing.current_span().get_span_context()
            if current.is_remote or not current.is_valid:
                return None, metadata  # no span of main's: the caller's context (if any) is in `metadata` already
        return span, site.injected(span, metadata, tracing.fields)

    def end(self, span: Span, code: grpc.StatusCode) -> None:
        self._site.end(span, code, server=False)


class _TracedCall:
    """A gRPC multi-callable whose calls each have a CLIENT span (see `Tracing.client_call`)."""

    __slots__ = ("_call", "_site", "_streaming")

    def __init__(self, call: Callable[..., Any], site: _Site, *, streaming: bool) -> None:
        self._call, self._site, self._streaming = call, site, streaming

    def __call__(
        self, request: Any, timeout: float | None = None, metadata: Metadata | None = None, **kwargs: Any
    ) -> Any:
        site = self._site
        tracing = site.tracing
        span = tracing.child(site, None)
        if span is None:  # an unsampled trace's context is passed on, nothing recorded; none: nothing to pass on
            valid = tracing.current_span().get_span_context().is_valid
            md = site.injected(None, metadata or ()) if valid else metadata
            return self._call(request, timeout=timeout, metadata=md, **kwargs)
        md = site.injected(span, metadata or ())
        try:
            response = self._call(request, timeout=timeout, metadata=md, **kwargs)
        except grpc.RpcError as exc:
            site.end(span, error_status(exc), server=False)
            raise
        except BaseException:
            site.end(span, grpc.StatusCode.UNKNOWN, server=False)
            raise
        if self._streaming:
            return _TracedStream(response, span, site)
        site.end(span, _OK, server=False)
        return response


class _TracedStream:
    """A streamed response (a grpcio call object) whose span ends with it: at its end, its error, or `cancel()`."""

    __slots__ = ("_call", "_site", "_span")

    def __init__(self, call: Any, span: Span, site: _Site) -> None:
        self._call, self._site = call, site
        self._span: Span | None = span

    def __iter__(self) -> _TracedStream:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except StopIteration:
            self._end(_OK)
            raise
        except grpc.RpcError as exc:
            self._end(error_status(exc))
            raise

    def cancel(self) -> bool:
        cancelled: bool = self._call.cancel()
        self._end(grpc.StatusCode.CANCELLED)
        return cancelled

    def _end(self, code: grpc.StatusCode) -> None:
        span, self._span = self._span, None
        if span is not None:
            self._site.end(span, code, server=False)

    def __getattr__(self, name: str) -> Any:  # initial_metadata(), code(), ...: the call's
        return getattr(self._call, name)
