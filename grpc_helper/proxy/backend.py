"""One persistent channel per proxied server."""

from __future__ import annotations

import threading
from typing import Any

import grpc

from grpc_helper.client import CHANNEL_OPTIONS

_IDENTITY = None  # no (de)serializer: forwarded messages stay bytes


class Backend:
    """A channel to a proxied server, its readiness, and its cached multi-callables."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        self._ready = threading.Event()
        self._methods: dict[str, Any] = {}
        self.channel.subscribe(self._on_state, try_to_connect=True)

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        if state == grpc.ChannelConnectivity.READY:
            self._ready.set()
        else:
            self._ready.clear()

    def wait_ready(self, timeout: float) -> bool:
        """True once connected; waits (and triggers a reconnection) up to `timeout` otherwise."""
        if self._ready.is_set():
            return True
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False

    def method(self, kind: str, path: str) -> Any:
        """The cached multi-callable of `kind` ("unary_unary", ...) for `path`, passing bytes through."""
        key = kind + path
        callable_ = self._methods.get(key)
        if callable_ is None:
            callable_ = getattr(self.channel, kind)(path, _IDENTITY, _IDENTITY, _registered_method=True)
            self._methods[key] = callable_
        return callable_

    def close(self) -> None:
        self.channel.unsubscribe(self._on_state)
        self.channel.close()
