"""The greeter server: a service of your own on grpc-helper, proxied by main with no change to main.

It serves `greeter.GreeterService` (protos/greeter/greeter.proto) and registers it on main by its gRPC name
(`_proxied_grpc_services`: a dynamic service), so main forwards its calls, health-checks it and answers
reflection about it with no descriptor, code or image change. Run it as `grpc-helper-greeter` (installed) or
`python -m greeter.server`; default port 54330, main at `rpc-main-host`:`rpc-main-port` (`-c`, or the RPC_*
environment variables `stack.sh env --service greeter` prints).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from grpc_helper import RpcCliParser, RpcException, RpcProxiedManager, RpcServer, RpcServiceDescriptor, graceful_exit
from grpc_helper.api import ResultCode
from grpc_helper.errors import rc_name

import greeter
from greeter.greeter_pb2 import DESCRIPTOR, GreeterApiVersion, Greeting, GreetResult
from greeter.greeter_pb2_grpc import GreeterServiceServicer, GreeterServiceStub, add_GreeterServiceServicer_to_server

SERVICE = DESCRIPTOR.services_by_name["GreeterService"].full_name  # "greeter.GreeterService"
DEFAULT_PORT = 54330
MAX_NAME = 100  # characters: every request field is bounded


class GreeterManager(GreeterServiceServicer, RpcProxiedManager):
    """Greets whoever asks, through main."""

    # --- registration on main ---
    def _proxied_grpc_services(self) -> list[str]:
        return [SERVICE]

    def _proxied_version(self) -> str:
        return f"{greeter.__title__}:{greeter.__version__}"

    def _proxy_use_current_host(self) -> bool:
        # Register this host's address on the route to main (the container's IP in the compose stack);
        # `rpc-proxy-host`, when set, wins (stack.sh env --service sets it for a process outside the containers)
        return True

    # --- service ---
    def greet(self, request: Greeting) -> GreetResult:
        if not request.name:
            raise RpcException("Missing name", ResultCode.ERROR_PARAM_MISSING)
        if len(request.name) > MAX_NAME:
            raise RpcException(f"Name longer than {MAX_NAME} characters", ResultCode.ERROR_PARAM_INVALID)
        self.logger.info("Greeting %s", request.name)
        return GreetResult(text=f"Hello, {request.name}!")


def descriptor() -> RpcServiceDescriptor:
    """How the greeter service is hooked into its server (`name`: its name in the server's `srv.info`)."""
    return RpcServiceDescriptor(
        greeter,  # its __title__ and __version__: the version `srv.info` shows
        "greeter",
        GreeterApiVersion,
        GreeterManager(),
        add_GreeterServiceServicer_to_server,
        GreeterServiceStub,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT (graceful) or a remote shutdown; the process exit code."""
    cli = RpcCliParser("greeter: a service of your own, proxied by main", f"{greeter.__title__} {greeter.__version__}")
    args = cli.with_rpc_args(DEFAULT_PORT).parse(argv, exit_on_error=True)  # a bad -c: one line, exit code 2
    with graceful_exit() as signals:  # a signal while it starts is a graceful shutdown too
        try:
            srv = RpcServer(args.port, [descriptor()], args.folders, args.config)
        except RpcException as exc:  # a busy port, main unreachable or refusing it...: one line, no traceback
            print(f"error: {rc_name(exc.rc)}: {exc}", file=sys.stderr)
            return 1
        signals.add(srv)
        srv.wait_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
