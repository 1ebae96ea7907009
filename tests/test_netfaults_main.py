"""Network faults (issue 18, item 6): main cut off, or lost and replaced by one with an empty workspace.

Main runs on a host of its own (a network namespace, `netns.Network`); the echo replicas (tests/programs/
tagged_echo.py) run on this host, registered on main at its address with this host's address as main sees it
(the host's `gateway`), where direct-mode clients of this process reach them too. Keepalive settings are the
defaults (2 s + 2 s). About 40 s in all: a cut under load (~20 s), direct streams while cut (~3 s), main replaced
(~6 s), a forget kept (~12 s).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_netfaults import STUBS, TAGGED_ECHO, Load, echo_call, success_rate

from grpc_helper import RpcClient, RpcException
from grpc_helper.api import Endpoint, Filter
from grpc_helper_samples.api import EchoRequest

import netns
from helpers import Program, wait_until

pytestmark = pytest.mark.xdist_group("netns")  # one at a time: their timings are what they assert

DIRECT_FROM = 5.0  # direct calls issued from this long after main's cut succeed (99%)
FAIL_FAST = 6.0  # a call through main, cut off, ends within this (keepalive 2 s + 2 s, and a margin)
REREGISTERED = 10.0  # every replica is registered on a new main within this of its start
FORGOTTEN_FOR = 10.0  # a replica forgotten on purpose stays forgotten at least this long (watched)
REGISTERED = re.compile(r"Registered \['echo'\] on main server")
LOST = re.compile(r"Registered \['echo'\] again on main server")
REFUSED = re.compile(r"Not registering \['echo'\] again on main server .*forgotten on purpose")
UNREACHABLE = re.compile(r"Main server \S+ unreachable")


class MainElsewhere:
    """main on a host of its own, echo replicas (tagged with their names) on this host."""

    def __init__(self, root: Path, net: netns.Network) -> None:
        self.root = root
        self.host = net.host("main")
        self.programs: list[Program] = []
        self.replicas: dict[str, Program] = {}
        self.clients: list[RpcClient] = []
        self.main = self.start_main("main")

    def _start(self, program: Program) -> Program:
        self.programs.append(program)
        program.wait_port()
        return program

    def start_main(self, name: str, port: int = 0) -> Program:
        """A main on main's host, its workspace `root / name` (a new name: an empty workspace), on `port`."""
        wrap = ("ip", "netns", "exec", self.host.namespace)
        args = ["-c", "rpc-client-timeout=5", "-c", "rpc-shutdown-grace=1", "-p", str(port)]  # the last -p wins
        self.main = self._start(Program(name, self.root, *args, module="grpc_helper_samples.main", wrap=wrap))
        return self.main

    def replica(self, name: str) -> Program:
        items = {
            "rpc-main-host": self.host.ip,
            "rpc-main-port": str(self.main.port),
            "rpc-proxy-host": self.host.gateway,  # this host, as main sees it (and direct clients reach it)
            "rpc-shutdown-grace": "1",
        }
        args = [a for k, v in items.items() for a in ("-c", f"{k}={v}")]
        program = self.replicas[name] = Program(name, self.root, *args, module=TAGGED_ECHO, env={"ECHO_TAG": name})
        return self._start(program)

    def client(self, *, direct: bool = False) -> RpcClient:
        """A client of main (direct: of the replicas, routes read from main); one attempt, no deadline."""
        client = RpcClient(self.host.ip, self.main.port, STUBS, timeout=None, name="netfaults-main", direct=direct)
        self.clients.append(client)
        return client

    def registered(self) -> set[int]:
        """The replica ports main shows registered for echo (none if main does not answer)."""
        client = RpcClient(self.host.ip, self.main.port, STUBS, timeout=None, name="netfaults-main")
        try:
            info = client.srv.info(Filter(names=["echo"]), timeout=2)
        except RpcException:  # not up yet, or not answering: nothing registered, as far as we know
            return set()
        finally:
            client.close()
        return {e.port for e in info.items[0].endpoints if e.host == self.host.gateway}

    def ports(self) -> set[int]:
        return {p.port for p in self.replicas.values()}

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.host.is_cut:
            self.host.heal()  # the replicas' forgets at their shutdown reach main: no wait for their timeout
        for program in sorted(self.programs, key=lambda p: p not in self.replicas.values()):  # replicas first
            program.stop()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[MainElsewhere]:
    netns.require()
    with netns.Network() as net:
        t = MainElsewhere(tmp_path, net)
        try:
            for name in ("replica1", "replica2"):
                t.replica(name)
            # Registered as both sides see it: main shows the endpoints, their registration calls have returned
            assert wait_until(lambda: t.registered() == t.ports(), 30)
            assert wait_until(lambda: all(REGISTERED.search(r.output) for r in t.replicas.values()), 10)
            yield t
        finally:
            t.close()


def test_main_cut_off_under_load(topology: MainElsewhere) -> None:
    """Direct-mode calls go on (99% from 5 s after the cut), calls through main fail within the keepalive bound
    (no deadline of their own), and each replica says once that main is unreachable, not at every look."""
    direct = Load(echo_call(topology.client(direct=True))).start()
    through_main = Load(echo_call(topology.client())).start()
    try:
        assert wait_until(lambda: all(any(o.tag for o in load.outcomes) for load in (direct, through_main)), 10)
        cut = time.monotonic()
        topology.host.cut()
        assert wait_until(lambda: time.monotonic() - cut > 15, 20)  # a window of calls while main is cut off
        ended = time.monotonic()
    finally:
        direct.stop()
        through_main.stop()
    after = direct.since(cut + DIRECT_FROM, ended)
    assert success_rate(after) >= 0.99, f"direct: {success_rate(after):.3f} of {len(after)} calls succeeded"
    blocked = through_main.since(cut)
    assert blocked, "no call through main issued after the cut"
    longest = max(o.took for o in blocked)
    assert longest <= FAIL_FAST, f"a call through main issued after the cut took {longest:.1f}s"
    for replica in topology.replicas.values():
        assert len(UNREACHABLE.findall(replica.output)) == 1, replica.output


def test_direct_streams_go_on_with_main_cut_off(topology: MainElsewhere) -> None:
    """Direct mode's streamed calls go straight to the replicas while main is cut off, each as fast as before
    the cut: a client that never asked its main whether it is ours (before its first stream, see
    `RpcClient._learn_server`) does not ask it for a routed stub."""
    client = topology.client(direct=True)
    assert "echo" in client.routes  # read from main before the cut
    topology.host.cut()
    took = []
    for _ in range(5):
        start = time.monotonic()
        assert len(list(client.echo.repeat(EchoRequest(text="s", count=3)))) == 3
        took.append(time.monotonic() - start)
    assert max(took) < 1.0, f"streamed calls to the replicas took {took}"


def test_new_main_with_an_empty_workspace(topology: MainElsewhere) -> None:
    """main killed (-9) and replaced by a new one on the same port with an empty workspace: every replica is
    registered there again within 10 s, without a restart, and says so once."""
    port = topology.main.port
    topology.main.proc.kill()
    topology.main.proc.wait(30)
    topology.start_main("main-new", port)
    started = time.monotonic()
    assert topology.main.port == port
    assert wait_until(lambda: topology.registered() == topology.ports(), REREGISTERED)
    assert time.monotonic() - started <= REREGISTERED
    replicas = topology.replicas.values()
    assert wait_until(lambda: all(LOST.search(r.output) for r in replicas), 5)  # logged just after main answered
    for replica in replicas:
        assert len(LOST.findall(replica.output)) == 1, replica.output


def test_a_deliberate_forget_is_not_undone(topology: MainElsewhere) -> None:
    """An operator's proxy_forget of one replica's endpoint on a live main stays: that replica says once why it
    does not register again, the other stays registered."""
    forgotten, kept = topology.replicas["replica1"], topology.replicas["replica2"]
    endpoint = Endpoint(host=topology.host.gateway, port=forgotten.port)
    topology.client().srv.proxy_forget(Filter(names=["echo"], endpoint=endpoint), timeout=5)
    since = time.monotonic()
    assert wait_until(lambda: REFUSED.search(forgotten.output) is not None, FORGOTTEN_FOR)
    assert not wait_until(lambda: forgotten.port in topology.registered(), FORGOTTEN_FOR - (time.monotonic() - since))
    assert topology.registered() == {kept.port}
    assert len(REFUSED.findall(forgotten.output)) == 1, forgotten.output
    assert not LOST.search(forgotten.output)
