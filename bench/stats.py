"""Measurement helpers: percentiles, per-process CPU accounting, and the result record."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Result:
    """One measurement (or the median of several).

    `ops_per_s` is calls/s, messages/s or deliveries/s; latencies are per call (per 500-message
    call for streams, send-to-receive for events). CPU figures are microseconds of CPU (user +
    system, all threads) per op: `cpu_us` per server process (by role), `client_cpu_us` for the
    client process(es). `foreign_cpu` is the CPU used meanwhile by processes that are not part of
    the measurement, in cores (0.5 = half a core busy elsewhere): a noise indicator.
    """

    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float] = field(default_factory=dict)
    client_cpu_us: float = float("nan")
    foreign_cpu: float = float("nan")

    @property
    def server_cpu_us(self) -> float:
        """CPU per op summed over every server process of the scenario."""
        return sum(self.cpu_us.values()) if self.cpu_us else float("nan")


def percentile_ms(values: list[float], q: float) -> float:
    """The `q` quantile (0..1, nearest rank) of durations in seconds, in milliseconds."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def median_result(results: list[Result]) -> Result:
    """Field-wise median of several rounds (rate, latencies and CPU taken independently)."""

    def med(values: list[float]) -> float:
        values = [v for v in values if v == v]  # drop NaN
        return statistics.median(values) if values else float("nan")

    roles = results[0].cpu_us.keys()
    return Result(
        med([r.ops_per_s for r in results]),
        med([r.p50_ms for r in results]),
        med([r.p99_ms for r in results]),
        {role: med([r.cpu_us.get(role, float("nan")) for r in results]) for role in roles},
        med([r.client_cpu_us for r in results]),
        med([r.foreign_cpu for r in results]),
    )


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) used so far by process `pid` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def _system_busy() -> float:
    """CPU seconds the whole machine spent busy so far (all cores; steal counts as busy)."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / _TICK


class CpuMeter:
    """CPU used by a set of processes over a window, and by everything else on the machine.

    `pids` maps a role ("server", "proxy", ...) to a process id; the calling process is measured
    as "client" (pass `extra_client_pids` for other client processes).
    """

    def __init__(self, pids: dict[str, int], extra_client_pids: tuple[int, ...] = ()) -> None:
        self._pids = dict(pids)
        self._clients = (os.getpid(), *extra_client_pids)
        self._start: tuple[dict[str, float], float, float] | None = None

    def _snapshot(self) -> tuple[dict[str, float], float, float]:
        servers = {role: process_cpu(pid) for role, pid in self._pids.items()}
        clients = sum(process_cpu(pid) for pid in self._clients)
        return servers, clients, _system_busy()

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self, ops: float, elapsed: float) -> tuple[dict[str, float], float, float]:
        """(server CPU µs/op by role, client CPU µs/op, foreign load in cores) since `start()`."""
        assert self._start is not None, "start() first"
        servers0, clients0, busy0 = self._start
        servers1, clients1, busy1 = self._snapshot()
        per_op = 1e6 / ops if ops else float("nan")
        server_cpu = {role: (servers1[role] - servers0[role]) * per_op for role in servers1}
        ours = sum(servers1[r] - servers0[r] for r in servers1) + (clients1 - clients0)
        foreign = max(0.0, (busy1 - busy0) - ours) / elapsed if elapsed > 0 else float("nan")
        return server_cpu, (clients1 - clients0) * per_op, foreign
