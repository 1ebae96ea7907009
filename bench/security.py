"""TLS and authorization costs: plain grpcio with TLS side by side with grpc-helper with TLS and a token.

    python bench/security.py [--rounds 5] [--duration 3] [--threads 8]

Every server and client gets the same certificates (`secure.py`, `BENCH_TLS_DIR`); the grpc-helper
servers also enforce an authorization policy, and `RpcClient` sends a bearer token with each call.
Measured in one run, alternating over `--rounds` rounds (median): plain grpcio unary and server
streaming over TLS; RpcServer + RpcClient over TLS with the token; the same proxied through a main
RpcServer (TLS on both hops). Then the authorization check alone: `Authorizer.intercept_service` for
a call with a token, timed in this process. Target (issue 12): direct with TLS and a token >= 0.95x
plain grpcio with TLS; the check under 5 us per call.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import secure
import workloads
from servers import ServerProcess
from stats import median_result

from grpc_helper.auth import Authorizer, token_hash


def authorization_check_us(calls: int = 200_000) -> float:
    """Microseconds per call of the authorization interceptor, for a known token (the common path)."""
    identities = {  # a policy with a few identities: every digest is compared
        f"id{n}": {"role": "user", "token_sha256": token_hash(f"token-{n}-0123456789")} for n in range(5)
    }

    def reject(*_: Any) -> Any:  # never called: the token is known
        raise AssertionError("refused")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "policy.json"
        path.write_text(json.dumps({"identities": identities}))
        authorizer = Authorizer(path, certificates=False, reject=reject, logger=logging.getLogger("bench"))
    authorizer.close()
    handler = object()

    class Details:
        method = "/EchoService/echo"
        invocation_metadata = (
            ("client", "bench"),
            ("api_version", "2"),
            ("authorization", "Bearer token-3-0123456789"),
        )

    details = Details()

    def continuation(_details: Any) -> Any:
        return handler

    assert authorizer.intercept_service(continuation, details) is handler  # type: ignore[arg-type]
    seconds = timeit.timeit(lambda: authorizer.intercept_service(continuation, details), number=calls)  # type: ignore[arg-type]
    baseline = timeit.timeit(lambda: continuation(details), number=calls)
    return (seconds - baseline) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        secure.create(Path(tmp))
        os.environ[secure.ENV] = tmp  # inherited by every spawned server and client process
        raw, helper = ServerProcess("raw"), ServerProcess("helper")
        backend = ServerProcess("helper")
        proxy = ServerProcess("proxy", (backend.port,))
        try:
            plan = [
                ("raw grpcio + TLS unary", "raw", raw, "unary"),
                ("RpcServer + RpcClient, TLS + token, unary", "helper", helper, "unary"),
                ("proxied unary, TLS on both hops", "helper", proxy, "unary"),
                ("raw grpcio + TLS stream", "raw", raw, "stream"),
                ("RpcServer + RpcClient, TLS + token, stream", "helper", helper, "stream"),
                ("proxied stream, TLS on both hops", "helper", proxy, "stream"),
            ]
            results: dict[str, list[Any]] = {name: [] for name, *_ in plan}
            for r in range(args.rounds):
                for name, client, server, workload in plan[r % len(plan) :] + plan[: r % len(plan)]:
                    pids = (
                        {"server": server.pid} if server is not proxy else {"proxy": proxy.pid, "backend": backend.pid}
                    )
                    results[name].append(
                        workloads.echo(client, (server.port,), workload, args.threads, args.duration, pids=pids)
                    )
        finally:
            for p in (proxy, backend, helper, raw):
                p.close()
    when = time.strftime("%Y-%m-%d")
    print(f"{when}, {args.rounds} rounds of {args.duration:g} s, {args.threads} client threads (median)")
    base = {
        "unary": median_result(results[plan[0][0]]).ops_per_s,
        "stream": median_result(results[plan[3][0]]).ops_per_s,
    }
    for name, _, _, workload in plan:
        m = median_result(results[name])
        unit = "calls/s" if workload == "unary" else "msgs/s"
        ratio = m.ops_per_s / base[workload]
        print(f"  {name:45} {m.ops_per_s:8.0f} {unit:7} p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:6.2f} ms  {ratio:.2f}x")
    print(f"  authorization check (token, 5 identities): {authorization_check_us():.2f} us per call")


if __name__ == "__main__":
    main()
