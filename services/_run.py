"""What every sample program shares: logging setup, CLI parsing, startup errors, and the wait for shutdown."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc_helper_samples
from grpc_helper import RpcCliParser, RpcException, RpcServer, RpcServiceDescriptor, graceful_exit
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
    args = cli.parse(argv, exit_on_error=True)  # a bad -c: one line, a usage error (exit code 2)
    # Handlers installed before the server starts: a SIGTERM while it starts (it is serving, and
    # registered on main, before the constructor returns) must still be a graceful shutdown
    with graceful_exit() as signals:
        try:
            srv = RpcServer(
                args.port, descriptors(), args.folders, args.config, user_items=user_items, with_events=with_events
            )
        except RpcException as exc:
            print(f"error: {rc_name(exc.rc)}: {exc}", file=sys.stderr)
            return 1
        signals.add(srv)  # stopped at once if a signal came while it started
        srv.wait_shutdown()
        return 0
