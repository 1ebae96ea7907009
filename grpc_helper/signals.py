"""`graceful_exit`: SIGINT/SIGTERM handlers for a set of servers.

The first SIGINT or SIGTERM shuts every server down gracefully (pending calls get
`rpc-shutdown-grace`); a second one stops them at once (pending calls cancelled). Handlers can only
be installed on the main thread: elsewhere `graceful_exit` installs nothing. The previous handlers
are restored when the block ends. Modelled on uvicorn's `Server.capture_signals` and grpclib's
`graceful_exit`.

This module knows nothing of `RpcServer`: a server is anything with `stop(grace)`.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType, TracebackType
from typing import Any, Protocol, TypeAlias

_log = logging.getLogger("grpc_helper.server")
# What signal.signal() takes and returns: a function, SIG_DFL / SIG_IGN, or None (not set from Python)
SignalHandler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stoppable(Protocol):
    """What `graceful_exit` needs of a server (`RpcServer` is one)."""

    def stop(self, grace: float | None = None) -> None:
        """Shut down for good, pending calls given `grace` seconds (None: the configured grace);
        called again with a shorter grace while stopping, cut the wait short."""
        ...


class GracefulExit:
    """The context manager `graceful_exit` returns (see the module doc)."""

    def __init__(self, servers: Iterable[Stoppable]) -> None:
        self._servers: list[Stoppable] = list(servers)
        self._previous: dict[int, SignalHandler] = {}
        self.received = 0  # signals received so far (0, 1: graceful shutdown, 2 or more: stopped at once)

    def add(self, *servers: Stoppable) -> None:
        """Handle `servers` too, e.g. a server started inside the block; one added after a signal
        was received is stopped right away, as the others were."""
        # Appended before `received` is read, the reverse of the handler: whatever the interleaving
        # with a signal, a server is stopped by the handler, by this method, or by both (harmless)
        self._servers.extend(servers)
        if self.received:
            _stop_all(servers, self._grace())

    def _grace(self) -> float | None:
        return None if self.received < 2 else 0.0

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            _log.warning("Received %s: shutting down gracefully (once more to stop at once)", name)
        else:
            _log.warning("Received %s again: stopping at once, pending calls cancelled", name)
        _stop_all(list(self._servers), self._grace())

    def __enter__(self) -> GracefulExit:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal.signal() works on the main thread only
        outer = _active()
        if outer is not None:
            # Nested (e.g. RpcServer.wait_shutdown() inside a graceful_exit block): the outer
            # handlers stay in place, and handle these servers too
            outer.add(*self._servers)
            return outer
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            # None: the previous handler was not installed from Python; the default is the closest
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


def graceful_exit(*servers: Stoppable) -> GracefulExit:
    """A context manager: while in the block, the first SIGINT/SIGTERM shuts `servers` down gracefully,
    a second one stops them at once (see the module doc). More servers can be added with `add()`.

        with graceful_exit(server):
            server.wait_shutdown()
    """
    return GracefulExit(servers)


def _active() -> GracefulExit | None:
    """The `GracefulExit` whose handlers are installed on every signal, if any."""
    owners = {getattr(signal.getsignal(sig), "__self__", None) for sig in SIGNALS}
    owner = owners.pop() if len(owners) == 1 else None
    return owner if isinstance(owner, GracefulExit) else None


def _stop_all(servers: Iterable[Stoppable], grace: float | None) -> None:
    # One thread per server: they stop side by side (a graceful stop can take the whole grace
    # period), and never on the main thread, where a signal handler runs
    for server in servers:
        threading.Thread(target=server.stop, args=(grace,), name="rpc-signal-stop", daemon=True).start()
