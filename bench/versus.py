"""This checkout against an earlier revision, side by side in one run: is anything slower than it was?

    python bench/versus.py --baseline REV [--rounds 3] [--duration 3] [--fanout-rounds 2]

A figure measured on one day and one measured on another compare machines as much as code (this machine's
speed varies by 2x from day to day). Here both revisions are measured in the same run, alternating (the
order rotated each round), each with its own `bench/run.py` and `bench/fanout_load.py` in its own virtual
environment: the baseline is a git worktree of REV (made under `.bench-baseline/REV`, its `.venv` set up by
its own `scripts/dev-setup.sh` the first time, kept for later runs).

Reported, baseline beside current, the median over the rounds of:
- `bench/run.py --only core --only proxy` (one round each time): each scenario's ratio to plain grpcio,
  measured beside it in the same run, and its server CPU per call or message;
- `bench/fanout_load.py --only RpcServer` (500 listeners, 10 events/s, 20 unary calls/s): the p99 of
  `send` and of the unary calls, in ms.

Run it on a quiet machine: it takes about `rounds` x 2 x (3-4 minutes)
+ `fanout-rounds` x 2 x (`fanout-duration` + 30 s).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A fan-out result line of bench/fanout_load.py: "  RpcServer  send p50 / p99 / max (...); unary p50 / p99 / max"
_FANOUT = re.compile(r"RpcServer\s+send ([\d.]+) / ([\d.]+) / [\d.]+ .*unary ([\d.]+) / ([\d.]+) / [\d.]+")


def _baseline(rev: str) -> Path:
    """A worktree of `rev` with its development environment (made once, kept)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    tree = ROOT / ".bench-baseline" / commit[:12]
    if not (tree / ".venv" / "bin" / "python").exists():
        if not tree.exists():
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True)
        subprocess.run(["bash", "scripts/dev-setup.sh"], cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return tree


def _core_proxy(tree: Path, duration: float) -> dict[str, tuple[float, float]]:
    """One round of `bench/run.py --only core --only proxy` in `tree`: scenario -> (ratio, server CPU)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [str(tree / ".venv/bin/python"), "bench/run.py", "--only", "core", "--only", "proxy"]
        command += ["--rounds", "1", "--duration", str(duration), "--json", out.name]
        subprocess.run(command, cwd=tree, check=True, stdout=subprocess.DEVNULL)
        rows = json.loads(Path(out.name).read_text())["results"]
    return {r["scenario"]: (r.get("ratio", float("nan")), r["server_cpu_us"]) for r in rows}


def _fanout(tree: Path, duration: float) -> tuple[float, float]:
    """One `bench/fanout_load.py --only RpcServer` in `tree`: (send p99, unary p99) in ms."""
    command = [str(tree / ".venv/bin/python"), "bench/fanout_load.py", "--only", "RpcServer"]
    command += ["--duration", str(duration)]
    output = subprocess.run(command, cwd=tree, check=True, capture_output=True, text=True).stdout
    found = _FANOUT.search(output)
    if found is None:
        raise RuntimeError(f"no RpcServer line in the fan-out output:\n{output}")
    return float(found[2]), float(found[4])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="the earlier revision (a git commit-ish)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of run.py (default 3)")
    parser.add_argument("--duration", type=float, default=3, help="measured seconds per scenario (default 3)")
    parser.add_argument("--fanout-rounds", type=int, default=2, help="alternating fan-out runs (default 2, 0: none)")
    parser.add_argument(
        "--fanout-duration", type=float, default=10, help="measured seconds per fan-out run (default 10: 100 sends)"
    )
    args = parser.parse_args()
    trees = {"baseline": _baseline(args.baseline), "current": ROOT}
    sides = list(trees)
    core: dict[str, list[dict[str, tuple[float, float]]]] = {side: [] for side in sides}
    fanout: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for round_ in range(args.rounds):
        for side in sides[round_ % 2 :] + sides[: round_ % 2]:  # the order rotated each round
            print(f"round {round_ + 1}/{args.rounds}: {side}", flush=True)
            core[side].append(_core_proxy(trees[side], args.duration))
    for round_ in range(args.fanout_rounds):
        for side in sides[round_ % 2 :] + sides[: round_ % 2]:
            print(f"fan-out {round_ + 1}/{args.fanout_rounds}: {side}", flush=True)
            fanout[side].append(_fanout(trees[side], args.fanout_duration))

    print(f"\nbaseline {args.baseline} against this checkout, medians of {args.rounds} alternating rounds")
    print(f"{'scenario':22s} {'ratio base':>10s} {'ratio now':>10s} {'cpu base':>9s} {'cpu now':>9s}")
    scenarios = [s for s in core["current"][0] if all(s in r for r in core["baseline"])] if core["current"] else []
    for scenario in scenarios:
        cells = []
        for index in (0, 1):  # ratio, then server CPU per call or message
            for side in sides:
                cells.append(statistics.median(r[scenario][index] for r in core[side]))
        print(f"{scenario:22s} {cells[0]:10.2f} {cells[1]:10.2f} {cells[2]:9.0f} {cells[3]:9.0f}")
    if args.fanout_rounds:
        print("fan-out, 500 listeners (p99 ms, median):")
        for side in sides:
            send = statistics.median(f[0] for f in fanout[side])
            unary = statistics.median(f[1] for f in fanout[side])
            print(f"  {side:9s} send {send:.1f}  unary {unary:.1f}  (runs: {fanout[side]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
