"""Issue 21, item 5: the secure stack takes services of one's own.

`stack.sh secrets add NAME --service-name GRPC_NAME` (scripts/stack_secrets.py: a certificate from the stack's
real CA, a token, a `service` identity granted GRPC_NAME) picked up by a running main without a restart;
`secrets rotate` renewing the added certificates too; `stack.sh env --service NAME` giving a local process (the
greeter example, examples/greeter) what it needs to join the local stack as that identity, by its certificate
or its token, and to register and serve through main.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

from cryptography import x509
from test_docker import served_certificate, wait_for
from test_stack_local import ctl, free_port_range, operator_env, stack

from grpc_helper import RpcClient
from grpc_helper.api import Filter, ServerApiVersion
from grpc_helper.api.server_pb2_grpc import RpcServerServiceStub
from grpc_helper.auth import Policy, token_hash

from helpers import clean_env, operator_security

ROOT = Path(__file__).resolve().parent.parent
STACK_SH = ROOT / "scripts" / "stack.sh"
GREETER = ROOT / "examples" / "greeter"
SERVICE = "greeter.GreeterService"
SRV = {"srv": (RpcServerServiceStub, ServerApiVersion.SERVER_API_CURRENT)}


# The README's greeter example, step by step (its block marked <!-- greeter-steps -->): what
# tests/test_greeter_docker.py runs, in this order (the docker build with image tags of its own)
GREETER_STEPS = [
    "./scripts/stack.sh secrets add greeter --service-name greeter.GreeterService",
    "docker build -t grpc-helper-greeter examples/greeter",
    "./scripts/stack.sh up -f examples/greeter/compose.greeter.yaml",
    'eval "$(./scripts/stack.sh env)"',
    "grpc-helper info greeter.GreeterService",
    """grpc-helper call greeter.GreeterService/greet '{"name": "you"}'""",
    "grpc-helper call greeter.GreeterService/greet '{}'",
]


def readme_greeter_steps() -> list[tuple[str, list[str]]]:
    """The README's greeter steps: each `$ command` (its comment cut) with the lines it shows."""
    block = (ROOT / "README.md").read_text().split("<!-- greeter-steps -->\n```\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((re.sub(r"\s+#.*$", "", line[2:]).strip(), []))
        else:
            steps[-1][1].append(line)
    return steps


def test_readme_greeter_steps() -> None:
    """The README shows the steps the Docker test runs (tests/test_greeter_docker.py), in its order."""
    assert [command for command, _ in readme_greeter_steps()] == GREETER_STEPS


def _load_secrets_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_secrets", ROOT / "scripts" / "stack_secrets.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STACK_SECRETS = _load_secrets_script()  # scripts/stack_secrets.py, run in process (each run a new Python is slow)


def secrets_py(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`python scripts/stack_secrets.py ARGS`: its exit code and what it printed."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = STACK_SECRETS.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert: x509.Certificate) -> list[str]:
    """The certificate's subjectAltNames, in order, as text."""
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in sans]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_secrets_add_rotate_list(tmp_path: Path) -> None:
    """`add` issues a certificate from the stack's CA naming the service and its gRPC names, a token, and a
    `service` identity granted those names (a valid policy); bad names are refused with nothing changed;
    adding again updates it (token kept); `rotate` renews every certificate, added ones included."""
    folder = tmp_path / "secrets"
    assert secrets_py("create", folder).returncode == 0
    done = secrets_py("add", folder, "greeter", "--service-name", SERVICE)
    assert done.returncode == 0, done.stderr
    assert f"granted {SERVICE}" in done.stdout
    ca = certificate(folder / "ca.crt")
    crt = certificate(folder / "greeter.crt")
    crt.verify_directly_issued_by(ca)
    assert names(crt) == ["greeter", SERVICE, "localhost", "127.0.0.1"]
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(snapshot(folder), 0o600)
    token = (folder / "greeter.token").read_text().strip()
    entry = json.loads((folder / "policy.json").read_text())["identities"]["greeter"]
    assert entry == {
        "role": "service",
        "certificate": "greeter",
        "token_sha256": token_hash(token),
        "services": [SERVICE],
    }
    policy = Policy.load(folder / "policy.json")  # what main reads
    by_certificate, by_token, echo = policy.by_certificate(["greeter"]), policy.by_token(token), policy.by_name("echo")
    assert by_certificate is not None
    assert by_token is not None
    assert echo is not None
    assert (by_certificate.name, by_certificate.role, by_token.name) == ("greeter", "service", "greeter")
    assert policy.may_register(by_certificate, SERVICE)
    assert not policy.may_register(echo, SERVICE)  # granted to greeter: nobody else registers it

    before = snapshot(folder)
    bad = (["main"], ["ca"], ["operator"], ["Greeter"], ["x_y"], ["-x"], ["ok", "--service-name", "not a name"],
           ["ok", "--service-name", ".Svc"])  # fmt: skip
    for args in bad:
        done = secrets_py("add", folder, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith(("stack_secrets: invalid", "usage:")), done.stderr
    assert snapshot(folder) == before  # nothing written

    # Added again: issued again for the names given, granted them; its token kept
    done = secrets_py("add", folder, "greeter", "--service-name", SERVICE, "--service-name", "greeter.Other")
    assert done.returncode == 0, done.stderr
    assert "greeter updated" in done.stdout
    assert names(certificate(folder / "greeter.crt")) == ["greeter", SERVICE, "greeter.Other", "localhost", "127.0.0.1"]
    assert (folder / "greeter.token").read_text().strip() == token
    assert json.loads((folder / "policy.json").read_text())["identities"]["greeter"]["services"] == [
        SERVICE,
        "greeter.Other",
    ]
    done = secrets_py("add", folder, "greeter2", "--service-name", SERVICE)  # may be granted to two: said so
    assert "note: greeter granted some of these names too" in done.stdout
    assert secrets_py("list", folder).stdout.split() == ["main", "echo", "notes", "greeter", "greeter2"]

    # An identity the policy has that `add` did not make is left alone
    policy_json = json.loads((folder / "policy.json").read_text())
    policy_json["identities"]["app"] = {"role": "user", "token_sha256": token_hash("app")}
    (folder / "policy.json").write_text(json.dumps(policy_json))
    done = secrets_py("add", folder, "app")
    assert (done.returncode, "did not make" in done.stderr) == (2, True), done.stderr

    services = ["main", "echo", "notes", "greeter", "greeter2"]
    old = {name: certificate(folder / f"{name}.crt") for name in services}
    done = secrets_py("rotate", folder)
    assert done.returncode == 0, done.stderr
    assert "greeter, greeter2" in done.stdout
    for name in services:
        new = certificate(folder / f"{name}.crt")
        new.verify_directly_issued_by(ca)  # the same CA
        assert new.serial_number != old[name].serial_number, name
        assert names(new) == names(old[name]), name  # the same names
    assert (folder / "greeter.token").read_text().strip() == token
    assert secrets_py("rotate", tmp_path / "none").returncode == 1  # no secrets there: said, nothing made
    assert not (tmp_path / "none").exists()


class GreeterProcess:
    """The greeter example (examples/greeter) as a local process: a bash command line (`shell`) that runs it, with
    $STACK (stack.sh), $PY (this Python) and $WORKSPACE (a workspace of its own) set; its output in a file."""

    def __init__(self, root: Path, shell: str, env: dict[str, str], **extra: str) -> None:
        self.log = root / f"greeter-{time.monotonic_ns()}.log"
        environment = {
            **env,
            "PYTHONPATH": str(GREETER),
            "STACK": str(STACK_SH),
            "PY": sys.executable,
            "WORKSPACE": str(root / f"greeter-wks-{time.monotonic_ns()}"),
            **extra,
        }
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", shell], env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=root
            )

    def output(self) -> str:
        return self.log.read_text()

    def endpoints(self, client: RpcClient) -> list[tuple[str, int]]:
        """The serving endpoints main shows for the greeter service (the process must still run)."""
        if self.process.poll() is not None:
            raise AssertionError(f"greeter exited ({self.process.returncode}):\n{self.output()}")
        items = client.srv.info(Filter(names=[SERVICE], ignore_unknown=True), timeout=5).items
        return [(e.host, e.port) for i in items for e in i.endpoints if e.serving]

    def stop(self) -> int:
        """SIGTERM (a graceful shutdown: it forgets its endpoint on main); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


def supervised_pid(state: Path, program: str) -> int:
    conf = state / "supervisord.conf"
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "supervisorctl"), "-c", str(conf), "pid", program],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    return int(done.stdout.strip())


def test_an_added_service_joins_the_local_stack(tmp_path: Path) -> None:
    """On the running secure local stack: `secrets add` (main takes the new identity without a restart); the
    greeter as a local process joins with `env --service` (its certificate, then its token), registers
    greeter.GreeterService and serves `grpc-helper call` through main; a wrong token is refused; the grant keeps
    others from registering the name; `secrets rotate` renews its certificate, which the running greeter serves."""
    port = free_port_range(6)  # main, echo, notes and their metrics ports
    state = tmp_path / "stack"
    env = {**clean_env(), "GRPC_HELPER_MAIN_PORT": str(port), "GRPC_HELPER_STACK_STATE": str(state)}
    secrets = state / "secrets"
    up = stack("up", "--local", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        main_pid = supervised_pid(state, "main")
        added = stack("secrets", "add", "greeter", "--service-name", SERVICE, env=env)
        assert added.returncode == 0, added.stdout + added.stderr
        assert "main takes greeter's certificate (policy reloaded, no restart)" in added.stdout
        assert "reloaded: 5 identities" in (state / "logs" / "main.log").read_text()  # operator, main, samples, greeter
        creds = operator_env(env)
        with_creds = {**env, **creds}
        security = operator_security(creds)
        with RpcClient("127.0.0.1", port, SRV, timeout=30, security=security) as client:
            # By its certificate, from the environment variables (`eval`, as the README shows)
            run = 'eval "$("$STACK" env --service greeter)" && exec "$PY" -m greeter.server -p 0 -w "$WORKSPACE"'
            greeter = GreeterProcess(tmp_path, run, env)
            try:
                ((host, greeter_port),) = wait_for(lambda: greeter.endpoints(client), 60, "greeter registered")
                assert host == "127.0.0.1"
                called = ctl("call", f"{SERVICE}/greet", '{"name": "local"}', env=with_creds)
                assert called.returncode == 0, called.stderr
                assert json.loads(called.stdout)["text"] == "Hello, local!"
                missing = ctl("call", f"{SERVICE}/greet", "{}", env=with_creds)
                assert (missing.returncode, missing.stderr) == (1, "error: ERROR_PARAM_MISSING: Missing name\n")
                # The grant: another service identity (echo) may not register the name
                echo = {
                    **env,
                    "GRPC_HELPER_TLS_CA": str(secrets / "ca.crt"),
                    "GRPC_HELPER_TLS_CERT": str(secrets / "echo.crt"),
                    "GRPC_HELPER_TLS_KEY": str(secrets / "echo.key"),
                }
                register = ("proxy", "register", "--grpc-service", SERVICE, "--version", "x", "--port", "1")
                refused = ctl("--host", "127.0.0.1", *register, "--host", "127.0.0.1", env=echo)
                assert refused.returncode == 1
                assert "PERMISSION_DENIED" in refused.stderr, refused.stderr
                # Rotation: the running greeter serves its renewed certificate to new connections
                old = (secrets / "greeter.crt").read_text()
                rotated = stack("secrets", "rotate", env=env)
                assert rotated.returncode == 0, rotated.stderr
                assert "notes, prometheus, greeter in" in rotated.stdout
                renewed = ssl.PEM_cert_to_DER_cert((secrets / "greeter.crt").read_text())
                assert renewed != ssl.PEM_cert_to_DER_cert(old)
                wait_for(lambda: served_certificate(greeter_port, creds) == renewed, 60, "its renewed certificate")
                again = ctl("call", f"{SERVICE}/greet", '{"name": "rotated"}', env=with_creds)
                assert json.loads(again.stdout)["text"] == "Hello, rotated!", again.stderr
            finally:
                greeter.stop()
            assert greeter.process.returncode == 0, greeter.output()  # a graceful shutdown
            # Its graceful shutdown forgot its endpoint on main before it exited
            items = client.srv.info(Filter(names=[SERVICE], ignore_unknown=True)).items
            assert not [e for i in items for e in i.endpoints]

            # By its token, from -c options
            options = '$("$STACK" env --service greeter --token --options)'
            run = f'exec "$PY" -m greeter.server -p 0 -w "$WORKSPACE" {options}'
            greeter = GreeterProcess(tmp_path, run, env)
            try:
                wait_for(lambda: greeter.endpoints(client), 60, "greeter registered by its token")
                called = ctl("--json", "call", f"{SERVICE}/greet", '{"name": "token"}', env=with_creds)
                assert json.loads(called.stdout)["text"] == "Hello, token!", called.stderr
            finally:
                greeter.stop()
            assert greeter.process.returncode == 0, greeter.output()
            # ... the token is what identifies it: a wrong one is refused, whatever its certificate
            wrong = tmp_path / "wrong.token"
            wrong.write_text("not-the-token\n")
            wrong.chmod(0o600)
            greeter = GreeterProcess(tmp_path, f'{run} -c rpc-auth-token-file="$WRONG"', env, WRONG=str(wrong))
            try:
                assert greeter.process.wait(60) == 1, greeter.output()
            finally:
                greeter.stop()
            assert "error: " in greeter.output()
            assert "UNAUTHENTICATED" in greeter.output()
        assert supervised_pid(state, "main") == main_pid  # main was never restarted
    finally:
        down = stack("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr


def test_env_service_output(tmp_path: Path) -> None:
    """`env --service` on the local stack: the unset line, then the export line of the rpc-* items' variables
    (quoted: `eval` keeps a path with a space whole), or the same as -c options; errors in one line."""
    state = tmp_path / "my stack"  # a space in every path
    env = {**clean_env(), "GRPC_HELPER_STACK_STATE": str(state)}
    done = stack("env", "--service", "greeter", env=env)
    assert (done.returncode, done.stderr) == (1, "stack: not started (stack.sh up)\n")
    (state / "secrets").mkdir(parents=True)
    for name, text in (("port", "54321"), ("mode", "local"), ("secure", "1"), ("secrets/greeter.crt", "")):
        (state / name).write_text(text + "\n")
    done = stack("env", "--service", "nobody", env=env)
    assert done.returncode == 1
    assert done.stderr == "stack: no certificate for nobody: stack.sh secrets add nobody --service-name ...\n"
    assert stack("env", "--token", env=env).returncode == 2  # --token and --options go with --service

    secrets = state / "secrets"
    expected = {
        "RPC_MAIN_HOST": "127.0.0.1",
        "RPC_MAIN_PORT": "54321",
        "RPC_BIND_ADDRESS": "127.0.0.1",
        "RPC_TLS_CERT": f"{secrets}/greeter.crt",
        "RPC_TLS_KEY": f"{secrets}/greeter.key",
        "RPC_TLS_CA": f"{secrets}/ca.crt",
        "RPC_TLS_CLIENT_AUTH": "required",
        "RPC_AUTH_POLICY": f"{secrets}/policy.json",
    }
    unset, export = stack("env", "--service", "greeter", env=env).stdout.splitlines()
    assert unset.split()[0] == "unset"
    assert {*expected, "RPC_AUTH_TOKEN_FILE", "RPC_PROXY_HOST"} <= set(unset.split()[1:])
    assert export.startswith("export ")
    show = 'eval "$("$STACK" env --service greeter "$@")" && env | grep ^RPC_ | sort'
    stale = {**env, "STACK": str(STACK_SH), "RPC_AUTH_TOKEN_FILE": "/stale", "RPC_PROXY_HOST": "stale"}
    shown = subprocess.run(["bash", "-c", show, "bash"], env=stale, capture_output=True, text=True, timeout=60)
    assert dict(line.split("=", 1) for line in shown.stdout.splitlines()) == expected  # the stale ones unset
    shown = subprocess.run(["bash", "-c", show, "bash", "--token"], env=stale, capture_output=True, text=True)
    assert dict(line.split("=", 1) for line in shown.stdout.splitlines()) == {
        **expected,
        "RPC_AUTH_TOKEN_FILE": f"{secrets}/greeter.token",
    }
    # -c options, for one command line (`eval` keeps the quoted paths whole)
    options = stack("env", "--service", "greeter", "--token", "--options", env=env).stdout
    words = subprocess.run(["bash", "-c", f"printf '%s\\n' {options}"], capture_output=True, text=True).stdout
    pairs = [*zip(words.splitlines()[::2], words.splitlines()[1::2], strict=True)]
    assert {flag for flag, _ in pairs} == {"-c"}
    assert dict(value.split("=", 1) for _, value in pairs) == {
        name.lower().replace("_", "-"): value
        for name, value in {**expected, "RPC_AUTH_TOKEN_FILE": f"{secrets}/greeter.token"}.items()
    }
