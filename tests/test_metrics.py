"""Prometheus metrics (grpc_helper.metrics): what a server counts, its exposition (mTLS with the server's TLS),
and a real Prometheus scraping it (Debian's `prometheus`: skipped without it, required under CI=true)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from grpc_helper import RpcException, RpcServer
from grpc_helper.api import ResultCode
from grpc_helper.client import RpcClient
from grpc_helper.errors import RpcTransportError
from grpc_helper.pki import CertificateAuthority
from grpc_helper.tls import ClientSecurity
from grpc_helper_samples.api import EchoApiVersion, EchoRequest
from grpc_helper_samples.api.echo_pb2_grpc import EchoServiceStub

from helpers import Servers, echo_descriptor, wait_until

ECHO_STUBS = {"echo": (EchoServiceStub, EchoApiVersion.ECHO_API_CURRENT)}
ECHO = "EchoService"  # the gRPC service name: the grpc_service label


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def scrape(port: int, context: ssl.SSLContext | None = None) -> Samples:
    scheme = "https" if context is not None else "http"
    with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/metrics", timeout=5, context=context) as answer:
        return parse(answer.read().decode())


def make_traffic(client: RpcClient) -> None:
    """7 echo calls (3 OK, 2 answered with a Result error, 1 crash: a Result too, 1 version refusal), a
    server stream of 4 messages, a client stream of 3."""
    for _ in range(3):
        client.echo.echo(EchoRequest(text="hi"))
    for text in ("fail:" + str(ResultCode.ERROR_ITEM_BUSY), "fail:" + str(ResultCode.ERROR_ITEM_BUSY), "crash"):
        with pytest.raises(RpcException):
            client.echo.echo(EchoRequest(text=text))
    assert len(list(client.echo.repeat(EchoRequest(text="x", count=4)))) == 4
    assert client.echo.collect(iter([EchoRequest(text="a")] * 3)).index == 3


def test_served_calls_counted(servers: Servers) -> None:
    port = free_port()
    srv = servers(0, [echo_descriptor()], cli_config={"rpc-metrics-port": str(port)})
    assert srv.metrics_port == port
    before = scrape(port)
    with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5) as client:
        make_traffic(client)
    after = scrape(port)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    echo = {"grpc_service": ECHO, "grpc_method": f"{ECHO}/echo"}
    assert delta("grpc_server_call_started_total", **echo) == 6
    assert delta("grpc_server_call_duration_seconds_count", **echo, grpc_status="OK") == 6  # 2.x: errors are OK
    assert delta("grpc_helper_result_total", **echo, code="OK") == 3
    assert delta("grpc_helper_result_total", **echo, code="ERROR_ITEM_BUSY") == 2
    assert delta("grpc_helper_result_total", **echo, code="ERROR") == 1
    assert value(after, "grpc_helper_server_calls_in_flight", **echo) == 0
    repeat = {"grpc_method": f"{ECHO}/repeat"}
    assert delta("grpc_helper_server_stream_messages_sent_total", **repeat) == 4
    assert delta("grpc_helper_server_stream_messages_received_total", grpc_method=f"{ECHO}/collect") == 3
    # The server's own process: prometheus_client's defaults
    assert value(after, "process_cpu_seconds_total") > 0


def test_metrics_off_by_default(servers: Servers) -> None:
    srv = servers(0, [echo_descriptor()])
    assert srv.metrics_port is None


def test_servers_of_one_process_share_the_endpoint(servers: Servers) -> None:
    """Two servers asking for the same port: one registry, one endpoint, served until the last one stops."""
    port = free_port()
    first = servers(0, [echo_descriptor()], cli_config={"rpc-metrics-port": str(port)})
    second = RpcServer(0, [echo_descriptor()], cli_config={"rpc-metrics-port": str(port)}, with_debug_signal=False)
    assert first.metrics_port == second.metrics_port == port
    second.shutdown()
    assert scrape(port)  # still served for the first


Pki = tuple[Path, CertificateAuthority]  # the test's folder of PEM files, and its CA


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, CertificateAuthority]:
    ca = CertificateAuthority.create("metrics test CA")
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue("localhost", "127.0.0.1").write(tmp_path, "server")
    ca.issue("prometheus").write(tmp_path, "prometheus")
    return tmp_path, ca


def mtls_config(folder: Path, metrics_port: int) -> dict[str, str]:
    return {
        "rpc-tls-cert": str(folder / "server.crt"),
        "rpc-tls-key": str(folder / "server.key"),
        "rpc-tls-ca": str(folder / "ca.crt"),
        "rpc-tls-client-auth": "required",
        "rpc-metrics-port": str(metrics_port),
        "rpc-bind-address": "127.0.0.1",
    }


def client_context(folder: Path, *, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(folder / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(folder / "prometheus.crt"), str(folder / "prometheus.key"))
    return context


def test_exposition_is_mtls_with_the_servers_tls(servers: Servers, pki: Pki) -> None:
    folder, _ = pki
    port = free_port()
    servers(0, [echo_descriptor()], cli_config=mtls_config(folder, port))
    samples = scrape(port, client_context(folder, with_certificate=True))
    assert value(samples, "grpc_helper_tls_certificate_not_after_seconds") > time.time()
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        scrape(port, client_context(folder, with_certificate=False))  # no client certificate: refused
    with pytest.raises((urllib.error.URLError, ConnectionResetError, OSError)):
        scrape(port)  # plain HTTP: refused


def test_refusals_counted(servers: Servers, pki: Pki) -> None:
    """An mTLS server with a policy: an unknown certificate is UNAUTHENTICATED, counted by reason."""
    folder, ca = pki
    policy = folder / "policy.json"
    policy.write_text('{"identities": {"operator": {"role": "admin", "certificate": "operator"}}}')
    port = free_port()
    config = {**mtls_config(folder, port), "rpc-auth-policy": str(policy)}
    srv = servers(0, [echo_descriptor()], cli_config=config)
    context = client_context(folder, with_certificate=True)
    before = value(scrape(port, context), "grpc_helper_refusals_total", reason="UNAUTHENTICATED")
    stranger = ca.issue("stranger")
    security = ClientSecurity(ca=ca.cert_pem, cert=stranger.cert, key=stranger.key, server_name="localhost")
    with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=2, security=security) as client:
        for _ in range(2):
            with pytest.raises(RpcTransportError):
                client.echo.echo(EchoRequest(text="hi"))
    after = value(scrape(port, context), "grpc_helper_refusals_total", reason="UNAUTHENTICATED")
    assert after - before == 2


# --- a real Prometheus ---

PROMETHEUS = shutil.which("prometheus")


@pytest.fixture
def prometheus_binary() -> str:
    if PROMETHEUS is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is missing under CI=true (.ci/run installs Debian's package)")
        pytest.skip("Debian's prometheus is not installed (apt-get install prometheus)")
    return PROMETHEUS


@pytest.fixture
def prometheus(prometheus_binary: str, tmp_path: Path, pki: Pki) -> Iterator[Any]:
    """A Prometheus scraping the metrics port the test gives it, over mTLS; yields (start, query)."""
    folder, _ = pki
    web = free_port()
    process: subprocess.Popen[bytes] | None = None

    def start(metrics_port: int) -> None:
        nonlocal process
        config = tmp_path / "prometheus.yml"
        # deploy/prometheus/compose.yml's job, pointed at the test's server
        config.write_text(
            f"""global: {{scrape_interval: 1s, scrape_timeout: 1s}}
scrape_configs:
  - job_name: grpc-helper
    scheme: https
    tls_config:
      ca_file: {folder / "ca.crt"}
      cert_file: {folder / "prometheus.crt"}
      key_file: {folder / "prometheus.key"}
      server_name: localhost
    static_configs:
      - targets: ["127.0.0.1:{metrics_port}"]
        labels: {{service: echo}}
"""
        )
        command = [
            prometheus_binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
        ]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def query(promql: str) -> list[Any]:
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            data = json.loads(answer.read())
        assert data["status"] == "success", data
        result: list[Any] = data["data"]["result"]
        return result

    yield start, query
    if process is not None:
        process.terminate()
        process.wait(10)


def test_prometheus_scrapes_over_mtls(servers: Servers, pki: Pki, prometheus: Any) -> None:
    """Known traffic on an mTLS server; Prometheus's API reports the very counts."""
    folder, ca = pki
    start, query = prometheus
    port = free_port()
    srv = servers(0, [echo_descriptor()], cli_config=mtls_config(folder, port))
    before = scrape(port, client_context(folder, with_certificate=True))
    issued = ca.issue("operator")
    security = ClientSecurity(ca=ca.cert_pem, cert=issued.cert, key=issued.key, server_name="localhost")
    with RpcClient("127.0.0.1", srv.port, ECHO_STUBS, timeout=5, security=security) as client:
        make_traffic(client)
    start(port)
    echo, repeat = f"{ECHO}/echo", f"{ECHO}/repeat"
    # (family, labels, calls made): the process's counters may hold earlier tests' calls (one registry per
    # process), so Prometheus must report what was there before plus these
    expected = [
        ("grpc_server_call_started_total", {"grpc_method": echo}, 6),
        ("grpc_server_call_duration_seconds_count", {"grpc_method": echo, "grpc_status": "OK"}, 6),
        ("grpc_helper_result_total", {"grpc_method": echo, "code": "OK"}, 3),
        ("grpc_helper_result_total", {"grpc_method": echo, "code": "ERROR_ITEM_BUSY"}, 2),
        ("grpc_helper_result_total", {"grpc_method": echo, "code": "ERROR"}, 1),
        ("grpc_helper_server_stream_messages_sent_total", {"grpc_method": repeat}, 4),
    ]

    def scraped(promql: str) -> float | None:
        try:
            result = query(promql)
        except (urllib.error.URLError, ConnectionError):  # Prometheus still starting
            return None
        return float(result[0]["value"][1]) if result else None

    assert wait_until(lambda: scraped('up{job="grpc-helper"}') == 1, timeout=30), "Prometheus never scraped the server"
    for name, labels, count in expected:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        promql = f"sum({name}{{{selector}}})"
        assert scraped(promql) == value(before, name, **labels) + count, promql
