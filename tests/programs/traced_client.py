"""The client process of tests/test_tracing.py: with the tracer provider set by the application (the SDK's,
in-memory), inside one span `client-work`, calls echo through main (unary and a server stream) and directly
(RpcClient's direct mode), calls echo's own `srv.info` routed through main (`route-service`), and sends an
event on main that an `EventsListener` of this process receives. Prints one JSON line (the properties of the
event received), writes its spans to `TRACED_SPANS`.

    TRACED_SPANS=client.jsonl python tests/programs/traced_client.py MAIN_PORT

Plaintext, unless `TRACED_CA` names a CA bundle (PEM): then TLS, with the client certificate and key of
`TRACED_CERT` and `TRACED_KEY`, and the bearer token of `TRACED_TOKEN_FILE`, those that are set.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traced import dump, install

SPANS = install("client")  # before any client is made: tracing is decided when it is

from opentelemetry import trace  # noqa: E402

from grpc_helper import EventsListener, RpcClient  # noqa: E402
from grpc_helper.api import Event, EventApiVersion, Filter, ServerApiVersion  # noqa: E402
from grpc_helper.api.events_pb2_grpc import EventServiceStub  # noqa: E402
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub  # noqa: E402
from grpc_helper.metadata import RpcMetadata  # noqa: E402
from grpc_helper.tls import ClientSecurity  # noqa: E402
from grpc_helper_samples.api import EchoApiVersion, EchoRequest  # noqa: E402
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub  # noqa: E402

WAIT = 30
EVENT = "TRACED"


class Received(EventsListener):
    def __init__(self, client: RpcClient) -> None:
        self.events: list[Event] = []
        self.got = threading.Event()
        super().__init__(client, [EVENT])

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.got.set()


def security() -> ClientSecurity | None:
    """The credentials the `TRACED_*` variables name (see the module doc); None: plaintext."""
    if "TRACED_CA" not in os.environ:
        return None
    files = {"ca": "TRACED_CA", "cert": "TRACED_CERT", "key": "TRACED_KEY", "token_file": "TRACED_TOKEN_FILE"}
    return ClientSecurity.from_files(**{arg: os.environ.get(var) for arg, var in files.items()})


def main(port: int) -> int:
    stubs = {
        "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
        "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    }
    srv = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}
    secure = security()
    client = RpcClient("127.0.0.1", port, stubs, timeout=WAIT, name="traced-client", security=secure)
    direct = RpcClient(
        "127.0.0.1", port, {"echo": stubs["echo"]}, timeout=WAIT, name="traced-direct", security=secure, direct=True
    )
    to_echo = RpcMetadata(client="traced-routed", route_service="echo")  # main forwards to echo's server
    routed = RpcClient("127.0.0.1", port, srv, timeout=WAIT, name=to_echo, security=secure)
    listener = Received(client)
    try:
        assert listener.ready.wait(WAIT), "no listen status"
        assert direct.routes, "no direct route to echo"
        with trace.get_tracer("traced_client").start_as_current_span("client-work"):
            assert client.echo.echo(EchoRequest(text="unary")).text == "unary"
            assert len(list(client.echo.repeat(EchoRequest(text="stream", count=3)))) == 3
            assert direct.echo.echo(EchoRequest(text="direct")).text == "direct"
            items = routed.srv.info(Filter(names=["echo"])).items
            assert [i.is_proxy for i in items] == [False], items  # echo's own answer, not main's
            client.events.send(Event(name=EVENT))
        assert listener.got.wait(WAIT), "the event never came"
    finally:
        listener.interrupt()
        for made in (client, direct, routed):
            made.close()
    received = listener.events[0]
    print(json.dumps({"properties": [[p.name, p.value] for p in received.properties]}), flush=True)
    dump(SPANS, os.environ["TRACED_SPANS"])
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
