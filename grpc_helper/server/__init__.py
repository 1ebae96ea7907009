"""The RPC server: lifecycle, default services and debug dumps."""

from grpc_helper.calls import PendingCall, current_call
from grpc_helper.server.server import RpcServer

__all__ = ["PendingCall", "RpcServer", "current_call"]
