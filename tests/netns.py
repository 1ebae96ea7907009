"""Hosts on one machine: network namespaces, each with an address of its own, joined to this host (the root
namespace) by a veth pair, for tests of peers that vanish without a reset.

    with Network() as net:
        replica = net.host("replica1")              # a namespace, its address in replica.ip
        proc = replica.popen([sys.executable, ...])  # a process on that host
        replica.cut()                               # iptables DROP of every packet in and out: a black hole
        replica.heal()

This host reaches each of them at its `ip`; they reach this host at its `gateway` (the root side of their
veth pair). Traffic stays between this machine's own namespaces: addresses are taken in 198.18.0.0/15 (the
benchmarking range, never routed), a /30 per host. Everything made is removed on exit, even when a test
fails: processes killed, namespaces and links deleted.

Needs root, `ip` and `iptables`: `require()` skips a test without them, or fails it under CI=true.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

import pytest

# 198.18.0.0/15 split into /24s, one per Network (picked at random, skipping any this machine already has)
_RANGE = ipaddress.ip_network("198.18.0.0/15")


def require() -> None:
    """Skip the calling test without root, `ip` or `iptables` (fail it under CI=true: it must run there)."""
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    why = None
    if os.geteuid() != 0:
        why = "network namespace tests need root"
    elif missing:
        why = f"network namespace tests need {' and '.join(missing)}"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {why}: they must run", pytrace=False)
    pytest.skip(why)


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


class Host:
    """One network namespace with an address of its own (`ip`), reaching this host at `gateway`."""

    def __init__(self, namespace: str, ip: str, gateway: str) -> None:
        self.namespace, self.ip, self.gateway = namespace, ip, gateway
        self.processes: list[subprocess.Popen[Any]] = []
        self.is_cut = False

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """A process on this host (killed when the network is removed)."""
        process = subprocess.Popen(["ip", "netns", "exec", self.namespace, *command], **kwargs)
        self.processes.append(process)
        return process

    def cut(self) -> None:
        """Drop every packet in and out, as a lost host or a firewall change does: nothing is reset."""
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", self.namespace, "iptables", "-A", chain, "-j", "DROP")
        self.is_cut = True

    def heal(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            _run("ip", "netns", "exec", self.namespace, "iptables", "-F", chain)
        self.is_cut = False


class Network:
    """Hosts made on demand (`host`), all removed on exit."""

    def __init__(self) -> None:
        self._id = secrets.token_hex(3)  # names of links: at most 15 characters
        self._subnet = self._free_subnet()
        self._hosts: list[Host] = []
        self._links: list[str] = []

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        used = _run("ip", "-4", "-o", "addr").stdout
        subnets = list(_RANGE.subnets(new_prefix=24))
        while True:
            subnet = subnets[secrets.randbelow(len(subnets))]
            prefix = str(subnet.network_address).rsplit(".", 1)[0] + "."  # "198.18.N."
            if f"inet {prefix}" not in used:  # no address of this machine in it (another test's network)
                return subnet  # type: ignore[return-value]  # an IPv4 range's subnets are IPv4 networks

    def host(self, name: str) -> Host:
        """A new host: a namespace, a veth pair to this host, addresses of a /30 of this network's range."""
        n = len(self._hosts)
        base = int(self._subnet.network_address) + 4 * n
        gateway, ip = str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))
        namespace = f"gh-{self._id}-{name}"
        outer, inner = f"gh{self._id}o{n}", f"gh{self._id}i{n}"
        _run("ip", "netns", "add", namespace)
        host = Host(namespace, ip, gateway)
        self._hosts.append(host)  # removed on exit from here on, whatever fails next
        _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        self._links.append(outer)
        _run("ip", "link", "set", inner, "netns", namespace)
        _run("ip", "addr", "add", f"{gateway}/30", "dev", outer)
        _run("ip", "link", "set", outer, "up")
        inside = ("ip", "netns", "exec", namespace)
        _run(*inside, "ip", "addr", "add", f"{ip}/30", "dev", inner)
        _run(*inside, "ip", "link", "set", inner, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        return host

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for host in self._hosts:
            for process in host.processes:
                if process.poll() is None:
                    process.kill()
                process.wait(30)
        for host in self._hosts:
            _run("ip", "netns", "del", host.namespace, check=False)  # its end of the veth pair goes with it
        for link in self._links:
            _run("ip", "link", "del", link, check=False)  # gone already when its peer was: no error wanted
        self._hosts.clear()
        self._links.clear()

    def __del__(self) -> None:  # a Network never closed (a test killed mid-way) still leaves nothing
        if self._hosts:
            self.close()
