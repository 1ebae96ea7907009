"""Who is calling, and may they: bearer tokens and client certificates mapped to roles by a policy file.

A policy (`rpc-auth-policy`, JSON) names identities, each with one role and how it is recognized::

    {"identities": {
        "operator": {"role": "admin", "token_sha256": "<hex sha-256 of the token>"},
        "echo": {"role": "service", "certificate": "echo"},
        "app": {"role": "user", "token_sha256": "..."}}}

A caller is identified by `authorization: Bearer <token>` metadata (the token's SHA-256 compared in
constant time with each identity's: the server never holds a token itself), or else, when the server
requires client certificates (mTLS), by its certificate's names (SANs, then CN) matching an identity's
`certificate`. Roles nest: `user` < `service` < `admin` (see `required_role` for what each may call).
Health is open to all. No or unknown credentials: UNAUTHENTICATED; known but not allowed:
PERMISSION_DENIED; both logged at INFO with the caller's identity (never its token).

With no policy, nobody is asked for anything (grpc-helper 2.x's behaviour).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from grpc_helper.api import ResultCode
from grpc_helper.errors import AccessDenied, RpcException
from grpc_helper.generated import Handler, copy_options, kind_of, make_handler

ROLES = ("user", "service", "admin")  # each may do what the ones before it may
_RANK = {role: n for n, role in enumerate(ROLES)}
OPEN = -1  # the rank of methods anybody may call (health)

# What each default service's method needs; a default-service method missing here needs admin, and
# the methods of any other (application) service need user
_DEFAULT_SERVICES = ("RpcServerService", "ConfigService", "LoggerService", "EventService")
_METHOD_ROLES = {
    "/RpcServerService/info": "user",
    "/RpcServerService/shutdown": "admin",
    "/RpcServerService/proxy_register": "service",
    "/RpcServerService/proxy_forget": "service",
    "/ConfigService/get": "user",
    "/ConfigService/set": "admin",
    "/ConfigService/reset": "admin",
    "/LoggerService/get": "user",
    "/LoggerService/set": "admin",
    "/LoggerService/reset": "admin",
    "/EventService/listen": "user",
    "/EventService/interrupt": "user",
    "/EventService/inspect": "user",
    "/EventService/send": "service",
}
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)

# The identity of the call being served (set by the server's `Authorizer` for each call it lets through)
_CALLER: ContextVar[Identity | None] = ContextVar("grpc_helper_caller", default=None)


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    @property
    def rank(self) -> int:
        return _RANK[self.role]

    def may(self, role: str) -> bool:
        return self.rank >= _RANK[role]


def current_identity() -> Identity | None:
    """Who is calling, in a call served with a policy on; None without one (everybody may do everything)."""
    return _CALLER.get()


def check_owner(owner: str | None, what: str, *, admin_may: bool = False) -> None:
    """Raise `AccessDenied` unless the caller is `owner` (a known owner; always fine without a policy)."""
    caller = _CALLER.get()
    if caller is None or owner is None or caller.name == owner or (admin_may and caller.may("admin")):
        return
    raise AccessDenied(f"{what} belongs to another identity than {caller.name}")


def required_role(path: str) -> int:
    """The rank a method needs (OPEN for health)."""
    role = _METHOD_ROLES.get(path)
    if role is not None:
        return _RANK[role]
    if path.startswith(_OPEN_PREFIXES):
        return OPEN
    service = path.split("/")[1] if path.count("/") >= 2 else ""
    return _RANK["admin" if service in _DEFAULT_SERVICES else "user"]


def token_hash(token: str) -> str:
    """What a policy stores of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


class Policy:
    """Identities and their roles (see the module doc); `load` reads a policy file."""

    def __init__(self, identities: Iterable[tuple[Identity, str | None, str | None]]) -> None:
        """`identities`: (identity, token SHA-256 hex or None, certificate name or None)."""
        self._tokens: list[tuple[bytes, Identity]] = []
        self._certificates: dict[str, Identity] = {}
        for identity, digest, certificate in identities:
            if digest:
                self._tokens.append((bytes.fromhex(digest), identity))
            if certificate:
                self._certificates[certificate] = identity

    @classmethod
    def load(cls, path: Path) -> Policy:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RpcException(
                f"Can't read the authorization policy {path}: {exc}", ResultCode.ERROR_MODEL_INVALID
            ) from exc
        try:
            return cls(_parse(data))
        except (TypeError, ValueError, KeyError) as exc:
            raise RpcException(f"Invalid authorization policy {path}: {exc}", ResultCode.ERROR_MODEL_INVALID) from exc

    def add_token(self, identity: Identity, token: str) -> None:
        self._tokens.append((bytes.fromhex(token_hash(token)), identity))

    def by_token(self, token: str) -> Identity | None:
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, identity in self._tokens:  # every entry compared, in constant time each
            if hmac.compare_digest(known, digest):
                found = identity
        return found

    def by_certificate(self, names: Iterable[str]) -> Identity | None:
        for name in names:
            identity = self._certificates.get(name)
            if identity is not None:
                return identity
        return None


def _parse(data: Any) -> list[tuple[Identity, str | None, str | None]]:
    if not isinstance(data, dict) or not isinstance(data.get("identities"), dict):
        raise ValueError('expected {"identities": {name: {"role": ..., "token_sha256": ..., "certificate": ...}}}')
    out = []
    for name, entry in data["identities"].items():
        if not isinstance(entry, dict) or entry.get("role") not in _RANK:
            raise ValueError(f"identity {name!r}: a role among {', '.join(ROLES)} is needed")
        digest, certificate = entry.get("token_sha256"), entry.get("certificate")
        if digest is not None and (not isinstance(digest, str) or len(bytes.fromhex(digest)) != 32):
            raise ValueError(f"identity {name!r}: token_sha256 must be 64 hex digits")
        if certificate is not None and not isinstance(certificate, str):
            raise ValueError(f"identity {name!r}: certificate must be a name")
        if not digest and not certificate:
            raise ValueError(f"identity {name!r}: give a token_sha256 or a certificate name")
        out.append((Identity(str(name), entry["role"]), digest, certificate))
    return out


def _token_of(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _certificate_names(context: grpc.ServicerContext) -> list[str]:
    auth = context.auth_context()
    names = [*auth.get("x509_subject_alternative_name", ()), *auth.get("x509_common_name", ())]
    return [n.decode(errors="replace") for n in names]


class Authorizer(grpc.ServerInterceptor):
    """The server's gate: each call is let through with its identity set, or refused (see the module doc).

    Tokens are checked here, on gRPC's polling thread, before any thread is given to the call; a call
    without a token, on a server requiring client certificates, gets its certificate checked by a
    wrapper of its handler (the certificate is only visible to the handler's context).
    """

    def __init__(
        self,
        policy: Policy,
        *,
        certificates: bool,
        reject: Callable[[str, grpc.StatusCode, str], Handler],
        logger: logging.Logger,
    ) -> None:
        """`certificates`: the server requires client certificates; `reject(kind, code, details)`: a handler
        of `kind` aborting with `code` at once."""
        self.policy = policy
        self._certificates = certificates
        self._reject = reject
        self._logger = logger
        # By path and inner handler: one path gets several (the call limit's rejection, or the method's own)
        self._wrapped: dict[tuple[str, Handler], Handler] = {}
        self.refused = 0
        # The server's own clients (its auto-client) call as this admin identity, with a token nobody else has
        self.own_token = secrets.token_urlsafe(32)
        policy.add_token(Identity("self", "admin"), self.own_token)

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        path: str = details.method
        need = required_role(path)
        if need == OPEN:
            return handler
        token = _token_of(details.invocation_metadata)
        if token is not None:
            identity = self.policy.by_token(token)
            refusal = self._refusal(identity, need, path, "unknown token")
            if refusal is not None:
                return self._reject(kind_of(handler), *refusal)
            _CALLER.set(identity)
            return handler
        if self._certificates:
            return self._by_certificate(handler, path, need)
        return self._reject(
            kind_of(handler), *self._refused(grpc.StatusCode.UNAUTHENTICATED, path, None, "no credentials")
        )

    def _refusal(
        self, identity: Identity | None, need: int, path: str, unknown: str
    ) -> tuple[grpc.StatusCode, str] | None:
        if identity is None:
            return self._refused(grpc.StatusCode.UNAUTHENTICATED, path, None, unknown)
        if identity.rank < need:
            return self._refused(grpc.StatusCode.PERMISSION_DENIED, path, identity, f"needs role {ROLES[need]}")
        return None

    def _refused(
        self, code: grpc.StatusCode, path: str, identity: Identity | None, why: str
    ) -> tuple[grpc.StatusCode, str]:
        self.refused += 1
        who = f"{identity.name} (role {identity.role})" if identity is not None else "an unidentified caller"
        self._logger.info("Refused %s to %s: %s, %s (%s refused so far)", path, who, code.name, why, self.refused)
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return code, f"{path}: {why}: give a known bearer token or client certificate"
        return code, f"{path}: {who} may not call it ({why})"

    def _by_certificate(self, handler: Handler, path: str, need: int) -> Handler:
        key = (path, handler)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrapped[key] = self._certificate_handler(handler, path, need)
        return wrapped

    def _certificate_handler(self, handler: Handler, path: str, need: int) -> Handler:
        kind = kind_of(handler)
        original = getattr(handler, kind)

        def behavior(request: Any, context: grpc.ServicerContext, *args: Any) -> Any:
            identity = self.policy.by_certificate(_certificate_names(context))
            refusal = self._refusal(identity, need, path, "unknown certificate")
            if refusal is not None:
                context.abort(*refusal)
            _CALLER.set(identity)
            return original(request, context, *args)

        copy_options(original, behavior)
        return make_handler(handler, behavior)
