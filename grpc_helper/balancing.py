"""Balanced channels: gRPC's own round_robin and client-side health checking over several servers.

Used by main's channels to a proxied service's replicas (`proxy.backend`) and by `RpcClient`'s direct
mode; no balancer of ours: gRPC picks, gRPC health checks.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Sequence

Address = tuple[str, int]  # a host (name or IP literal) and a port

# gRPC's own balancing and health checking, through the channel's service config: calls are spread
# over the subchannels (one per address) with round_robin, and a subchannel is used only while the
# backend's `grpc.health.v1` service (its whole server, service "") says SERVING, as gRPC's client
# watches it (a Health/Watch stream per subchannel). A backend without a health service
# (UNIMPLEMENTED) counts as healthy, as gRPC decides. So the channel is READY while at least one
# address is connected and healthy.
SERVICE_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}, separators=(",", ":")
)


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The IP addresses of `host` (itself if it is one); empty if it does not resolve."""
    literal = _ip_literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    # IPv4 first: what a name most often means for a server registered by its address
    ips = {ipaddress.ip_address(info[4][0]) for info in infos}
    return sorted(ips, key=lambda ip: (ip.version, int(ip)))


def channel_target(addresses: Sequence[Address]) -> str:
    """The gRPC target reaching every one of `addresses`.

    One address: `host:port`, as given (gRPC's DNS resolver follows a name; an IPv6 literal bracketed).
    Several: the `ipv4:` (or `ipv6:`) resolver's list, which takes IP literals only, so names are
    resolved here, once (a name that does not resolve is left out: that replica can't be reached
    anyway, and its own monitor channel says so); IPv4 addresses become IPv4-mapped IPv6 ones when an
    IPv6 one is in the list.
    """
    if len(addresses) == 1:
        host, port = addresses[0]
        return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    resolved = [(ip, port) for host, port in addresses for ip in _resolve(host, port)[:1]]
    if not resolved:
        host, port = addresses[0]
        return channel_target([(host, port)])
    if all(ip.version == 4 for ip, _ in resolved):
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in resolved)
    mapped = [(ip if ip.version == 6 else ipaddress.IPv6Address(f"::ffff:{ip}"), port) for ip, port in resolved]
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in mapped)
