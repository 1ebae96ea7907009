"""The events soak in CI (issue 20): bench/soak.py's workload for two minutes, through real main and echo processes.

Listeners come and go (a new one every 0.5 s, each interrupted after 10 s), their queues retained; main must
plateau: RSS and threads in the last 30 s at most 20% above their value at 60 s, threads at most 60, live
listeners' p99 send-to-receive under 100 ms, every new listen's first status within 1 s, and the unary calls
through main at 90% of their first rate or more. Alone on its worker (xdist_group): its timings are what it
asserts, and it keeps a core busy. Timings are judged over the intervals where the machine's load average
stayed under twice its cores (a shared CI machine running other jobs measures them, not us); skipped when
that is less than half of the run. Memory, threads, errors and delivery are always judged.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.xdist_group("soak"), pytest.mark.timeout(300)]

BENCH = Path(__file__).resolve().parent.parent / "bench"
DURATION = 120.0
INTERVAL = 10.0
QUIET_LOAD = 2 * (os.cpu_count() or 2)  # 1-minute load average up to which timings are judged


def _soak_module() -> ModuleType:
    """bench/soak.py as the module `soak`, with bench/ on sys.path (its sibling stats.py; and its client
    processes, spawned, import it by that name from the same path)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("soak", BENCH / "soak.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = module  # dataclasses and pickling look their module up
    spec.loader.exec_module(module)
    return module


def test_two_minute_soak_plateaus() -> None:
    rows = _soak_module().run(DURATION, INTERVAL)
    table = "\n".join(str(r) for r in rows)
    at_60 = next(r for r in rows if r.t >= 60 - 1)
    last = [r for r in rows if r.t > DURATION - 30 + 1]
    assert last, table
    # What main owns, whatever else runs on the machine
    assert max(r.rss_mb for r in last) <= 1.2 * at_60.rss_mb, table
    assert max(r.threads for r in last) <= 1.2 * at_60.threads, table
    assert max(r.threads for r in rows) <= 60, table
    assert all(r.delivered > 0 for r in rows), table  # delivery never stops
    assert all(r.unary_per_s > 0 for r in rows), table
    assert sum(r.errors for r in rows) == 0, table
    # Timings, over the intervals the machine was not overloaded by others: on this shared 2-core machine a
    # load of 12 (other jobs) alone took p99 from ~8 ms to ~700 ms; such intervals measure the neighbours
    quiet = [r for r in rows if r.load <= QUIET_LOAD]
    if len(quiet) < len(rows) // 2:
        pytest.skip(f"machine too busy to judge timings (load > {QUIET_LOAD} in most intervals):\n{table}")
    assert max(r.p99_ms for r in quiet) < 100, table
    assert max(r.first_status_max_s for r in quiet) < 1.0, table
    assert min(r.unary_per_s for r in quiet if r is not rows[0]) >= 0.9 * rows[0].unary_per_s, table
