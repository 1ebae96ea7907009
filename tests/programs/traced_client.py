"""The client process of tests/test_tracing.py: with the tracer provider set by the application (the SDK's,
in-memory), inside one span `client-work`, calls echo through main (unary and a server stream) and directly
(RpcClient's direct mode), and sends an event on main that an `EventsListener` of this process receives.
Prints one JSON line (the properties of the event received), writes its spans to `TRACED_SPANS`.

    TRACED_SPANS=client.jsonl python tests/programs/traced_client.py MAIN_PORT
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
from grpc_helper.api import Event, EventApiVersion  # noqa: E402
from grpc_helper.api.events_pb2_grpc import EventServiceStub  # noqa: E402
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


def main(port: int) -> int:
    stubs = {
        "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
        "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    }
    client = RpcClient("127.0.0.1", port, stubs, timeout=WAIT, name="traced-client")
    direct = RpcClient("127.0.0.1", port, {"echo": stubs["echo"]}, timeout=WAIT, name="traced-direct", direct=True)
    listener = Received(client)
    try:
        assert listener.ready.wait(WAIT), "no listen status"
        assert direct.routes, "no direct route to echo"
        with trace.get_tracer("traced_client").start_as_current_span("client-work"):
            assert client.echo.echo(EchoRequest(text="unary")).text == "unary"
            assert len(list(client.echo.repeat(EchoRequest(text="stream", count=3)))) == 3
            assert direct.echo.echo(EchoRequest(text="direct")).text == "direct"
            client.events.send(Event(name=EVENT))
        assert listener.got.wait(WAIT), "the event never came"
    finally:
        listener.interrupt()
        client.close()
        direct.close()
    received = listener.events[0]
    print(json.dumps({"properties": [[p.name, p.value] for p in received.properties]}), flush=True)
    dump(SPANS, os.environ["TRACED_SPANS"])
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
