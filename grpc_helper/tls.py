"""TLS: the server's credentials (certificate files re-read when they change, without a restart) and the
client side's (`ClientSecurity`: the CA to verify the server with, an optional client certificate, the name
to verify, a bearer token).

Hostname verification is never turned off. A server's own clients (its auto-client, a proxied server
registering on main, main's channels to its backends) present the server's own certificate and verify the
other side's against the configured CA and a name: `localhost` for the auto-client (it dials 127.0.0.1),
`rpc-main-host` for main, and for a backend, which registers an IP address no certificate can carry in
advance, the name of the service it registered for (`rpc-tls-backend-name`, `{service}` by default).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from grpc_helper.api import ResultCode
from grpc_helper.config.static import CLIENT_AUTH_MODES, RpcStaticConfig
from grpc_helper.errors import PlaintextTokenError, RpcException
from grpc_helper.persist import file_stamp

if TYPE_CHECKING:
    from grpc_helper.metrics import ExpositionTls

_log = logging.getLogger("grpc_helper.tls")

# Changed files are taken once none changed for this long (ns): the certificate and key of a renewal
# are written one after the other, and a handshake must never get one without the other
_SETTLE_NS = 1_000_000_000
# The name a server's certificate must carry for its own auto-client (which dials 127.0.0.1)
SELF_NAME = "localhost"
# What the files of a server's TLS are (its certificate, its key, its CA bundle), as errors tell them
_FILES = ("certificate (rpc-tls-cert)", "private key (rpc-tls-key)", "CA bundle (rpc-tls-ca)")


def resolve(path: str, workspace: Path | None) -> Path:
    """A configured file: absolute, or relative to the workspace."""
    p = Path(path).expanduser()
    if p.is_absolute() or workspace is None:
        return p
    return workspace / p


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RpcException(f"Can't read the {what} {path}: {exc.strerror}", ResultCode.ERROR_MODEL_INVALID) from exc


def read_token(path: Path) -> str:
    """The bearer token a file holds: its first word (a token has no spaces); ValueError if it has none."""
    words = path.read_text().split()
    if not words:
        raise ValueError(f"Empty token file {path}")
    return words[0]


def _server_token(path: str, workspace: Path | None) -> str:
    """The token of `rpc-auth-token-file` (`path`), read once at start."""
    file = resolve(path, workspace)
    try:
        token = read_token(file)
        mode = file.stat().st_mode
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "empty"
        msg = f"Can't read the token (rpc-auth-token-file) {file}: {why}"
        raise RpcException(msg, ResultCode.ERROR_MODEL_INVALID) from exc
    if mode & 0o077:  # a secret: its owner's only (the path is logged, never the token)
        warning = "The token file %s (rpc-auth-token-file) is readable by others (mode %o): make it 0600"
        _log.warning(warning, file, mode & 0o777)
    return token


def _stamp(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    """What tells that the files changed: each one's `persist.file_stamp` (the one change test of the library's
    watched files, the policy's included)."""
    return tuple(file_stamp(p) for p in paths)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client secures its channel: TLS verifying the server with `ca` (PEM bytes; None: the system's
    roots), presenting `cert`/`key` when given (mTLS), checking the server's certificate against
    `server_name` instead of the dialled host when given, and sending `token` as a bearer token.

    `tls=False` is a plaintext channel (only a token may then be set, sent as is, and to loopback only:
    `channel` refuses any other target).
    """

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    server_name: str | None = None
    token: str | None = None
    tls: bool = True

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
        token_file: str | Path | None = None,
    ) -> ClientSecurity:
        """TLS with the PEM files given (a CA bundle; a client certificate and its key), a server name, and a
        token read from `token_file` (its first line)."""
        if (cert is None) != (key is None):
            raise ValueError("A client certificate needs its key, and a key its certificate")
        token = read_token(Path(token_file)) if token_file is not None else None
        return cls(
            ca=Path(ca).read_bytes() if ca is not None else None,
            cert=Path(cert).read_bytes() if cert is not None else None,
            key=Path(key).read_bytes() if key is not None else None,
            server_name=server_name,
            token=token,
        )

    def channel(self, target: str, options: list[tuple[str, object]]) -> grpc.Channel:
        """A channel to `target` with these credentials (`options` added).

        Every client channel of the library is made here (`RpcClient`'s to its server and, in direct mode,
        to replicas; main's to its backends), so this is where a bearer token is kept off the network in
        plaintext: with a token and no TLS, a target not wholly on loopback (`loopback_target`) raises
        `PlaintextTokenError` before any channel exists.
        """
        if not self.tls:
            if self.token and not loopback_target(target):
                # The target is an address list, never the token: safe to tell
                msg = f"A token is sent in plaintext only on loopback, not to {target}: give TLS credentials"
                raise PlaintextTokenError(msg)
            return grpc.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        if self.server_name:
            # The name checked against the server's certificate (SNI and verification), not disabled
            options = [*options, ("grpc.ssl_target_name_override", self.server_name)]
        return grpc.secure_channel(target, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata these credentials add: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def __repr__(self) -> str:  # never shows the key or the token
        return (
            f"ClientSecurity(tls={self.tls}, ca={'set' if self.ca else None}, cert={'set' if self.cert else None},"
            f" server_name={self.server_name!r}, token={'set' if self.token else None})"
        )


PLAINTEXT = ClientSecurity(tls=False)


def backend_name(service: str) -> str:
    """The name a proxied backend's certificate must carry: `rpc-tls-backend-name` for `service`."""
    return RpcStaticConfig.TLS_BACKEND_NAME.str_val.replace("{service}", service)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name, an IP literal, `[v6]`) is this machine's loopback: `localhost`, 127/8, ::1,
    or an IPv4-mapped loopback (`balancing.channel_target` maps IPv4 addresses in mixed lists)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def loopback_target(target: str) -> bool:
    """Whether every server a gRPC `target` names is on loopback (`is_loopback`): `host:port`,
    `[v6]:port`, `dns:[//authority/]host:port`, and the `ipv4:`/`ipv6:` lists of `channel_target`. Any
    other form (`unix:`, another scheme) counts as not loopback: a token is refused rather than guessed safe."""
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    elif scheme == "dns":
        # dns:host:port, dns:///host:port or dns://authority/host:port (the authority is the DNS server)
        addresses = [rest[2:].partition("/")[2] if rest.startswith("//") else rest]
    else:
        addresses = [target]
    return all(is_loopback(_host(address)) for address in addresses)


def _host(address: str) -> str:
    """The host of `host:port`, `[v6]:port` or a bare host."""
    if address.startswith("["):
        return address[1 : address.find("]")] if "]" in address else address
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def _reloaded(*, ok: bool) -> None:
    from grpc_helper import metrics  # a server's only (see ServerTls._load)

    metrics.reloaded("tls", ok=ok)


@dataclass(frozen=True)
class _Material:
    """A checked set of a server's PEM files, used together: inbound and by its own clients."""

    cert: bytes
    key: bytes
    ca: bytes | None


class ServerTls:
    """A server's TLS material, from the `rpc-tls-*` static items (paths absolute or workspace-relative).

    The files are checked before they are used (`grpc_helper.certs`: the key matches, valid now, issued
    by `rpc-tls-ca`, and on a renewal still naming what the previous certificate named): at start a
    failure fails the start; later, when the files changed on disk (a renewed certificate or CA) and then
    stayed unchanged for a second, they are checked once, then used by new connections (gRPC asks
    `credentials`' fetcher before every handshake) and by the server's own clients created afterwards
    (`client_security`), or else logged as an ERROR and the previous ones kept, for both. Connections
    made before keep theirs. `token` (`rpc-auth-token-file`, read once at start) is what the server's
    own clients send, if set.
    """

    token: str | None = None

    def __init__(self, cert: Path, key: Path, ca: Path | None, client_auth: str) -> None:
        if client_auth not in CLIENT_AUTH_MODES:
            msg = f"Invalid rpc-tls-client-auth {client_auth!r} (expected one of {', '.join(CLIENT_AUTH_MODES)})"
            raise RpcException(msg, ResultCode.ERROR_PARAM_INVALID)
        if client_auth == "required" and ca is None:
            raise RpcException("rpc-tls-client-auth=required needs rpc-tls-ca", ResultCode.ERROR_PARAM_MISSING)
        self._paths = [cert, key, *([ca] if ca is not None else [])]
        self.client_auth = client_auth
        self._lock = threading.Lock()
        self._stamp = _stamp(self._paths)
        self._material = self._load(None)

    @classmethod
    def from_config(cls, workspace: Path | None) -> ServerTls | None:
        """The server's TLS from its static items; None when no certificate is configured (plaintext)."""
        cert, key = RpcStaticConfig.TLS_CERT.str_val, RpcStaticConfig.TLS_KEY.str_val
        ca, token = RpcStaticConfig.TLS_CA.str_val, RpcStaticConfig.AUTH_TOKEN_FILE.str_val
        if not cert:
            if key:
                raise RpcException("rpc-tls-key is set but not rpc-tls-cert", ResultCode.ERROR_PARAM_MISSING)
            if token:
                msg = "rpc-auth-token-file needs TLS (rpc-tls-cert, rpc-tls-key): a token is never sent in plaintext"
                raise RpcException(msg, ResultCode.ERROR_PARAM_MISSING)
            return None
        if not key:
            raise RpcException("rpc-tls-cert is set but not rpc-tls-key", ResultCode.ERROR_PARAM_MISSING)
        tls = cls(
            resolve(cert, workspace),
            resolve(key, workspace),
            resolve(ca, workspace) if ca else None,
            RpcStaticConfig.TLS_CLIENT_AUTH.str_val.lower(),
        )
        tls.token = _server_token(token, workspace) if token else None
        return tls

    @property
    def cert(self) -> bytes:
        return self._material.cert

    @property
    def key(self) -> bytes:
        return self._material.key

    @property
    def ca(self) -> bytes | None:
        return self._material.ca

    def _load(self, previous: _Material | None) -> _Material:
        """The files, checked (RpcException naming the file and why); `previous`: the material in use."""
        # cryptography is imported only by servers with TLS: the operator CLI (a health probe) stays light
        # ... and so is prometheus_client: the metrics of a server's TLS
        from grpc_helper import metrics
        from grpc_helper.certs import PemFile, check_server_files, not_after

        named = zip(_FILES, self._paths, strict=False)  # the CA is optional
        cert, key, *ca = (PemFile(what, path, _read(path, what)) for what, path in named)
        check_server_files(cert, key, ca[0] if ca else None, previous.cert if previous is not None else None)
        metrics.CERT_NOT_AFTER.set(not_after(cert.data))
        return _Material(cert.data, key.data, ca[0].data if ca else None)

    def credentials(self) -> grpc.ServerCredentials:
        """Dynamic server credentials: the current files for each new connection."""
        served = self._material

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            """gRPC's certificate fetcher (before each handshake): a new configuration when it changed."""
            nonlocal served
            self.refresh()
            current = self._material
            if current is served:
                return None  # the common case
            served = current
            return grpc.ssl_server_certificate_configuration([(current.key, current.cert)], current.ca)

        return grpc.dynamic_ssl_server_credentials(
            grpc.ssl_server_certificate_configuration([(served.key, served.cert)], served.ca),
            fetch,  # type: ignore[arg-type]  # may return None ("no change"), as grpcio documents; its stubs say not
            require_client_authentication=self.client_auth == "required",
        )

    def refresh(self) -> None:
        """Take the files if they changed and settled, once checked (else log why, keep the previous ones)."""
        stamp = _stamp(self._paths)
        if stamp == self._stamp:
            return  # the common case: one stat() per file
        if time.time_ns() - max(mtime for mtime, *_ in stamp) < _SETTLE_NS:
            return  # a renewal may be half done (the certificate written, not yet its key): wait
        with self._lock:
            if stamp == self._stamp:
                return
            self._stamp = stamp  # checked once: a refused renewal is told once, not at every handshake
            try:
                self._material = self._load(self._material)
            except RpcException as exc:
                _reloaded(ok=False)
                _log.error("Keeping the previous TLS certificate, key and CA: %s", exc)
                return
        _reloaded(ok=True)
        _log.warning("TLS certificate files changed: new connections use them")

    def exposition(self) -> ExpositionTls:
        """The metrics endpoint's HTTPS: these files (as configured: the HTTP server loads them once, a renewal
        is taken at the next start), a client certificate of the CA required when there is one."""
        from grpc_helper.metrics import ExpositionTls  # a server's only (see _load)

        cert, key, *ca = self._paths
        return ExpositionTls(cert, key, ca[0] if ca else None)

    def client_security(self, server_name: str) -> ClientSecurity:
        """What this server's own clients use: its CA, its own certificate and token (their identity),
        `server_name`; the files as last checked (a renewal is taken here too, not only by a handshake)."""
        self.refresh()
        current = self._material
        return ClientSecurity(
            ca=current.ca, cert=current.cert, key=current.key, server_name=server_name, token=self.token
        )
