"""The live view (issue 22, items 5 and 6): `srv.stat` and the CLI's `stat` and `top`, and channelz with the CLI's
`channelz`, on real servers with known traffic: direct, through main, with a policy and both identity forms
(tokens and certificates) over mTLS."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_channelz.v1 import channelz_pb2, channelz_pb2_grpc

from grpc_helper import RpcClient, RpcException, RpcServer, ctl
from grpc_helper.api import Filter, ProxyRegisterRequest, ResultCode, StatRequest
from grpc_helper.auth import token_hash
from grpc_helper.errors import RpcTransportError
from grpc_helper.live import MAX_WINDOW, MethodWindow
from grpc_helper.pki import CertificateAuthority, write_private
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, EchoResponse
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import EchoManager, Servers, echo_descriptor, start_echo, wait_until

ECHO_STUBS = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
FAST, SLOW = 0.02, 0.25  # the server-side delays of the known traffic (seconds)
# The known traffic: 14 fast calls that succeed, 4 fast ones answering a Result error, 2 slow ones
OK_FAST, FAILING, SLOW_CALLS = 14, 4, 2
CALLS = OK_FAST + FAILING + SLOW_CALLS
TOKENS = {"operator": "t-live-admin-0123456789", "app": "t-live-user-0123456789"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class TimedEcho(EchoManager):
    """`echo` of "sleep:<seconds>;<text>" waits that long first (a known server-side latency), then answers
    `<text>` as `EchoManager` does ("fail:<rc>" fails with that `Result` code)."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        if request.text.startswith("sleep:"):
            seconds, _, rest = request.text.removeprefix("sleep:").partition(";")
            time.sleep(float(seconds))  # the latency the test measures, not a synchronisation
            request = EchoRequest(text=rest)
        return super().echo(request)


def traffic(client: RpcClient) -> float:
    """The known traffic through `client`; returns how long it took (seconds)."""
    start = time.monotonic()
    texts = [f"sleep:{FAST};ok"] * OK_FAST + [f"sleep:{FAST};fail:21"] * FAILING + [f"sleep:{SLOW};ok"] * SLOW_CALLS

    def code_of(text: str) -> int:
        try:
            client.echo.echo(EchoRequest(text=text), timeout=10)
        except RpcException as exc:
            return int(exc.rc)
        return ResultCode.OK

    codes = [code_of(text) for text in texts]
    assert codes.count(ResultCode.ERROR_PARAM_INVALID) == FAILING
    assert codes.count(ResultCode.OK) == CALLS - FAILING
    return time.monotonic() - start


def check_figures(item: dict[str, Any], calls: int, failures: int, *, took: float) -> None:
    """One method's row (as `stat --json` gives it) shows the known traffic: its counts exactly, its rate over
    the span it says it covered, its latencies within the bins' precision of the known delays."""
    assert (item["calls"], item["failures"]) == (calls, failures), item
    assert took <= item["seconds"] <= 30, item  # the server started before the traffic, within the window
    assert item["rate"] == pytest.approx(calls / item["seconds"])
    assert item["success"] == pytest.approx((calls - failures) / calls)
    # A quantile is within a bin (~19%) of the true duration; calls take their delay plus a little
    assert FAST * 0.8 <= item["p50"] <= FAST * 1.25 + 0.03, item
    for q in ("p95", "p99"):
        assert SLOW * 0.8 <= item[q] <= SLOW * 1.25 + 0.05, item


def run_ctl(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> tuple[int, str, str]:
    code = ctl.main(["--port", str(port), "--timeout", "10", *args])
    out, err = capsys.readouterr()
    return code, out, err


def stat_items(capsys: pytest.CaptureFixture[str], port: int, *args: str) -> list[dict[str, Any]]:
    code, out, err = run_ctl(capsys, port, *args)
    assert code == 0, err
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def row(items: list[dict[str, Any]], service: str, method: str, endpoint: str = "") -> dict[str, Any]:
    found = [i for i in items if (i["service"], i["method"], i["endpoint"]) == (service, method, endpoint)]
    assert len(found) == 1, items
    return found[0]


# --- the window itself ---


def test_window_quantiles_expiry_and_bounded_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.25]
    monkeypatch.setattr("grpc_helper.live._now", lambda: clock[0])
    window = MethodWindow("echo", "echo")
    for i in range(1, 101):  # 1 ms .. 100 ms
        window.record(i / 1000, ok=i % 10 != 0)
    figures = window.figures(30, clock[0], 30)
    assert (figures.calls, figures.failures) == (100, 10)
    for q, true in zip((0.5, 0.95, 0.99), figures.quantiles, strict=True):
        assert q * 0.1 / 1.2 <= true <= q * 0.1 * 1.2, (q, true)
    clock[0] += 29  # still within a 30 s window
    assert window.figures(30, clock[0], 30).calls == 100
    clock[0] += 1  # out of it, yet kept for a longer one
    assert window.figures(30, clock[0], 30).calls == 0
    assert window.figures(MAX_WINDOW, clock[0], MAX_WINDOW).calls == 100
    for _ in range(3 * MAX_WINDOW):  # calls over a long time: the ring never grows
        clock[0] += 1
        window.record(0.001, ok=True)
    assert len(window._ring) == MAX_WINDOW
    assert window.figures(MAX_WINDOW, clock[0], MAX_WINDOW).calls == MAX_WINDOW


# --- stat, direct ---


class TestStatDirect:
    def test_known_traffic(self, servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
        srv = servers(0, [echo_descriptor(TimedEcho())])
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=10) as client:
            took = traffic(client)
        answer = srv.client.srv.stat(StatRequest(names=["echo"]))
        assert [(i.service, i.method) for i in answer.items] == [("echo", "echo")]  # methods with calls only
        check_figures(row(stat_items(capsys, srv.port, "stat", "--json", "echo"), "echo", "echo"), CALLS, FAILING,
                      took=took)  # fmt: skip
        # The table: one row per method, rate and success rate computed from the counts
        code, out, _ = run_ctl(capsys, srv.port, "stat")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["SERVICE", "METHOD", "CALLS", "RPS", "SUCCESS", "P50", "P95", "P99"]
        echo = next(line.split() for line in lines if line.startswith("echo "))
        assert echo[:3] == ["echo", "echo", str(CALLS)]
        assert echo[4] == f"{(CALLS - FAILING) / CALLS * 100:.1f}%"
        # the CLI's own calls are served calls too: srv/stat shows in the next look
        assert any(line.split()[:2] == ["srv", "stat"] for line in run_ctl(capsys, srv.port, "stat")[1].splitlines())

    def test_idle_methods_windows_and_names(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor(TimedEcho())])
        every = srv.client.srv.stat(StatRequest(names=["echo"], idle=True)).items
        assert sorted(i.method for i in every) == ["chat", "collect", "echo", "repeat"]
        assert all(i.calls == 0 and i.p50 == 0 for i in every)
        with pytest.raises(RpcException) as err:
            srv.client.srv.stat(StatRequest(window=MAX_WINDOW + 1))
        assert err.value.rc == ResultCode.ERROR_PARAM_INVALID
        with pytest.raises(RpcException) as err:
            srv.client.srv.stat(StatRequest(names=["nope"]))
        assert err.value.rc == ResultCode.ERROR_ITEM_UNKNOWN

    def test_streams_count_as_calls(self, servers: Servers) -> None:
        srv = servers(0, [echo_descriptor(TimedEcho())])
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=10) as client:
            for _ in range(3):
                assert len(list(client.echo.repeat(EchoRequest(text="s", count=5)))) == 5
            with pytest.raises(RpcException):  # the stream ends with a Result error: a failed call
                list(client.echo.repeat(EchoRequest(text="crash", count=1)))
        (item,) = srv.client.srv.stat(StatRequest(names=["echo"])).items
        assert (item.method, item.calls, item.failures) == ("repeat", 4, 1)


# --- a guarded stack: main and a backend over mTLS, with a policy ---


@dataclass
class Guarded:
    main: RpcServer
    backend: RpcServer
    folder: Path
    ca: CertificateAuthority

    def options(self, name: str, token: str | None = None) -> list[str]:
        """CLI options calling main as the holder of certificate `name` (and of `token`, which then wins)."""
        crt, key = self.ca.issue(name).write(self.folder, name)
        out = ["--host", "localhost", "--tls-ca", str(self.folder / "ca.crt"), "--tls-cert", str(crt)]
        out += ["--tls-key", str(key)]
        if token is not None:
            path = self.folder / f"{name}.token"
            write_private(path, token.encode())  # 0600: the CLI refuses a token file others may read
            out += ["--token-file", str(path)]
        return out

    def security(self, name: str, token: str | None = None) -> ClientSecurity:
        issued = self.ca.issue(name)
        return ClientSecurity(ca=self.ca.cert_pem, cert=issued.cert, key=issued.key, token=token)

    def client(self, name: str, token: str | None = None) -> RpcClient:
        stubs = {**ECHO_STUBS, **self.main.client.stubs}
        return RpcClient("localhost", self.main.port, stubs, timeout=10, security=self.security(name, token))


# The two identity forms of each role: (certificate name, token); a token wins over an unknown certificate
USER_FORMS = {"token": ("stranger", TOKENS["app"]), "certificate": ("app-cert", None)}
ADMIN_FORMS = {"token": ("stranger", TOKENS["operator"]), "certificate": ("ops-cert", None)}


@pytest.fixture
def guarded(servers: Servers, tmp_path: Path) -> Guarded:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = CertificateAuthority.create("live test CA")
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue("main", "localhost", "127.0.0.1").write(folder, "main")
    ca.issue("echo", "localhost", "127.0.0.1").write(folder, "echo")
    identities = {
        "operator": {"role": "admin", "token_sha256": token_hash(TOKENS["operator"])},
        "app": {"role": "user", "token_sha256": token_hash(TOKENS["app"])},
        "ops": {"role": "admin", "certificate": "ops-cert"},
        "app2": {"role": "user", "certificate": "app-cert"},
        # main, on the backend: it forwards for the callers it names (their rights, not its own)
        "main": {"role": "service", "certificate": "main", "proxy": True},
    }
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"identities": identities}))

    def config(name: str) -> dict[str, str]:
        return {
            "rpc-tls-cert": str(folder / f"{name}.crt"),
            "rpc-tls-key": str(folder / f"{name}.key"),
            "rpc-tls-ca": str(folder / "ca.crt"),
            "rpc-tls-client-auth": "required",
            "rpc-auth-policy": str(policy),
        }

    backend = servers(0, [echo_descriptor(TimedEcho())], cli_config=config("echo"))
    main = servers(0, [echo_descriptor(is_proxy=True)], cli_config=config("main"))
    main.client.srv.proxy_register(
        ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
    )
    assert wait_until(lambda: main.client.srv.info(Filter(names=["echo"])).items[0].endpoints[0].serving, 30)
    return Guarded(main, backend, folder, ca)


class TestStatThroughMain:
    @pytest.mark.parametrize("form", USER_FORMS)
    def test_known_traffic_seen_by_main_and_by_the_backend(
        self, guarded: Guarded, form: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        name, token = USER_FORMS[form]
        with guarded.client(name, token) as client:
            took = traffic(client)
        options = guarded.options(name, token)
        port = guarded.main.port
        # main's own view: its forwarder's calls (the backend's `Result` errors are bytes to main: gRPC OK)
        at_main = row(stat_items(capsys, port, *options, "stat", "--json", "echo"), "echo", "echo")
        assert at_main["calls"] == CALLS
        assert at_main["failures"] == 0
        assert at_main["p50"] >= FAST * 0.8
        # the backend's own view, routed through main (--service): its `Result` errors are failures
        routed = stat_items(capsys, port, *options, "--service", "echo", "stat", "--json", "echo")
        check_figures(row(routed, "echo", "echo"), CALLS, FAILING, took=took)
        # every endpoint's own figures beside main's (--endpoints)
        both = stat_items(capsys, port, *options, "stat", "--json", "--endpoints", "echo")
        check_figures(row(both, "echo", "echo", f"127.0.0.1:{guarded.backend.port}"), CALLS, FAILING, took=took)
        assert row(both, "echo", "echo")["calls"] == CALLS
        # the table, with an ENDPOINT column
        code, out, _ = run_ctl(capsys, port, *options, "stat", "--endpoints")
        assert code == 0
        assert out.splitlines()[0].split()[:3] == ["SERVICE", "METHOD", "ENDPOINT"]
        assert any(line.split()[:4] == ["echo", "echo", f"127.0.0.1:{guarded.backend.port}", str(CALLS)]
                   for line in out.splitlines())  # fmt: skip

    def test_unknown_callers_are_refused(self, guarded: Guarded, capsys: pytest.CaptureFixture[str]) -> None:
        for options in (guarded.options("stranger"), guarded.options("stranger", "t-not-a-known-token")):
            code, _, err = run_ctl(capsys, guarded.main.port, *options, "stat")
            assert code == 1
            assert "UNAUTHENTICATED" in err


# --- top ---


class TestTop:
    def test_plain_lines_off_a_terminal(self, servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
        srv = servers(0, [echo_descriptor(TimedEcho())])
        with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=10) as client:
            traffic(client)
        start = time.monotonic()
        code, out, _ = run_ctl(capsys, srv.port, "top", "--count", "2", "echo")
        assert code == 0
        assert time.monotonic() - start >= 0.9  # refreshed once a second
        lines = out.splitlines()
        assert len(lines) == 2  # one line per method with calls, per refresh
        assert "\x1b" not in out
        for line in lines:
            stamp, method, *fields = line.split()
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp)
            assert method == "echo/echo"
            assert fields[:1] == [f"calls={CALLS}"]
            assert f"success={(CALLS - FAILING) / CALLS * 100:.1f}%" in fields
        code, out, _ = run_ctl(capsys, srv.port, "top", "--count", "1", "--json")
        assert json.loads(out)["items"]

    def test_a_terminal_gets_a_full_screen_table_in_80_columns(self, servers: Servers) -> None:
        backend = servers(0, [echo_descriptor(TimedEcho(), name="echo")])
        main = servers(0, [echo_descriptor(is_proxy=True)])
        main.client.srv.proxy_register(
            ProxyRegisterRequest(names=["echo"], version="1", host="127.0.0.1", port=backend.port)
        )
        with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10) as client:
            traffic(client)
        env = {**os.environ, "COLUMNS": "80", "LINES": "24", "TERM": "xterm"}
        command = [sys.executable, "-m", "grpc_helper.ctl", "--host", "127.0.0.1", "--port", str(main.port), "top",
                   "--all", "--endpoints", "--count", "2"]  # fmt: skip
        output = run_on_terminal(command, env)
        assert output.startswith("\x1b[?1049h")  # the alternate screen, left on exit
        assert output.rstrip().endswith("\x1b[?1049l")
        screens = [ANSI.sub("", s) for s in output.split("\x1b[H\x1b[2J")[1:]]
        assert len(screens) == 2
        lines = screens[-1].replace("\r", "").splitlines()
        assert lines[0].startswith(f"grpc-helper top  127.0.0.1:{main.port}  window 30s")
        assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
        header = lines[2].split()
        assert header == ["SERVICE", "METHOD", "ENDPOINT", "CALLS", "RPS", "SUCCESS", "P50", "P95", "P99"]
        echo = [line.split() for line in lines[3:] if line.startswith("echo ") and " echo " in line]
        assert [r[3] for r in echo] == [str(CALLS), str(CALLS)]  # main's row, and the endpoint's


def run_on_terminal(command: list[str], env: dict[str, str], timeout: float = 60) -> str:
    """Run `command` with its stdout on a pseudo-terminal; everything it wrote there, once it ended."""
    master, slave = pty.openpty()
    process = subprocess.Popen(command, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.wait(timeout=max(deadline - time.monotonic(), 1)) == 0, process.stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        if process.stderr is not None:
            process.stderr.close()
    return b"".join(chunks).decode()


# --- channelz ---


def top_channels(client: RpcClient) -> Any:
    return client.channelz.GetTopChannels(channelz_pb2.GetTopChannelsRequest(), timeout=10)


class TestChannelz:
    @staticmethod
    def channelz_client(guarded: Guarded, name: str, token: str | None) -> RpcClient:
        stubs: dict[str, tuple[type, int | None]] = {"channelz": (channelz_pb2_grpc.ChannelzStub, None)}
        return RpcClient("localhost", guarded.main.port, stubs, timeout=10, security=guarded.security(name, token))

    @pytest.mark.parametrize("form", USER_FORMS)
    def test_refused_to_others_than_admins(self, guarded: Guarded, form: str) -> None:
        with self.channelz_client(guarded, *USER_FORMS[form]) as client:
            with pytest.raises(RpcTransportError) as err:
                top_channels(client)
            assert err.value.status == grpc.StatusCode.PERMISSION_DENIED
            assert "needs role admin" in err.value.details
        with self.channelz_client(guarded, "stranger", None) as client:
            with pytest.raises(RpcTransportError) as err:
                top_channels(client)
            assert err.value.status == grpc.StatusCode.UNAUTHENTICATED

    @pytest.mark.parametrize("form", ADMIN_FORMS)
    def test_admins_see_the_backend_subchannels(
        self, guarded: Guarded, form: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with guarded.client("app-cert") as client:
            assert client.echo.echo(EchoRequest(text="x")).text == "x"
        options = guarded.options(*ADMIN_FORMS[form])
        code, out, err = run_ctl(capsys, guarded.main.port, *options, "channelz", "--json")
        assert code == 0, err
        rows = json.loads(out)
        assert rows
        # main's channels to its backend only (the backend's own auto-client, in this process too, has the same
        # target: the table of main and backends in processes of their own is exact, see below)
        assert {r["service"] for r in rows} == {"echo"}
        backend = f"127.0.0.1:{guarded.backend.port}"
        assert all(r["subchannel"].endswith(backend) for r in rows if r["subchannel"] != "-"), rows  # "-": unused
        assert any(r["state"] == "READY" and r["succeeded"] >= 1 for r in rows), rows  # the call above
        # the backend's own channelz, routed through main
        code, out, err = run_ctl(capsys, guarded.main.port, *options, "--service", "echo", "channelz", "--all")
        assert code == 0, err


def test_channelz_table_of_main_and_backend_processes(
    servers: Servers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = servers(0, [echo_descriptor(is_proxy=True)])
    processes = [start_echo(main.port, tmp_path / f"echo{i}") for i in range(2)]
    try:

        def ports() -> set[int]:
            (info,) = main.client.srv.info(Filter(names=["echo"])).items
            return {e.port for e in info.endpoints if e.serving}

        assert wait_until(lambda: len(ports()) == 2, 60)
        with RpcClient("127.0.0.1", main.port, ECHO_STUBS, timeout=10) as client:
            for _ in range(4):
                client.echo.echo(EchoRequest(text="x"))

        def table() -> list[list[str]]:
            code, out, err = run_ctl(capsys, main.port, "channelz")
            assert code == 0, err
            return [line.split() for line in out.splitlines()]

        def all_ready() -> bool:
            rows = table()[1:]
            return bool(rows) and all(r[3] == "READY" for r in rows)

        assert wait_until(all_ready, 30), table()
        header, *rows = table()
        assert header == ["SERVICE", "CHANNEL", "SUBCHANNEL", "STATE", "STARTED", "OK", "FAILED", "SOCKETS"]
        assert {r[0] for r in rows} == {"echo"}
        # The balanced channel over both endpoints, and one channel per endpoint (its health monitor)
        subchannels = {int(r[2].rsplit(":", 1)[1]) for r in rows}
        assert subchannels == ports()
        balanced = [r for r in rows if "," in r[1]]
        assert len(balanced) == 2  # its two subchannels
        assert sum(int(r[5]) for r in balanced) >= 4  # the calls, balanced over them
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
