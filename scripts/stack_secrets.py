"""The reference stack's secrets: a private CA, one certificate per service, the operator's client
certificate and token, and the authorization policy, in a folder of their own (0700, files 0600).

    python scripts/stack_secrets.py create DIR    # on first use; a no-op when DIR already holds them
    python scripts/stack_secrets.py add DIR NAME [--service-name GRPC_NAME]...
                                                  # a service of your own: certificate, token, policy identity
    python scripts/stack_secrets.py rotate DIR    # renew every service certificate (same CA): servers pick them up
    python scripts/stack_secrets.py list DIR      # the services holding a certificate here, one a line

Certificates name what each server is reached by: main `main`, `localhost`, `127.0.0.1` (the operator and
the samples call it so); a sample its service name (what main verifies it against: rpc-tls-backend-name),
`localhost` and `127.0.0.1` (its own auto-client). The policy: `operator` is admin (token or certificate),
`main` admin by its certificate and a forwarder (`proxy`: it names the caller of each call it forwards, whom
the samples then check, not main), the samples services, each granted its own service name (`services`).
Prometheus (`stack.sh up --observability`) gets a client certificate, `prometheus`, for the services' /metrics
(not a gRPC call: the policy does not name it).
`create` brings secrets written by an older version up to date (the policy, a missing Prometheus certificate).

`add` makes a service of your own an identity of the stack: `NAME.crt`/`NAME.key` from the stack's CA, naming
NAME (its compose service), each GRPC_NAME (the gRPC service names it registers on main, which main verifies
its certificate against), `localhost` and `127.0.0.1`; a token in `NAME.token`; and in the policy an identity
NAME with the `service` role, recognized by either, granted the GRPC_NAMEs (`services`: no other identity
may register them; without any, it may register any name no identity is granted). The policy file is replaced
atomically: a running main reloads it. Adding NAME again issues its certificate again for the names given and
sets its grants to them (its token is kept). `rotate` renews the added services' certificates too, for the
names their grants give.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from grpc_helper.auth import token_hash
from grpc_helper.pki import CertificateAuthority, write_private
from grpc_helper.server.srv_service import GRPC_SERVICE_NAME

SERVICES = {"main": ("main", "localhost", "127.0.0.1"), "echo": ("echo", "localhost", "127.0.0.1"),
            "notes": ("notes", "localhost", "127.0.0.1")}  # fmt: skip
CLIENTS = ("prometheus",)  # client certificates renewed with the services' (the operator's is not: see rotate)
# An added service's name: a compose service, a supervise.py program (grpc-helper-NAME) and a DNS label
SERVICE_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
# Names whose files (NAME.crt, NAME.key, NAME.token) or identity the stack already has
RESERVED = {"ca", "operator", *SERVICES, *CLIENTS}


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


def certificate_names(name: str, grants: list[str]) -> tuple[str, ...]:
    """What an added service's certificate names: itself, its gRPC services, and loopback (its auto-client)."""
    return tuple(dict.fromkeys([name, *grants, "localhost", "127.0.0.1"]))


def added(folder: Path) -> dict[str, list[str]]:
    """The added services (see `add`): service identities with a certificate of their own name in `folder`,
    other than the samples; each with its grants."""
    identities: dict[str, Any] = json.loads((folder / "policy.json").read_text()).get("identities", {})
    return {
        name: list(entry.get("services", []))
        for name, entry in identities.items()
        if name not in RESERVED
        and isinstance(entry, dict)
        and entry.get("role") == "service"
        and entry.get("certificate") == name
        and (folder / f"{name}.crt").exists()
    }


def add(folder: Path, name: str, grants: list[str]) -> None:
    """Issue `name`'s certificate and token and make it a `service` identity of the policy (see the module)."""
    if not SERVICE_NAME.fullmatch(name) or name in RESERVED:
        raise ValueError(
            f"invalid service name {name!r}: lower-case letters, digits and '-' (a compose service and a DNS label),"
            f" not one of {', '.join(sorted(RESERVED))}"
        )
    invalid = [g for g in grants if not GRPC_SERVICE_NAME.fullmatch(g)]
    if invalid:
        raise ValueError(f"invalid gRPC service name(s) {', '.join(invalid)}: expected package.Service (or Service)")
    grants = list(dict.fromkeys(grants))
    policy_path = folder / "policy.json"
    policy = json.loads(policy_path.read_text())
    identities = policy.setdefault("identities", {})
    existing = identities.get(name)
    if existing is not None and name not in added(folder):
        raise ValueError(f"{name} is an identity of the policy that `add` did not make: edit {policy_path} instead")
    load_ca(folder).issue(*certificate_names(name, grants)).write(folder, name)
    token_file = folder / f"{name}.token"
    if not token_file.exists():
        write_private(token_file, secrets.token_urlsafe(32).encode() + b"\n")
    entry: dict[str, Any] = {
        "role": "service",
        "certificate": name,
        "token_sha256": token_hash(token_file.read_text().strip()),
    }
    if grants:
        entry["services"] = grants
    identities[name] = entry
    write_private(policy_path, json.dumps(policy, indent=2).encode())  # last: an identity only once its files are
    shared = sorted(
        other
        for other, e in identities.items()
        if other != name and isinstance(e, dict) and set(grants) & set(e.get("services", []))
    )
    what = "updated" if existing is not None else "added"
    granted = f"granted {', '.join(grants)}" if grants else "granted no service name (any that no identity is granted)"
    print(f"secrets: {name} {what}: {name}.crt, {name}.key and {name}.token in {folder}; {granted}")
    if shared:
        print(f"secrets: note: {', '.join(shared)} granted some of these names too (the first to register owns them)")


def rotate(folder: Path) -> None:
    ca = load_ca(folder)
    issue_services(ca, folder)  # each file replaced atomically: a server never reads half of one
    services = added(folder)
    for name, grants in services.items():
        ca.issue(*certificate_names(name, grants)).write(folder, name)
    print(f"secrets: renewed the certificates of {', '.join([*SERVICES, *CLIENTS, *services])} in {folder}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="stack_secrets.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in ("create", "rotate", "list"):
        commands.add_parser(command).add_argument("folder", type=Path)
    adding = commands.add_parser("add")
    adding.add_argument("folder", type=Path)
    adding.add_argument("name")
    adding.add_argument("--service-name", action="append", default=[], dest="grants", metavar="GRPC_NAME")
    args = parser.parse_args(argv)
    if args.command != "create" and not (args.folder / "policy.json").exists():
        print(f"stack_secrets: no secrets in {args.folder} (stack.sh up creates them)", file=sys.stderr)
        return 1
    if args.command == "create":
        create(args.folder)
    elif args.command == "rotate":
        rotate(args.folder)
    elif args.command == "list":
        print("\n".join([*SERVICES, *added(args.folder)]))
    else:
        try:
            add(args.folder, args.name, args.grants)
        except ValueError as exc:
            print(f"stack_secrets: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
