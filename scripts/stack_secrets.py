"""The reference stack's secrets: a private CA, one certificate per service, the operator's client
certificate and token, and the authorization policy, in a folder of their own (0700, files 0600).

    python scripts/stack_secrets.py create DIR    # on first use; a no-op when DIR already holds them
    python scripts/stack_secrets.py rotate DIR    # renew the service certificates (same CA): servers pick them up

Certificates name what each server is reached by: main `main`, `localhost`, `127.0.0.1` (the operator and
the samples call it so); a sample its service name (what main verifies it against: rpc-tls-backend-name),
`localhost` and `127.0.0.1` (its own auto-client). The policy: `operator` is admin (token or certificate),
`main` admin by its certificate and a forwarder (`proxy`: it names the caller of each call it forwards, whom
the samples then check, not main), the samples services, each granted its own service name (`services`).
Prometheus (`stack.sh up --observability`) gets a client certificate, `prometheus`, for the services' /metrics
(not a gRPC call: the policy does not name it).
`create` brings secrets written by an older version up to date (the policy, a missing Prometheus certificate).
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from grpc_helper.auth import token_hash
from grpc_helper.pki import CertificateAuthority, write_private

SERVICES = {"main": ("main", "localhost", "127.0.0.1"), "echo": ("echo", "localhost", "127.0.0.1"),
            "notes": ("notes", "localhost", "127.0.0.1")}  # fmt: skip


CLIENTS = ("prometheus",)  # client certificates renewed with the services' (the operator's is not: see rotate)


def issue_services(ca: CertificateAuthority, folder: Path) -> None:
    for name, names in SERVICES.items():
        ca.issue(*names).write(folder, name)
    for name in CLIENTS:
        ca.issue(name).write(folder, name)


def load_ca(folder: Path) -> CertificateAuthority:
    return CertificateAuthority.load((folder / "ca.crt").read_bytes(), (folder / "ca.key").read_bytes())


def create(folder: Path) -> None:
    if (folder / "policy.json").exists():  # written last: a create that was interrupted starts over
        upgrade(folder / "policy.json")
        missing = [name for name in CLIENTS if not (folder / f"{name}.crt").exists()]
        if missing:  # secrets made before Prometheus had a certificate
            ca = load_ca(folder)
            for name in missing:
                ca.issue(name).write(folder, name)
            print(f"secrets: issued a certificate for {', '.join(missing)} in {folder}")
        return
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca = CertificateAuthority.create("grpc-helper stack CA")
    write_private(folder / "ca.crt", ca.cert_pem)
    write_private(folder / "ca.key", ca.key_pem)
    issue_services(ca, folder)
    ca.issue("operator").write(folder, "operator")
    token = secrets.token_urlsafe(32)
    write_private(folder / "operator.token", token.encode() + b"\n")
    policy = {
        "identities": {
            "operator": {"role": "admin", "token_sha256": token_hash(token), "certificate": "operator"},
            "main": {"role": "admin", "certificate": "main", "proxy": True},
            "echo": {"role": "service", "certificate": "echo", "services": ["echo"]},
            "notes": {"role": "service", "certificate": "notes", "services": ["notes"]},
        }
    }
    write_private(folder / "policy.json", json.dumps(policy, indent=2).encode())
    print(
        f"secrets: created a CA, certificates for {', '.join([*SERVICES, *CLIENTS])} and the operator, and a policy"
        f" in {folder}"
    )


def upgrade(path: Path) -> None:
    """Bring a policy written by an older version up to date: main marked as a forwarder (the samples refuse
    its routed calls otherwise: it names their callers), and each sample granted its own service name."""
    policy = json.loads(path.read_text())
    identities = policy.get("identities", {})
    changes = []
    if isinstance(identities.get("main"), dict) and "proxy" not in identities["main"]:
        identities["main"]["proxy"] = True
        changes.append("main marked as a forwarder (proxy)")
    for name in ("echo", "notes"):
        if isinstance(identities.get(name), dict) and "services" not in identities[name]:
            identities[name]["services"] = [name]
            changes.append(f"{name} granted its service name")
    if changes:
        write_private(path, json.dumps(policy, indent=2).encode())
        print(f"secrets: {', '.join(changes)} in {path}")


def rotate(folder: Path) -> None:
    issue_services(load_ca(folder), folder)  # each file replaced atomically: a server never reads half of one
    print(f"secrets: renewed the certificates of {', '.join([*SERVICES, *CLIENTS])} in {folder}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("create", "rotate"):
        print(__doc__, file=sys.stderr)
        return 2
    (create if argv[0] == "create" else rotate)(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
