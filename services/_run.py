"""What every sample program shares: logging setup, CLI parsing, startup errors, and the wait for shutdown."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc_helper_samples
from grpc_helper import RpcCliParser, RpcException, RpcServer, RpcServiceDescriptor
from grpc_helper.errors import rc_name

# Set in containers, where the main server runs on another host and must be given this host's IP
PROXY_USE_CURRENT_HOST_ENV = "GRPC_HELPER_PROXY_USE_CURRENT_HOST"
LOG_FORMAT = "%(asctime)s %(levelname)-7s [%(threadName)s] %(name)s: %(message)s"

_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when the environment variable is set to a truthy value (1/true/yes/on, any case)."""
    return os.environ.get(name, "").strip().lower() in _TRUE


def proxy_use_current_host() -> bool:
    """Whether proxied samples register their own IP on the main server (see PROXY_USE_CURRENT_HOST_ENV)."""
    return env_flag(PROXY_USE_CURRENT_HOST_ENV)


def samples_version() -> str:
    """The version string the samples register with: `grpc-helper-samples:<version>`."""
    return f"{grpc_helper_samples.__title__}:{grpc_helper_samples.__version__}"


def run_server(
    description: str,
    default_port: int,
    descriptors: Callable[[], list[RpcServiceDescriptor]],
    argv: Sequence[str] | None = None,
    user_items: Iterable[Any] | None = None,
    with_events: bool = False,
) -> int:
    """Parse the command line, serve until shut down (SIGINT/SIGTERM or remote), return the exit code.

    A startup failure (busy port, bad config, main server unreachable, ...) is reported on stderr
    as `error: <RC_NAME>: <message>`, without a traceback, and gives exit code 1.
    """
    # Container logs are stderr: show the servers' activity there too (rolling files get it as well)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    cli = RpcCliParser(description, f"{grpc_helper_samples.__title__} {grpc_helper_samples.__version__}")
    cli.with_rpc_args(default_port)
    try:
        args = cli.parse(argv)
    except argparse.ArgumentTypeError as exc:  # bad -c syntax: a usage error (exit code 2)
        cli.parser.error(str(exc))
    # The server is serving (and registered on main) before wait_shutdown() installs its signal
    # handlers: a SIGTERM in between must still be a graceful shutdown, not the default kill
    started: list[RpcServer] = []
    requested = threading.Event()

    def early_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("grpc_helper_samples").info("Received %s while starting", signal.Signals(signum).name)
        requested.set()
        if started:
            threading.Thread(target=started[0].shutdown, name="rpc-signal-shutdown", daemon=True).start()

    on_main = threading.current_thread() is threading.main_thread()  # signal.signal() works there only
    previous = {sig: signal.signal(sig, early_signal) for sig in (signal.SIGINT, signal.SIGTERM) if on_main}
    try:
        try:
            srv = RpcServer(
                args.port, descriptors(), args.folders, args.config, user_items=user_items, with_events=with_events
            )
        except RpcException as exc:
            print(f"error: {rc_name(exc.rc)}: {exc}", file=sys.stderr)
            return 1
        started.append(srv)
        if requested.is_set():  # asked to stop while starting (shutdown is idempotent)
            srv.shutdown()
        srv.wait_shutdown()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
