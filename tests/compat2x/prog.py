"""A grpc-helper program that runs on either generation: the original 2.3.1 (.venv-2x) or ours (.venv).

tests/test_compat_2x.py runs it, one process per server, listener or client. The code is the same
for both generations on purpose: it uses only the Python API they share, so running it on ours is
itself a check that 2.x code runs unchanged. The one difference is where the wire API lives
(`grpc_helper.api` in ours, the `grpc_helper_api` package in 2.x). The echo sample's code is
`grpc_helper_samples.api` on both sides; for the 2.x side the test generates it (importing
`grpc_helper_api/common.proto`) and puts it on PYTHONPATH.

Usage: prog.py MODE ARGS...
  server ARGS  echo served locally, events, user items compat-item and compat-int-item (scenario 1)
  main ARGS    events, echo proxied, user item compat-main-item
  echo ARGS    echo as a proxied service registering on rpc-main-host:rpc-main-port, user item compat-echo-item
  listen PORT  an EventsListener on 127.0.0.1:PORT (names: COMPAT)
  calls PORT   echo calls (unary and streaming, alternately) through 127.0.0.1:PORT until stdin closes
  client PORT  the scenario-1 observations against the server on 127.0.0.1:PORT
Server ARGS are RpcCliParser's (--system, --user, -w, -p, -c NAME=VALUE).

Output: JSON lines on stdout (a server's first line: {"port": ..., "version": ...}); logs go to
stderr. Every mode exits as soon as its stdin closes (`calls` first prints its summary), so no
process outlives the test that started it.
"""

import json
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc_helper
from grpc_helper import (
    RpcClient,
    RpcCliParser,
    RpcException,
    RpcManager,
    RpcProxiedManager,
    RpcServer,
    RpcServiceDescriptor,
)
from grpc_helper.config import Config
from grpc_helper.events import EventsListener

try:  # ours
    from grpc_helper.api import (
        ConfigApiVersion,
        ConfigItemUpdate,
        ConfigUpdate,
        ConfigValidator,
        Empty,
        Event,
        EventApiVersion,
        EventFilter,
        EventInterrupt,
        EventProperty,
        Filter,
        LoggerApiVersion,
        LoggerConfig,
        LoggerLevel,
        LoggerUpdate,
        ProxyRegisterRequest,
        ResultCode,
        ServerApiVersion,
    )
    from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
    from grpc_helper.api.events_pb2_grpc import EventServiceStub
    from grpc_helper.api.logger_pb2_grpc import LoggerServiceStub
    from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
except ImportError:  # the original: its wire API is the separate grpc-helper-api package
    from grpc_helper_api import (  # type: ignore[no-redef]
        ConfigApiVersion,
        ConfigItemUpdate,
        ConfigUpdate,
        ConfigValidator,
        Empty,
        Event,
        EventApiVersion,
        EventFilter,
        EventInterrupt,
        EventProperty,
        Filter,
        LoggerApiVersion,
        LoggerConfig,
        LoggerLevel,
        LoggerUpdate,
        ProxyRegisterRequest,
        ResultCode,
        ServerApiVersion,
    )
    from grpc_helper_api.config_pb2_grpc import ConfigServiceStub  # type: ignore[no-redef]
    from grpc_helper_api.events_pb2_grpc import EventServiceStub  # type: ignore[no-redef]
    from grpc_helper_api.logger_pb2_grpc import LoggerServiceStub  # type: ignore[no-redef]
    from grpc_helper_api.server_pb2_grpc import RpcServerServiceStub  # type: ignore[no-redef]

import grpc_helper_samples
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import (
    EchoServiceServicer,
    EchoServiceStub,
    add_EchoServiceServicer_to_server,
)

HOST = "127.0.0.1"
CALL_DEADLINE = 15.0  # seconds: per-call gRPC deadline of the client modes
_out_lock = threading.Lock()


def emit(obj: Any) -> None:
    """One JSON line on stdout (threads share it)."""
    with _out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def exit_when_stdin_closes(then: Callable[[], None] | None = None) -> None:
    """Watch stdin: at EOF (the test closed it, or died), run `then`, or end the process at once.

    With `then`, the process ends by itself; but if the test died (this process was reparented),
    nobody waits for it any more: end it at once rather than after its current call.
    """
    parent = os.getppid()

    def watch() -> None:
        sys.stdin.read()
        if then is None:
            os._exit(0)
        then()
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def rc_name(rc: int) -> str:
    try:
        return ResultCode.Name(rc)
    except ValueError:
        return str(rc)


# --- servers ---
class EchoMethods:
    """Echo and repeat; a text "fail:<rc>" raises RpcException(rc) (repeat: after its messages)."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        if request.text.startswith("fail:"):
            raise RpcException("asked to fail", int(request.text[5:]))
        return EchoResponse(text=request.text, payload=request.payload)

    # Annotated with the message type, as 2.x wants for streams (it builds error messages from it)
    def repeat(self, request: EchoRequest) -> EchoResponse:  # type: ignore[misc]
        for index in range(request.count):
            yield EchoResponse(text=request.text, index=index)
        if request.text.startswith("fail:"):
            raise RpcException("asked to fail", int(request.text[5:]))


class EchoServed(EchoMethods, EchoServiceServicer, RpcManager):
    """The echo service served in place."""


class EchoProxied(EchoMethods, EchoServiceServicer, RpcProxiedManager):
    """The echo service, registering itself on the main server."""

    def _proxied_services(self) -> list[str]:
        return ["echo"]

    def _proxied_version(self) -> str:
        return f"compat-echo:{grpc_helper.__version__}"


def echo_descriptor(manager: Any, is_proxy: bool = False) -> RpcServiceDescriptor:
    return RpcServiceDescriptor(
        grpc_helper_samples,
        "echo",
        EchoApiVersion,
        manager,
        add_EchoServiceServicer_to_server,
        EchoServiceStub,
        is_proxy,
    )


def user_items(mode: str) -> list[Any]:
    if mode == "server":
        return [
            Config(name="compat-item", description="A string item", default_value="default-value"),
            Config(
                name="compat-int-item",
                description="A positive int item",
                default_value="5",
                validator=ConfigValidator.CONFIG_VALID_POS_INT,
            ),
        ]
    name = f"compat-{mode}-item"
    return [Config(name=name, description=f"The {mode} item", default_value=f"{mode}-default")]


def serve(mode: str, argv: list[str]) -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
    )
    args = RpcCliParser(f"compat {mode}").with_rpc_args(0).parse(argv)
    if mode == "server":
        descriptors = [echo_descriptor(EchoServed())]
    elif mode == "main":
        descriptors = [echo_descriptor(EchoServiceServicer(), is_proxy=True)]
    else:
        descriptors = [echo_descriptor(EchoProxied())]
    exit_when_stdin_closes()
    srv = RpcServer(
        args.port, descriptors, args.folders, args.config, user_items=user_items(mode), with_events=mode != "echo"
    )
    # 2.x cannot listen on port 0 (it would register and auto-connect to port 0): the test gives it
    # a port, and `port` is then that port; ours reports the port it bound
    emit({"port": srv.port, "version": grpc_helper.__version__})
    srv.wait_shutdown()


# --- listener ---
class Recorder(EventsListener):
    """Prints every event it receives, with its current client id."""

    def on_event(self, event: Event) -> None:
        props = {p.name: p.value for p in event.properties}
        emit({"event": event.name, "props": props, "client_id": self.client_id})


def listen(port: int) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    exit_when_stdin_closes()
    client = RpcClient(
        HOST,
        port,
        {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)},
        timeout=60,
        name="compat-listener",
    )
    listener = Recorder(client, ["COMPAT"])
    if not listener.ready.wait(60):
        emit({"error": "listener not ready after 60 s"})
        return
    emit({"ready": listener.client_id})
    threading.Event().wait()  # until stdin closes


# --- continuous calls ---
def calls(port: int) -> None:
    """Echo calls until stdin closes: {"progress": n} every 10 successes, then a summary."""
    stop = threading.Event()
    exit_when_stdin_closes(stop.set)
    client = RpcClient(
        HOST, port, {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}, timeout=30, name="compat-calls"
    )
    ok, failures, slowest = 0, [], 0.0
    deadline = time.monotonic() + 600  # bounded even if nobody closes stdin
    index = 0
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.monotonic()
        text = f"call-{index}"
        try:
            if index % 2:
                got = [r.text for r in client.echo.repeat(EchoRequest(text=text, count=2), timeout=CALL_DEADLINE)]
                expected: Any = [text, text]
            else:
                got = client.echo.echo(EchoRequest(text=text), timeout=CALL_DEADLINE).text
                expected = text
            if got == expected:
                ok += 1
                if ok % 10 == 0:
                    emit({"progress": ok})
            else:
                failures.append({"call": index, "got": repr(got)})
        except Exception as exc:  # every failure is reported, with how long the client retried
            rc = rc_name(exc.rc) if isinstance(exc, RpcException) else type(exc).__name__
            failures.append({"call": index, "rc": rc, "error": str(exc)[:400], "after_s": time.monotonic() - started})
        slowest = max(slowest, time.monotonic() - started)
        index += 1
        stop.wait(0.05)  # a steady trickle of calls, not a load test
    emit({"ok": ok, "failures": failures, "slowest_s": round(slowest, 3)})


# --- scenario-1 observations ---
def observe(report: dict[str, Any], key: str, fn: Callable[[], Any]) -> None:
    """report[key] = what fn() returned, or the error it raised (result code, else exception type)."""
    try:
        report[key] = fn()
    except RpcException as exc:
        report[key] = {"rc": rc_name(exc.rc)}
    except Exception as exc:
        report[key] = {"exception": f"{type(exc).__name__}: {exc}"[:300]}


def info_rows(status: Any) -> list[Any]:
    return [
        [i.name, i.version, i.current_api_version, i.supported_api_version, i.is_proxy, i.proxy_host, i.proxy_port]
        for i in status.items
    ]


def config_rows(status: Any) -> list[Any]:
    return [
        [i.name, i.value, i.default_value, i.description, i.can_be_empty, ConfigValidator.Name(i.validator)]
        for i in status.items
    ]


def logger_rows(status: Any) -> list[Any]:
    return [[i.name, i.enabled, LoggerLevel.Name(i.level)] for i in status.items]


def set_items(**values: str) -> ConfigUpdate:
    return ConfigUpdate(items=[ConfigItemUpdate(name=k.replace("_", "-"), value=v) for k, v in values.items()])


def set_logger(name: str, level: int, enabled: bool = True) -> LoggerUpdate:
    return LoggerUpdate(items=[LoggerConfig(name=name, enabled=enabled, level=level)])


def stream_outcome(stream: Iterator[Any], row: Callable[[Any], Any]) -> dict[str, Any]:
    """Messages of a stream until it ends, and how it ended."""
    rows: list[Any] = []
    try:
        for message in stream:
            rows.append(row(message))
        return {"rows": rows, "end": "OK"}
    except RpcException as exc:
        return {"rows": rows, "end": rc_name(exc.rc)}


class Listening:
    """A listen stream pumped by a thread into a queue, so the caller reads it with deadlines."""

    def __init__(self, client: Any, request: Any) -> None:
        self.statuses: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stream = client.events.listen(request, timeout=30)
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for status in self._stream:
                self.statuses.put(("status", status))
            self.statuses.put(("end", "OK"))
        except RpcException as exc:
            self.statuses.put(("end", rc_name(exc.rc)))
        except Exception as exc:
            self.statuses.put(("end", type(exc).__name__))

    def next(self, want: Callable[[Any], bool], timeout: float = 10) -> tuple[str, Any]:
        """The next status for which want(status) is true, or the stream's end ("end", how)."""
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self.statuses.get(timeout=max(0.01, deadline - time.monotonic()))
            if kind == "end" or want(value):
                return kind, value


def events_flow(client: Any) -> dict[str, Any]:
    """listen / keep-alive / send / inspect / interrupt / resume, as one client sees them."""
    out: dict[str, Any] = {}
    first_stream = Listening(client, EventFilter(names=["COMPAT"]))
    _, first = first_stream.next(lambda _status: True)
    client_id = first.client_id
    out["first"] = {"client_id>0": client_id > 0, "has_event": first.HasField("event"), "r": rc_name(first.r.code)}
    # The servers run with rpc-event-keepalive-timeout=1: a keep-alive comes within a few seconds
    kind, keep = first_stream.next(lambda s: not s.event.name, timeout=10)
    if kind == "status":
        out["keepalive"] = {"same_client_id": keep.client_id == client_id, "has_event": keep.HasField("event")}
    client.events.send(Event(name="OTHER"), timeout=CALL_DEADLINE)  # filtered out by the listener
    client.events.send(Event(name="COMPAT", properties=[EventProperty(name="k", value="v")]), timeout=CALL_DEADLINE)
    kind, got = first_stream.next(lambda s: bool(s.event.name))
    if kind == "status":
        props = [[p.name, p.value] for p in got.event.properties]
        out["event"] = {"name": got.event.name, "props": props, "same_client_id": got.client_id == client_id}
    out["inspect_live"] = client_id in client.events.inspect(Empty(), timeout=CALL_DEADLINE).client_ids

    def interrupt() -> str:
        return rc_name(client.events.interrupt(EventInterrupt(client_id=client_id), timeout=CALL_DEADLINE).r.code)

    observe(out, "interrupt", interrupt)
    kind, how = first_stream.next(lambda s: bool(s.event.name))
    out["after_interrupt"] = how if kind == "end" else {"unexpected_event": how.event.name}
    observe(
        out, "interrupt_again", lambda: rc_name(client.events.interrupt(EventInterrupt(client_id=client_id)).r.code)
    )
    out["inspect_retained"] = client_id in client.events.inspect(Empty(), timeout=CALL_DEADLINE).client_ids
    client.events.send(Event(name="COMPAT", properties=[EventProperty(name="while", value="interrupted")]))
    resumed = Listening(client, EventFilter(names=["COMPAT"], client_id=client_id))
    _, first_again = resumed.next(lambda _status: True)
    out["resume_first"] = {"same_client_id": first_again.client_id == client_id, "r": rc_name(first_again.r.code)}
    kind, kept = resumed.next(lambda s: bool(s.event.name))
    out["resume_kept_event"] = [[p.name, p.value] for p in kept.event.properties] if kind == "status" else kept
    interrupt()
    kind, how = resumed.next(lambda s: bool(s.event.name))
    out["resume_after_interrupt"] = how if kind == "end" else {"unexpected_event": how.event.name}
    return out


def client_report(port: int) -> None:
    """Everything scenario 1 compares between generations, as one JSON object."""
    exit_when_stdin_closes()
    stubs: dict[str, Any] = {
        "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
        "config": (ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
        "log": (LoggerServiceStub, LoggerApiVersion.LOGGER_API_CURRENT),
        "events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
        "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
    }
    c = RpcClient(HOST, port, stubs, timeout=10, name="compat-client")
    d = CALL_DEADLINE
    r: dict[str, Any] = {}
    # Served service, unary and streaming
    observe(r, "echo", lambda: c.echo.echo(EchoRequest(text="hello"), timeout=d).text)
    observe(r, "echo_fail", lambda: c.echo.echo(EchoRequest(text="fail:32"), timeout=d).text)
    observe(r, "repeat", lambda: stream_outcome(c.echo.repeat(EchoRequest(text="r", count=3), timeout=d), text_index))
    observe(r, "repeat_fail", lambda: stream_outcome(c.echo.repeat(EchoRequest(text="fail:32", count=2)), text_index))
    # srv
    observe(r, "info", lambda: info_rows(c.srv.info(Filter(), timeout=d)))
    observe(r, "info_one", lambda: info_rows(c.srv.info(Filter(names=["echo", "log"]), timeout=d)))
    observe(r, "info_unknown", lambda: info_rows(c.srv.info(Filter(names=["nope"]), timeout=d)))

    def register(*names: str, version: str = "1", port: int = 1) -> str:
        return rc_name(c.srv.proxy_register(ProxyRegisterRequest(names=names, version=version, port=port)).r.code)

    observe(r, "register_empty", lambda: register())
    observe(r, "register_empty_name", lambda: register(""))
    observe(r, "register_unknown", lambda: register("nope"))
    observe(r, "register_not_proxy", lambda: register("echo"))
    observe(r, "register_not_proxy_no_port", lambda: register("echo", version="", port=0))
    observe(r, "forget_unknown", lambda: rc_name(c.srv.proxy_forget(Filter(names=["nope"])).r.code))
    observe(r, "forget_not_proxy", lambda: rc_name(c.srv.proxy_forget(Filter(names=["config"])).r.code))
    # config
    observe(r, "config_get", lambda: config_rows(c.config.get(Filter(), timeout=d)))
    observe(r, "config_get_one", lambda: config_rows(c.config.get(Filter(names=["compat-int-item"]), timeout=d)))
    observe(r, "config_get_unknown", lambda: config_rows(c.config.get(Filter(names=["nope"]))))
    observe(r, "config_get_ignored", lambda: config_rows(c.config.get(Filter(names=["nope"], ignore_unknown=True))))
    observe(r, "config_get_empty_name", lambda: config_rows(c.config.get(Filter(names=[""], ignore_unknown=True))))
    observe(r, "config_get_static", lambda: config_rows(c.config.get(Filter(names=["rpc-max-workers"]))))
    observe(r, "config_set", lambda: config_rows(c.config.set(set_items(compat_item="changed"), timeout=d)))
    observe(r, "config_set_invalid", lambda: config_rows(c.config.set(set_items(compat_int_item="abc"))))
    observe(r, "config_set_not_positive", lambda: config_rows(c.config.set(set_items(compat_int_item="0"))))
    observe(r, "config_set_empty_value", lambda: config_rows(c.config.set(set_items(compat_int_item=""))))
    observe(r, "config_set_empty_list", lambda: config_rows(c.config.set(ConfigUpdate())))
    observe(r, "config_set_unknown", lambda: config_rows(c.config.set(set_items(nope="1"))))
    observe(r, "config_set_atomic", lambda: config_rows(c.config.set(set_items(compat_item="x", compat_int_item="y"))))
    observe(r, "config_after_atomic", lambda: config_rows(c.config.get(Filter(names=["compat-item"]))))
    observe(r, "config_reset", lambda: config_rows(c.config.reset(Filter(names=["compat-item"]), timeout=d)))
    observe(r, "config_reset_empty", lambda: config_rows(c.config.reset(Filter())))
    # log
    debug, info = LoggerLevel.LVL_DEBUG, LoggerLevel.LVL_INFO
    observe(r, "log_set", lambda: logger_rows(c.log.set(set_logger("compat.logger", debug), timeout=d)))
    observe(r, "log_get", lambda: logger_rows(c.log.get(Filter(names=["compat.logger", "compat.never-set"]))))
    observe(r, "log_get_root", lambda: logger_rows(c.log.get(Filter(names=["", "root"]), timeout=d)))
    observe(r, "log_get_empty", lambda: logger_rows(c.log.get(Filter(), timeout=d)))
    observe(r, "log_disable", lambda: logger_rows(c.log.set(set_logger("compat.logger", info, False), timeout=d)))
    observe(r, "log_reset", lambda: logger_rows(c.log.reset(Filter(names=["compat.logger"]), timeout=d)))
    observe(r, "log_set_empty", lambda: logger_rows(c.log.set(LoggerUpdate(), timeout=d)))
    # events
    observe(r, "events_send_empty_name", lambda: rc_name(c.events.send(Event(), timeout=d).r.code))
    observe(r, "events_send_space", lambda: rc_name(c.events.send(Event(name="a b"), timeout=d).r.code))
    observe(r, "events_listen_unknown_id", lambda: stream_outcome(c.events.listen(EventFilter(client_id=9999)), str))
    observe(r, "events_listen_empty_name", lambda: stream_outcome(c.events.listen(EventFilter(names=[""])), str))
    observe(r, "events_interrupt_unknown", lambda: rc_name(c.events.interrupt(EventInterrupt(client_id=9999)).r.code))
    observe(r, "events", lambda: events_flow(c))
    # API versions: a stubs map declaring a version above the current one, 0 (below every supported
    # version, which is 1 for all these services), or none (no check)
    versions: dict[str, Callable[[int], int | None]] = {
        "too_new": lambda current: current + 1,
        "too_old": lambda _current: 0,
        "none": lambda _current: None,
    }
    for label, version in versions.items():
        vc = RpcClient(
            HOST,
            port,
            {
                "srv": (RpcServerServiceStub, version(ServerApiVersion.SERVER_API_CURRENT)),
                "config": (ConfigServiceStub, version(ConfigApiVersion.CONFIG_API_CURRENT)),
                "echo": (EchoServiceStub, version(EchoApiVersion.ECHO_API_CURRENT)),
            },
            timeout=10,
            name="compat-versions",
        )
        observe(r, f"api_{label}_echo", lambda vc=vc: vc.echo.echo(EchoRequest(text="v"), timeout=d).text)
        observe(
            r, f"api_{label}_repeat", lambda vc=vc: stream_outcome(vc.echo.repeat(EchoRequest(count=1)), text_index)
        )
        observe(r, f"api_{label}_config", lambda vc=vc: len(vc.config.get(Filter(), timeout=d).items))
        observe(r, f"api_{label}_srv", lambda vc=vc: len(vc.srv.info(Filter(), timeout=d).items))
    emit(r)


def text_index(message: Any) -> list[Any]:
    return [message.text, message.index]


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    if mode in ("server", "main", "echo"):
        serve(mode, args)
    elif mode == "listen":
        listen(int(args[0]))
    elif mode == "calls":
        calls(int(args[0]))
    elif mode == "client":
        client_report(int(args[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
