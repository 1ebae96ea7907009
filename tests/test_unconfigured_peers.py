"""Servers we don't configure behind our main (issue 18, item 3): never a `too_many_pings` GOAWAY.

A grpc-helper 2.3.1 echo backend (.venv-2x, as tests/test_compat_2x.py runs it) and a plain grpcio one
(tests/programs/plain_echo.py: `grpc.server(ThreadPoolExecutor())`, no options, so gRPC's default
enforcement: a ping without data at most every 5 minutes, 2 strikes) are both replicas of echo on our main
(a process), through a minute idle then a minute under load. Main's channels to them are `Peer.ANY` ones
(grpc_helper/options.py): what this checks is that they never earn a GOAWAY.

The detector: gRPC logs a `too_many_pings` GOAWAY it receives at ERROR on the receiving process's stderr
("Received a GOAWAY with error code ENHANCE_YOUR_CALM and debug data equal to "too_many_pings""); main runs
with `GRPC_VERBOSITY=ERROR` and its stderr is searched. `test_the_detector_sees_a_goaway` is its negative
control: a client pinging every second gets one from the plain server, and the same search finds it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from test_compat_2x import Gen, Procs, gens, procs, samples_2x, venv_2x  # noqa: F401 - fixtures, used by name
from test_netfaults import Load, success_rate

from grpc_helper import RpcClient
from grpc_helper.api import Event, EventApiVersion, EventProperty, Filter, ServerApiVersion
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import LISTENING, Program, clean_env, silent_chat, wait_until

pytestmark = pytest.mark.compat2x  # needs .venv-2x (deselect with -m "not compat2x")

PROGRAMS = Path(__file__).parent / "programs"
DETECT_ENV = {"GRPC_VERBOSITY": "ERROR"}  # enough for gRPC's line about a too_many_pings GOAWAY
MARKER = "too_many_pings"
IDLE = 60.0  # seconds of each phase: a default server strikes a ping without data under 5 minutes apart
LOADED = 60.0
PLAIN_TAG, TAG_2X = "grpcio", "2x"  # the payloads answered by each replica (2.x's echoes the request's)
STUBS = {
    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
    "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
}


class Process:
    """A program of tests/programs in a process of its own, stderr in a file, killed at `stop`."""

    def __init__(self, folder: Path, script: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.log = folder / f"{script}-{time.monotonic_ns()}.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROGRAMS / script), *args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**clean_env(), **(env or {})},
            )

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_port(self) -> int:
        """The port it reported listening on (bounded wait)."""
        assert wait_until(lambda: LISTENING.search(self.output) is not None or self.proc.poll() is not None, 30)
        found = LISTENING.search(self.output)
        assert found, f"ended (exit code {self.proc.poll()}) without listening:\n{self.output}"
        return int(found.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test starts (append them): all stopped at teardown."""
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


def goaways(output: str) -> int:
    """How many too_many_pings GOAWAYs gRPC reported in a process's stderr."""
    return output.count(MARKER)


def test_the_detector_sees_a_goaway(tmp_path: Path, processes: list[Process]) -> None:
    """Negative control: a client pinging every second, idle, gets a too_many_pings GOAWAY from the plain
    grpcio server within a few seconds (its third ping), and `goaways` finds it in that client's stderr."""
    plain = Process(tmp_path, "plain_echo.py", "127.0.0.1")
    processes.append(plain)
    port = plain.wait_port()
    flood = Process(tmp_path, "ping_flood.py", f"127.0.0.1:{port}", "30", env=DETECT_ENV)
    processes.append(flood)
    assert wait_until(lambda: goaways(flood.output) > 0, 20), f"no GOAWAY detected:\n{flood.output}"


def test_no_goaway_from_2x_or_plain_grpcio_backends(
    gens: dict[str, Gen],  # noqa: F811 - the fixture
    procs: Procs,  # noqa: F811 - the fixture
    processes: list[Process],
    tmp_path: Path,
) -> None:
    """A 2.x and a plain grpcio echo replica behind our main: a minute idle, then a minute under load through
    main (unary calls, 4 callers, one attempt each): main never receives a too_many_pings GOAWAY, every call
    succeeds, both replicas answer, and main shows both serving throughout (its probes reach both)."""
    main = Program("main", tmp_path, "-c", "rpc-client-timeout=5", "-c", "rpc-shutdown-grace=1", env=DETECT_ENV)
    main.wait_port()
    try:
        _, port_2x = procs.server(
            gens["2x"], "echo", "echo-2x", tmp_path / "echo-2x", **{"rpc-main-port": str(main.port)}
        )
        plain = Process(tmp_path, "plain_echo.py", "127.0.0.1", "127.0.0.1", str(main.port), "127.0.0.1")
        processes.append(plain)
        port_plain = plain.wait_port()
        client = RpcClient("127.0.0.1", main.port, STUBS, timeout=None, name="foreign-peers")
        try:

            def endpoints() -> dict[int, bool]:
                info = client.srv.info(Filter(names=["echo"]), timeout=5)
                return {e.port: e.serving for e in info.items[0].endpoints}

            both_serving = {port_2x: True, port_plain: True}
            assert wait_until(lambda: endpoints() == both_serving, 30), endpoints()

            # Idle: nothing but main's own traffic (its probes, gRPC's health checking) on its channels to them
            assert not wait_until(lambda: goaways(main.output) > 0, IDLE), f"GOAWAY while idle:\n{main.output}"
            assert endpoints() == both_serving

            def call() -> bytes:
                return client.echo.echo(EchoRequest(text="x", payload=TAG_2X.encode())).payload  # type: ignore[no-any-return]

            load = Load(call).start(limit=LOADED + 30)
            try:
                loaded = wait_until(lambda: goaways(main.output) > 0, LOADED)
            finally:
                load.stop()
            assert not loaded, f"GOAWAY under load:\n{main.output}"
            assert endpoints() == both_serving
        finally:
            client.close()
    finally:
        main.stop()
    assert goaways(main.output) == 0, main.output
    rate = success_rate(load.outcomes)
    assert rate == 1.0, f"{rate:.4f} of {len(load.outcomes)} calls succeeded"
    answered = {tag: sum(1 for o in load.outcomes if o.tag == tag) for tag in (PLAIN_TAG, TAG_2X)}
    assert min(answered.values()) >= len(load.outcomes) // 4, f"round robin over both replicas: {answered}"


def test_our_client_keeps_a_silent_call_to_a_plain_server(tmp_path: Path, processes: list[Process]) -> None:
    """A bidirectional stream from our RpcClient to a plain grpcio server, silent for 12 s after its first
    exchange, then closed by the client: it ends normally, every message answered."""
    plain = Process(tmp_path, "plain_echo.py", "127.0.0.1")
    processes.append(plain)
    port = plain.wait_port()
    stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
    with RpcClient("127.0.0.1", port, stubs, timeout=None, name="silent") as client:
        assert silent_chat(client) == ["FIRST", "LAST"]


def test_our_listener_keeps_its_silent_stream_on_a_2x_server(
    gens: dict[str, Gen],  # noqa: F811 - the fixture
    procs: Procs,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """Our EventsListener (its own process, gRPC's GOAWAY report on stderr) on a 2.x server that sends nothing
    for longer than a default server tolerates pings without data (~8 s at one every 2 s): no GOAWAY, and the
    stream it opened first still gets the next event. (With pings throughout, as to our servers, the 2.x server
    ended the connection after about 8 s and the listener reconnected.)"""
    _, port = procs.server(gens["2x"], "server", "server-2x", tmp_path / "wks")
    ours = gens["ours"]
    listener = procs.start(replace(ours, env={**ours.env, **DETECT_ENV}), "listen", str(port), label="listener")
    client_id = listener.wait_line(lambda line: "ready" in line, 30, "listener ready")["ready"]
    # The silence: 12 s of nothing sent either way but pings (2.x sends its keep-alive events every 60 s)
    assert not wait_until(lambda: goaways(listener.stderr_path.read_text(errors="replace")) > 0, 12)
    with RpcClient("127.0.0.1", port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)}) as client:
        client.events.send(Event(name="COMPAT", properties=[EventProperty(name="step", value="after-silence")]))
    got = listener.wait_line(lambda line: line.get("props", {}).get("step") == "after-silence", 20, "the event")
    assert got["client_id"] == client_id
    stderr = listener.stderr_path.read_text(errors="replace")
    assert goaways(stderr) == 0, stderr
    assert "reconnecting" not in stderr, stderr  # the first stream throughout
