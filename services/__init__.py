"""Sample services built on grpc_helper: a main proxying server, an echo service and a notes store."""

__title__ = "grpc-helper-samples"
__version__ = "1.0.0"
