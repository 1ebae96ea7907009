"""OpenTelemetry tracing (grpc_helper.tracing): one trace across a client, main and a backend, three processes,
events carrying it; configured by the application (the SDK's in-memory exporter: main and the client) and by
the OTEL_* variables (the OTLP/gRPC exporter, to a receiver of the test's: the backend); nothing at all when
unconfigured.

The three processes run plaintext, and as the reference stack runs them: mTLS with the authorization policy
(tests/test_hostile.py's CA, certificates, tokens and policy), the client identified by its certificate, or by
its bearer token over TLS (`IDENTITIES`; main and echo then known by their tokens too); main forwards with its
own credentials and the caller's identity (`rpc-caller`), proxied and routed calls alike, and the trace goes
through all the same, no token in any span."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from test_hostile import FORMS, ROLES, Pki, items_args, token_of, write_policy

from grpc_helper import RpcClient
from grpc_helper.pki import write_private
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import WAIT, Program, clean_env

if os.environ.get("CI") != "true":  # CI installs the otel extra (scripts/dev-setup.sh): required there
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install grpc-helper[otel])")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import (
    TraceServiceServicer,
    add_TraceServiceServicer_to_server,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

PROGRAMS = Path(__file__).resolve().parent / "programs"
TRACED = str(PROGRAMS / "traced.py")
CLIENT = PROGRAMS / "traced_client.py"
COMMON = ("-c", "rpc-main-host=127.0.0.1", "-c", "rpc-client-timeout=30", "-c", "rpc-shutdown-grace=5")
# How the client is identified: None, plaintext (no policy); else mTLS and the policy on, the client the policy's
# `CALLER` by its certificate, or by its token over TLS (test_hostile's forms; main and echo then by theirs too)
IDENTITIES = (None, *FORMS)
CALLER = "svc"  # a service: it may send events too
TOKENS = [token_of(name) for name in ROLES]  # every token the policy knows

Span = dict[str, Any]


def read_jsonl(path: Path) -> list[Span]:
    """The spans tests/programs/traced.py wrote."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


class Receiver(TraceServiceServicer):
    """The least an OTLP/gRPC trace receiver does (no collector can run here): keeps what is exported to it,
    as `read_jsonl` gives spans."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self._lock = threading.Lock()

    def Export(self, request: ExportTraceServiceRequest, _context: Any) -> ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                with self._lock:
                    self.spans += [self._record(resource["service.name"], span) for span in scope_spans.spans]
        return ExportTraceServiceResponse()

    @staticmethod
    def _record(service: str, span: Any) -> Span:
        return {
            "service": service,
            "name": span.name,
            "kind": OtlpSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
            "trace": span.trace_id.hex(),
            "span": span.span_id.hex(),
            "parent": span.parent_span_id.hex() or None,
            "attributes": {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes},
            "links": [[link.trace_id.hex(), link.span_id.hex()] for link in span.links],
            "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        }


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    """An OTLP/gRPC receiver on a port of its own."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    found = Receiver()
    add_TraceServiceServicer_to_server(found, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield found, port
    finally:
        server.stop(0)


def find(spans: list[Span], **match: Any) -> list[Span]:
    return [s for s in spans if all(s[key] == value for key, value in match.items())]


def one(spans: list[Span], **match: Any) -> Span:
    found = find(spans, **match)
    assert len(found) == 1, f"{len(found)} spans {match}: {json.dumps(spans, indent=1)}"
    return found[0]


def rpc_attributes(span: Span, service: str, method: str) -> None:
    attributes = span["attributes"]
    assert attributes["rpc.system"] == "grpc", span
    assert (attributes["rpc.service"], attributes["rpc.method"]) == (service, method), span
    assert attributes["rpc.grpc.status_code"] == 0, span


class Traced:
    """main (its tracer provider set by the program: in-memory) and echo (the OTEL_* variables: OTLP to the
    receiver on `otlp_port`); plaintext, or with `identity` (a form of `FORMS`) mTLS with the policy on, the
    client identified in that form."""

    def __init__(self, root: Path, otlp_port: int, identity: str | None = None) -> None:
        self.root, self.otlp_port, self.identity = root, otlp_port, identity
        self.pki = Pki.create(root / "pki") if identity is not None else None
        self.policy = write_policy(root / "policy.json") if identity is not None else None
        self.programs: list[Program] = []

    def items(self, server: str) -> list[str]:
        """A server's options for the setup: plaintext none, else its certificate, mTLS and the policy; in the
        token form, its own token too (`rpc-auth-token-file`, what it is then known by: echo registers with
        it, main forwards with it)."""
        if self.pki is None or self.policy is None:
            return []
        extra = {}
        if self.identity == "token":
            path = self.root / f"{server}.token"
            write_private(path, token_of(server).encode() + b"\n")
            extra["rpc-auth-token-file"] = str(path)
        return items_args(self.pki.tls_items(server, self.policy, **extra))

    def security(self, name: str, form: str) -> ClientSecurity | None:
        return self.pki.security(name, form) if self.pki is not None else None

    def start(self) -> None:
        env = {"TRACED_MODULE": "grpc_helper_samples.main", "TRACED_SPANS": str(self.root / "main.jsonl")}
        main = Program(
            "main", self.root, *COMMON, *self.items("main"), module=TRACED, env={**env, "OTEL_SERVICE_NAME": "main"}
        )
        self.programs.append(main)
        self.main_port = main.wait_port()
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.otlp_port}",
            "OTEL_SERVICE_NAME": "echo",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # milliseconds between exports
        }
        main_port = ("-c", f"rpc-main-port={self.main_port}")
        echo = Program("echo", self.root, *COMMON, *main_port, *self.items("echo"), env=env)
        self.programs.append(echo)
        echo.wait_port()
        # Registered: a proxied call waits for it (main's rpc-client-timeout); this one is not traced here
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        operator = self.security("operator", "certificate")
        with RpcClient("127.0.0.1", self.main_port, stubs, timeout=WAIT, security=operator) as client:
            assert client.echo.echo(EchoRequest(text="ready")).text == "ready"

    def client_env(self) -> dict[str, str]:
        """The client program's credentials, as files its `TRACED_*` variables name (tests/programs/
        traced_client.py): `CALLER`'s in the form of `identity` (none: plaintext)."""
        if self.identity is None:
            return {}
        security = self.security(CALLER, self.identity)
        assert security is not None
        assert security.ca is not None
        folder = self.root / "client"
        folder.mkdir()
        given = {
            "TRACED_CA": ("ca.crt", security.ca),
            "TRACED_CERT": ("client.crt", security.cert),
            "TRACED_KEY": ("client.key", security.key),
            "TRACED_TOKEN_FILE": ("client.token", security.token.encode() if security.token else None),
        }
        env = {}
        for variable, (name, data) in given.items():
            if data is not None:
                write_private(folder / name, data)
                env[variable] = str(folder / name)
        return env

    def stop(self) -> list[int]:
        """Stop echo, then main (their spans are written as they end); their exit codes."""
        return [program.stop() for program in reversed(self.programs)]


@pytest.fixture
def traced(request: pytest.FixtureRequest, tmp_path: Path, receiver: tuple[Receiver, int]) -> Iterator[Traced]:
    """The stack, plaintext unless parametrized (indirectly) with an identity form of `IDENTITIES`."""
    stack = Traced(tmp_path, receiver[1], getattr(request, "param", None))
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def run_client(traced: Traced, tmp_path: Path, **env: str) -> dict[str, str]:
    """Run tests/programs/traced_client.py against main (`env`: added to its environment), then stop main and
    echo; the properties of the event the client received."""
    environment = {**clean_env(), "TRACED_SPANS": str(tmp_path / "client.jsonl"), **traced.client_env(), **env}
    done = subprocess.run(
        [sys.executable, str(CLIENT), str(traced.main_port)], env=environment, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert traced.stop() == [0, 0]
    return dict(json.loads(done.stdout.strip().splitlines()[-1])["properties"])


def no_token(spans: list[Span]) -> None:
    """No span carries a token of the policy's, nor any credential: not in an attribute (key or value), nor
    anywhere else of it."""
    for span in spans:
        assert not any("authorization" in key for key in span["attributes"]), span
        text = json.dumps(span)
        assert not any(token in text for token in TOKENS), span


@pytest.mark.parametrize("traced", IDENTITIES, indirect=True, ids=lambda i: i or "plaintext")
def test_one_trace_across_client_main_and_backend(
    traced: Traced, receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    """Through main (proxied and routed calls: forwarded with main's own credentials and, secure, the caller's
    identity), directly, and in events: one trace, whatever identifies the client."""
    properties = run_client(traced, tmp_path)
    client, main = read_jsonl(tmp_path / "client.jsonl"), read_jsonl(tmp_path / "main.jsonl")
    echo = receiver[0].spans  # exported at the latest when echo stopped
    assert {s["service"] for s in echo} == {"echo"}  # OTEL_SERVICE_NAME, read by the SDK from the environment

    work = one(client, name="client-work")
    trace = work["trace"]
    for method in ("echo", "repeat"):
        name = f"EchoService/{method}"
        # Through main: client -> main's SERVER span -> main's CLIENT span (the backend call) -> echo's SERVER span
        called = find(client, name=name, kind="CLIENT", trace=trace, parent=work["span"])
        served = one(main, name=name, kind="SERVER", trace=trace)
        assert served["parent"] in {c["span"] for c in called}
        upstream = one(main, name=name, kind="CLIENT", trace=trace, parent=served["span"])
        backend = one(echo, name=name, kind="SERVER", trace=trace, parent=upstream["span"])
        for span in (*called, served, upstream, backend):
            rpc_attributes(span, "EchoService", method)
            assert span["status"] == "UNSET", span
    # Direct mode (past main): the client's span is the backend span's parent
    echo_calls = find(client, name="EchoService/echo", kind="CLIENT", parent=work["span"])
    through_main = one(main, name="EchoService/echo", kind="SERVER", trace=trace)["parent"]
    (direct,) = [c for c in echo_calls if c["span"] != through_main]
    one(echo, name="EchoService/echo", kind="SERVER", trace=trace, parent=direct["span"])
    # Routed (`route-service`): main forwards a default service's call to echo's own server, the same hop
    name = "RpcServerService/info"
    called = one(client, name=name, kind="CLIENT", trace=trace, parent=work["span"])
    served = one(main, name=name, kind="SERVER", trace=trace, parent=called["span"])
    upstream = one(main, name=name, kind="CLIENT", trace=trace, parent=served["span"])
    backend = one(echo, name=name, kind="SERVER", trace=trace, parent=upstream["span"])
    for span in (called, served, upstream, backend):
        rpc_attributes(span, "RpcServerService", "info")

    # Events: the event sent through main carries main's `send` span; the listener's span links to it
    sent = one(client, name="EventService/send", kind="CLIENT", trace=trace, parent=work["span"])
    send = one(main, name="EventService/send", kind="SERVER", trace=trace, parent=sent["span"])
    rpc_attributes(send, "EventService", "send")
    version, carried_trace, parent, flags = properties["traceparent"].split("-")
    assert (version, carried_trace, parent) == ("00", trace, send["span"])
    assert int(flags, 16) & 1  # sampled
    process = one(client, name="process TRACED", kind="CONSUMER")
    assert process["links"] == [[trace, send["span"]]]
    assert process["parent"] is None  # a trace of its own
    assert process["trace"] != trace
    assert process["attributes"]["messaging.destination.name"] == "TRACED"
    assert not any(token in value for value in properties.values() for token in TOKENS)
    no_token(client + main + echo)


@pytest.mark.parametrize("traced", IDENTITIES, indirect=True, ids=lambda i: i or "plaintext")
def test_an_unsampled_trace_is_followed_and_recorded_nowhere(
    traced: Traced, receiver: tuple[Receiver, int], tmp_path: Path
) -> None:
    """The client samples nothing (`parentbased_always_off`): main and echo, which sample what comes without a
    sampled parent, follow its decision (main passing the caller's context on as it came, with its own
    credentials, proxied or routed): only the readiness call, untraced, is recorded there; the event still
    carries the (unsampled) trace."""
    properties = run_client(traced, tmp_path, OTEL_TRACES_SAMPLER="parentbased_always_off")
    client, main = read_jsonl(tmp_path / "client.jsonl"), read_jsonl(tmp_path / "main.jsonl")
    assert client == []
    _, trace, _, flags = properties["traceparent"].split("-")
    assert not int(flags, 16) & 1  # not sampled
    assert find(main, trace=trace) == []
    assert find(receiver[0].spans, trace=trace) == []
    for spans in (main, receiver[0].spans):  # the readiness call's, a trace of its own
        assert len(find(spans, name="EchoService/echo", kind="SERVER")) == 1
    assert find(receiver[0].spans, name="RpcServerService/info", kind="SERVER") == []  # the routed call's
    assert find(main, name="EventService/send") == []


def test_unconfigured_means_untouched(tmp_path: Path) -> None:
    """No provider set, no OTEL_TRACES_EXPORTER: no call is wrapped and OpenTelemetry is not even imported."""
    code = """
import sys
from pathlib import Path
from grpc_helper import Folders, RpcClient, RpcServer
from grpc_helper.api import Filter, ServerApiVersion
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub

server = RpcServer(0, folders=Folders(workspace=Path(sys.argv[1])), with_debug_signal=False)
try:
    stubs = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}
    with RpcClient("127.0.0.1", server.port, stubs, timeout=10) as client:
        client.srv.info(Filter())
        assert client._tracing is None
    assert server.tracing is None
    loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
    assert not loaded, loaded
finally:
    server.shutdown()
print("untouched")
"""
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip().splitlines()[-1]) == (0, "untouched"), done.stderr


def test_unknown_exporter_stops_the_start(tmp_path: Path) -> None:
    env = {**clean_env(), "OTEL_TRACES_EXPORTER": "nosuch"}
    command = [sys.executable, "-m", "grpc_helper_samples.echo", "-p", "0", "-w", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "error: ERROR_PARAM_INVALID: OTEL_TRACES_EXPORTER: no trace exporter 'nosuch' is installed" in done.stderr
