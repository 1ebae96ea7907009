"""Call metadata: who is calling."""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass, field
from functools import cache
from typing import TypeAlias

# Metadata keys sent by RpcClient (wire API); empty values are omitted
KEY_CLIENT = "client"
KEY_USER = "user"
KEY_HOST = "host"
KEY_IP = "ip"
KEY_API_VERSION = "api_version"
# Routing (new in 3): a call to a default service (srv, config, log, events) made through main with
# `route-service` set to a proxied service's name is answered by that service's server (one of its
# replicas, or the one `route-endpoint`, "host:port" as registered, names)
KEY_ROUTE_SERVICE = "route-service"
KEY_ROUTE_ENDPOINT = "route-endpoint"
# Forwarding (new in 3): the caller a forwarder (main) authenticated, for the server it forwards to (see auth)
KEY_CALLER = "rpc-caller"

# The keys a grpc-helper client sends (2.x's too; empty ones are omitted, never all of them)
_CLIENT_KEYS = frozenset((KEY_CLIENT, KEY_USER, KEY_HOST, KEY_IP, KEY_API_VERSION))

# Call metadata as gRPC gives and takes it: (key, value) pairs, values of "-bin" keys as bytes
Metadata: TypeAlias = tuple[tuple[str, str | bytes], ...]


def reads_results(metadata: Metadata) -> bool:
    """Whether a caller is a grpc-helper client (2.x's or ours), which reads errors in a response's `Result r`
    (gRPC OK with `r.code`, 2.x's shape): it sends some of the keys every such client sends (`client`,
    `user`, `host`, `ip`, `api_version`). Any other caller (grpcurl, tonic, plain grpcio) reads gRPC
    statuses only."""
    return any(key in _CLIENT_KEYS for key, _ in metadata)


@cache
def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (e.g. arbitrary uid in a container)
        return ""


@cache
def _local_host() -> str:
    return socket.gethostname()


@cache
def local_ip() -> str:
    """This host's own IP address, as other hosts would reach it (best effort)."""
    try:
        return socket.gethostbyname(_local_host())
    except OSError:
        return "127.0.0.1"


def ip_towards(host: str) -> str:
    """This host's own address on the route to `host`, i.e. where `host` can reach us back (no packet
    is sent: connecting a UDP socket only picks the route); `local_ip()` when there is no route."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((host, 9))
            return str(sock.getsockname()[0])
    except OSError:
        return local_ip()


@dataclass(frozen=True)
class RpcMetadata:
    """Identity of a client, sent as call metadata. Unset fields default to the local user/host/ip."""

    client: str = ""
    user: str = field(default_factory=_local_user)
    host: str = field(default_factory=_local_host)
    ip: str = field(default_factory=local_ip)
    route_service: str = ""  # see KEY_ROUTE_SERVICE: the default services of this proxied service's server
    route_endpoint: str = ""  # ... of this endpoint of it ("host:port")

    def as_metadata(self) -> tuple[tuple[str, str], ...]:
        pairs = (
            (KEY_CLIENT, self.client),
            (KEY_USER, self.user),
            (KEY_HOST, self.host),
            (KEY_IP, self.ip),
            (KEY_ROUTE_SERVICE, self.route_service),
            (KEY_ROUTE_ENDPOINT, self.route_endpoint),
        )
        return tuple((k, v) for k, v in pairs if v)
