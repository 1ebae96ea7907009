"""Checks of a server's certificate files before it uses them, at start and on each renewal (`ServerTls`).

gRPC alone is no guard: it refuses some broken pairs for inbound TLS (and silently keeps the previous
one), accepts others it will fail every handshake with (expired, from another CA, for other names), and
the server's own clients (main's channels, a registration) would present whatever was read. So a set
of files is used only when:

- the certificate file holds PEM certificates (the server's first, then any intermediates) and the key
  file a PEM private key, whose public key is the certificate's;
- the certificate is valid now: not expired, not before its start (notBefore);
- with `rpc-tls-ca`, its chain verifies against that bundle (the bundle read with it: a CA rotation
  validates the new certificate against the new bundle), as a TLS server certificate (RFC 5280 / WebPKI
  rules, with the server-auth usage if it lists usages; the Authority Key Identifier is not required,
  as `pki` does not set it). The server's own clients verify it against that bundle too, so a
  certificate from elsewhere would break them;
- on a renewal, it still carries every name (subjectAltName DNS name or IP address, DNS names in any
  case) of the certificate in use: the server can't know which names its peers check (`localhost` for
  its auto-client, `rpc-main-host` for proxied servers, the service name for main, others for outside
  clients), and a dropped name would fail their next connection. Names may be added; to drop one,
  restart the server (at start there is no previous certificate to compare with).

A failed check raises `RpcException(ERROR_MODEL_INVALID)` naming the file and the reason.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException

T = TypeVar("T")
_FAQ = re.compile(r"\. See https?://\S+ for more details\.")


@dataclass(frozen=True)
class PemFile:
    """A file's contents and what it is, e.g. ("certificate (rpc-tls-cert)", path, data)."""

    what: str
    path: Path
    data: bytes

    def refused(self, reason: str) -> RpcException:
        """The error telling that this file is refused, and why."""
        return RpcException(f"Refused {self.what} {self.path}: {reason}", ResultCode.ERROR_MODEL_INVALID)


def _parse(file: PemFile, parse: Callable[[bytes], T], expected: str) -> T:
    """`parse(file.data)`; a file it can't parse (empty, truncated, garbage, encrypted) is refused."""
    try:
        return parse(file.data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography's PEM errors end with a link to its FAQ: keep their reason (e.g. MalformedFraming)
        why = "the file is empty" if not file.data.strip() else _FAQ.sub(":", str(exc)) or type(exc).__name__
        raise file.refused(f"not {expected} ({why})") from exc


def _names(cert: x509.Certificate) -> set[str]:
    """The names a certificate is checked against: its subjectAltName DNS names (lower case) and IPs."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return dns | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _subject(names: set[str]) -> x509.DNSName | x509.IPAddress:
    """A name to verify the chain for (the name rule is checked apart): one the certificate carries."""
    name = sorted(names)[0]
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        # A wildcard is a pattern, not a name: verify for a name it covers
        return x509.DNSName("w" + name[1:] if name.startswith("*.") else name)


def _verify_chain(file: PemFile, chain: list[x509.Certificate], ca: PemFile, now: datetime.datetime) -> None:
    roots = _parse(ca, x509.load_pem_x509_certificates, "PEM certificates")
    top = chain[-1]
    if top not in roots and all(root.subject != top.issuer for root in roots):
        raise file.refused(f"its issuer {top.issuer.rfc4514_string()} is not in the {ca.what} {ca.path}")
    names = _names(chain[0])
    if not names:
        raise file.refused("it carries no name (subjectAltName DNS name or IP address), which clients verify")
    # WebPKI's rules, but for the Authority Key Identifier, which private CAs (`pki`) often don't set
    ee = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.AuthorityKeyIdentifier, verification.Criticality.AGNOSTIC, None
    )
    try:
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(roots))
            .time(now)
            .extension_policies(ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
            .build_server_verifier(_subject(names))
        )
        verifier.verify(chain[0], chain[1:])
    except (verification.VerificationError, ValueError) as exc:
        raise file.refused(f"it does not verify against the {ca.what} {ca.path} ({exc})") from exc


def check_server_files(cert: PemFile, key: PemFile, ca: PemFile | None, previous: bytes | None = None) -> None:
    """Check a server's certificate, key and CA bundle (see the module doc); `previous`: the certificate in
    use (PEM), whose names the new one must carry (None at start)."""
    try:
        _check(cert, key, ca, previous)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # past parsing: e.g. a malformed extension
        raise cert.refused(f"it can't be checked ({exc})") from exc


def _check(cert: PemFile, key: PemFile, ca: PemFile | None, previous: bytes | None) -> None:
    chain = _parse(cert, x509.load_pem_x509_certificates, "a PEM certificate")
    leaf = chain[0]
    private = _parse(key, lambda data: serialization.load_pem_private_key(data, None), "a PEM private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise key.refused(f"it is not the key of the certificate {cert.path}")
    now = datetime.datetime.now(datetime.UTC)
    if leaf.not_valid_after_utc < now:
        raise cert.refused(f"it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    if leaf.not_valid_before_utc > now:
        raise cert.refused(f"it is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if ca is not None:
        _verify_chain(cert, chain, ca, now)
    if previous is not None:
        missing = _names(x509.load_pem_x509_certificate(previous)) - _names(leaf)
        if missing:
            names = ", ".join(sorted(missing))
            raise cert.refused(f"it no longer names {names}, which the certificate in use does (peers may verify them)")


def not_after(cert: bytes) -> float:
    """The end of validity of a PEM chain's first certificate (its leaf), as Unix time."""
    return x509.load_pem_x509_certificate(cert).not_valid_after_utc.timestamp()
