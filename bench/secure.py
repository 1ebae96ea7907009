"""TLS for the benchmarks: when `BENCH_TLS_DIR` is set (by `bench/security.py`), every server and client
of `servers.py` and `workloads.py` uses mTLS with the certificates there, and grpc-helper servers enforce
an authorization policy: helper clients send a token, a main server calling its backend is known by its
certificate. Otherwise everything is plaintext, as in `bench/run.py`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc

from grpc_helper.auth import token_hash
from grpc_helper.pki import CertificateAuthority
from grpc_helper.tls import ClientSecurity

ENV = "BENCH_TLS_DIR"
TOKEN = "bench-token-0123456789abcdef"


def folder() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def create(path: Path) -> None:
    """A CA, a certificate for the servers (naming localhost, 127.0.0.1 and echo), and a policy."""
    ca = CertificateAuthority.create("bench CA")
    (path / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue("localhost", "127.0.0.1", "echo").write(path, "server")
    ca.issue("bench-client").write(path, "client")
    policy = {
        "identities": {
            "bench": {"role": "admin", "token_sha256": token_hash(TOKEN)},
            "servers": {"role": "admin", "certificate": "localhost", "proxy": True},  # main, forwarding for bench
        }
    }
    (path / "policy.json").write_text(json.dumps(policy))


def server_config() -> dict[str, str]:
    """The cli_config of a grpc-helper server: TLS and the policy (empty without BENCH_TLS_DIR)."""
    d = folder()
    if d is None:
        return {}
    if os.environ.get("BENCH_POLICY") == "0":  # diagnostic: TLS only
        return {
            "rpc-tls-cert": str(d / "server.crt"),
            "rpc-tls-key": str(d / "server.key"),
            "rpc-tls-ca": str(d / "ca.crt"),
            "rpc-tls-client-auth": "required",
        }
    return {
        "rpc-tls-cert": str(d / "server.crt"),
        "rpc-tls-key": str(d / "server.key"),
        "rpc-tls-ca": str(d / "ca.crt"),
        "rpc-tls-client-auth": "required",
        "rpc-auth-policy": str(d / "policy.json"),
    }


def add_port(server: grpc.Server) -> int:
    """Bind a plain grpcio server on a free loopback port, with TLS when asked."""
    d = folder()
    if d is None:
        return server.add_insecure_port("127.0.0.1:0")
    pair = ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())
    creds = grpc.ssl_server_credentials([pair], (d / "ca.crt").read_bytes(), require_client_auth=True)
    return server.add_secure_port("127.0.0.1:0", creds)


def channel(ports: tuple[int, ...], options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A plain grpcio channel to a local server, with the same TLS credentials when asked; to several
    (replicas), balanced by gRPC's round_robin (no health checking: plain servers have no health service)."""
    d = folder()
    target = f"localhost:{ports[0]}"
    if len(ports) > 1:
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        service_config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
        # the certificate names localhost: the name checked against it, as the dialled host is an IP list
        balanced = [("grpc.service_config", service_config), ("grpc.ssl_target_name_override", "localhost")]
        options = [*(options or ()), *balanced]
    if d is None:
        return grpc.insecure_channel(target, options=options)
    ca, key, cert = ((d / name).read_bytes() for name in ("ca.crt", "client.key", "client.crt"))
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    return grpc.secure_channel(target, creds, options=options)


def client_security() -> ClientSecurity | None:
    """What the helper clients use: TLS with the CA, and the token."""
    d = folder()
    if d is None:
        return None
    ca, key, cert = ((d / name).read_bytes() for name in ("ca.crt", "client.key", "client.crt"))
    token = None if os.environ.get("BENCH_POLICY") == "0" else TOKEN
    return ClientSecurity(ca=ca, cert=cert, key=key, token=token)
