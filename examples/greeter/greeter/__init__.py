"""The greeter example: a service of your own on grpc-helper (see README "Your own service on the stack")."""

__title__ = "grpc-helper-greeter"
__version__ = "1.0.0"
