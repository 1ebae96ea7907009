"""Fair sharing: one caller can't take all of a server's workers, stream threads or listener slots (issue 17).

**Who a caller is.** With `rpc-auth-policy` on, the identity `grpc_helper.auth.current_identity()` names
(a token's or a certificate's: every client using one token is one caller; at a backend, the original
caller once main says who it forwards for). Without a policy, the IP address of the peer
(`context.peer()`, its port dropped, an IPv4-mapped IPv6 address as IPv4): every connection, channel
and process of one host is one caller, and so is everything behind one NAT or load balancer, and
main at its backends (main then bounds each of its own callers, and its forwarded calls share one
share at the backend: keep main's `rpc-max-streams-per-caller` below the backends'
`rpc-max-calls-per-caller`, as the defaults are).

**Two shares**, one per bounded resource of the server:

- *calls*, `rpc-max-calls-per-caller`: calls running on the workers (`rpc-max-workers`), unary or
  streamed; a generator stream holds its worker until it ends, read or not;
- *streams*, `rpc-max-streams-per-caller`: calls on the stream pool (proxied and routed calls,
  long-lived methods, reflection streams) and pushed streams (event listeners, which hold no thread but a queue),
  the ones `rpc-max-streams` bounds in total.

A third share bounds health Watch streams, `rpc-max-watches-per-caller`: a Watch holds no thread, but each one
costs the server its call's memory (about 20 KB), and health is open to anybody (10,000 of them from one client
took 190 MB of main's). gRPC's client-side health checking opens one per channel and endpoint, so the share is
wide (100 by default). Other control calls (health checks, `srv.info`, `srv.shutdown`) are not counted.

A call is counted from when its behavior starts, on the thread it runs on (a certificate caller's identity
is only known there), until it returns (unary responses) or the call terminates (streamed responses: gRPC's
termination callback, run as soon as the client cancels or goes away, read or not). Beyond its share, a call is answered
RESOURCE_EXHAUSTED at once, naming the item, and nothing else runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

import grpc

from grpc_helper.auth import current_identity
from grpc_helper.generated import Behavior, Handler, copy_options, kind_of, make_handler
from grpc_helper.limits import LogBudget, left_out_note

CALLS_ITEM = "rpc-max-calls-per-caller"
STREAMS_ITEM = "rpc-max-streams-per-caller"
WATCHES_ITEM = "rpc-max-watches-per-caller"
_MAPPED_V4 = "::ffff:"


def peer_host(peer: str) -> str:
    """The address part of a gRPC peer string: "ipv4:127.0.0.1:5555" -> "127.0.0.1", "ipv6:[::1]:5555"
    (or its percent-encoded form) -> "::1", "ipv6:[::ffff:10.0.0.1]:5555" -> "10.0.0.1"; any other (a
    Unix socket's) as it is."""
    scheme, _, rest = peer.partition(":")
    if scheme == "ipv4":
        return rest.rpartition(":")[0]
    if scheme == "ipv6":
        host = rest.rpartition(":")[0]
        if "%" in host:
            host = unquote(host)
        host = host.removeprefix("[").removesuffix("]")
        return host.removeprefix(_MAPPED_V4) if host.startswith(_MAPPED_V4) and "." in host else host
    return peer


class _Ticket:
    """One call counted in a share: its caller's name, or None while it need not be known (its context then)."""

    __slots__ = ("caller", "context")

    def __init__(self, caller: str | None, context: grpc.ServicerContext | None) -> None:
        self.caller, self.context = caller, context


class Share:
    """Concurrent calls per caller, at most `limit` each; beyond it, RESOURCE_EXHAUSTED naming `item`.

    Without a policy, a caller is its address, which only `context.peer()` tells, and that call costs: grpcio
    releases the GIL twice in it, which on a busy server cost about 50 us of CPU per call and a sixth of a
    unary echo's throughput (measured). So it is asked only when it matters: while fewer than `limit` calls of
    the share are in progress, none of their callers can be at its share, and a call is admitted without
    knowing whose it is; from `limit` calls on, the callers of those in progress are looked up (their calls
    are still running) and every call is counted by its caller, as with a policy."""

    def __init__(self, item: str, limit: int, what: str, logger: logging.Logger) -> None:
        self.item, self.limit = item, limit
        self._what = what
        self._logger = logger
        self._counts: dict[str, int] = {}  # only callers with calls in progress: it never grows past them
        self._unknown: set[_Ticket] = set()  # calls in progress whose caller was not needed yet
        self._total = 0  # calls in progress
        self._lock = threading.Lock()
        self.refused = 0
        self._log_budget = LogBudget()  # a flood of refusals can't flood the log

    def count(self, caller: str) -> int:
        """Calls of `caller` in progress."""
        with self._lock:
            self._know_all()
            return self._counts.get(caller, 0)

    def _know_all(self) -> None:
        """Count every call in progress by its caller (the lock held; their contexts are of calls not released)."""
        counts = self._counts
        for ticket in self._unknown:
            assert ticket.context is not None
            caller = ticket.caller = peer_host(ticket.context.peer())
            ticket.context = None
            counts[caller] = counts.get(caller, 0) + 1
        self._unknown.clear()

    def acquire(self, context: grpc.ServicerContext, path: str) -> _Ticket:
        """Count one more call (to `path`), or abort it with RESOURCE_EXHAUSTED (it raises); `release` the
        ticket returned when it ends."""
        identity = current_identity()
        caller = identity.name if identity is not None else None
        with self._lock:
            if self._total < self.limit:  # nobody can be at its share yet
                self._total += 1
                if caller is None:
                    ticket = _Ticket(None, context)
                    self._unknown.add(ticket)
                    return ticket
                self._counts[caller] = self._counts.get(caller, 0) + 1
                return _Ticket(caller, None)
            self._know_all()
            if caller is None:
                caller = peer_host(context.peer())
            n = self._counts.get(caller, 0)
            if n < self.limit:
                self._counts[caller] = n + 1
                self._total += 1
                return _Ticket(caller, None)
            self.refused += 1
            refused = self.refused
        left_out = self._log_budget.take()
        if left_out is not None:
            self._logger.info(
                "Refused %s %s to caller %s: %s=%s reached (%s refused so far%s)",
                self._what[:-1],
                path,
                caller,
                self.item,
                self.limit,
                refused,
                left_out_note(left_out),
            )
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Too many concurrent {self._what} for caller {caller} ({self.item}={self.limit})",
        )

    def release(self, ticket: _Ticket) -> None:
        with self._lock:
            self._total -= 1
            caller = ticket.caller
            if caller is None:
                self._unknown.discard(ticket)
                ticket.context = None
                return
            n = self._counts[caller] - 1
            if n:
                self._counts[caller] = n
            else:
                del self._counts[caller]


class Fairness:
    """The two shares of a server (see the module doc), and the wrapper counting its handlers' calls."""

    def __init__(self, streams_pool: ThreadPoolExecutor, limits: Mapping[str, int], logger: logging.Logger) -> None:
        """`limits`: each share's limit, by its item (`CALLS_ITEM`, `STREAMS_ITEM`, `WATCHES_ITEM`)."""
        self._streams_pool = streams_pool
        self.calls = Share(CALLS_ITEM, limits[CALLS_ITEM], "calls", logger)
        self.streams = Share(STREAMS_ITEM, limits[STREAMS_ITEM], "streams", logger)
        self.watches = Share(WATCHES_ITEM, limits[WATCHES_ITEM], "health watches", logger)

    def wrap_service(self, service: str, handlers: Mapping[str, Handler]) -> dict[str, Handler]:
        """`wrap` for each of a service's handlers, by method name."""
        return {name: self.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()}

    def wrap(self, path: str, handler: Handler) -> Handler:
        """`handler` with its calls counted in their share: by the pool its behavior runs on (none: the
        workers); a handler of another pool (the control pool) is returned as it is."""
        behavior = getattr(handler, kind_of(handler))
        pool = getattr(behavior, "experimental_thread_pool", None)
        share = self.calls if pool is None else self.streams if pool is self._streams_pool else None
        if share is None:
            return handler
        return _counted(path, handler, share)

    def wrap_watch(self, path: str, handler: Handler) -> Handler:
        """`handler` (health's Watch) with its streams counted in the caller's share of watches."""
        return _counted(path, handler, self.watches)


def _counted(path: str, handler: Handler, share: Share) -> Handler:
    """`handler` with its calls counted in `share`, until they return or (a streamed response) terminate."""
    behavior = getattr(handler, kind_of(handler))
    counted = (_until_terminated if handler.response_streaming else _until_return)(behavior, share, path)
    copy_options(behavior, counted)
    return make_handler(handler, counted)


def _until_return(behavior: Behavior, share: Share, path: str) -> Behavior:
    """A unary response is answered once the behavior returns: counted until then (the hot path: locals only)."""
    acquire, release = share.acquire, share.release

    def counted(request: Any, context: grpc.ServicerContext, *args: Any) -> Any:
        ticket = acquire(context, path)
        try:
            return behavior(request, context, *args)
        finally:
            release(ticket)

    return counted


def _until_terminated(behavior: Behavior, share: Share, path: str) -> Behavior:
    """A streamed response (an iterator, or a pushed stream that returns at once) lasts until the call
    terminates: counted until gRPC's termination callback."""
    acquire, release = share.acquire, share.release

    def counted(request: Any, context: grpc.ServicerContext, *args: Any) -> Any:
        ticket = acquire(context, path)
        if not context.add_callback(lambda: release(ticket)):
            release(ticket)  # already terminated (the client went away meanwhile)
        return behavior(request, context, *args)

    return counted
