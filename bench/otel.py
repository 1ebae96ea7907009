"""OpenTelemetry in the benchmarks' traced processes (`bench/run.py --only otel`).

A kind ending in `-otel` is traced at 100% sampling, `-otel-idle` installed but sampling nothing (the SDK's
provider with `ParentBased(ALWAYS_OFF)`: grpc-helper then starts no trace and makes no span). Spans
go through a `BatchSpanProcessor`, as a deployment's do, to an exporter that drops them: what tracing costs a
process short of the export itself (encoding and sending, on the processor's own thread; no collector runs
here). `raw-otel` is plain grpcio with the official instrumentation's interceptors
(opentelemetry-instrumentation-grpc), the same provider at 100%.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SUFFIXES = {"-otel-idle": False, "-otel": True}  # suffix -> sampled (the longer suffix first)


def traced_kind(kind: str) -> tuple[str, bool | None]:
    """(`kind` without its tracing suffix, sampled: True, False, or None when not traced)."""
    for suffix, sampled in SUFFIXES.items():
        if kind.endswith(suffix):
            return kind.removesuffix(suffix), sampled
    return kind, None


def configure(sampled: bool) -> None:
    """Set the process's tracer provider (before any server or client is made: grpc-helper decides then)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

    class Dropped(SpanExporter):
        def export(self, _spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON if sampled else ALWAYS_OFF))
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    trace.set_tracer_provider(provider)


def server_interceptors() -> list[Any]:
    """The official instrumentation's server interceptor."""
    from opentelemetry.instrumentation.grpc import server_interceptor

    return [server_interceptor()]


def intercepted(channel: Any) -> Any:
    """`channel` with the official instrumentation's client interceptor."""
    from opentelemetry.instrumentation.grpc import client_interceptor
    from opentelemetry.instrumentation.grpc.grpcext import intercept_channel

    return intercept_channel(channel, client_interceptor())
