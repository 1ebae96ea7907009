"""The reference topology as local processes under supervisord (no Docker): up, used, down."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from grpc_helper import RpcClient
from grpc_helper.api import Filter, ServerApiVersion
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest, Note, NoteKey, NotesApiVersion
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub
from grpc_helper_samples.api.notes_pb2_grpc import NotesServiceStub

from helpers import STACK_SERIES, operator_security, prometheus_value, wait_until

ROOT = Path(__file__).resolve().parent.parent


def free_port_range(count: int) -> int:
    """A base port with `count` consecutive free ports (bounded attempts).

    Free now, not reserved: another process could take one before supervisord's programs bind them.
    They cannot bind port 0 and report back: scripts/stack.sh writes main's port into the samples'
    command lines (rpc-main-port) and the supervisord config before anything starts, and addresses
    main by GRPC_HELPER_MAIN_PORT (samples on main's port + 1 and + 2, the three metrics endpoints on + 3 to + 5,
    Prometheus on + 6).
    """
    for _ in range(50):
        base = random.randint(20000, 60000)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


STUBS = {
    "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
    "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
    "notes": (NotesServiceStub, NotesApiVersion.NOTES_API_CURRENT),
}


def stack(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["bash", str(ROOT / "scripts" / "stack.sh"), *command]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def operator_env(env: dict[str, str]) -> dict[str, str]:
    """The variables `stack.sh env` exports (what the README has operators eval)."""
    unset, export = stack("env", env=env).stdout.strip().splitlines()
    # First, what a previous stack may have set (a plaintext stack after a secure one keeps no TLS variable)
    assert unset.split()[0] == "unset"
    assert {"GRPC_HELPER_TLS_CA", "GRPC_HELPER_TOKEN_FILE"} <= set(unset.split()[1:])
    assert export.startswith("export "), export
    return dict(item.split("=", 1) for item in export.removeprefix("export ").split())


def ctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [str(ROOT / ".venv" / "bin" / "grpc-helper"), "--port", env["GRPC_HELPER_MAIN_PORT"], *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_local_stack_up_and_down(tmp_path: Path) -> None:
    """The secure local stack: mTLS on every hop, the policy on, secrets 0600; the operator's CLI with the
    stack's credentials gets through, the same CLI without them is refused."""
    port = free_port_range(6)
    state = tmp_path / "stack"
    env = {**os.environ, "GRPC_HELPER_MAIN_PORT": str(port), "GRPC_HELPER_STACK_STATE": str(state)}
    up = stack("up", "--local", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "stack: up (local, mTLS + policy)" in up.stdout
        supervisord_pid = int((state / "supervisord.pid").read_text())
        secrets = state / "secrets"
        assert secrets.stat().st_mode & 0o777 == 0o700
        assert all(p.stat().st_mode & 0o777 == 0o600 for p in secrets.iterdir())
        creds = operator_env(env)
        with_creds = {**env, **creds}
        assert ctl("config", "set", "notes-max-length=300", env=with_creds).returncode == 0  # admin, via main's mTLS
        # Bound to 127.0.0.1 only: ask there (localhost may resolve to ::1 first, refused by the kernel)
        no_cert = {**env, "GRPC_HELPER_TLS_CA": creds["GRPC_HELPER_TLS_CA"]}
        refused = ctl("--host", "127.0.0.1", "--timeout", "2", "info", env=no_cert)
        assert refused.returncode == 1
        assert "connection closed" in refused.stderr  # no client certificate: the handshake is refused
        security = operator_security(creds)
        client = RpcClient("localhost", port, STUBS, timeout=30, security=security)
        info = {i.name: i for i in client.srv.info(Filter(names=["echo", "notes"])).items}
        assert (info["echo"].proxy_port, info["notes"].proxy_port) == (port + 1, port + 2)
        assert client.echo.echo(EchoRequest(text="local")).text == "local"
        client.notes.put(Note(key="k", text="v"))
        assert client.notes.get(NoteKey(key="k")).note.text == "v"
        assert (state / "workspaces" / "notes" / "notes.json").is_file()
        assert (state / "logs" / "main.log").is_file()
        client.close()
    finally:
        down = stack("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not Path(f"/proc/{supervisord_pid}").exists(), "supervisord stopped"
    logs = (state / "logs" / "main.log").read_text()
    assert "shut down" in logs  # graceful SIGTERM shutdown, not a kill


def test_local_stack_with_observability(tmp_path: Path) -> None:
    """`stack.sh up --local --observability`: every program serves its metrics on a port of its own, and Debian's
    prometheus, run beside them by supervisord, scrapes them over mTLS; its API (the URL `stack.sh env` prints)
    has each program's series with the calls made through main."""
    if shutil.which("prometheus") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing under CI=true (.ci/run installs Debian's package)")
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    port = free_port_range(7)
    state = tmp_path / "stack"
    env = {**os.environ, "GRPC_HELPER_MAIN_PORT": str(port), "GRPC_HELPER_STACK_STATE": str(state)}
    up = stack("up", "--local", "--observability", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        creds = operator_env(env)
        url = creds["GRPC_HELPER_PROMETHEUS_URL"]
        assert url == f"http://127.0.0.1:{port + 6}"
        security = operator_security(creds)
        with RpcClient("127.0.0.1", port, STUBS, timeout=30, security=security) as client:
            for i in range(5):
                assert client.echo.echo(EchoRequest(text=f"o{i}")).text == f"o{i}"
            client.notes.put(Note(key="observed", text="x"))
        for job in ("main", "echo", "notes"):
            assert wait_until(lambda job=job: prometheus_value(url, f'up{{job="{job}"}}') == 1, 60), job
        for promql, count in STACK_SERIES:
            assert wait_until(lambda promql=promql, count=count: prometheus_value(url, promql) == count, 60), promql
    finally:
        down = stack("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert (state / "logs" / "prometheus.log").is_file()
