"""Issue 21, item 6: the greeter example (examples/greeter) added to the running secure compose stack with the
README's commands, and called through main with the operator's credentials, with no change to main.

Skipped when no Docker engine is reachable, except under CI=true where it must run. Removes what it creates
(containers, volumes, network, the greeter image, the containers' secret copies), even on failure.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_docker import compose_cmd, wait_for
from test_samples import normalized
from test_stack_services import GREETER_STEPS, SERVICE, SRV, STACK_SH, GreeterProcess, readme_greeter_steps

from grpc_helper import RpcClient
from grpc_helper.pki import CertificateAuthority

from helpers import clean_env, operator_security

ROOT = Path(__file__).resolve().parent.parent
OVERRIDE = "examples/greeter/compose.greeter.yaml"  # as the README has it: relative to the repository

pytestmark = [pytest.mark.docker, pytest.mark.xdist_group("docker")]


@pytest.fixture(scope="module", autouse=True)
def _engine(docker_engine: None) -> None:
    """Every test here needs the engine (skipped without one, failed under CI=true)."""


class GreeterStack:
    """The secure stack run by stack.sh under a compose project of its own, in a state folder of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.project = f"ghg{os.getpid()}"
        self.greeter_image = f"grpc-helper-greeter-test{os.getpid()}:latest"
        self.env = {
            **clean_env(),
            "GRPC_HELPER_MAIN_PORT": "0",  # Docker picks the host port; stack.sh reads it back
            "COMPOSE_PROJECT_NAME": self.project,
            "GRPC_HELPER_STACK_STATE": str(tmp_path / "state"),
            "GREETER_IMAGE": self.greeter_image,  # compose.greeter.yaml's image
        }

    def stack_sh(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["bash", str(STACK_SH), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=900, cwd=ROOT)

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [*compose_cmd(), "-p", self.project, "-f", "compose.yaml", "-f", OVERRIDE, *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=300, cwd=ROOT)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, template: str, container: str) -> str:
        done = subprocess.run(["docker", "inspect", "-f", template, container], capture_output=True, text=True)
        return done.stdout.strip()

    def project_containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        return subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout.split()

    def remove(self) -> None:
        """Everything this test may have created: the stack (its containers, network, volumes and the secrets'
        copies owned by the containers' user), and the greeter image."""
        self.stack_sh("down")
        self.compose("down", "-v", "--remove-orphans")
        subprocess.run(["docker", "image", "rm", "-f", self.greeter_image], capture_output=True, timeout=120)


@pytest.fixture
def greeter_stack(tmp_path: Path) -> Iterator[GreeterStack]:
    s = GreeterStack(tmp_path)
    try:
        yield s
    finally:
        s.remove()


@pytest.mark.timeout(900)  # two `stack.sh up` and an image build, on a shared machine
def test_greeter_added_to_the_running_secure_stack(greeter_stack: GreeterStack, tmp_path: Path) -> None:
    """The README's steps on the running secure stack: `secrets add greeter --service-name greeter.GreeterService`
    (main takes it without a restart), `docker build` of the example FROM the grpc-helper image, `up -f
    examples/greeter/compose.greeter.yaml`; then `grpc-helper info/health/call` through main with the operator's
    credentials (certificate, and token), main's container and image untouched. A local process joins the
    compose stack as greeter too (`env --service`), reached by main at the network's gateway; `down` takes the
    greeter container with the stack."""
    s = greeter_stack
    up = s.stack_sh("up")  # builds the grpc-helper image first (GRPC_HELPER_IMAGE honoured)
    assert up.returncode == 0, up.stdout + up.stderr
    main = s.container("main")
    main_image = s.inspect("{{.Image}}", main)
    add, build, add_up = (shlex.split(step) for step in GREETER_STEPS[:3])  # the README's commands
    added = s.stack_sh(*add[1:])
    assert added.returncode == 0, added.stdout + added.stderr
    assert "main takes greeter's certificate (policy reloaded, no restart)" in added.stdout
    # docker build -t TAG examples/greeter, with this test's tags: its own, FROM the image the stack runs
    base = os.environ.get("GRPC_HELPER_IMAGE", "grpc-helper:latest")
    assert build == ["docker", "build", "-t", "grpc-helper-greeter", "examples/greeter"]
    build = [*build[:2], "--build-arg", f"GRPC_HELPER_IMAGE={base}", "-t", s.greeter_image, build[-1]]
    built = subprocess.run(build, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert built.returncode == 0, built.stdout + built.stderr
    assert add_up[1:] == ["up", "-f", OVERRIDE]
    up = s.stack_sh(*add_up[1:])
    assert up.returncode == 0, up.stdout + up.stderr
    assert "stack: up (docker, mTLS + policy)" in up.stdout
    # No change to main: the same container (not even recreated), from the same image
    assert (s.container("main"), s.inspect("{{.Image}}", main)) == (main, main_image)

    _unset, export = s.stack_sh("env").stdout.strip().splitlines()
    creds = dict(item.split("=", 1) for item in export.removeprefix("export ").split())
    with_creds = {**s.env, **creds}
    port = int(creds["GRPC_HELPER_PORT"])
    ctl = [str(ROOT / ".venv" / "bin" / "grpc-helper"), "--timeout", "10"]

    def cli(*args: str, env: dict[str, str] = with_creds) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*ctl, *args], env=env, capture_output=True, text=True, timeout=60)

    # The README's commands print what it shows (addresses aside)
    steps = readme_greeter_steps()
    assert [command for command, _ in steps] == GREETER_STEPS
    for command, shown in steps:
        if command.startswith("grpc-helper "):
            done = cli(*shlex.split(command)[1:])
            assert normalized((done.stdout + done.stderr).splitlines()) == normalized(shown), command

    greeter_ip = s.inspect("{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", s.container("greeter"))
    info = cli("--json", "info", SERVICE)
    assert info.returncode == 0, info.stderr
    (item,) = json.loads(info.stdout)["items"]
    assert item["version"] == "grpc-helper-greeter:1.0.0"
    assert [(e["host"], e["port"], e["serving"]) for e in item["endpoints"]] == [(greeter_ip, 54330, True)]
    health = cli("health", SERVICE)
    assert (health.returncode, health.stdout) == (0, "SERVING\n"), health.stderr

    # The operator's certificate, then its token (over a certificate of the stack's CA that no identity has)
    secrets = Path(creds["GRPC_HELPER_TLS_CA"]).parent
    ca = CertificateAuthority.load((secrets / "ca.crt").read_bytes(), (secrets / "ca.key").read_bytes())
    stranger_crt, stranger_key = ca.issue("stranger").write(tmp_path, "stranger")
    by_certificate = {k: v for k, v in with_creds.items() if k != "GRPC_HELPER_TOKEN_FILE"}
    by_token = {**with_creds, "GRPC_HELPER_TLS_CERT": str(stranger_crt), "GRPC_HELPER_TLS_KEY": str(stranger_key)}
    for form, env in (("certificate", by_certificate), ("token", by_token)):
        called = cli("call", f"{SERVICE}/greet", json.dumps({"name": form}), env=env)
        assert called.returncode == 0, (form, called.stderr)
        assert json.loads(called.stdout)["text"] == f"Hello, {form}!"
    no_token = {k: v for k, v in by_token.items() if k != "GRPC_HELPER_TOKEN_FILE"}  # the stranger alone
    refused = cli("call", f"{SERVICE}/greet", '{"name": "x"}', env=no_token)
    assert refused.returncode == 1
    assert "UNAUTHENTICATED" in refused.stderr, refused.stderr
    missing = cli("call", f"{SERVICE}/greet", "{}")  # checked by the greeter, answered through main
    assert (missing.returncode, missing.stderr) == (1, "error: ERROR_PARAM_MISSING: Missing name\n")

    # A local process joins the compose stack as greeter: it registers the network's gateway, main reaches it there
    gateway = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}", f"{s.project}_default"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    run = 'eval "$("$STACK" env --service greeter)" && exec "$PY" -m greeter.server -p 0 -w "$WORKSPACE"'
    local = GreeterProcess(tmp_path, run, s.env)
    security = operator_security(creds)
    try:
        with RpcClient("127.0.0.1", port, SRV, timeout=30, security=security) as client:

            def both() -> list[tuple[str, int]]:
                found = local.endpoints(client)
                return found if len(found) == 2 else []

            endpoints = wait_for(both, 60, "the container's and the local process' endpoints serving")
        assert {host for host, _ in endpoints} == {greeter_ip, gateway}
        texts = [json.loads(cli("call", f"{SERVICE}/greet", f'{{"name": "n{i}"}}').stdout)["text"] for i in range(10)]
        assert texts == [f"Hello, n{i}!" for i in range(10)]
    finally:
        local.stop()
    assert local.process.returncode == 0, local.output()  # a graceful shutdown
    assert "Greeting n" in local.output()  # main balanced calls over both endpoints: the local one got some

    down = s.stack_sh("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert s.project_containers() == []  # the greeter's container went with the stack
