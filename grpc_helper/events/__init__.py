"""The events service and its client-side listener."""

from grpc_helper.events.listener import EventsListener
from grpc_helper.events.routes import RoutesFollower
from grpc_helper.events.service import EventsManager

__all__ = ["EventsListener", "EventsManager", "RoutesFollower"]
