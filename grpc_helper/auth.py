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
Health is open to all; channelz is for admins. No or unknown credentials: UNAUTHENTICATED; known but not allowed:
PERMISSION_DENIED; both logged at INFO with the caller's identity (never its token).

Forwarded calls keep their caller. An identity marked `"proxy": true` (main) forwards calls for others: it
names the caller it authenticated in the `rpc-caller` metadata key, and the server then applies its own
policy to that caller, as if called directly (`current_identity()` is the caller, `via` the forwarder).
The key is believed from such an identity only: from anyone else it is refused (PERMISSION_DENIED), and
main replaces whatever a caller sent in it. A forwarder calling without the key acts as itself.

With no policy, nobody is asked for anything (grpc-helper 2.x's behaviour).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import grpc

from grpc_helper import metrics
from grpc_helper.api import ResultCode
from grpc_helper.errors import AccessDenied, RpcException
from grpc_helper.generated import Handler, copy_options, kind_of, make_handler
from grpc_helper.limits import LogBudget, left_out_note
from grpc_helper.metadata import KEY_CALLER, Metadata
from grpc_helper.persist import file_stamp

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
    "/RpcServerService/stat": "user",
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
# Services of admins only: channelz tells every connection of the process (peers' addresses, certificates)
_ADMIN_PREFIXES = ("/grpc.channelz.v1.Channelz/",)

# The identity of the call being served, and the policy that let it through (set by the server's
# `Authorizer` for each call it lets through: a policy reloaded meanwhile decides nothing of that call)
_CALLER: ContextVar[Identity | None] = ContextVar("grpc_helper_caller", default=None)
_POLICY: ContextVar[Policy | None] = ContextVar("grpc_helper_policy", default=None)
# How often a server looks at its policy file (seconds): a change is adopted once unchanged for one look
POLICY_POLL = 0.5


# The name of a server's own identity: what its own clients (the auto-client) call as
SELF = "self"


@dataclass(frozen=True)
class Identity:
    """A caller known to the policy: its name and role; `via`: the forwarder (main) it called through."""

    name: str
    role: str
    via: str | None = None

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
    if path.startswith(_ADMIN_PREFIXES):
        return _RANK["admin"]
    service = path.split("/")[1] if path.count("/") >= 2 else ""
    return _RANK["admin" if service in _DEFAULT_SERVICES else "user"]


def check_service_names(names: Iterable[str]) -> None:
    """Raise `AccessDenied` unless the caller may register every proxied service of `names` (the policy's
    `services` grants: see `Policy.may_register`; always fine without a policy)."""
    caller, policy = _CALLER.get(), _POLICY.get()
    if caller is None or policy is None:
        return
    refused = sorted(name for name in names if not policy.may_register(caller, name))
    if refused:
        raise AccessDenied(f"{caller.name} may not register {', '.join(refused)}: the policy grants it to others")


def caller_metadata() -> Metadata:
    """What a forwarder (main) adds to a call it forwards: the `rpc-caller` it authenticated (see the module
    doc); nothing without a policy, or for the server's own calls (it then acts as itself)."""
    caller = _CALLER.get()
    if caller is None or caller.name == SELF:
        return ()
    return ((KEY_CALLER, quote(caller.name, safe="")),)  # any policy name, as metadata's printable ASCII


def token_hash(token: str) -> str:
    """What a policy stores of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class PolicyEntry:
    """One identity of a policy and how it is recognized (see the module doc)."""

    identity: Identity
    token_sha256: str | None = None  # hex
    certificate: str | None = None  # a name its certificate carries
    proxy: bool = False  # may name the caller it forwards for (`rpc-caller`)
    services: frozenset[str] | None = None  # the proxied service names it may register (None: not said)


class Policy:
    """Identities and their roles (see the module doc); `load` reads a policy file."""

    def __init__(self, entries: Iterable[PolicyEntry]) -> None:
        self._tokens: list[tuple[bytes, Identity]] = []
        self._certificates: dict[str, Identity] = {}
        self._names: dict[str, Identity] = {}
        self._proxies: set[str] = set()
        self._grants: dict[str, frozenset[str]] = {}  # identity name -> the service names it may register
        for entry in entries:
            identity = entry.identity
            self._names[identity.name] = identity
            if entry.token_sha256:
                self._tokens.append((bytes.fromhex(entry.token_sha256), identity))
            if entry.certificate:
                self._certificates[entry.certificate] = identity
            if entry.proxy:
                self._proxies.add(identity.name)
            if entry.services is not None:
                self._grants[identity.name] = entry.services
        self._granted = frozenset().union(*self._grants.values())  # names some identity is granted

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

    def __len__(self) -> int:
        return len(self._names)

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

    def by_name(self, name: str) -> Identity | None:
        return self._names.get(name)

    def is_proxy(self, identity: Identity) -> bool:
        """Whether `identity` may name the caller it forwards for (`rpc-caller`)."""
        return identity.name in self._proxies

    def may_register(self, identity: Identity, service: str) -> bool:
        """Whether `identity` may register the proxied service `service`: an admin any; an identity with
        `services` those it lists; one without, any name no identity is granted (a policy with no grants at
        all: any name, as before grants existed)."""
        if identity.may("admin"):
            return True
        grants = self._grants.get(identity.name)
        return service in grants if grants is not None else service not in self._granted


def _names_list(value: Any, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"identity {name!r}: services must be a list of service names")
    return frozenset(value)


def _parse(data: Any) -> list[PolicyEntry]:
    if not isinstance(data, dict) or not isinstance(data.get("identities"), dict):
        raise ValueError('expected {"identities": {name: {"role": ..., "token_sha256": ..., "certificate": ...}}}')
    out = []
    for name, entry in data["identities"].items():
        if name == SELF:
            raise ValueError(f"identity {name!r}: the name of a server's own identity, reserved")
        if not isinstance(entry, dict) or entry.get("role") not in _RANK:
            raise ValueError(f"identity {name!r}: a role among {', '.join(ROLES)} is needed")
        digest, certificate = entry.get("token_sha256"), entry.get("certificate")
        if digest is not None and (not isinstance(digest, str) or len(bytes.fromhex(digest)) != 32):
            raise ValueError(f"identity {name!r}: token_sha256 must be 64 hex digits")
        if certificate is not None and not isinstance(certificate, str):
            raise ValueError(f"identity {name!r}: certificate must be a name")
        if not isinstance(entry.get("proxy", False), bool):
            raise ValueError(f"identity {name!r}: proxy must be true or false")
        if not digest and not certificate:
            raise ValueError(f"identity {name!r}: give a token_sha256 or a certificate name")
        identity = Identity(str(name), entry["role"])
        services = _names_list(entry.get("services"), name)
        out.append(PolicyEntry(identity, digest, certificate, entry.get("proxy", False), services))
    return out


def _token_of(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else ""
    return None


def _forwarded_caller(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    for key, value in metadata:
        if key == KEY_CALLER:
            return unquote(value.decode(errors="replace") if isinstance(value, bytes) else value)
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
        path: Path,
        *,
        certificates: bool,
        reject: Callable[[str, grpc.StatusCode, str], Handler],
        logger: logging.Logger,
    ) -> None:
        """`path`: the policy file (read now, and again whenever it changes: see `reload`); `certificates`:
        the server requires client certificates; `reject(kind, code, details)`: a handler of `kind` aborting
        with `code` at once."""
        self.path = path
        self._certificates = certificates
        self._reject = reject
        self._logger = logger
        self.refused = 0
        self._log_budget = LogBudget()  # a flood of refused calls can't flood the log
        # The server's own clients (its auto-client) call as this admin identity, with a token nobody else has
        self.own_token = secrets.token_urlsafe(32)
        self._stamp = file_stamp(path)
        self.policy = self._load()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="rpc-policy-watch", daemon=True)
        self._watcher.start()

    def _load(self) -> Policy:
        policy = Policy.load(self.path)
        policy.add_token(Identity(SELF, "admin"), self.own_token)
        with contextlib.suppress(OSError):  # read a moment ago: gone since, the next look tells
            mode = self.path.stat().st_mode
            if mode & 0o022:  # re-read when it changes: whoever may write it may make themselves admin
                warning = "The authorization policy %s is writable by others (mode %o): whoever can write it is admin;"
                self._logger.warning(warning + " make it 0600 or 0644", self.path, mode & 0o777)
        return policy

    def reload(self) -> bool:
        """Read the policy file again: adopted if valid (True), else the previous policy is kept and the
        reason logged as an ERROR (False). Calls already let through keep the policy they were let in by."""
        try:
            policy = self._load()
        except RpcException as exc:
            self._logger.error("Keeping the previous authorization policy: %s", exc)
            metrics.reloaded("policy", ok=False)
            return False
        metrics.reloaded("policy", ok=True)
        self.policy = policy  # one assignment: each call reads the policy once, whole
        self._logger.warning("Authorization policy %s reloaded: %d identities", self.path, len(policy))
        return True

    def _watch(self) -> None:
        """Reload the policy when its file changed, once it stayed unchanged for one look (an editor may
        write it in several steps; `stack_secrets.py` replaces it atomically)."""
        seen = self._stamp
        while not self._stop.wait(POLICY_POLL):
            stamp = file_stamp(self.path)
            if stamp != seen:
                seen = stamp  # changing: look again before reading it
            elif stamp != self._stamp:
                self._stamp = stamp
                self.reload()

    def close(self) -> None:
        """Stop watching the policy file (the server is shutting down)."""
        self._stop.set()

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
        metadata = details.invocation_metadata
        token = _token_of(metadata)
        if token is not None:
            policy = self.policy
            known = policy.by_token(token)
            identity, refusal = self._identify(policy, known, metadata, need, path, "unknown token")
            if refusal is not None:
                return self._reject(kind_of(handler), *refusal)
            _CALLER.set(identity)
            _POLICY.set(policy)
            return handler
        if self._certificates:
            # A wrapper per call, never cached: the handler differs from call to call on the same path (main's
            # own, a routed forwarder, the call limit's refusal), and a cached wrapper once answered every
            # later certificate call with the first call's handler
            return self._certificate_handler(handler, path, need)
        return self._reject(
            kind_of(handler), *self._refused(grpc.StatusCode.UNAUTHENTICATED, path, None, "no credentials")
        )

    def _identify(
        self,
        policy: Policy,
        identity: Identity | None,
        metadata: Iterable[tuple[str, str | bytes]],
        need: int,
        path: str,
        unknown: str,
    ) -> tuple[Identity | None, tuple[grpc.StatusCode, str] | None]:
        """(who the call is for, the refusal if it may not be made): the direct caller `identity`, or the
        caller a forwarder names (see the module doc), checked against the role `need` by `policy`."""
        if identity is None:
            return None, self._refused(grpc.StatusCode.UNAUTHENTICATED, path, None, unknown)
        forwarded = _forwarded_caller(metadata)
        if forwarded is not None:
            if not policy.is_proxy(identity):
                why = f"{KEY_CALLER} given, but it may not call for others"
                return None, self._refused(grpc.StatusCode.PERMISSION_DENIED, path, identity, why)
            caller = policy.by_name(forwarded)
            if caller is None:
                why = f"unknown caller {forwarded!r} forwarded by {identity.name}"
                return None, self._refused(grpc.StatusCode.UNAUTHENTICATED, path, None, why)
            identity = Identity(caller.name, caller.role, via=identity.name)
        if identity.rank < need:
            return None, self._refused(grpc.StatusCode.PERMISSION_DENIED, path, identity, f"needs role {ROLES[need]}")
        return identity, None

    def _refused(
        self, code: grpc.StatusCode, path: str, identity: Identity | None, why: str
    ) -> tuple[grpc.StatusCode, str]:
        self.refused += 1
        metrics.refused(code)
        who = f"{identity.name} (role {identity.role})" if identity is not None else "an unidentified caller"
        if identity is not None and identity.via is not None:
            who += f" through {identity.via}"
        left_out = self._log_budget.take()
        if left_out is not None:
            self._logger.info(
                "Refused %s to %s: %s, %s (%s refused so far%s)",
                path,
                who,
                code.name,
                why,
                self.refused,
                left_out_note(left_out),
            )
        if code is grpc.StatusCode.UNAUTHENTICATED:
            return code, f"{path}: {why}: give a known bearer token or client certificate"
        return code, f"{path}: {who} may not call it ({why})"

    def _certificate_handler(self, handler: Handler, path: str, need: int) -> Handler:
        kind = kind_of(handler)
        original = getattr(handler, kind)

        def behavior(request: Any, context: grpc.ServicerContext, *args: Any) -> Any:
            policy = self.policy
            known = policy.by_certificate(_certificate_names(context))
            md = context.invocation_metadata()
            identity, refusal = self._identify(policy, known, md, need, path, "unknown certificate")
            if refusal is not None:
                context.abort(*refusal)
            _CALLER.set(identity)
            _POLICY.set(policy)
            return original(request, context, *args)

        copy_options(original, behavior)
        return make_handler(handler, behavior)
