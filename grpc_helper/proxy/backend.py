"""One persistent channel per proxied server."""

from __future__ import annotations

from typing import Any

import grpc

from grpc_helper.client import CHANNEL_OPTIONS


class Backend:
    """A channel to a proxied server, with its cached multi-callables."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.channel = grpc.insecure_channel(f"{host}:{port}", options=CHANNEL_OPTIONS)
        self._methods: dict[str, Any] = {}

    def method(self, kind: str, path: str) -> Any:
        """The cached multi-callable of `kind` ("unary_unary", ...) for `path`, passing bytes through."""
        key = kind + path
        callable_ = self._methods.get(key)
        if callable_ is None:
            # No (de)serializers: forwarded messages stay bytes
            callable_ = getattr(self.channel, kind)(path, None, None, _registered_method=True)
            self._methods[key] = callable_
        return callable_

    def close(self) -> None:
        self.channel.close()
