"""Issue 13, item 12: the reference deployment on Docker Swarm (deploy/swarm/stack.yaml).

A single-node swarm is created when the engine is in none, and the engine is left exactly as found:
the stack, its volumes, and (when the test created the swarm) the swarm itself and the networks
swarm mode adds (docker_gwbridge, ingress) are removed. Costs about 2 minutes (the image is built
by the compose tests' build script, cached)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_docker import ROOT, wait_for

from grpc_helper import ClientSecurity, RpcClient, RpcException
from grpc_helper.api import Filter, ServerApiVersion
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

# With the compose tests: one at a time on the engine (skipped without one, failed under CI=true)
pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]
STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yaml"


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def swarm_state() -> str:
    return docker("info", "--format", "{{.Swarm.LocalNodeState}}")


def networks() -> set[str]:
    return set(docker("network", "ls", "--format", "{{.Name}}").split())


@pytest.fixture(scope="module")
def swarm(docker_engine: None) -> Iterator[None]:  # noqa: ARG001 - the engine is reachable
    """The engine in swarm mode for the module: a single-node swarm of our own if it was in none."""
    built = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout + built.stderr
    state, before = swarm_state(), networks()
    if state not in ("inactive", "active"):
        pytest.fail(f"the engine's swarm is {state!r}: neither in a swarm nor out of one, left alone")
    if state == "inactive":
        docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        yield
    finally:
        if state == "inactive":
            docker("swarm", "leave", "--force")
            for network in networks() - before:  # what swarm mode added (docker_gwbridge)
                docker("network", "rm", network, check=False)
        assert swarm_state() == state
        assert networks() == before


class Deployed:
    """A stack deployed from deploy/swarm/stack.yaml, its main on a port Docker picked."""

    def __init__(self, tmp: Path) -> None:
        self.name = f"ghsw{os.getpid()}"
        self.secrets = tmp / "secrets"
        create = [sys.executable, str(ROOT / "scripts" / "stack_secrets.py"), "create", str(self.secrets)]
        subprocess.run(create, check=True, capture_output=True)
        self.security = ClientSecurity.from_files(
            self.secrets / "ca.crt",
            self.secrets / "operator.crt",
            self.secrets / "operator.key",
            token_file=self.secrets / "operator.token",
        )
        env = {**os.environ, "GRPC_HELPER_SWARM_SECRETS": str(self.secrets), "GRPC_HELPER_MAIN_PORT": "0"}
        command = ["docker", "stack", "deploy", "--resolve-image", "never", "-c", str(STACK_FILE), self.name]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    def containers(self, service: str) -> list[str]:
        label = f"com.docker.swarm.service.name={self.name}_{service}"
        return docker("ps", "-q", "--filter", f"label={label}").split()

    @property
    def port(self) -> int:
        """Main's published port (mode host: on its task's container)."""
        ports = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Ports}}", self.containers("main")[0]))
        return int(ports["54321/tcp"][0]["HostPort"])

    def client(self) -> RpcClient:
        stubs: dict[str, Any] = {
            "srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT),
            "echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT),
        }
        return RpcClient("127.0.0.1", self.port, stubs, timeout=30, security=self.security, name="swarm-tests")

    def serving_echo(self) -> int:
        with self.client() as c:
            return sum(e.serving for e in c.srv.info(Filter(names=["echo"]), timeout=5).items[0].endpoints)

    def remove(self) -> None:
        docker("stack", "rm", self.name, check=False)
        wait_for(
            lambda: not docker("ps", "-aq", "--filter", f"label=com.docker.stack.namespace={self.name}"),
            120,
            "stack gone",
        )
        wait_for(lambda: not [n for n in networks() if n.startswith(self.name)], 60, "the stack's network removed")
        for volume in docker("volume", "ls", "-q", "--filter", f"label=com.docker.stack.namespace={self.name}").split():
            docker("volume", "rm", volume, check=False)


def steady_calls(deployed: Deployed, stop: threading.Event, outcomes: list[tuple[float, bool]]) -> Callable[[], None]:
    """A load thread's body: echo calls through main with the library's client (its retries included)."""

    def run() -> None:
        with deployed.client() as c:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    ok = c.echo.echo(EchoRequest(text="swarm")).text == "swarm"
                except RpcException:
                    ok = False
                outcomes.append((sent, ok))

    return run


def test_stack_on_swarm_replaces_tasks_and_updates_without_failures(swarm: None, tmp_path: Path) -> None:  # noqa: ARG001
    deployed = Deployed(tmp_path)
    try:
        wait_for(lambda: deployed.serving_echo() == 3, 240, "3 echo tasks registered and serving on main")
        with deployed.client() as c:
            assert c.echo.echo(EchoRequest(text="over mTLS")).text == "over mTLS"

        # A task killed (kill -9 of its PID 1): Swarm replaces it, calls keep succeeding
        stop, outcomes = threading.Event(), []
        load = threading.Thread(target=steady_calls(deployed, stop, outcomes))
        load.start()
        try:
            wait_for(lambda: len(outcomes) > 50, 60, "steady load")
            victim = deployed.containers("echo")[0]
            os.kill(int(docker("inspect", "-f", "{{.State.Pid}}", victim)), signal.SIGKILL)
            wait_for(
                lambda: victim not in deployed.containers("echo") and len(deployed.containers("echo")) == 3,
                120,
                "Swarm replaced the task",
            )
            wait_for(lambda: deployed.serving_echo() == 3, 120, "the new task registered")
        finally:
            stop.set()
            load.join(60)
        # At most the one call in flight on the killed task (the load thread has one at a time); never resent
        assert sum(1 for _, ok in outcomes if not ok) <= 1, [o for o in outcomes if not o[1]]

        # A rolling update of echo (each task replaced, new one first): no call fails
        stop, outcomes = threading.Event(), []
        load = threading.Thread(target=steady_calls(deployed, stop, outcomes))
        load.start()
        try:
            wait_for(lambda: len(outcomes) > 20, 60, "steady load")
            before = set(deployed.containers("echo"))
            docker("service", "update", "--force", "--quiet", f"{deployed.name}_echo", timeout=600)
            # Every task replaced; the old ones shut down gracefully (they may still be stopping when the
            # update has converged on the new ones)
            wait_for(lambda: not before & set(deployed.containers("echo")), 120, "the old echo tasks gone")
            wait_for(lambda: deployed.serving_echo() == 3, 120, "the updated tasks serving")
        finally:
            stop.set()
            load.join(60)
        assert len(outcomes) > 50
        assert all(ok for _, ok in outcomes), [o for o in outcomes if not o[1]]
    finally:
        deployed.remove()
