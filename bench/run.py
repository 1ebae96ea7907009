#!/usr/bin/env python3
"""grpc-helper benchmarks, side by side with plain grpcio in the same run.

    python bench/run.py [--duration S] [--rounds N] [--only unary|stream|fanout] [--json FILE]

Every server and every client runs in its own process. Raw and helper runs alternate over
several rounds (the machine is shared and noisy) and the median of each is reported, with the
helper/raw ratio against its target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import ServerProcess
from workloads import Result, echo, fanout

THREADS = 8
LISTENERS = 100


def median(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.ops_per_s for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds, median reported (default 3)")
    parser.add_argument("--only", choices=["unary", "stream", "fanout"], action="append")
    parser.add_argument("--json", type=Path, help="write the results there")
    args = parser.parse_args()
    only = set(args.only or ["unary", "stream", "fanout"])

    raw, helper = ServerProcess("raw"), ServerProcess("helper")
    backend = ServerProcess("helper")
    proxy = ServerProcess("proxy", backend.port)
    events = ServerProcess("events") if "fanout" in only else None
    runs: dict[str, list[Result]] = {}

    def measure(name: str, fn: Callable[[], Result]) -> None:
        result = fn()
        runs.setdefault(name, []).append(result)
        r = result
        print(f"  {name:16s} {r.ops_per_s:10.0f}/s  p50 {r.p50_ms:7.2f} ms  p99 {r.p99_ms:7.2f} ms", flush=True)

    try:
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}/{args.rounds}", flush=True)
            for workload in ("unary", "stream"):
                if workload not in only:
                    continue
                for name, kind, port in (("raw", "raw", raw.port), ("helper", "helper", helper.port),
                                         ("proxied", "helper", proxy.port)):  # fmt: skip
                    measure(
                        f"{name} {workload}", lambda k=kind, p=port, w=workload: echo(k, p, w, THREADS, args.duration)
                    )
            if events is not None:
                measure("fanout", lambda: fanout(events.port, LISTENERS, args.duration))
    finally:
        for server in (proxy, backend, raw, helper, events):
            if server is not None:
                server.close()

    results = {name: median(rs) for name, rs in runs.items()}
    rows = []

    def row(name: str, base: str, unit: str, target: float, p99_target: float | None) -> None:
        if name not in results or base not in results:
            return
        r, b = results[name], results[base]
        ratio, p99_ratio = r.ops_per_s / b.ops_per_s, r.p99_ms / b.p99_ms
        ok = ratio >= target and (p99_target is None or p99_ratio <= p99_target)
        p99_goal = f", p99 <= {p99_target}x" if p99_target else ""
        rows.append((name, unit, r, ratio, p99_ratio, f">= {target}x{p99_goal}", "PASS" if ok else "FAIL"))

    for workload, unit in (("unary", "calls/s"), ("stream", "msgs/s")):
        if f"raw {workload}" in results:
            b = results[f"raw {workload}"]
            rows.append((f"raw {workload}", unit, b, 1.0, 1.0, "baseline", ""))
        row(f"helper {workload}", f"raw {workload}", unit, 0.95, 1.2)
        row(f"proxied {workload}", f"raw {workload}", unit, 0.6, 2.0 if workload == "unary" else None)
    if "fanout" in results and "raw stream" in results:
        f, b = results["fanout"], results["raw stream"]
        ratio = f.ops_per_s / b.ops_per_s
        ok = ratio >= 0.8 and f.p99_ms < 100
        goal = ">= 0.8x raw stream, p99 < 100 ms"
        rows.append(("fanout (100 listeners)", "deliveries/s", f, ratio, float("nan"), goal, "PASS" if ok else "FAIL"))

    print(f"\nmedian of {args.rounds} rounds, {args.duration:g} s each, {THREADS} client threads, 64-byte payloads")
    header = (
        f"{'scenario':24s} {'rate':>12s} {'unit':12s} {'p50 ms':>8s} {'p99 ms':>8s} {'ratio':>6s} {'p99 ratio':>9s}"
        "  target"
    )
    print(header)
    print("-" * len(header))
    for name, unit, r, ratio, p99_ratio, target, verdict in rows:
        p99r = "" if p99_ratio != p99_ratio else f"{p99_ratio:.2f}"  # NaN: not applicable
        print(
            f"{name:24s} {r.ops_per_s:12.0f} {unit:12s} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {ratio:6.2f} {p99r:>9s}  "
            f"{target} {verdict}"
        )
    if args.json:
        args.json.write_text(json.dumps({n: asdict(r) for n, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
