"""`grpc-helper`: operator command line for any grpc-helper server.

    grpc-helper [--host H] [--port P] [--timeout S] [--wait] [--json] COMMAND ...

An unreachable server is reported after 2 s, unless `--wait` (then retried up to --timeout).

Output is an aligned table (or a short confirmation) by default, JSON with `--json`. Errors go to
stderr as `error: <RESULT_CODE>: <message>`; exit codes: 0 success, 1 RPC or result error (or a
health status other than SERVING), 2 usage error, 130 when `events listen` is stopped by Ctrl-C.
"""

from __future__ import annotations

import os

# gRPC's C core logs every failed TLS handshake (and more) at INFO on stderr, once per connection
# attempt: noise for an operator, who gets one `error:` line instead. The core reads the variable
# when it initializes, so it is set before anything imports grpc (this module is the console
# script's, and the package's __init__ imports nothing). An explicit GRPC_VERBOSITY still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import json
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_helper import tracing
from grpc_helper._version import installed_version
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItem,
    ConfigItemUpdate,
    ConfigStatus,
    ConfigUpdate,
    ConfigValidator,
    Event,
    EventApiVersion,
    EventFilter,
    EventInterrupt,
    EventProperty,
    EventStatus,
    Filter,
    LoggerApiVersion,
    LoggerConfig,
    LoggerLevel,
    LoggerStatus,
    LoggerUpdate,
    ProxyRegisterRequest,
    ResultCode,
    ServerApiVersion,
    ServiceInfo,
    ShutdownRequest,
    StatRequest,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.backoff import Backoff
from grpc_helper.client import RpcClient
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException, RpcTransportError, rc_name
from grpc_helper.live import DEFAULT_WINDOW, MAX_WINDOW
from grpc_helper.liveview import (
    CHANNEL_HEADERS,
    StatRow,
    channel_rows,
    channel_services,
    fit,
    now_stamp,
    stat_lines,
    stat_rows,
    stat_table,
)
from grpc_helper.metadata import RpcMetadata
from grpc_helper.tls import ClientSecurity

PROG = "grpc-helper"
CLIENT_NAME = "grpc-helper-ctl"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 54321
DEFAULT_TIMEOUT = 10.0
# How long an unreachable server is retried without --wait: long enough for a server that is
# restarting its listener, short enough to report a stopped stack or a wrong port at once
CONNECT_TIMEOUT = 2.0

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # shell convention for "ended by SIGINT"

# `top`: how often it refreshes (seconds), and the terminal sequences of its full-screen view (the alternate
# screen, left as it was on exit, as `less` or `linkerd viz top` do; the cursor hidden meanwhile)
TOP_REFRESH = 1.0
_SCREEN_ON = "\x1b[?1049h\x1b[?25l"
_SCREEN_OFF = "\x1b[?25h\x1b[?1049l"
_CLEAR = "\x1b[H\x1b[2J"

# LoggerLevel is an EnumTypeWrapper: it has keys() but cannot be iterated (hence the noqa)
_LEVELS = [name.removeprefix("LVL_") for name in LoggerLevel.keys() if name != "LVL_UNKNOWN"]  # noqa: SIM118
_VALIDATORS = {
    ConfigValidator.CONFIG_VALID_STRING: "string",
    ConfigValidator.CONFIG_VALID_CUSTOM: "custom",
    ConfigValidator.CONFIG_VALID_INT: "int",
    ConfigValidator.CONFIG_VALID_POS_INT: "pos-int",
    ConfigValidator.CONFIG_VALID_FLOAT: "float",
    ConfigValidator.CONFIG_VALID_POS_FLOAT: "pos-float",
}


class CtlError(Exception):
    """A failure to report as `error: <rc>: <message>` (exit code 1)."""

    def __init__(self, message: str, rc: int = ResultCode.ERROR) -> None:
        super().__init__(message)
        self.rc = rc


# --- argument types ---


def _positive_float(value: str) -> float:
    try:
        v = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {value!r}")
    return v


def _positive_int(value: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {value!r}")
    return v


def _window(value: str) -> int:
    v = _positive_int(value)
    if v > MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"at most {MAX_WINDOW} seconds (what a server keeps): {value!r}")
    return v


def _port(value: str) -> int:
    v = _positive_int(value)
    if v > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}")
    return v


def _key_value(value: str) -> tuple[str, str]:
    name, sep, val = value.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {value!r}")
    return name, val


def _logger_name(value: str) -> str:
    # The wire name of the root logger is ""; "root" is easier to type
    return "" if value == "root" else value


def _logger_state(value: str) -> tuple[bool, int]:
    """`on`, `off` or a level name -> (enabled, level); LVL_UNKNOWN leaves the level unchanged."""
    lowered = value.lower()
    if lowered in ("on", "off"):
        return lowered == "on", LoggerLevel.LVL_UNKNOWN
    if value.upper() in _LEVELS:
        return True, LoggerLevel.Value("LVL_" + value.upper())
    raise argparse.ArgumentTypeError(f"invalid level {value!r} (expected one of {', '.join(_LEVELS)}, on, off)")


# --- parser ---


class _VersionAction(argparse.Action):
    """`-V`: like argparse's "version" action, but the version is only looked up when asked for
    (reading the distribution's metadata would slow every run of the health probe down)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{PROG} {installed_version()}")  # on stdout, as argparse's own version action
        parser.exit()


# --option, environment variable, help
_SECURITY_OPTIONS = (
    ("--tls-ca", "GRPC_HELPER_TLS_CA", "CA bundle (PEM) to verify the server with: TLS"),
    ("--tls-cert", "GRPC_HELPER_TLS_CERT", "client certificate (PEM), for mTLS"),
    ("--tls-key", "GRPC_HELPER_TLS_KEY", "private key (PEM) of --tls-cert"),
    ("--tls-server-name", "GRPC_HELPER_TLS_SERVER_NAME", "name the server's certificate must carry (default: --host)"),
    ("--token-file", "GRPC_HELPER_TOKEN_FILE", "file holding the bearer token to call with"),
)

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # argparse names no public type


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Operate a grpc-helper server (info, config, logs, events, ...)")
    p.add_argument("-V", "--version", action=_VersionAction, default=argparse.SUPPRESS)
    # The target also from the environment, so `eval "$(stack.sh env)"` points the CLI at a stack whose port
    # Docker picked; argparse converts (and checks) a string default with `type` as it does the option
    p.add_argument(
        "--host",
        default=os.environ.get("GRPC_HELPER_HOST") or DEFAULT_HOST,
        help=f"server host (default: {DEFAULT_HOST}; $GRPC_HELPER_HOST)",
    )
    p.add_argument(
        "--port",
        type=_port,
        default=os.environ.get("GRPC_HELPER_PORT") or DEFAULT_PORT,
        help=f"server port (default: {DEFAULT_PORT}; $GRPC_HELPER_PORT)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds each call may take (default: {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help=f"retry an unreachable server until --timeout (default: give up after {CONNECT_TIMEOUT:g}s)",
    )
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=None,
        metavar="BYTES",
        help="largest message sent or received (default: rpc-max-*-message-size, 4 MiB)",
    )
    route = p.add_argument_group("routing through main (info, config, log, events, shutdown, proxy, stat, channelz)")
    route.add_argument(
        "--service",
        dest="route_service",
        default="",
        metavar="NAME",
        help="answered by the server of this proxied service (its own srv/config/log/events), not by main",
    )
    route.add_argument(
        "--endpoint",
        dest="route_endpoint",
        default="",
        metavar="HOST:PORT",
        help="with --service: that one of its endpoints (replicas), as `info` lists them",
    )
    tls = p.add_argument_group("security (each also from its environment variable)")
    for option, env, what in _SECURITY_OPTIONS:
        tls.add_argument(
            option,
            default=os.environ.get(env) or None,
            metavar="PATH" if option != "--tls-server-name" else "NAME",
            help=f"{what} (${env})",
        )
    # --json is also accepted after the command; SUPPRESS keeps the global value when it is not given there
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON output")
    cmds = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def leaf(parent: Subparsers, name: str, handler: Callable[[Ctl], int], help: str) -> argparse.ArgumentParser:
        sub = parent.add_parser(name, help=help, description=help, parents=[json_opt])
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help: str) -> Subparsers:
        sub = cmds.add_parser(name, help=help, description=help)
        return sub.add_subparsers(dest=f"{name}_command", metavar="COMMAND", required=True)

    info = leaf(cmds, "info", Ctl.info, "list served services (all, or the named ones)")
    info.add_argument("names", nargs="*", metavar="NAME")

    config = group("config", "user config items (merged with those of registered proxied servers)")
    leaf(config, "get", Ctl.config_get, "show config items (all, or the named ones)").add_argument(
        "names", nargs="*", metavar="NAME"
    )
    leaf(config, "set", Ctl.config_set, "update config items (atomically; persisted)").add_argument(
        "updates", nargs="+", type=_key_value, metavar="NAME=VALUE"
    )
    leaf(config, "reset", Ctl.config_reset, "reset config items to their defaults").add_argument(
        "names", nargs="+", metavar="NAME"
    )

    log = group("log", "logger levels (the root logger is 'root')")
    leaf(log, "get", Ctl.log_get, "show loggers").add_argument("names", nargs="+", type=_logger_name, metavar="NAME")
    log_set = leaf(log, "set", Ctl.log_set, "set a logger level, or enable/disable it (persisted)")
    log_set.add_argument("name", type=_logger_name, metavar="NAME")
    log_set.add_argument("state", type=_logger_state, metavar="LEVEL|on|off")
    leaf(log, "reset", Ctl.log_reset, "reset loggers to their defaults").add_argument(
        "names", nargs="+", type=_logger_name, metavar="NAME"
    )

    events = group("events", "events service")
    listen = leaf(events, "listen", Ctl.events_listen, "print events as they come (all, or the named ones)")
    listen.add_argument("names", nargs="*", metavar="NAME")
    listen.add_argument("--count", type=_positive_int, metavar="N", help="stop after N events")
    listen.add_argument("--client-id", type=_positive_int, metavar="ID", help="resume this event queue")
    listen.add_argument(
        "--timeout-s",
        dest="duration",
        type=_positive_float,
        metavar="S",
        help="stop after S seconds (an error if fewer than --count events came)",
    )
    send = leaf(events, "send", Ctl.events_send, "send an event")
    send.add_argument("name", metavar="NAME")
    send.add_argument("properties", nargs="*", type=_key_value, metavar="KEY=VALUE")

    proxy = group("proxy", "proxied services registrations")
    register = leaf(proxy, "register", Ctl.proxy_register, "forward proxied services to a server")
    register.add_argument("names", nargs="*", metavar="NAME")
    register.add_argument(
        "--grpc-service",
        dest="grpc_services",
        action="append",
        default=[],
        metavar="PKG.SERVICE",
        help="a full gRPC service name main forwards without a descriptor (a dynamic service; repeatable)",
    )
    register.add_argument("--version", dest="proxy_version", required=True, metavar="V", help="version string")
    register.add_argument("--port", dest="proxy_port", type=_port, required=True, metavar="P", help="serving port")
    register.add_argument(
        "--host", dest="proxy_host", default="", metavar="H", help="serving host (default: the rpc-main-host)"
    )
    leaf(proxy, "forget", Ctl.proxy_forget, "stop forwarding proxied services").add_argument(
        "names", nargs="+", metavar="NAME"
    )

    shutdown = leaf(cmds, "shutdown", Ctl.shutdown, "shut the server down")
    shutdown.add_argument(
        "--timeout",
        dest="shutdown_timeout",
        type=int,
        default=-1,
        metavar="T",
        help="seconds the process then waits before ending: >0 T, 0 rpc-shutdown-timeout, <0 none (default: -1)",
    )

    call = leaf(cmds, "call", Ctl.call, "call any method the server describes by reflection (unary, server streaming)")
    call.add_argument("method", metavar="SERVICE/METHOD", help="e.g. greeter.Greeter/SayHello")
    call.add_argument("request", nargs="?", default="{}", metavar="JSON", help="the request, as JSON (default: {})")

    health = leaf(cmds, "health", Ctl.health, "standard gRPC health check: exit code 0 when SERVING, 1 otherwise")
    health.add_argument(
        "service", nargs="?", default="", metavar="SERVICE", help="gRPC service name, e.g. EchoService (default: all)"
    )
    live = (
        ("stat", Ctl.stat, "calls per method over the last --window seconds: rate, success rate, latency"),
        ("top", Ctl.top, "the stat table refreshed every second until Ctrl-C (plain lines when not on a terminal)"),
    )
    for name, handler, what in live:
        sub = leaf(cmds, name, handler, what)
        sub.add_argument("names", nargs="*", metavar="SERVICE", help="services as `info` names them (default: all)")
        sub.add_argument(
            "--window",
            type=_window,
            default=DEFAULT_WINDOW,
            metavar="S",
            help=f"seconds looked back (default: {DEFAULT_WINDOW}, at most {MAX_WINDOW})",
        )
        sub.add_argument(
            "--endpoints",
            action="store_true",
            help="main: also each registered endpoint's own figures for its proxied services (through main)",
        )
        sub.add_argument("--all", dest="idle", action="store_true", help="methods without calls in the window too")
        if name == "top":
            sub.add_argument("--count", type=_positive_int, metavar="N", help="stop after N refreshes")
    channelz = leaf(
        cmds, "channelz", Ctl.channelz, "main's channels to its backends (channelz): subchannels, states, calls"
    )
    channelz.add_argument("--all", dest="everything", action="store_true", help="every channel of the server's process")
    return p


# --- output ---


def message_dict(msg: Message) -> dict[str, Any]:
    """A response as JSON-ready dict: proto field names, every field present, without the (OK) `r` result."""
    out = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    out.pop("r", None)
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces (no trailing spaces)."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]
    )


def _proxy_cell(info: ServiceInfo) -> str:
    if not info.is_proxy:
        return "-"
    if not info.proxy_port:
        return "(unregistered)"
    # An empty registered host means the main server's own rpc-main-host
    return f"{info.proxy_host or '(main host)'}:{info.proxy_port}"


def _config_rows(items: Sequence[ConfigItem]) -> list[list[str]]:
    return [
        [i.name, i.value, i.default_value, _VALIDATORS.get(i.validator, str(i.validator)), i.description] for i in items
    ]


def _logger_rows(items: Sequence[LoggerConfig]) -> list[list[str]]:
    return [
        [i.name or "root", LoggerLevel.Name(i.level).removeprefix("LVL_"), "yes" if i.enabled else "no"] for i in items
    ]


def format_event(event: Event) -> str:
    """`NAME key=value ...`, values shell-quoted (so a line can be replayed with `events send`)."""
    props = " ".join(f"{p.name}={shlex.quote(p.value)}" for p in event.properties)
    return f"{event.name} {props}".rstrip()


# --- commands ---


class Ctl:
    """One command run: parsed arguments, a client of the server, output helpers."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.timeout: float = args.timeout  # each call's deadline
        # The retry window for an unreachable server (each call passes its own deadline, --timeout)
        self.connect_timeout = args.timeout if getattr(args, "wait", False) else min(args.timeout, CONNECT_TIMEOUT)
        self._client: RpcClient | None = None
        self._routed: dict[tuple[str, str], RpcClient] = {}  # stat --endpoints: by (service, endpoint)
        if getattr(args, "max_message_size", None):  # process-wide items: the CLI's own channels read them
            for item in (RpcStaticConfig.MAX_RECEIVE_MESSAGE, RpcStaticConfig.MAX_SEND_MESSAGE):
                item.update(str(args.max_message_size))

    @property
    def client(self) -> RpcClient:
        if self._client is None:
            self._client = RpcClient(
                self.args.host,
                self.args.port,
                {
                    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
                    "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
                    "log": (LoggerServiceStub, LoggerApiVersion.LOGGER_API_CURRENT),
                    "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
                },
                timeout=self.connect_timeout,  # retry an unreachable server that long, then fail
                name=RpcMetadata(
                    client=CLIENT_NAME,
                    route_service=self.args.route_service,
                    route_endpoint=self.args.route_endpoint,
                ),
                security=self.security,
            )
        return self._client

    @property
    def security(self) -> ClientSecurity | None:
        """TLS and token from --tls-* / --token-file (or their environment variables); None: plaintext."""
        a = self.args
        if not (a.tls_ca or a.tls_cert or a.tls_key or a.tls_server_name or a.token_file):
            return None
        try:
            security = ClientSecurity.from_files(a.tls_ca, a.tls_cert, a.tls_key, a.tls_server_name, a.token_file)
        except (OSError, ValueError) as exc:
            raise CtlError(f"Bad security option: {exc}", ResultCode.ERROR_PARAM_INVALID) from exc
        if not (a.tls_ca or a.tls_cert or a.tls_server_name):  # a token alone: plaintext (loopback only)
            security = replace(security, tls=False)
        return security

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        for client in self._routed.values():
            client.close()

    def _client_for(self, stubs: dict[str, tuple[type, int | None]], service: str, endpoint: str) -> RpcClient:
        """A client of the server given (or, through main, of `service`'s server at `endpoint`, when given)."""
        return RpcClient(
            self.args.host,
            self.args.port,
            stubs,
            timeout=self.connect_timeout,
            name=RpcMetadata(client=CLIENT_NAME, route_service=service, route_endpoint=endpoint),
            security=self.security,
        )

    def routed(self, service: str, endpoint: str) -> RpcClient:
        """A `srv` client whose calls main routes to `service`'s server at `endpoint` (kept for `top`'s refreshes)."""
        client = self._routed.get((service, endpoint))
        if client is None:
            stubs: dict[str, tuple[type, int | None]] = {
                "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)
            }
            client = self._routed[service, endpoint] = self._client_for(stubs, service, endpoint)
        return client

    def out(self, msg: Message, text: Callable[[], str]) -> int:
        """Print the response as JSON, or as `text()`."""
        print(json.dumps(message_dict(msg), indent=2) if self.args.json else text())
        return EXIT_OK

    # info
    def info(self) -> int:
        r = self.client.srv.info(Filter(names=self.args.names), timeout=self.timeout)
        return self.out(
            r,
            lambda: table(
                ["NAME", "VERSION", "API", "PROXY"],
                [
                    [i.name, i.version, f"{i.supported_api_version}-{i.current_api_version}", _proxy_cell(i)]
                    for i in r.items
                ],
            ),
        )

    # config
    def _config_out(self, r: ConfigStatus) -> int:
        return self.out(r, lambda: table(["NAME", "VALUE", "DEFAULT", "TYPE", "DESCRIPTION"], _config_rows(r.items)))

    def config_get(self) -> int:
        return self._config_out(self.client.config.get(Filter(names=self.args.names), timeout=self.timeout))

    def config_set(self) -> int:
        update = ConfigUpdate(items=[ConfigItemUpdate(name=n, value=v) for n, v in self.args.updates])
        return self._config_out(self.client.config.set(update, timeout=self.timeout))

    def config_reset(self) -> int:
        return self._config_out(self.client.config.reset(Filter(names=self.args.names), timeout=self.timeout))

    # log
    def _log_out(self, r: LoggerStatus) -> int:
        return self.out(r, lambda: table(["NAME", "LEVEL", "ENABLED"], _logger_rows(r.items)))

    def log_get(self) -> int:
        return self._log_out(self.client.log.get(Filter(names=self.args.names), timeout=self.timeout))

    def log_set(self) -> int:
        enabled, level = self.args.state
        if level == LoggerLevel.LVL_UNKNOWN:  # on/off: keep the own level (on the wire, LVL_UNKNOWN clears it)
            level = self.client.log.get(Filter(names=[self.args.name]), timeout=self.timeout).items[0].level
        update = LoggerUpdate(items=[LoggerConfig(name=self.args.name, enabled=enabled, level=level)])
        return self._log_out(self.client.log.set(update, timeout=self.timeout))

    def log_reset(self) -> int:
        return self._log_out(self.client.log.reset(Filter(names=self.args.names), timeout=self.timeout))

    # events
    def events_send(self) -> int:
        event = Event(name=self.args.name, properties=[EventProperty(name=k, value=v) for k, v in self.args.properties])
        r = self.client.events.send(event, timeout=self.timeout)
        return self.out(r, lambda: f"sent {format_event(event)}")

    def events_listen(self) -> int:
        """Print events until --count of them came, --timeout-s elapsed, or Ctrl-C; then interrupt the queue.

        A stream lost once listening (the server shut down or restarted, the connection broke) is
        reconnected, resuming the same queue, as `EventsListener` does: with backoff, until the server
        is back, --timeout-s passes or Ctrl-C. Failing to reach the server at first is an error."""
        args = self.args
        deadline = None if args.duration is None else time.monotonic() + args.duration
        listening = _Listening(args.client_id or 0)
        interrupt = True  # whether the queue is still ours to interrupt on the way out
        try:
            while True:
                flt = EventFilter(names=args.names, client_id=listening.client_id, last_seq=listening.last_seq)
                # The call deadline implements --timeout-s; the client's own timeout bounds the wait for the server
                left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
                stream = self.client.events.listen(flt, timeout=left)
                try:
                    if self._consume(stream, listening):
                        return EXIT_OK
                    # A normal end: someone interrupted the queue, or resumed it from another stream
                    interrupt = False
                    print(f"event queue {listening.client_id} interrupted or resumed elsewhere", file=sys.stderr)
                    return self._listen_end(listening.received, "", ResultCode.ERROR_STATE_UNEXPECTED)
                except RpcException as exc:
                    timed_out = isinstance(exc, RpcTransportError) and exc.status == grpc.StatusCode.DEADLINE_EXCEEDED
                    if args.duration is not None and timed_out:
                        within = f" within {args.duration:g}s"
                        return self._listen_end(listening.received, within, ResultCode.ERROR_REQUEST_TIMEOUT)
                    if not listening.listening or not _stream_lost(exc):
                        interrupt = False
                        raise
                    listening.lost(exc)
                finally:
                    stream.cancel()
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        finally:
            # Interrupt first, so that the server retains the queue (resumable with --client-id)
            if listening.client_id and interrupt:
                self._interrupt(listening.client_id)

    def _consume(self, stream: Iterable[EventStatus], listening: _Listening) -> bool:
        """Print the events of one listen stream; True once --count of them came, False when it ends."""
        for status in stream:
            listening.connected(status.client_id)
            if not status.event.name or not listening.first_time(status.seq):  # first status, keep-alives, again
                continue
            if self.args.json:
                print(json.dumps(message_dict(status.event)), flush=True)
            else:
                print(format_event(status.event), flush=True)
            listening.received += 1
            if self.args.count and listening.received >= self.args.count:
                return True
        return False

    def _listen_end(self, received: int, within: str, rc: int) -> int:
        """Listening stopped before --count events: an error if a count was asked for."""
        if self.args.count:
            raise CtlError(f"{received} of {self.args.count} event(s) received{within}", rc)
        return EXIT_OK

    def _interrupt(self, client_id: int) -> None:
        """Stop the server-side listening loop; the queue is then retained (see rpc-event-retain-timeout)."""
        try:
            self.client.events.interrupt(EventInterrupt(client_id=client_id), timeout=self.timeout)
        except RpcException as exc:
            # Already stopped on the server side (stream cancelled first) is fine
            if exc.rc not in (ResultCode.ERROR_STATE_UNEXPECTED, ResultCode.ERROR_ITEM_UNKNOWN):
                print(f"warning: could not interrupt event queue {client_id}: {exc}", file=sys.stderr)

    # proxy
    def proxy_register(self) -> int:
        a = self.args
        if not (a.names or a.grpc_services):
            raise CtlError("Give the services to register: NAMES, or --grpc-service", ResultCode.ERROR_PARAM_MISSING)
        request = ProxyRegisterRequest(
            names=a.names, version=a.proxy_version, host=a.proxy_host, port=a.proxy_port, grpc_services=a.grpc_services
        )
        r = self.client.srv.proxy_register(request, timeout=self.timeout)
        where = f"{a.proxy_host or '<rpc-main-host>'}:{a.proxy_port}"
        names = ", ".join([*a.names, *a.grpc_services])
        return self.out(r, lambda: f"registered {names} at {where} (version {a.proxy_version})")

    def proxy_forget(self) -> int:
        r = self.client.srv.proxy_forget(Filter(names=self.args.names), timeout=self.timeout)
        return self.out(r, lambda: f"forgot {', '.join(self.args.names)}")

    # shutdown
    def shutdown(self) -> int:
        r = self.client.srv.shutdown(ShutdownRequest(timeout=self.args.shutdown_timeout), timeout=self.timeout)
        return self.out(r, lambda: "shutdown requested")

    # call
    def call(self) -> int:
        """Each response as JSON (proto field names): indented, or one object per line with --json."""
        # Imported here only: the rest of the CLI (the container health probe) stays without grpc_reflection
        from grpc_helper import reflected_call

        client = self.client
        metadata = client.metadata.as_metadata() + client.security.metadata()
        for response in reflected_call.call(
            client.channel, self.args.method, self.args.request, metadata, self.timeout
        ):
            print(json.dumps(response) if self.args.json else json.dumps(response, indent=2), flush=True)
        return EXIT_OK

    # stat / top
    def _stat(self) -> list[StatRow]:
        a = self.args
        request = StatRequest(names=a.names, window=a.window, idle=a.idle)
        return stat_rows(self.client, request, self.timeout, self.routed if a.endpoints else None)

    def stat(self) -> int:
        rows = self._stat()
        if self.args.json:
            print(json.dumps({"window": self.args.window, "items": [r.as_json() for r in rows]}, indent=2))
            return EXIT_OK
        headers, cells, notes = stat_table(rows, endpoints=self.args.endpoints)
        if cells:
            print(table(headers, cells))
        else:
            print(f"no calls in the last {self.args.window}s")
        for note in notes:
            print(f"error: {note}", file=sys.stderr)
        return EXIT_OK

    def top(self) -> int:
        """The stat table, refreshed every second until Ctrl-C (or --count refreshes): full screen on a terminal,
        plain lines (one per method, time-stamped) otherwise. A server that stops answering once shown is said
        on the screen and asked again at the next refresh; one that never answered is an error, as for `stat`."""
        tty = sys.stdout.isatty()
        shown = 0
        if tty:
            sys.stdout.write(_SCREEN_ON)
        try:
            while True:
                tick = time.monotonic()
                try:
                    rows, problem = self._stat(), ""
                except RpcException as exc:
                    if not shown:
                        raise
                    rows, problem = [], _describe(exc, self)
                self._show(rows, problem, tty=tty)
                shown += 1
                if self.args.count and shown >= self.args.count:
                    return EXIT_OK
                time.sleep(max(0.0, tick + TOP_REFRESH - time.monotonic()))  # the refresh period, not a sync
        except KeyboardInterrupt:
            return EXIT_OK  # how top ends
        finally:
            if tty:
                sys.stdout.write(_SCREEN_OFF)
                sys.stdout.flush()

    def _show(self, rows: list[StatRow], problem: str, *, tty: bool) -> None:
        a = self.args
        stamp = now_stamp()
        if not tty:
            if a.json:  # one object per refresh
                print(json.dumps({"time": stamp, "error": problem, "items": [r.as_json() for r in rows]}), flush=True)
                return
            lines = [f"{stamp} error: {problem}"] if problem else list(stat_lines(rows, stamp))
            print("\n".join(lines), flush=True)
            return
        size = shutil.get_terminal_size()
        headers, cells, notes = stat_table(rows, endpoints=a.endpoints)
        title = f"grpc-helper top  {a.host}:{a.port}{f' ({a.route_service})' if a.route_service else ''}"
        title = f"{title}  window {a.window}s  {stamp[11:]}"  # the time of day (UTC) only
        hint = "  (Ctrl-C to quit)"
        lines = [title + hint if len(title + hint) <= size.columns else title, ""]
        if problem:
            lines.append(f"error: {problem}")
        elif cells:
            fitted = fit(headers, cells, size.columns, 3 if a.endpoints else 2, tails=2 if a.endpoints else None)
            lines.extend(table(fitted[0], fitted[1:]).splitlines())
        else:
            lines.append(f"no calls in the last {a.window}s")
        lines.extend(f"error: {note}" for note in notes)
        lines = [line[: size.columns] for line in lines[: max(size.lines - 1, 1)]]
        sys.stdout.write(_CLEAR + "\n".join(lines) + "\n")
        sys.stdout.flush()

    # channelz
    def channelz(self) -> int:
        """A row per subchannel of main's channels to its backends (every channel of the process with --all, or
        when the server proxies nothing), from the server's channelz service (admins only, with a policy)."""
        # Imported here only: the rest of the CLI (the container health probe) stays without grpcio-channelz
        from grpc_channelz.v1 import channelz_pb2_grpc

        a = self.args
        services = channel_services(self.client.srv.info(Filter(), timeout=self.timeout))
        stubs: dict[str, tuple[type, int | None]] = {"channelz": (channelz_pb2_grpc.ChannelzStub, None)}
        with self._client_for(stubs, a.route_service, a.route_endpoint) as client:
            rows = channel_rows(client.channelz, services, self.timeout, everything=a.everything or not services)
        if a.json:
            print(json.dumps([r.as_json() for r in rows], indent=2))
        else:
            print(table(CHANNEL_HEADERS, [r.cells() for r in rows]))
        return EXIT_OK

    # health
    def health(self) -> int:
        """One attempt, bounded by --timeout: a health probe must answer fast, not wait for the server."""
        metadata = RpcMetadata(client=CLIENT_NAME, user="", host="", ip="")  # no local lookups: keep it fast
        stubs: dict[str, tuple[type, int | None]] = {"health": (health_pb2_grpc.HealthStub, None)}
        with RpcClient(
            self.args.host, self.args.port, stubs, timeout=None, name=metadata, security=self.security
        ) as client:
            request = health_pb2.HealthCheckRequest(service=self.args.service)
            try:
                r = client.health.Check(request, timeout=self.timeout)
            except RpcTransportError as exc:
                if exc.status == grpc.StatusCode.NOT_FOUND:
                    raise CtlError(
                        f"Unknown service for health check: {self.args.service!r}", ResultCode.ERROR_ITEM_UNKNOWN
                    ) from exc
                raise
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        print(json.dumps({"status": status}) if self.args.json else status)
        return EXIT_OK if r.status == health_pb2.HealthCheckResponse.SERVING else EXIT_ERROR


class _Listening:
    """Where an `events listen` is: its queue, the events printed, and reconnections (said on stderr:
    stdout only has events, one per line, or one JSON object per line)."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id
        self.received = 0
        self._backoff = Backoff()
        self.listening = False  # a first status came
        self.last_seq = 0  # the number of the last event received (EventStatus.seq), said when resuming
        self._reconnecting = False

    def connected(self, client_id: int) -> None:
        """A status came: the first one says which queue listens, or that it was resumed."""
        if not self.listening:
            self.client_id, self.listening = client_id, True
            print(f"listening with client id {client_id}", file=sys.stderr, flush=True)
        elif self._reconnecting:
            print(f"resumed event queue {client_id}", file=sys.stderr, flush=True)
            self._reconnecting = False
            self._backoff.reset()

    def first_time(self, seq: int) -> bool:
        """Whether the event numbered `seq` is new: not one sent again after a lost stream (unnumbered: new)."""
        if seq and seq <= self.last_seq:
            return False
        self.last_seq = seq or self.last_seq
        return True

    def lost(self, exc: RpcException) -> None:
        """The stream was lost: wait before the next attempt to resume the queue."""
        if not self._reconnecting:
            print(f"lost the event stream ({exc}): reconnecting...", file=sys.stderr, flush=True)
            self._reconnecting = True
        time.sleep(self._backoff.next_delay())  # a wait between attempts, not a synchronisation


def _stream_lost(exc: RpcException) -> bool:
    """Whether a listen stream ended because of the server or the network (worth reconnecting): the
    server shutting down, or gone (unreachable, connection reset)."""
    if exc.rc == ResultCode.ERROR_STREAM_SHUTDOWN:
        return True
    return isinstance(exc, RpcTransportError) and exc.status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def _describe(exc: RpcException, ctl: Ctl) -> str:
    """The error message, with the server address when it could not be reached."""
    if isinstance(exc, RpcTransportError):
        where = f"{ctl.args.host}:{ctl.args.port}"
        if exc.status == grpc.StatusCode.UNAUTHENTICATED:
            return f"UNAUTHENTICATED by {where}: {exc.details} (--token-file, or a client certificate)"
        if exc.status == grpc.StatusCode.PERMISSION_DENIED:
            return f"PERMISSION_DENIED by {where}: {exc.details}"
        if exc.status == grpc.StatusCode.UNAVAILABLE:
            hint = _tls_hint(exc.details)
            # Not a TLS failure: perhaps a server still starting, which --wait would wait for
            waited = "" if hint or ctl.args.wait else f" (gave up after {ctl.connect_timeout:g}s; --wait waits longer)"
            return f"can't reach {where}: {hint}{exc}{waited}"
        if exc.status == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"no answer from {where} within {ctl.timeout:g}s: {exc}"
    return str(exc)


# What a TLS failure was, from gRPC's details (lower-cased fragments -> what to tell the operator)
_TLS_FAILURES = (
    (("hostname verification",), "the server's certificate does not name this host (see --tls-server-name)"),
    (("certificate_expired", "certificate has expired"), "bad certificate: the server's certificate has expired"),
    (
        (
            "bad_signature",
            "signature failure",
            "certificate_verify_failed",
            "unable to get local issuer",
            "self signed",
        ),
        "unknown CA: the server's certificate is not from the CA given (--tls-ca)",
    ),
    (("wrong_version_number", "packet_length_too_long", "http_request"), "a TLS client against a plaintext server?"),
    (
        ("socket closed",),
        "connection closed by the server: a TLS server refusing a plaintext client, or a client certificate it"
        " won't take (bad or missing --tls-cert, or from another CA)",
    ),
    (("handshake", "ssl_error"), "TLS handshake failed"),
)


def _tls_hint(details: str) -> str:
    lowered = details.lower()
    for fragments, hint in _TLS_FAILURES:
        if any(f in lowered for f in fragments):
            return f"{hint}: "
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 ok, 1 error, 2 usage error, 130 interrupted listen)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.route_endpoint and not args.route_service:
            parser.error("--endpoint needs --service")
        if getattr(args, "endpoints", False) and args.route_service:
            parser.error("--endpoints asks main for each endpoint itself: name the services instead of --service")
    except SystemExit as exc:  # usage error (2), or --help / --version (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    # The operator's commands are not traced, whatever OTEL_* the environment has (a container's health probe
    # every few seconds would be a trace each, and set up an exporter each)
    tracing.disable()
    ctl = Ctl(args)
    try:
        return int(args.handler(ctl))
    except RpcException as exc:
        print(f"error: {rc_name(exc.rc)}: {_describe(exc, ctl)}", file=sys.stderr)
    except CtlError as exc:
        print(f"error: {rc_name(exc.rc)}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`| head`): not an error. Point stdout at
        # /dev/null so the interpreter's final flush doesn't fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        ctl.close()
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
