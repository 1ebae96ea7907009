"""The kill -9 campaign (issue 11): a real server process killed at random moments while clients write to it.

Each round, concurrent writers run against the server (`tests/programs/kill9_server.py`) for a random 0.1-1.0 s:
`config.set` of its user item, `log.set` of a logger, `srv.proxy_register` of the echo service (at one of three
live backends, a new version each time), `events.listen` opening queues (each kept open) and `events.send`. Every
acknowledged write is recorded. Then the process gets SIGKILL, and:

- every workspace file parses (`config.json`, `loggers.json`, `proxy.json`, `queues.json`, `queues-filters.json`),
  and every line of the event queue journals but a torn last one (issue 20);
- the next start succeeds, and removes the leftovers of interrupted atomic writes (issue 18; one is planted each
  round, so the check never passes for want of a leftover);
- through the services of the restarted server, the last acknowledged write of each kind is there (or the one in
  flight at the kill, which may have landed), and `events.inspect` lists every queue id whose first status was
  received (issue 17);
- no write failed before the kill.

The restarted process is the next round's server. The seed is printed, and quoted in the failure:
`KILL9_SEED=<seed>` replays the same round durations.
"""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from grpc_helper import RpcClient, RpcException, RpcTransportError
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItemUpdate,
    ConfigUpdate,
    Empty,
    Event,
    EventApiVersion,
    EventFilter,
    EventProperty,
    Filter,
    LoggerApiVersion,
    LoggerConfig,
    LoggerLevel,
    LoggerUpdate,
    ProxyRegisterRequest,
    ServerApiVersion,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.testing import TemporaryFolders

from helpers import Servers, echo_descriptor

PROGRAM = Path(__file__).parent / "programs" / "kill9_server.py"
ROUNDS = 20
START_BOUND = 30.0  # seconds for a start to report its port
CALL_TIMEOUT = 5.0  # seconds per call of a writer or a check
PACE = 0.1  # seconds between two listens, and two sends: queues and their events stay few over the campaign
WORKSPACE_FILES = ("config.json", "loggers.json", "proxy.json", "queues.json", "queues-filters.json")
ITEM = "kill9-value"  # the program's user item
LOGGER = "kill9.writer"
LEVELS = (LoggerLevel.LVL_DEBUG, LoggerLevel.LVL_INFO, LoggerLevel.LVL_WARNING, LoggerLevel.LVL_ERROR)
EVENT = "KILL9"
STUBS: dict[str, tuple[type[Any], int | None]] = {
    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
    "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
    "log": (LoggerServiceStub, LoggerApiVersion.LOGGER_API_CURRENT),
    "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
}


# --- the server process ---


class Launcher:
    """Starts the program on the campaign's folders; every process it started is killed by `kill_all`."""

    def __init__(self, root: Path) -> None:
        self.folders = TemporaryFolders(root / "folders")
        self.logs = root / "stderr"
        self.logs.mkdir()
        self.processes: list[subprocess.Popen[str]] = []
        # No environment layer: only the command line configures the program
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RPC_")}

    @property
    def workspace(self) -> Path:
        wks = self.folders.workspace
        assert wks is not None
        return wks

    def start(self) -> tuple[subprocess.Popen[str], int]:
        """A new process, once it reported its port (within START_BOUND): (process, port)."""
        folders = self.folders
        stderr = self.logs / f"start-{len(self.processes)}.txt"
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [
                    *(sys.executable, str(PROGRAM), "-p", "0"),
                    *("-w", str(folders.workspace), "--system", str(folders.system), "--user", str(folders.user)),
                ],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=self.env,
            )
        self.processes.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], START_BOUND)
        line = proc.stdout.readline() if ready else ""
        if not line.strip().isdigit():
            proc.kill()
            proc.wait()
            raise AssertionError(f"start failed (exit code {proc.returncode}): {stderr.read_text()[-3000:]}")
        return proc, int(line)

    def kill_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.kill_all()  # whatever happened: no orphan


def client(port: int, timeout: float | None) -> RpcClient:
    """A client of the default services; `timeout` None: one attempt per call (a writer stops at the kill)."""
    return RpcClient("127.0.0.1", port, STUBS, timeout=timeout, name="kill9")


# --- writers ---


@dataclass
class Writer:
    """Calls `write(i)` for i = 0, 1, ... until `stop` or a call that fails in gRPC (the kill).

    `acked` holds (i, what `write` returned) for every acknowledged write; `in_flight` the i of the write sent but
    neither acknowledged nor refused when the writer stopped; `refused` the errors of writes the server answered
    with an error (updates are atomic: nothing of them applied), after which the writer goes on.
    """

    kind: str
    write: Callable[[int], Any]
    pace: float = 0.0
    acked: list[tuple[int, Any]] = field(default_factory=list)
    in_flight: int | None = None
    refused: list[RpcException] = field(default_factory=list)
    failed_at: float | None = None  # when the call that stopped the writer failed
    error: BaseException | None = None

    def run(self, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            self.in_flight = i
            try:
                result = self.write(i)
            except RpcTransportError as exc:  # the kill, or a failure before it (checked against the time of the kill)
                self.failed_at, self.error = time.monotonic(), exc
                return
            except RpcException as exc:
                self.refused.append(exc)
            except Exception as exc:  # e.g. a stream that ends without its first status
                self.failed_at, self.error = 0.0, exc  # before the kill, whatever the time
                return
            else:
                self.acked.append((i, result))
            self.in_flight = None
            i += 1
            if self.pace:
                stop.wait(self.pace)  # a paced writer: a rate, not a wait for anything

    def last(self) -> int | None:
        return self.acked[-1][0] if self.acked else None


def allowed(writer: Writer, value: Callable[[int], Any], previous: Any) -> set[Any]:
    """What the state may be after the kill: the last acknowledged write (else the state before the round), or the
    write in flight, which may have landed unacknowledged."""
    last = writer.last()
    out = {previous if last is None else value(last)}
    if writer.in_flight is not None:
        out.add(value(writer.in_flight))
    return out


# --- the campaign ---


@dataclass
class Campaign:
    """The rounds, what they found wrong (`problems`), and the state the services showed after the last restart."""

    seed: int
    launcher: Launcher
    backends: list[int]
    rng: random.Random
    problems: list[str] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    # What the services answered after the previous restart
    value: str = "initial"
    level: int = LoggerLevel.LVL_UNKNOWN
    registration: tuple[str, int] = ("", 0)

    def config_value(self, rnd: int, i: int) -> str:
        return f"r{rnd}-{i}"

    def registration_of(self, rnd: int, i: int) -> tuple[str, int]:
        return f"kill9-r{rnd}-{i}", self.backends[i % len(self.backends)]

    def round(self, rnd: int, proc: subprocess.Popen[str], port: int) -> tuple[subprocess.Popen[str], int]:
        """Write, kill, check the files, restart, check the services; the restarted (process, port)."""
        duration = self.rng.uniform(0.1, 1.0)
        writers, streams = self.write_until_killed(rnd, proc, port, duration)
        wks = self.launcher.workspace
        for name in WORKSPACE_FILES:
            path = wks / name
            if path.exists():
                try:
                    json.loads(path.read_text())
                except ValueError as exc:
                    self.problems.append(f"round {rnd}: {name} unreadable after the kill: {exc}")
        for journal in wks.glob("queues-journal-*.jsonl"):  # issue 20: every line parses, but a torn last one
            lines = journal.read_bytes().split(b"\n")
            for n, line in enumerate(lines[:-1]):
                try:
                    json.loads(line)
                except ValueError as exc:
                    self.problems.append(f"round {rnd}: {journal.name} line {n + 1} unreadable after the kill: {exc}")
        leftovers = set(wks.glob(".*.tmp"))
        planted = wks / f".config.json.planted{rnd}.tmp"
        planted.write_text('{"kill9-va')  # what an interrupted write leaves
        proc, port = self.launcher.start()
        remaining = sorted(p.name for p in leftovers | {planted} if p.exists())
        if remaining:
            self.problems.append(
                f"round {rnd}: {len(remaining)} leftover temp file(s) not removed at start: {remaining}"
            )
        try:
            self.check_services(rnd, port, writers)
        except RpcException as exc:  # the restarted server answers, but not this: say so, and go on
            self.problems.append(f"round {rnd}: checking the services after the restart failed: {exc!r}")
        for stream in streams:
            stream.cancel()
        return proc, port

    def write_until_killed(
        self, rnd: int, proc: subprocess.Popen[str], port: int, duration: float
    ) -> tuple[dict[str, Writer], list[Any]]:
        c = client(port, None)
        streams: list[Any] = []

        def listen(_: int) -> int:
            stream = c.events.listen(EventFilter(names=[EVENT]), timeout=CALL_TIMEOUT * 4)
            streams.append(stream)  # kept open: a live listener at the kill
            return int(next(stream).client_id)

        def register(i: int) -> None:
            version, backend = self.registration_of(rnd, i)
            request = ProxyRegisterRequest(names=["echo"], version=version, host="127.0.0.1", port=backend)
            c.srv.proxy_register(request, timeout=CALL_TIMEOUT)

        writers = {
            w.kind: w
            for w in (
                Writer("config", lambda i: c.config.set(update(ITEM, self.config_value(rnd, i)), timeout=CALL_TIMEOUT)),
                Writer(
                    "log", lambda i: c.log.set(logger_update(LOGGER, LEVELS[i % len(LEVELS)]), timeout=CALL_TIMEOUT)
                ),
                Writer("registration", register),
                Writer("listen", listen, PACE),
                Writer("send", lambda i: c.events.send(event(EVENT, i=str(i)), timeout=CALL_TIMEOUT), PACE),
            )
        }
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop,), name=f"kill9-{w.kind}") for w in writers.values()]
        for thread in threads:
            thread.start()
        try:
            time.sleep(duration)  # the random moment of the kill: what the campaign is about, not a wait for something
            killed_at = time.monotonic()
            proc.kill()
            proc.wait(CALL_TIMEOUT)
        finally:
            stop.set()
            for thread in threads:
                thread.join(CALL_TIMEOUT * 5)
            c.close()
        for w in writers.values():
            self.totals[w.kind] = self.totals.get(w.kind, 0) + len(w.acked)
            if w.failed_at is not None and w.failed_at < killed_at:
                self.problems.append(f"round {rnd}: a {w.kind} call failed before the kill: {w.error!r}")
            if w.refused:
                self.problems.append(f"round {rnd}: {len(w.refused)} {w.kind} write(s) refused, e.g. {w.refused[0]!r}")
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.problems.append(f"round {rnd}: writers still blocked after the kill: {stuck}")
        return writers, streams

    def check_services(self, rnd: int, port: int, writers: dict[str, Writer]) -> None:
        """The acknowledged writes of the round, as the restarted server's services answer them."""
        with client(port, CALL_TIMEOUT) as c:
            value = c.config.get(Filter(names=[ITEM]), timeout=CALL_TIMEOUT).items[0].value
            expected: set[Any] = allowed(writers["config"], lambda i: self.config_value(rnd, i), self.value)
            if value not in expected:
                self.problems.append(f"round {rnd}: config value {value!r}, acknowledged {sorted(expected)}")
            level = c.log.get(Filter(names=[LOGGER]), timeout=CALL_TIMEOUT).items[0].level
            expected = allowed(writers["log"], lambda i: LEVELS[i % len(LEVELS)], self.level)
            if level not in expected:
                self.problems.append(f"round {rnd}: logger level {level}, acknowledged {sorted(expected)}")
            info = c.srv.info(Filter(names=["echo"]), timeout=CALL_TIMEOUT).items[0]
            registration = (info.version, info.proxy_port) if info.proxy_port else ("", 0)
            expected = allowed(writers["registration"], lambda i: self.registration_of(rnd, i), self.registration)
            if registration not in expected:
                self.problems.append(f"round {rnd}: registration {registration}, acknowledged {sorted(expected)}")
            ids = set(c.events.inspect(Empty(), timeout=CALL_TIMEOUT).client_ids)
            lost = sorted({cid for _, cid in writers["listen"].acked} - ids)
            if lost:
                self.problems.append(f"round {rnd}: acknowledged queue ids missing after the restart: {lost}")
        self.value, self.level, self.registration = value, level, registration


def update(name: str, value: str) -> ConfigUpdate:
    return ConfigUpdate(items=[ConfigItemUpdate(name=name, value=value)])


def logger_update(name: str, level: int) -> LoggerUpdate:
    return LoggerUpdate(items=[LoggerConfig(name=name, enabled=True, level=level)])  # type: ignore[arg-type]


def event(name: str, **properties: str) -> Event:
    return Event(name=name, properties=[EventProperty(name=k, value=v) for k, v in properties.items()])


def test_kill9_campaign(launcher: Launcher, servers: Servers) -> None:
    seed = int(os.environ.get("KILL9_SEED") or random.randrange(2**32))
    print(f"kill -9 campaign: seed {seed} (replay with KILL9_SEED={seed})")
    # Live echo backends: a registration always points at a server that answers (main's config service calls it)
    backends = [servers(0, [echo_descriptor()]).port for _ in range(3)]
    campaign = Campaign(seed, launcher, backends, random.Random(seed))
    started = time.monotonic()
    proc, port = launcher.start()
    for rnd in range(ROUNDS):
        proc, port = campaign.round(rnd, proc, port)
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} rounds in {elapsed:.1f}s; acknowledged writes: {campaign.totals}")
    assert not campaign.problems, f"seed {seed}: {len(campaign.problems)} problem(s) in {ROUNDS} rounds:\n" + "\n".join(
        campaign.problems
    )
    # Not vacuous: every kind of write was acknowledged, several times
    assert all(campaign.totals.get(kind, 0) >= ROUNDS for kind in ("config", "log", "registration")), campaign.totals
    assert campaign.totals.get("listen", 0) > 0, campaign.totals
    assert campaign.totals.get("send", 0) > 0, campaign.totals


def test_leftovers_of_interrupted_writes_are_removed_on_read(tmp_path: Path) -> None:
    """Issue 18, in one process: reading a persisted file removes its own temp leftovers, not other files."""
    from grpc_helper.persist import read_json, write_json

    write_json(tmp_path / "config.json", {"a": "1"})
    leftovers = [tmp_path / ".config.json.abc123.tmp", tmp_path / ".config.json.x.y.tmp"]
    kept = [tmp_path / ".proxy.json.abc123.tmp", tmp_path / "config.json.tmp", tmp_path / ".config.jsonX.1.tmp"]
    for path in leftovers + kept:
        path.write_text('{"partial')
    assert read_json(tmp_path / "config.json") == {"a": "1"}
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)
    assert read_json(tmp_path / "missing.json", "default") == "default"  # a missing file: nothing to clean, no error
