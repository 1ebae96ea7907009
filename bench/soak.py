"""The events soak of issue 20: listeners come and go for a long time, and main must stay healthy.

    python bench/soak.py [--duration 1800] [--interval 30] [--png soak.png] [--json soak.json]

Main and echo are the sample programs (`grpc_helper_samples.main` and `.echo`), real processes with their own
workspace; the clients are other processes: two unary callers (an echo call through main every 10 ms each),
a stream caller (50-message repeats), an event sender (~11 events/s, each carrying its send time) and the
listener churn (a new `EventsListener` every 0.5 s, each interrupted after 10 s: ~20 live, the interrupted
queues retained for `rpc-event-retain-timeout`, 300 s). Every `--interval` seconds a row: main's RSS,
threads and fds, the size of queues.json and its journals, unary calls/s through main, the p99/max
send-to-receive latency of live listeners, and the slowest first status of a new listen. At the end, a PNG
plot (matplotlib). `run` is what tests/test_soak.py calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stats import percentile_ms

EVENT = "SOAK"
UNARY_PERIOD = 0.01  # seconds between two calls of a unary caller
SEND_RATE = 11.0  # events/s
LISTENER_EVERY = 0.5  # seconds between two new listeners
LISTENER_LIFE = 10.0  # seconds a listener lives before its interrupt
START_BOUND = 60.0


@dataclass
class Row:
    """One interval of the soak, measured at its end."""

    t: float  # seconds since the start
    rss_mb: float
    threads: int
    fds: int
    queues_json_kb: float
    journal_kb: float
    unary_per_s: float
    delivered: int
    p99_ms: float
    max_ms: float
    first_status_max_s: float
    errors: int
    load: float  # the machine's 1-minute load average: what else competed for its cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_stats(pid: int) -> tuple[float, int, int]:
    """(RSS in MB, threads, fds) of a process, from /proc."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads, len(os.listdir(f"/proc/{pid}/fd"))


# --- client processes (each reports to `out`: (kind, value) tuples) ---


def _client(port: int) -> Any:
    import grpc_helper_samples  # noqa: F401  # the echo API's protos
    from grpc_helper import RpcClient
    from grpc_helper.api import EventApiVersion
    from grpc_helper.api.events_pb2_grpc import EventServiceStub
    from grpc_helper_samples.api import EchoApiVersion
    from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

    stubs = {
        "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
        "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
    }
    return RpcClient("127.0.0.1", port, stubs, timeout=10)


def _paced(stop: Any, period: float, step: Callable[[], None], out: Any, kind: str) -> None:
    """Call `step` every `period` seconds until `stop`; report the calls (and errors) once a second."""
    done = errors = 0
    next_at = reported = time.monotonic()
    while not stop.is_set():
        try:
            step()
            done += 1
        except Exception as exc:  # counted: the soak reports failures, it does not stop on them
            if not errors:
                out.put(("error", f"{kind}: {exc!r}"[:300]))
            errors += 1
        now = time.monotonic()
        if now - reported >= 1.0:
            out.put((kind, done))
            out.put(("errors", errors))
            done = errors = 0
            reported = now
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_at = time.monotonic()  # late: no burst to catch up
    out.put((kind, done))
    out.put(("errors", errors))


def _unary(port: int, stop: Any, out: Any) -> None:
    from grpc_helper_samples.api import EchoRequest

    with _client(port) as c:
        _paced(stop, UNARY_PERIOD, lambda: c.echo.echo(EchoRequest(text="soak")), out, "unary")


def _stream(port: int, stop: Any, out: Any) -> None:
    from grpc_helper_samples.api import EchoRequest

    def repeat() -> None:
        n = sum(1 for _ in c.echo.repeat(EchoRequest(text="soak", count=50)))
        assert n == 50, n

    with _client(port) as c:
        _paced(stop, 0.1, repeat, out, "stream")


def _sender(port: int, stop: Any, out: Any) -> None:
    from grpc_helper.api import Event, EventProperty

    def send() -> None:
        c.events.send(Event(name=EVENT, properties=[EventProperty(name="t", value=repr(time.time()))]))

    with _client(port) as c:
        _paced(stop, 1 / SEND_RATE, send, out, "sent")


def _listeners(port: int, stop: Any, out: Any) -> None:
    """A new listener every LISTENER_EVERY s, each interrupted after LISTENER_LIFE s; latencies reported."""
    from grpc_helper.api import Event
    from grpc_helper.events.listener import EventsListener

    latencies: list[float] = []
    firsts: list[float] = []
    lock = threading.Lock()

    class Timed(EventsListener):
        def on_event(self, event: Event) -> None:
            if event.name == EVENT:
                lat = time.time() - float(event.properties[0].value)
                with lock:
                    latencies.append(lat)

    def watch_first(listener: Timed, started: float) -> None:
        ok = listener.ready.wait(30)
        with lock:
            firsts.append(time.monotonic() - started if ok else 30.0)

    with _client(port) as c:
        live: list[tuple[float, Timed]] = []
        next_at = reported = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_at:
                listener = Timed(c, [EVENT])
                threading.Thread(target=watch_first, args=(listener, now), daemon=True).start()
                live.append((now, listener))
                next_at += LISTENER_EVERY
            while live and now - live[0][0] >= LISTENER_LIFE:
                _, old = live.pop(0)
                try:
                    old.interrupt(timeout=5)
                except Exception:  # counted
                    out.put(("errors", 1))
            if now - reported >= 1.0:
                with lock:
                    out.put(("lat", latencies[:]))
                    out.put(("first", firsts[:]))
                    latencies.clear()
                    firsts.clear()
                reported = now
            stop.wait(0.05)
        for _, old in live:
            with contextlib.suppress(Exception):  # the server may be going away: nothing to measure any more
                old.interrupt(timeout=5)


# --- the run ---


class Deployment:
    """main and echo, the sample programs, in a temporary root."""

    def __init__(self, root: Path, config: dict[str, str]) -> None:
        self.root = root
        self.errors_shown = 0
        self.port = _free_port()
        # Every client of the soak runs on this one host, without a policy: one caller for fair sharing, where
        # the workload stands for many (sessions, consumers). Their shares are lifted, as a deployment's would be
        # by one identity each; each server's own totals still bound them
        shares = {"rpc-max-calls-per-caller": "1000", "rpc-max-streams-per-caller": "1000"}
        self.main = self._start("main", self.port, {**shares, **config})
        self._wait_port(self.port)
        self.echo = self._start("echo", 0, {**shares, "rpc-main-port": str(self.port)})

    def _start(self, name: str, port: int, config: dict[str, str]) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", f"grpc_helper_samples.{name}", "-p", str(port), "-w", str(self.root / name)]
        cmd += ["--system", str(self.root / "system"), "--user", str(self.root / "user")]
        for key, value in config.items():
            cmd += ["-c", f"{key}={value}"]
        log = (self.root / f"{name}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def _wait_port(self, port: int) -> None:
        deadline = time.monotonic() + START_BOUND
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            if self.main.poll() is not None:
                raise RuntimeError(f"main exited: {(self.root / 'main.log').read_text()[-2000:]}")
            time.sleep(0.1)  # polling a port that is not open yet: nothing to wait on
        raise RuntimeError("main did not listen in time")

    def wait_echo_registered(self) -> None:
        from grpc_helper_samples.api import EchoRequest

        deadline = time.monotonic() + START_BOUND
        with _client(self.port) as c:
            while time.monotonic() < deadline:
                try:
                    c.echo.echo(EchoRequest(text="up"), timeout=2)
                    return
                except Exception:  # not registered yet
                    time.sleep(0.2)  # polling registration: nothing to wait on
        raise RuntimeError("echo never answered through main")

    def files_kb(self) -> tuple[float, float]:
        wks = self.root / "main"
        queues = wks / "queues.json"
        size = queues.stat().st_size if queues.exists() else 0
        journal = sum(p.stat().st_size for p in wks.glob("queues-journal-*.jsonl"))
        return size / 1024, journal / 1024

    def stop(self) -> None:
        for proc in (self.echo, self.main):
            proc.terminate()
        for proc in (self.echo, self.main):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(duration: float, interval: float = 30.0, config: dict[str, str] | None = None, echo: bool = True) -> list[Row]:
    """Soak for `duration` seconds; one `Row` per `interval` (printed as it comes when `echo`)."""
    ctx = mp.get_context("spawn")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        dep = Deployment(Path(tmp), config or {})
        stop, out = ctx.Event(), ctx.Queue()
        procs = []
        try:
            dep.wait_echo_registered()
            targets = [_unary, _unary, _stream, _sender, _listeners]
            procs = [ctx.Process(target=t, args=(dep.port, stop, out), daemon=True) for t in targets]
            for p in procs:
                p.start()
            if echo:
                print(_header(), flush=True)
            started = time.monotonic()
            end = started + duration
            while time.monotonic() < end - 1e-3:
                row = _interval(dep, out, started, min(interval, end - time.monotonic()))
                rows.append(row)
                if echo:
                    print(_format(row), flush=True)
        finally:
            stop.set()
            for p in procs:
                p.join(20)
            dep.stop()
    return rows


def _interval(dep: Deployment, out: Any, started: float, seconds: float) -> Row:
    """Collect the clients' reports for `seconds`, then measure main."""
    until = time.monotonic() + seconds
    unary = errors = 0
    lats: list[float] = []
    firsts: list[float] = []
    while (left := until - time.monotonic()) > 0:
        try:
            kind, value = out.get(timeout=left)
        except queue.Empty:
            break
        if kind == "unary":
            unary += value
        elif kind == "errors":
            errors += value
        elif kind == "lat":
            lats += value
        elif kind == "first":
            firsts += value
        elif kind == "error" and dep.errors_shown < 5:
            dep.errors_shown += 1
            print(f"error: {value}", file=sys.stderr, flush=True)
    rss, threads, fds = _proc_stats(dep.main.pid)
    qkb, jkb = dep.files_kb()
    return Row(
        t=round(time.monotonic() - started, 1),
        rss_mb=round(rss, 1),
        threads=threads,
        fds=fds,
        queues_json_kb=round(qkb, 1),
        journal_kb=round(jkb, 1),
        unary_per_s=round(unary / seconds, 1),
        delivered=len(lats),
        p99_ms=round(percentile_ms(lats, 0.99), 1) if lats else 0.0,
        max_ms=round(max(lats) * 1000, 1) if lats else 0.0,
        first_status_max_s=round(max(firsts), 3) if firsts else 0.0,
        errors=errors,
        load=round(os.getloadavg()[0], 1),
    )


_COLUMNS = (
    "t (s)",
    "RSS (MB)",
    "threads",
    "fds",
    "queues.json (KB)",
    "journal (KB)",
    "unary/s",
    "delivered",
    "p99 (ms)",
    "max (ms)",
    "first status max (s)",
    "errors",
    "load",
)


def _header() -> str:
    return "| " + " | ".join(_COLUMNS) + " |\n|" + "---|" * len(_COLUMNS)


def _format(row: Row) -> str:
    return "| " + " | ".join(str(v) for v in asdict(row).values()) + " |"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """The soak as a PNG: RSS and threads, unary rate, delivery latency, file sizes, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r.t / 60 for r in rows]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    ax = axes[0][0]
    ax.plot(t, [r.rss_mb for r in rows], label="RSS (MB)")
    ax.plot(t, [r.threads for r in rows], label="threads")
    ax.plot(t, [r.fds for r in rows], label="fds")
    ax.set_title("main: memory, threads, fds")
    ax.legend()
    ax = axes[0][1]
    ax.plot(t, [r.unary_per_s for r in rows], color="tab:green")
    ax.set_title("unary calls/s through main (grey: machine load)")
    ax.set_ylim(bottom=0)
    if any(getattr(r, "load", 0) for r in rows):
        load = ax.twinx()
        load.plot(t, [r.load for r in rows], color="grey", linestyle="--")
        load.set_ylim(bottom=0)
    ax = axes[1][0]
    ax.plot(t, [r.p99_ms for r in rows], label="p99")
    ax.plot(t, [r.max_ms for r in rows], label="max")
    ax.axhline(100, color="red", linestyle=":", label="100 ms bound")
    ax.set_title("send-to-receive latency, live listeners (ms)")
    ax.set_xlabel("minutes")
    ax.legend()
    ax = axes[1][1]
    ax.plot(t, [r.queues_json_kb / 1024 for r in rows], label="queues.json")
    ax.plot(t, [r.journal_kb / 1024 for r in rows], label="journal")
    ax.set_title("workspace files (MB)")
    ax.set_xlabel("minutes")
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds (default: 30 minutes)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between two rows")
    parser.add_argument("--png", type=Path, default=Path("soak.png"))
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--title", default="events soak (bench/soak.py)")
    parser.add_argument("-c", action="append", default=[], help="a config item of main, name=value")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: main and echo stop too (run's finally)
    config = dict(item.split("=", 1) for item in args.c)
    rows = run(args.duration, args.interval, config)
    plot(rows, args.png, args.title)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    print(f"plot: {args.png}")


if __name__ == "__main__":
    main()
