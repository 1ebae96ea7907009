"""A program run with the tracer provider set by the application: the SDK's, its spans kept by the SDK's
in-memory exporter and written as JSON lines to `TRACED_SPANS` when it ends (tests/test_tracing.py).

    TRACED_MODULE=grpc_helper_samples.main TRACED_SPANS=spans.jsonl python tests/programs/traced.py ARGS...

runs `python -m grpc_helper_samples.main ARGS...` so. `install` and `dump` serve tests/programs/traced_client.py.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def install(service: str) -> InMemorySpanExporter:
    """The SDK's provider, every span exported to memory as it ends, set for the process."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def record(span: ReadableSpan) -> dict[str, Any]:
    """What the test reads of a span (ids in hex, as in a traceparent)."""
    context = span.get_span_context()
    assert context is not None
    return {
        "service": span.resource.attributes.get("service.name"),
        "name": span.name,
        "kind": span.kind.name,
        "trace": _hex(context.trace_id, 32),
        "span": _hex(context.span_id, 16),
        "parent": _hex(span.parent.span_id, 16) if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "links": [[_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16)] for link in span.links],
        "status": span.status.status_code.name,
    }


def dump(exporter: InMemorySpanExporter, path: str) -> None:
    """The finished spans as JSON lines in `path` (written whole, then renamed)."""
    with open(f"{path}.tmp", "w") as out:
        for span in exporter.get_finished_spans():
            out.write(json.dumps(record(span)) + "\n")
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    spans = install(os.environ.get("OTEL_SERVICE_NAME", "traced"))
    try:
        sys.argv[0] = os.environ["TRACED_MODULE"]
        runpy.run_module(os.environ["TRACED_MODULE"], run_name="__main__", alter_sys=True)
    finally:
        dump(spans, os.environ["TRACED_SPANS"])
