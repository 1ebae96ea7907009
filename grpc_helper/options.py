"""The gRPC options of every channel and server of the library, built in one place: reconnection, reading
streams, balancing, message sizes, and HTTP/2 keepalive, so that a peer that vanishes (a host lost, a
network cut, a firewall dropping packets: nothing resets the connection) or freezes (its TCP up, nothing
answering) is noticed within seconds on every hop.

Keepalive (`rpc-keepalive-time` T, `rpc-keepalive-timeout` W, static items read when a channel or server is
made): a connection with calls on it pings its peer every T seconds and closes when a ping is not
acknowledged within W, failing the calls on it (never resent: see `proxy.forward`), so a dead peer is
noticed within T + W. Servers ping their callers the same way, idle or not, which ends the streams of a
caller that vanished (an event listener's queue is then retained).

gRPC servers refuse pings that come too often without data (`too_many_pings` GOAWAY); gRPC's default is at
most one every 5 minutes, with 2 strikes. Two client profiles keep clear of that:

- `Peer.OURS` (an `RpcClient`'s channel to its server, usually a main, once that server answered the
  client's `srv.stat`, new in 3: see `RpcClient._learn_server`): pings while any call is open, however
  long it stays silent (an event listener waiting for events). Our servers accept a ping a second
  (`MIN_KEEPALIVE`). Until then, or for a server that is not ours, an `RpcClient` is `Peer.ANY`.
- `Peer.ANY` (main's channels to its backends, direct mode's to replicas: servers we may not configure,
  2.x and plain grpcio ones included): one ping after each message or call the client sends, which finds
  a dead peer under any traffic; a connection left silent is watched by main's bounded health checks
  instead (see `proxy.backend.Backend.probe`).

  What a default server counts is pings received while it sent nothing (its strikes are cleared whenever
  it sends headers or data), and gRPC (1.6x on, no option to turn it off) keeps pinging a call that stays
  open and silent once a minute after its one ping: a silent stream (gRPC's own health watch on a balanced
  channel, a quiet proxied stream) earns the third strike after about 3 minutes. So no connection of
  main's to a backend may stay silent that long: main probes every channel it has to backends, its
  monitors and its balanced channels alike (`proxy.registry`), and every answer clears the strikes (but an
  endpoint its health watch says NOT_SERVING gets no probe on a balanced channel). Direct mode's channels
  have no such probes: a replica that is not ours (not accepting our pings) may GOAWAY a call of theirs
  that stays silent for minutes, or their health watch when it has one.
"""

from __future__ import annotations

import enum

import grpc
import grpc.experimental

from grpc_helper.config.static import MIN_KEEPALIVE, RpcStaticConfig

# Reconnect quickly once a server is back: gRPC's default backoff grows to 2 minutes
_RECONNECT: list[tuple[str, object]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class Peer(enum.Enum):
    """Which servers a channel talks to: how freely it may ping them (see the module doc)."""

    OURS = "ours"
    ANY = "any"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _ping_timeout() -> tuple[str, object]:
    """How long any ping may wait for its ack: `rpc-keepalive-timeout`. gRPC (1.85) bounds a ping by this
    option (default: a minute), and by `grpc.keepalive_timeout_ms` only in some cases: without it, a peer
    whose TCP stays up while nothing answers (a frozen host, `docker pause`, a stopped process: its kernel
    still acknowledges every packet) went unnoticed for as long as it stayed so (20 s measured; the default
    is a minute), instead of `keepalive_bound()`. (A network cut was noticed anyway: gRPC's TCP_USER_TIMEOUT.)"""
    return ("grpc.http2.ping_timeout_ms", _ms(RpcStaticConfig.KEEPALIVE_TIMEOUT.float_val))


def keepalive_bound() -> float:
    """Seconds within which a vanished peer is noticed: `rpc-keepalive-time` + `rpc-keepalive-timeout`."""
    return RpcStaticConfig.KEEPALIVE_TIME.float_val + RpcStaticConfig.KEEPALIVE_TIMEOUT.float_val


def _message_sizes() -> list[tuple[str, object]]:
    """`rpc-max-receive-message-size` and `rpc-max-send-message-size`: the same on every server and channel,
    so that a message a hop accepts is one the next accepts too."""
    return [
        ("grpc.max_receive_message_length", RpcStaticConfig.MAX_RECEIVE_MESSAGE.int_val),
        ("grpc.max_send_message_length", RpcStaticConfig.MAX_SEND_MESSAGE.int_val),
    ]


def channel_options(peer: Peer, service_config: str | None = None) -> list[tuple[str, object]]:
    """The options of a client channel to `peer` servers; with `service_config`, balanced by it."""
    options: list[tuple[str, object]] = [
        *_RECONNECT,
        *_message_sizes(),
        # Read server streams on the consuming thread instead of handing every message over from gRPC's
        # channel thread (measured: much faster proxied streams and event fan-out). A grpcio experimental
        # option (hence grpcio's bound in pyproject.toml).
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        ("grpc.keepalive_time_ms", _ms(RpcStaticConfig.KEEPALIVE_TIME.float_val)),
        ("grpc.keepalive_timeout_ms", _ms(RpcStaticConfig.KEEPALIVE_TIMEOUT.float_val)),
        _ping_timeout(),
        # Idle connections (no call) are not pinged: a call sent on a dead one is, at once
        ("grpc.keepalive_permit_without_calls", 0),
        # 0: no limit to the pings without data sent (OURS); 1: one per message sent (ANY)
        ("grpc.http2.max_pings_without_data", 0 if peer is Peer.OURS else 1),
    ]
    if service_config is not None:
        options.append(("grpc.service_config", service_config))
    return options


def server_options() -> list[tuple[str, object]]:
    """The options of every `RpcServer`."""
    return [
        # No SO_REUSEPORT: with it, a second server could silently share a busy port
        ("grpc.so_reuseport", 0),
        *_message_sizes(),
        # Ping callers, idle or not, without limit (clients never refuse pings): a caller that vanished is
        # noticed, its streams end, its resources are freed
        ("grpc.keepalive_time_ms", _ms(RpcStaticConfig.KEEPALIVE_TIME.float_val)),
        ("grpc.keepalive_timeout_ms", _ms(RpcStaticConfig.KEEPALIVE_TIMEOUT.float_val)),
        _ping_timeout(),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Accept our clients' pings, idle or not, down to one a second; faster ones still get gRPC's strikes.
        # (The key of GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS: gRPC ignores a key it does not know,
        # and a misspelt one here left gRPC's 5 minutes in force; tests/test_faults.py keeps a silent call)
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_KEEPALIVE)),
        ("grpc.http2.max_ping_strikes", 2),
    ]
