"""Network faults (issue 18): peers that vanish without a reset, across hosts of their own.

Each test builds hosts as network namespaces (`netns.Network`) and cuts one off with `iptables -j DROP`:
nothing is reset, packets just vanish, as with a lost node, a frozen VM or a network cut. Processes are the
real programs (main and echo replicas, events listeners); the keepalive settings are the defaults.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import RpcClient, RpcException
from grpc_helper.api import EventApiVersion, Filter, ServerApiVersion
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

import netns
from helpers import LISTENING, Program, clean_env, event, wait_until

pytestmark = pytest.mark.xdist_group("netns")  # one at a time: their timings are what they assert

TAGGED_ECHO = str(Path(__file__).parent / "programs" / "tagged_echo.py")
PLAIN_ECHO = str(Path(__file__).parent / "programs" / "plain_echo.py")
STUBS = {
    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
    "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
}
# The goals, with the default keepalive (2 s + 2 s)
NOTICED = 5.0  # main shows a vanished endpoint not serving within this
LONGEST_CALL = 10.0  # no call issued after the cut waits longer
BACK = 10.0  # a healed replica serves, and gets calls, within this


@pytest.fixture
def network() -> Iterator[netns.Network]:
    netns.require()
    with netns.Network() as net:
        yield net


class Topology:
    """main on this host, echo replicas (tagged with their host's name) on hosts of their own."""

    def __init__(self, root: Path, net: netns.Network) -> None:
        self.root, self.net = root, net
        self.programs: list[Program] = []
        common = ["-c", "rpc-client-timeout=5", "-c", "rpc-shutdown-grace=1"]
        self.main = self._start(Program("main", root, *common))
        self.hosts: dict[str, netns.Host] = {}
        self.clients: list[RpcClient] = []

    def _start(self, program: Program) -> Program:
        self.programs.append(program)
        program.wait_port()
        return program

    def replica(self, name: str) -> Program:
        host = self.hosts[name] = self.net.host(name)
        items = {
            "rpc-main-host": host.gateway,  # this host, as seen from there
            "rpc-main-port": str(self.main.port),
            "rpc-proxy-host": host.ip,  # where main (and direct clients) reach it
            "rpc-shutdown-grace": "1",
        }
        args = [a for k, v in items.items() for a in ("-c", f"{k}={v}")]
        wrap = ("ip", "netns", "exec", host.namespace)
        return self._start(Program(name, self.root, *args, module=TAGGED_ECHO, wrap=wrap, env={"ECHO_TAG": name}))

    def plain_replica(self, name: str) -> int:
        """A plain grpcio echo server (no options, no health service: tests/programs/plain_echo.py) on a host of
        its own, registered on main; returns its port."""
        host = self.hosts[name] = self.net.host(name)
        log = self.root / f"{name}-{time.monotonic_ns()}.log"
        with log.open("w") as stderr:
            command = [sys.executable, PLAIN_ECHO, host.ip, host.gateway, str(self.main.port), host.ip]
            host.popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env())

        def reported() -> re.Match[str] | None:
            return LISTENING.search(log.read_text())

        assert wait_until(lambda: reported() is not None, 30), f"{name}: no port reported:\n{log.read_text()}"
        found = reported()
        assert found is not None
        return int(found.group(1))

    def client(self, *, direct: bool = False) -> RpcClient:
        """A client of main (direct: of the replicas, routes read from main), one attempt and no deadline per
        call: nothing but the fault handling bounds a call."""
        client = RpcClient("127.0.0.1", self.main.port, STUBS, timeout=None, name="netfaults", direct=direct)
        self.clients.append(client)
        return client

    def endpoints(self) -> dict[str, bool]:
        """Main's view (srv.info): replica host ip -> serving."""
        info = self.client().srv.info(Filter(names=["echo"]), timeout=5)
        return {e.host: e.serving for e in info.items[0].endpoints}

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for program in self.programs:
            program.terminate()
        for program in self.programs:
            program.stop()


@pytest.fixture
def topology(tmp_path: Path, network: netns.Network) -> Iterator[Topology]:
    t = Topology(tmp_path, network)
    try:
        yield t
    finally:
        t.close()


@dataclass
class Outcome:
    issued: float  # monotonic
    took: float
    tag: str  # the replica that answered ("" if the call failed)


@dataclass
class Load:
    """Callers calling echo in a loop (bounded in time), each call's outcome recorded."""

    call: Callable[[], bytes]
    threads: int = 4
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self, limit: float = 120) -> Load:
        deadline = time.monotonic() + limit
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, args=(deadline,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline:
            issued = time.monotonic()
            try:
                tag = self.call().decode()
            except RpcException:
                tag = ""
            self.outcomes.append(Outcome(issued, time.monotonic() - issued, tag))
            time.sleep(0.005)  # a steady rate, not a busy loop (pacing, not synchronisation)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
            assert not worker.is_alive(), "a call never returned"

    def since(self, start: float, end: float = float("inf")) -> list[Outcome]:
        return [o for o in self.outcomes if start <= o.issued < end]


def success_rate(outcomes: list[Outcome]) -> float:
    assert outcomes, "no call issued in that window"
    return sum(1 for o in outcomes if o.tag) / len(outcomes)


def first_answer_by(load: Load, tag: str, since: float) -> float | None:
    """When (monotonic) a call issued after `since` was first answered by replica `tag`."""
    times = [o.issued + o.took for o in load.since(since) if o.tag == tag]
    return min(times) if times else None


def echo_call(client: RpcClient) -> Callable[[], bytes]:
    return lambda: client.echo.echo(EchoRequest(text="x")).payload


class TestReplicaBlackHoled:
    def test_under_load_through_main_and_direct(self, topology: Topology) -> None:
        """Two replicas, one black-holed under load, through main and from a direct-mode client: main shows
        it not serving within 5 s, calls issued from 5 s after the cut succeed (99%), none waits over 10 s,
        and once healed it serves and gets calls again within 10 s, both ways."""
        replicas = ["replica1", "replica2"]
        for name in replicas:
            topology.replica(name)
        ip = {name: topology.hosts[name].ip for name in replicas}
        assert wait_until(lambda: topology.endpoints() == {ip[n]: True for n in replicas}, 30)
        through_main = Load(echo_call(topology.client())).start()
        direct = Load(echo_call(topology.client(direct=True))).start()
        try:
            assert wait_until(lambda: {o.tag for o in direct.outcomes} >= set(replicas), 10)  # both, direct too
            cut = time.monotonic()
            topology.hosts["replica1"].cut()
            assert wait_until(lambda: not topology.endpoints()[ip["replica1"]], NOTICED + 1)
            noticed = time.monotonic() - cut
            assert wait_until(lambda: time.monotonic() - cut > 12, 15)  # a window of calls after the cut
            healed = time.monotonic()
            topology.hosts["replica1"].heal()
            assert wait_until(lambda: topology.endpoints()[ip["replica1"]], BACK)
            for load in (through_main, direct):
                assert wait_until(lambda: first_answer_by(load, "replica1", healed) is not None, BACK)  # noqa: B023
        finally:
            through_main.stop()
            direct.stop()
        assert noticed <= NOTICED, f"main showed the cut endpoint serving for {noticed:.1f}s"
        for name, load in (("through main", through_main), ("direct", direct)):
            after, back = load.since(cut + 5, healed), first_answer_by(load, "replica1", healed)
            longest, failed = max(o.took for o in load.since(cut)), sum(1 for o in load.since(cut) if not o.tag)
            print(  # the README's measured figures (pytest -s)
                f"{name}: noticed {noticed:.1f}s, longest call after the cut {longest:.1f}s, {success_rate(after):.4f}"
                f" of {len(after)} OK from +5s, {failed} failed, back {(back or healed) - healed:.1f}s after heal"
            )
        for name, load in (("through main", through_main), ("direct", direct)):
            after = load.since(cut + 5, healed)
            assert success_rate(after) >= 0.99, f"{name}: {success_rate(after):.3f} of {len(after)} calls succeeded"
            longest = max(o.took for o in load.since(cut))
            assert longest <= LONGEST_CALL, f"{name}: a call issued after the cut took {longest:.1f}s"
            back = first_answer_by(load, "replica1", healed)
            assert back is not None
            assert back - healed <= BACK, f"{name}: replica1 answered again {back - healed:.1f}s after the heal"

    def test_a_single_replica_makes_the_service_not_serving(self, topology: Topology) -> None:
        topology.replica("replica1")
        with grpc.insecure_channel(f"127.0.0.1:{topology.main.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                request = health_pb2.HealthCheckRequest(service="EchoService")
                return health.Check(request, timeout=5).status  # type: ignore[no-any-return]

            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, 30)
            cut = time.monotonic()
            topology.hosts["replica1"].cut()
            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, NOTICED + 1)
            print(f"single replica: NOT_SERVING {time.monotonic() - cut:.1f}s after the cut")
            assert time.monotonic() - cut <= NOTICED
            topology.hosts["replica1"].heal()
            assert wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, BACK)


class Lines:
    """A process's output lines, each with the time it was read (a reader thread per stream)."""

    def __init__(self, *streams: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._readers = [threading.Thread(target=self._read, args=(s,), daemon=True) for s in streams]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, fragment: str, since: float = 0) -> float | None:
        """When a line holding `fragment` was first read after `since`."""
        return next((t for t, line in self.lines if t >= since and fragment in line), None)


class TestListenerCutOff:
    def test_a_listener_cut_off_for_30s_resumes_its_queue(self, topology: Topology) -> None:
        """The listener (the CLI's `events listen`, on a host of its own) notices within 10 s and reconnects
        with backoff; main ends its stream within 30 s and retains its queue; healed, it resumes the queue
        and gets every event sent meanwhile, the last one within 15 s of the heal."""
        host = topology.net.host("listener")
        listen = [str(Path(sys.executable).parent / "grpc-helper"), "--host", host.gateway]
        listen += ["--port", str(topology.main.port), "events", "listen", "TICK"]
        process = host.popen(listen, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
        assert process.stdout is not None
        assert process.stderr is not None
        output = Lines(process.stdout, process.stderr)
        sender = topology.client()
        sent: list[tuple[float, int]] = []

        def send(count: int, period: float = 0.5) -> None:
            for _ in range(count):  # bounded: `count` events, one every `period` seconds
                n = len(sent)
                sender.events.send(event("TICK", n=str(n)), timeout=5)
                sent.append((time.monotonic(), n))
                time.sleep(period)  # the sender's pace

        assert wait_until(lambda: output.first("listening with client id") is not None, 30)
        send(4)
        assert wait_until(lambda: output.first("TICK n=3") is not None, 10)
        cut = time.monotonic()
        host.cut()
        send(60)  # 30 s of events while the listener is cut off
        healed = time.monotonic()
        host.heal()
        noticed = output.first("reconnecting", cut)
        retained = main_saw_listener_leave(topology.main)
        assert wait_until(lambda: all(output.first(f"TICK n={n}", 0) for _, n in sent), 20), missing(output, sent)
        last = max(output.first(f"TICK n={n}") or 0 for _, n in sent)
        process.terminate()
        process.wait(30)
        print(
            f"listener: noticed {(noticed or 0) - cut:.1f}s, main retained {(retained or 0) - cut:.1f}s after the cut,"
            f" last event {last - healed:.1f}s after the heal"
        )
        assert noticed is not None, "the listener never noticed"
        assert noticed - cut <= 10, f"the listener noticed {noticed - cut:.1f}s after the cut"
        assert output.first("resumed event queue", healed) is not None  # its queue, not a new one
        assert retained is not None, "main never saw the listener's stream end"
        assert retained - cut <= 30, f"main saw the stream end {retained - cut:.1f}s after the cut"
        assert last - healed <= 15, f"the last event arrived {last - healed:.1f}s after the heal"
        received = [line for _, line in output.lines if line.startswith("TICK ")]
        assert len(received) == len(set(received)) == len(sent)  # each once: what was sent again is skipped


def main_saw_listener_leave(main: Program) -> float | None:
    """When main logged the listener's stream ending (and its queue retained): read from its log's stamps."""
    for line in main.output.splitlines():
        if "retained: its listener went away" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            return time.monotonic() - (time.time() - stamp)
    return None


def missing(output: Lines, sent: list[tuple[float, int]]) -> str:
    return f"events never received: {[n for _, n in sent if output.first(f'TICK n={n}') is None]}"


class TestReplicaFrozen:
    def test_a_stopped_replica_under_load(self, topology: Topology) -> None:
        """Two replicas, one frozen under load through main (SIGSTOP: its kernel still acknowledges every
        packet, so only an HTTP/2 ping that goes unanswered can tell, as with `docker pause`): main shows it not
        serving within 5 s, calls issued from 5 s after the freeze succeed (99%), none waits over 10 s, and once
        resumed (SIGCONT) it serves and gets calls again within 10 s."""
        replicas = {name: topology.replica(name) for name in ("replica1", "replica2")}
        ip = {name: topology.hosts[name].ip for name in replicas}
        assert wait_until(lambda: topology.endpoints() == {ip[n]: True for n in replicas}, 30)
        load = Load(echo_call(topology.client())).start()
        frozen = replicas["replica1"].proc
        try:
            assert wait_until(lambda: {o.tag for o in load.outcomes} >= set(replicas), 10)
            stopped = time.monotonic()
            frozen.send_signal(signal.SIGSTOP)
            try:
                assert wait_until(lambda: not topology.endpoints()[ip["replica1"]], NOTICED + 1)
                noticed = time.monotonic() - stopped
                assert wait_until(lambda: any(o.issued > stopped + 12 for o in load.outcomes), 20)  # a window
            finally:
                frozen.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            assert wait_until(lambda: topology.endpoints()[ip["replica1"]], BACK)
            assert wait_until(lambda: first_answer_by(load, "replica1", resumed) is not None, BACK)
        finally:
            load.stop()
        assert noticed <= NOTICED, f"main showed the frozen endpoint serving for {noticed:.1f}s"
        after = load.since(stopped + 5, resumed)
        assert success_rate(after) >= 0.99, f"{success_rate(after):.3f} of {len(after)} calls succeeded"
        longest = max(o.took for o in load.since(stopped))
        assert longest <= LONGEST_CALL, f"a call issued after the freeze took {longest:.1f}s"
        back = first_answer_by(load, "replica1", resumed)
        assert back is not None
        assert back - resumed <= BACK, f"replica1 answered again {back - resumed:.1f}s after SIGCONT"


class TestForeignBackendBlackHoled:
    def test_a_plain_grpcio_backend_is_noticed(self, topology: Topology) -> None:
        """A plain grpcio backend (gRPC's default keepalive enforcement, no health service: main's probes get
        UNIMPLEMENTED, which counts as reached), black-holed while idle: main shows it not serving within 5 s,
        and serving again within 10 s of the heal."""
        topology.plain_replica("plain")
        ip = topology.hosts["plain"].ip
        client = topology.client()
        assert client.echo.echo(EchoRequest(text="x")).payload == b"grpcio"  # reached through main
        assert wait_until(lambda: topology.endpoints() == {ip: True}, 30)
        cut = time.monotonic()
        topology.hosts["plain"].cut()
        assert wait_until(lambda: not topology.endpoints()[ip], NOTICED + 1)
        noticed = time.monotonic() - cut
        assert noticed <= NOTICED, f"main showed the cut endpoint serving for {noticed:.1f}s"
        healed = time.monotonic()
        topology.hosts["plain"].heal()
        assert wait_until(lambda: topology.endpoints()[ip], BACK)
        assert time.monotonic() - healed <= BACK
        assert client.echo.echo(EchoRequest(text="x")).payload == b"grpcio"
