"""`RoutesFollower`: keeps a direct-mode `RpcClient`'s routes in step with main's registrations."""

from __future__ import annotations

import logging

from grpc_helper.api import Event
from grpc_helper.client import RpcClient
from grpc_helper.events.listener import EventsListener

# What main's srv service sends when a replica registers or goes away (events service on)
REGISTRATION_EVENTS = ("RPC_PROXY_REGISTER", "RPC_PROXY_FORGET")


class RoutesFollower(EventsListener):
    """Reads a direct-mode client's routes again (`RpcClient.refresh_routes`) on each registration
    change main announces, so that a new replica gets calls at once and a replica gone gets none,
    without waiting for a call to fail. `client` needs an `events` stub; `interrupt()` stops it."""

    def __init__(self, client: RpcClient, logger: logging.Logger | None = None) -> None:
        super().__init__(client, REGISTRATION_EVENTS, logger=logger)

    def on_event(self, event: Event) -> None:  # noqa: ARG002 - any registration change: read them all
        self.client.refresh_routes()
