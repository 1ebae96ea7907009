"""The reference deployment across real containers: image, compose stack, restarts, supervisord.

Skipped when no Docker engine is reachable, except under CI=true where it must run.
All tests share one stack (module fixture) and run in file order on a single xdist worker.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grpc_helper import EventsListener, RpcClient, RpcException
from grpc_helper.api import (
    ConfigApiVersion,
    ConfigItemUpdate,
    ConfigUpdate,
    Event,
    EventApiVersion,
    Filter,
    ResultCode,
    ServerApiVersion,
    ShutdownRequest,
)
from grpc_helper.api.config_pb2_grpc import ConfigServiceStub
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, Note, NoteKey, NotesApiVersion
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2_grpc import NotesServiceStub

from helpers import STACK_SERIES, operator_security, prometheus_value

ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_CONF = "/tmp/supervisord.conf"

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


@pytest.fixture(scope="module", autouse=True)
def _engine(docker_engine: None) -> None:
    """Every test here needs the engine (skipped without one, failed under CI=true)."""


def compose_cmd() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns a truthy value without raising; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # not ready yet
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


class Stack:
    """One compose project on a free host port; torn down with its volumes at the end."""

    def __init__(self, prefix: str = "ght") -> None:
        self.build_output = ""  # what build-image.sh printed
        self.project = f"{prefix}{os.getpid()}"
        # Host port 0: Docker picks a free one (read back by `port`), no find-then-bind race
        self.env = {**os.environ, "GRPC_HELPER_MAIN_PORT": "0", "COMPOSE_PROJECT_NAME": self.project}

    @property
    def port(self) -> int:
        """Main's published host port, as Docker assigned it (it may change when main's container restarts)."""
        out = self.compose("port", "main", "54321").stdout.strip()  # e.g. 0.0.0.0:49153
        return int(out.rsplit(":", 1)[1])

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [*compose_cmd(), "-p", self.project, "-f", str(ROOT / "compose.yaml"), *args]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
        return done

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def exec(self, service: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", self.container(service), *cmd], capture_output=True, text=True, timeout=60
        )

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout

    def client(self, **stubs: Any) -> RpcClient:
        return RpcClient("127.0.0.1", self.port, stubs, timeout=60, name="docker-tests")

    def main_client(self) -> RpcClient:
        return self.client(
            srv=(RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
            config=(ConfigServiceStub, ConfigApiVersion.CONFIG_API_CURRENT),
            events=(EventServiceStub, EventApiVersion.EVENT_API_CURRENT),
            echo=(EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
            notes=(NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT),
        )

    def wait_registered(self, timeout: float = 120) -> None:
        def registered() -> bool:
            with self.main_client() as c:
                items = c.srv.info(Filter(names=["echo", "notes"]), timeout=5).items
                return all(i.proxy_port for i in items)

        wait_for(registered, timeout, "echo and notes registered on main")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    built = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    assert built.returncode == 0, built.stdout + built.stderr
    s = Stack()
    s.build_output = built.stdout
    try:
        s.compose("up", "-d", "--no-build")
        s.wait_registered()
        yield s
    finally:
        s.compose("down", "-v", check=False)


def test_calls_through_main(stack: Stack) -> None:
    with stack.main_client() as c:
        assert c.echo.echo(EchoRequest(text="hi", payload=b"\x01" * 64)).payload == b"\x01" * 64
        assert [m.index for m in c.echo.repeat(EchoRequest(text="r", count=20))] == list(range(20))
        assert c.echo.collect(EchoRequest(text=t) for t in "abc").text == "abc"
        assert [m.text for m in c.echo.chat(EchoRequest(text=t) for t in "xy")] == ["x", "y"]
        c.notes.put(Note(key="k1", text="first"))
        assert c.notes.get(NoteKey(key="k1")).note.text == "first"
        info = {i.name: i for i in c.srv.info(Filter()).items}
        assert info["echo"].is_proxy
        assert info["echo"].version.startswith("grpc-helper-samples:")


def test_bad_input_over_the_network(stack: Stack) -> None:
    with stack.main_client() as c:
        with pytest.raises(RpcException) as exc:
            c.srv.info(Filter(names=["no-such-service"]))
        assert exc.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
        with pytest.raises(RpcException) as exc:
            c.config.set(ConfigUpdate(items=[ConfigItemUpdate(name="notes-max-count", value="0")]))
        assert exc.value.rc == ResultCode.ERROR_PARAM_INVALID
    future = stack.client(echo=(EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT + 1))
    with pytest.raises(RpcException) as exc:
        future.echo.echo(EchoRequest())
    assert exc.value.rc == ResultCode.ERROR_API_SERVER_TOO_OLD
    future.close()


class _Collector(EventsListener):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.events: list[Event] = []
        self.got = threading.Event()
        super().__init__(*args, **kwargs)

    def on_event(self, event: Event) -> None:
        self.events.append(event)
        self.got.set()


def test_sample_event_reaches_listener_on_main(stack: Stack) -> None:
    with stack.main_client() as c:
        listener = _Collector(c, ["NOTE_CHANGED"])
        try:
            assert listener.ready.wait(30)
            c.notes.put(Note(key="evt", text="x"))
            assert listener.got.wait(30)
            props = {p.name: p.value for p in listener.events[0].properties}
            assert props.get("key") == "evt"
        finally:
            listener.interrupt()


def test_config_set_reaches_samples_and_survives_down_up(stack: Stack) -> None:
    update = ConfigUpdate(items=[ConfigItemUpdate(name="notes-max-length", value="5")])
    with stack.main_client() as c:
        c.notes.put(Note(key="durable", text="kept"))
        c.config.set(update)
        with pytest.raises(RpcException) as exc:
            c.notes.put(Note(key="long", text="way too long"))  # enforced by the notes container
        assert exc.value.rc == ResultCode.ERROR_PARAM_INVALID
    # As stack.sh down: echo's replicas go with their anonymous workspaces, the named volumes are kept
    stack.compose("rm", "--stop", "--force", "-v", "echo")
    stack.compose("down")
    stack.compose("up", "-d", "--no-build")
    stack.wait_registered()
    with stack.main_client() as c:
        assert c.config.get(Filter(names=["notes-max-length"])).items[0].value == "5"
        assert c.notes.get(NoteKey(key="durable")).note.text == "kept"  # data persisted in the workspace volume
        c.config.reset(Filter(names=["notes-max-length"]))


def test_restart_main_restores_registrations(stack: Stack) -> None:
    echo_registrations = stack.logs("echo").count("Registered")
    stack.compose("restart", "main")
    with stack.main_client() as c:
        assert wait_for(lambda: c.echo.echo(EchoRequest(text="back"), timeout=5).text == "back", 120, "echo via main")
    logs = stack.logs("main")
    assert "Restored registration of echo" in logs
    # docker stop: supervisord forwarded SIGTERM and the server shut down gracefully, not killed
    assert "Received SIGTERM" in logs
    assert "shut down" in logs
    assert "exit status 0" in logs
    assert stack.logs("echo").count("Registered") == echo_registrations, "echo did not need to re-register"


def test_restart_sample_reregisters(stack: Stack) -> None:
    before = stack.logs("echo").count("Registered")
    stack.compose("restart", "echo")
    wait_for(lambda: stack.logs("echo").count("Registered") > before, 120, "echo re-registration")
    with stack.main_client() as c:
        assert wait_for(lambda: c.echo.echo(EchoRequest(text="again"), timeout=5).text == "again", 60, "echo")


def supervised_pid(stack: Stack, service: str) -> int:
    out = stack.exec(service, "supervisorctl", "-c", SUPERVISOR_CONF, "pid", service)
    return int(out.stdout.strip())


def test_kill_9_is_restarted_by_supervisord(stack: Stack) -> None:
    pid = supervised_pid(stack, "echo")
    killed = stack.exec("echo", "sh", "-c", f"kill -9 {pid}")  # shell builtin: minimal images have no kill binary
    assert killed.returncode == 0, killed.stderr
    wait_for(lambda: supervised_pid(stack, "echo") not in (0, pid), 60, "supervisord restart of echo")
    with stack.main_client() as c:
        assert wait_for(lambda: c.echo.echo(EchoRequest(text="recovered"), timeout=5).text == "recovered", 60, "echo")


def test_remote_shutdown(stack: Stack) -> None:
    pid = supervised_pid(stack, "main")
    with stack.main_client() as c:
        assert c.srv.shutdown(ShutdownRequest(timeout=-1)).r.code == ResultCode.OK
    # the process ends gracefully; supervisord starts a new one
    wait_for(lambda: supervised_pid(stack, "main") not in (0, pid), 60, "main restarted after remote shutdown")
    assert "shut down" in stack.logs("main")
    stack.wait_registered()


def test_image_runs_as_non_root(stack: Stack) -> None:
    assert stack.exec("main", "id", "-u").stdout.strip() != "0"
    health = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Health.Status}}", stack.container("main")],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert health in ("healthy", "starting")


def served_certificate(port: int, creds: dict[str, str]) -> bytes:
    """The certificate (DER) main's TLS server presents to a new connection with the operator's credentials."""
    context = ssl.create_default_context(cafile=creds["GRPC_HELPER_TLS_CA"])
    context.load_cert_chain(creds["GRPC_HELPER_TLS_CERT"], creds["GRPC_HELPER_TLS_KEY"])
    context.set_alpn_protocols(["h2"])  # what gRPC servers expect
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_secure_stack_from_stack_sh(tmp_path: Path) -> None:
    """`stack.sh up --scale echo=2` as the README runs it: mTLS on every hop (two echo replicas), the
    policy on, the container healthchecks over mTLS; the operator's credentials from `stack.sh env` get
    through main, the CLI without them is refused; `stack.sh secrets rotate` is picked up without a
    restart."""
    project = f"ghs{os.getpid()}"
    env = {
        **os.environ,
        "GRPC_HELPER_MAIN_PORT": "0",  # Docker picks the host port; stack.sh reads it back
        "COMPOSE_PROJECT_NAME": project,
        "GRPC_HELPER_STACK_STATE": str(tmp_path / "state"),
    }

    def stack_sh(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(ROOT / "scripts" / "stack.sh"), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)

    up = stack_sh("up", "--scale", "echo=2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack: up (docker, mTLS + policy)" in up.stdout
        port = int(up.stdout.rsplit("main on 127.0.0.1:", 1)[1].split()[0])
        exported = stack_sh("env").stdout.strip().splitlines()[-1].removeprefix("export ")  # after its unset line
        creds = dict(item.split("=", 1) for item in exported.split())
        target = {"GRPC_HELPER_HOST": "127.0.0.1", "GRPC_HELPER_PORT": str(port)}
        assert {k: creds[k] for k in target} == target  # the CLI's target: IPv4, as Docker published it
        security = operator_security(creds)
        stubs = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
        # 127.0.0.1, not localhost: with a Docker-picked port, [::1]:port may be another stack's (Docker 20.10
        # picks IPv4 and IPv6 ports apart), as it was once in CI
        srv = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}
        with RpcClient("127.0.0.1", port, srv, timeout=60, security=security) as info_client:

            def serving_echo() -> int:
                return sum(e.serving for e in info_client.srv.info(Filter(names=["echo"])).items[0].endpoints)

            # Two echo replicas (--scale), each reached by main over mTLS at its own address
            wait_for(lambda: serving_echo() == 2, 120, "2 echo replicas serving")
        with RpcClient("127.0.0.1", port, stubs, timeout=60, security=security) as client:
            assert [client.echo.echo(EchoRequest(text=f"s{i}")).text for i in range(4)] == ["s0", "s1", "s2", "s3"]
        ctl = [str(ROOT / ".venv" / "bin" / "grpc-helper"), "--timeout", "5"]
        ok = subprocess.run([*ctl, "config", "get"], env={**env, **creds}, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        assert "notes-max-length" in ok.stdout  # main reached notes over mTLS, as admin
        refused = subprocess.run([*ctl, "info"], env={**env, **target}, capture_output=True, text=True)
        assert refused.returncode == 1, refused.stdout
        compose = [*compose_cmd(), "-p", project, "-f", str(ROOT / "compose.yaml")]

        def healthy(service: str) -> bool:
            """Every container of `service` (echo has two) healthy."""
            ids = subprocess.run([*compose, "ps", "-q", service], env=env, capture_output=True, text=True).stdout
            status = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", *ids.split()], capture_output=True, text=True
            )
            return bool(ids.split()) and set(status.stdout.split()) == {"healthy"}

        for service in ("main", "echo", "notes"):
            wait_for(lambda service=service: healthy(service), 120, f"{service} healthy (its healthcheck speaks mTLS)")
        main_crt = Path(creds["GRPC_HELPER_TLS_CA"]).parent / "main.crt"
        assert served_certificate(port, creds) == ssl.PEM_cert_to_DER_cert(main_crt.read_text())
        rotated = stack_sh("secrets", "rotate")
        assert rotated.returncode == 0, rotated.stderr
        renewed = ssl.PEM_cert_to_DER_cert(main_crt.read_text())
        # main serves the renewed certificate to new connections, without a restart (its files re-read
        # once they settled for a second); the container is the same one
        wait_for(lambda: served_certificate(port, creds) == renewed, 60, "main serving its renewed certificate")
        with RpcClient("127.0.0.1", port, stubs, timeout=60, security=security) as client:  # a new connection
            assert client.echo.echo(EchoRequest(text="rotated")).text == "rotated"
        down = stack_sh("down")
        assert down.returncode == 0, down.stderr
        # The copies handed to the containers' user go with the stack: whoever ran it can delete its clone
        assert not (tmp_path / "state" / "container-secrets").exists()
        assert (tmp_path / "state" / "secrets" / "main.crt").exists()  # the secrets themselves are kept
    finally:
        stack_sh("down")
        cmd = [*compose_cmd(), "-p", project, "-f", str(ROOT / "compose.yaml"), "down", "-v"]
        subprocess.run(cmd, env=env, capture_output=True, timeout=300, cwd=ROOT)


def test_observability_stack_from_stack_sh(tmp_path: Path) -> None:
    """`stack.sh up --observability`: a Prometheus built from Debian's package scrapes every service over mTLS;
    its HTTP API, at the URL `stack.sh env` prints, has each service's series with the calls made through main."""
    project = f"gho{os.getpid()}"
    env = {
        **os.environ,
        "GRPC_HELPER_MAIN_PORT": "0",  # Docker picks the host ports; stack.sh reads them back
        "GRPC_HELPER_PROMETHEUS_PORT": "0",
        "COMPOSE_PROJECT_NAME": project,
        "GRPC_HELPER_STACK_STATE": str(tmp_path / "state"),
    }

    def stack_sh(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(ROOT / "scripts" / "stack.sh"), *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)

    up = stack_sh("up", "--observability")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exported = stack_sh("env").stdout.strip().splitlines()[-1].removeprefix("export ")
        creds = dict(item.split("=", 1) for item in exported.split())
        url = creds["GRPC_HELPER_PROMETHEUS_URL"]
        assert url.startswith("http://127.0.0.1:")  # the host's loopback only
        assert f"Prometheus on {url}" in up.stdout
        security = operator_security(creds)
        stubs = {
            "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
            "notes": (NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT),
        }
        with RpcClient("127.0.0.1", int(creds["GRPC_HELPER_PORT"]), stubs, timeout=60, security=security) as client:
            for i in range(5):
                assert client.echo.echo(EchoRequest(text=f"o{i}")).text == f"o{i}"
            client.notes.put(Note(key="observed", text="x"))
        for job in ("main", "echo", "notes"):
            wait_for(lambda job=job: prometheus_value(url, f'up{{job="{job}"}}') == 1, 120, f"{job} scraped over mTLS")
        for promql, count in STACK_SERIES:
            wait_for(lambda promql=promql, count=count: prometheus_value(url, promql) == count, 120, promql)
        down = stack_sh("down")
        assert down.returncode == 0, down.stderr
        assert not subprocess.run(
            ["docker", "ps", "-q", "--filter", f"name={project}"], capture_output=True, text=True
        ).stdout
    finally:
        stack_sh("down")
        cmd = [*compose_cmd(), "-p", project, "-f", str(ROOT / "compose.yaml"), "down", "-v"]
        # The observability profile: its Prometheus and volume go too
        subprocess.run(
            cmd, env={**env, "COMPOSE_PROFILES": "observability"}, capture_output=True, timeout=300, cwd=ROOT
        )


def test_scaled_echo_balances_and_fails_over_after_kill9(stack: Stack) -> None:  # noqa: ARG001 - the image
    """`up --scale echo=3` with compose.yaml as shipped (item 11): each replica registers its own address,
    main balances over the three; a kill -9 of one replica's PID 1 under steady load loses at most the
    calls in flight on it, and every call issued 1 s after the kill succeeds (item 6)."""
    scaled = Stack("ghr")
    try:
        scaled.compose("up", "-d", "--no-build", "--scale", "echo=3")

        def echo_endpoints() -> list[Any]:
            with scaled.main_client() as c:
                return list(c.srv.info(Filter(names=["echo"]), timeout=5).items[0].endpoints)

        wait_for(lambda: sum(e.serving for e in echo_endpoints()) == 3, 180, "3 echo replicas registered")
        assert len({e.host for e in echo_endpoints()}) == 3  # each its own container address
        concurrency, stop, lock = 4, threading.Event(), threading.Lock()
        outcomes: list[tuple[float, bool]] = []  # (sent, ok)

        def load() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{scaled.port}") as channel:
                stub = EchoServiceStub(channel)
                while not stop.is_set():
                    sent = time.monotonic()
                    try:
                        ok = stub.echo(EchoRequest(text="x"), timeout=10).r.code == ResultCode.OK
                    except grpc.RpcError:  # a plain caller gets the backend's own status (a reset: UNAVAILABLE)
                        ok = False
                    with lock:
                        outcomes.append((sent, ok))

        threads = [threading.Thread(target=load) for _ in range(concurrency)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(outcomes) > 100, 60, "steady load through main")
            victim = scaled.compose("ps", "-q", "echo").stdout.split()[0]
            # kill -9 of its PID 1 from the host (not `docker kill`, which Docker counts as a manual stop and
            # so never restarts): a crash, as the restart policy sees it
            pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", victim], capture_output=True, text=True)
            os.kill(int(pid.stdout), signal.SIGKILL)
            killed_at = time.monotonic()
            wait_for(lambda: sum(1 for o in outcomes if o[0] > killed_at + 1.5) > 100, 60, "load after the kill")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        failed = [sent for sent, ok in outcomes if not ok]
        assert len(failed) <= concurrency, failed  # each load thread has one call in flight at a time
        # ... sent before main's channel saw the replica gone (a call written to its dead connection may have
        # reached it: never resent), so none issued 1 s after the kill
        assert all(sent <= killed_at + 1 for sent in failed), (killed_at, failed)
        late = [ok for sent, ok in outcomes if sent > killed_at + 1]
        assert late
        assert all(late)
        # The restart policy brings the killed replica back: it registers again and serves
        wait_for(lambda: sum(e.serving for e in echo_endpoints()) >= 3, 120, "the killed replica back")
    finally:
        scaled.compose("down", "-v", check=False)


def test_each_service_exposes_its_own_port(stack: Stack) -> None:
    """`stack.sh status` / `docker ps` show each sample's own port, not main's (issue 13, item 17), and the
    metrics port every service serves (rpc-metrics-port, 9464)."""
    for service, port in (("main", "54321"), ("echo", "54322"), ("notes", "54323")):
        exposed = subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.ExposedPorts}}", stack.container(service)],
            capture_output=True,
            text=True,
        ).stdout
        assert json.loads(exposed) == {f"{port}/tcp": {}, "9464/tcp": {}}, (service, exposed)


def test_a_complete_wheelhouse_needs_no_index(stack: Stack) -> None:
    """The image was built (the stack fixture), so wheelhouse/ is complete: filling it again works with no
    package index at all (a closed loopback port as the index), as on an air-gapped machine (item 16)."""
    if "can't be pulled" not in stack.build_output:  # built from a registry base: no wheelhouse involved
        pytest.skip("the image was built from a registry base image: the wheelhouse was not used")
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": ""}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "wheelhouse.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to download" in done.stdout


@pytest.mark.usefixtures("stack")  # the image is built
def test_a_fatal_program_ends_the_container(tmp_path: Path) -> None:
    """A program supervisord gives up on (FATAL: here a malformed workspace config.json, one start
    retry) makes the container exit with an error (issue 13, item 15), so its restart policy takes over."""
    workspace = tmp_path / "echo"
    workspace.mkdir()
    (workspace / "config.json").write_text("{not json")
    os.chmod(workspace, 0o777)  # the container's user (uid 10001) writes its logs there
    name = f"ghfatal{os.getpid()}"
    started = subprocess.run(
        [
            "docker", "run", "-d", "--name", name, "--network", "none",
            "-e", "GRPC_HELPER_PROGRAMS=echo", "-e", "GRPC_HELPER_START_RETRIES=1",
            "-v", f"{workspace}:/data/workspace/echo", os.environ.get("GRPC_HELPER_IMAGE", "grpc-helper:latest"),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr
        waited = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=120)
        assert waited.stdout.strip() == "1", waited  # exited by itself, with an error
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=30)
        assert "echo went FATAL" in logs.stdout + logs.stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)


def _rx_bytes(container: str) -> int:
    """Bytes a container received on eth0, read from the host (its /proc/<pid>/net/dev): works while paused."""
    pid = subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True)
    for line in Path(f"/proc/{int(pid.stdout)}/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "eth0":
            return int(counters.split()[0])
    raise AssertionError(f"no eth0 in container {container}")


def test_a_paused_replica_under_load(stack: Stack) -> None:  # noqa: ARG001 - the image
    """`docker pause` of one of two echo replicas under steady load through main: a frozen host, whose kernel
    keeps its TCP connections (and accepts new ones) while nothing answers. Calls issued from 5 s after the
    pause succeed (99%, each bounded by a 10 s deadline); after `docker unpause` main shows it serving within
    10 s and it gets calls again (its received bytes grow by many payloads: probes carry none)."""
    paused_stack = Stack("ghp")
    payload = b"p" * 4096  # echo calls are the only traffic this large: they tell the replica gets calls
    concurrency, stop, lock = 4, threading.Event(), threading.Lock()
    outcomes: list[tuple[float, bool, float]] = []  # (sent, ok, took)
    paused = ""
    try:
        paused_stack.compose("up", "-d", "--no-build", "--scale", "echo=2")

        def serving() -> dict[str, bool]:
            with paused_stack.main_client() as c:
                endpoints = c.srv.info(Filter(names=["echo"]), timeout=5).items[0].endpoints
                return {e.host: e.serving for e in endpoints}

        wait_for(lambda: list(serving().values()) == [True, True], 180, "2 echo replicas serving")
        port = paused_stack.port

        def load() -> None:
            deadline = time.monotonic() + 180  # bounded whatever happens to the test thread
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = EchoServiceStub(channel)
                while not stop.is_set() and time.monotonic() < deadline:
                    sent = time.monotonic()
                    try:
                        ok = stub.echo(EchoRequest(text="x", payload=payload), timeout=10).r.code == ResultCode.OK
                    except grpc.RpcError:  # e.g. DEADLINE_EXCEEDED: a failure like any other
                        ok = False
                    with lock:
                        outcomes.append((sent, ok, time.monotonic() - sent))

        threads = [threading.Thread(target=load, daemon=True) for _ in range(concurrency)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: len(outcomes) > 100, 60, "steady load through main")
            paused = paused_stack.compose("ps", "-q", "echo").stdout.split()[0]
            ip = subprocess.run(
                ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", paused],
                capture_output=True,
                text=True,
            ).stdout.strip()
            assert ip in serving(), (ip, serving())
            subprocess.run(["docker", "pause", paused], check=True, capture_output=True, timeout=60)
            paused_at = time.monotonic()
            wait_for(lambda: not serving()[ip], 10, "main showing the paused replica not serving")
            # A window of calls issued from 5 s to 15 s after the pause (the last one issued marks its end)
            wait_for(lambda: any(o[0] > paused_at + 15 for o in outcomes), 30, "calls 15 s after the pause")
            victim, before = paused, _rx_bytes(paused)
            subprocess.run(["docker", "unpause", paused], check=True, capture_output=True, timeout=60)
            unpaused_at = time.monotonic()
            paused = ""
            wait_for(lambda: serving()[ip], 10, "the unpaused replica serving again")
            back = time.monotonic() - unpaused_at
            wait_for(lambda: _rx_bytes(victim) - before > 50 * len(payload), 10, "calls reaching the replica")
            wait_for(lambda: sum(1 for o in outcomes if o[0] > unpaused_at) > 100, 30, "load after the unpause")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    finally:
        if paused:  # never leave a frozen container behind (Docker won't stop one)
            subprocess.run(["docker", "unpause", paused], capture_output=True, timeout=60)
        paused_stack.compose("down", "-v", check=False)
    assert back <= 10, f"serving again {back:.1f}s after the unpause"
    timeline = [(round(o[0] - paused_at, 1), o[1], round(o[2], 1)) for o in outcomes if o[0] >= paused_at]
    late = [ok for sent, ok, _ in outcomes if paused_at + 5 <= sent <= unpaused_at]
    assert len(late) > 100, f"too few calls during the pause: {timeline[:200]}"
    rate = sum(late) / len(late)
    assert rate >= 0.99, f"{rate:.3f} of {len(late)} calls issued 5 s after the pause succeeded"
    after = [ok for sent, ok, _ in outcomes if sent > unpaused_at]
    assert sum(after) / len(after) >= 0.99, f"{sum(after)} of {len(after)} calls after the unpause succeeded"
