"""RpcStaticConfig: the server's own static config items."""

from __future__ import annotations

from grpc_helper.api import ConfigValidator, ResultCode
from grpc_helper.config.items import Config, ConfigHolder
from grpc_helper.errors import RpcException
from grpc_helper.limits import quote

# TimedRotatingFileHandler "when" values
_ROLLOVER_UNITS = {"S", "M", "H", "D", "MIDNIGHT", *(f"W{d}" for d in range(7))}


def validate_rollover_unit(name: str, value: str) -> None:
    if value.upper() not in _ROLLOVER_UNITS:
        raise RpcException(
            f"Invalid value for {name}: {value!r} (expected one of S, M, H, D, MIDNIGHT, W0-W6)",
            ResultCode.ERROR_PARAM_INVALID,
        )


# rpc-tls-client-auth: client certificates not asked for, or required (grpcio offers nothing between)
CLIENT_AUTH_MODES = ("none", "required")

_BOOLEANS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False, "0": False}


def validate_bool(name: str, value: str) -> None:
    if value.lower() not in _BOOLEANS:
        raise RpcException(
            f"Invalid value for {name}: {quote(value)} (expected true or false)", ResultCode.ERROR_PARAM_INVALID
        )


# The least keepalive period our servers accept from a client (seconds): see `keepalive_seconds`
MIN_KEEPALIVE = 1.0


def keepalive_seconds(name: str, value: str) -> None:
    """A keepalive time or timeout: seconds, at least `MIN_KEEPALIVE` (our servers refuse more frequent
    pings with a too_many_pings GOAWAY, as gRPC's enforcement does)."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= MIN_KEEPALIVE:  # NaN included
        raise RpcException(
            f"Invalid value for {name}: {quote(value)} (expected seconds, at least {MIN_KEEPALIVE:g})",
            ResultCode.ERROR_PARAM_INVALID,
        )


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value.lower() not in choices:
        raise RpcException(
            f"Invalid value for {name}: {quote(value)} (expected one of {', '.join(choices)})",
            ResultCode.ERROR_PARAM_INVALID,
        )


def validate_client_auth(name: str, value: str) -> None:
    """`rpc-tls-client-auth`: one of CLIENT_AUTH_MODES; "optional", which grpcio can't serve, is refused with why."""
    if value.lower() == "optional":
        # grpcio's server credentials take a boolean: don't ask for a client certificate, or ask for one
        # and require it (GRPC_SSL_REQUEST_AND_REQUIRE_...); the C core's "request, verify if given" is
        # not reachable from Python
        raise RpcException(
            f"Invalid value for {name}: optional (grpcio can only require client certificates or not ask for "
            "them: use required, or none with bearer tokens)",
            ResultCode.ERROR_PARAM_INVALID,
        )
    validate_choice(name, value, CLIENT_AUTH_MODES)


def bool_value(item: Config) -> bool:
    """A boolean item's value (checked by `validate_bool`): true/on/yes/1 or false/off/no/0."""
    return _BOOLEANS.get(item.str_val.lower(), True)


class RpcStaticConfig(ConfigHolder):
    """Static items of every RpcServer. Values are process-wide and read when used."""

    MAX_WORKERS = Config(
        "rpc-max-workers", "Maximum parallel RPC worker threads", "30", validator=ConfigValidator.CONFIG_VALID_POS_INT
    )
    SHUTDOWN_GRACE = Config(
        "rpc-shutdown-grace",
        "Grace period for pending calls to be terminated on shutdown (seconds)",
        "30",
        validator=ConfigValidator.CONFIG_VALID_POS_FLOAT,
    )
    SHUTDOWN_TIMEOUT = Config(
        "rpc-shutdown-timeout",
        "Final timeout before real shutdown (i.e. end of process; seconds)",
        "60",
        validator=ConfigValidator.CONFIG_VALID_POS_FLOAT,
    )
    LOGS_FOLDER = Config(
        "rpc-logs-folder", "Folder (absolute or workspace-relative) where to store rolling logs", "logs"
    )
    LOGS_BACKUP = Config(
        "rpc-logs-backup",
        "Backup log files to be persisted for each manager on rollover",
        "10",
        validator=ConfigValidator.CONFIG_VALID_INT,
    )
    LOGS_ROLLOVER_INTERVAL_UNIT = Config(
        "rpc-logs-interval-unit",
        "Logs rollover interval unit (TimedRotatingFileHandler 'when')",
        "H",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=validate_rollover_unit,
    )
    LOGS_ROLLOVER_INTERVAL = Config(
        "rpc-logs-interval",
        "Logs rollover interval (TimedRotatingFileHandler 'interval')",
        "1",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAIN_HOST = Config("rpc-main-host", "Main RPC server host (to be used by proxied services)", "localhost")
    MAIN_PORT = Config(
        "rpc-main-port",
        "Main RPC server port (to be used by proxied services)",
        "54321",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    PROXY_HOST = Config(
        "rpc-proxy-host",
        "Host a proxied server registers on main (e.g. a Kubernetes pod IP from the downward API);"
        " empty: as 2.x, rpc-main-host, or this host's IP on the route to main when the manager asks for it",
        "",
        can_be_empty=True,
    )
    PROXY_STALE_TIMEOUT = Config(
        "rpc-proxy-stale-timeout",
        "A registered endpoint (replica) of a proxied service that has not been serving for this long is"
        " forgotten, unless it is the service's last one (seconds)",
        "60",
        validator=ConfigValidator.CONFIG_VALID_POS_FLOAT,
    )
    CLIENT_TIMEOUT = Config(
        "rpc-client-timeout",
        "Timeout for RPC client when server is unreachable or proxy not registered yet (seconds)",
        "60",
        validator=ConfigValidator.CONFIG_VALID_POS_FLOAT,
    )
    EVENT_RETAIN_TIMEOUT = Config(
        "rpc-event-retain-timeout",
        "Retain timeout for event queues on interruption (seconds)",
        "300",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    EVENT_KEEPALIVE_TIMEOUT = Config(
        "rpc-event-keepalive-timeout",
        "Timeout for sending keep alive empty events (seconds)",
        "60",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    # Beyond the original
    EVENT_QUEUE_MAX = Config(
        "rpc-event-queue-max",
        "Maximum events kept per event queue; on overflow the oldest is dropped",
        "10000",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_STREAMS = Config(
        "rpc-max-streams",
        "Maximum concurrent long-lived streams: proxied calls (on a pool apart from the workers) and live event"
        " listeners",
        "1000",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    SHUTDOWN_MAX_TIMEOUT = Config(
        "rpc-shutdown-max-timeout",
        "Longest wait a remote shutdown (srv.shutdown) may ask for before the process ends (seconds);"
        " beyond it, the request is refused with ERROR_PARAM_INVALID",
        "3600",
        validator=ConfigValidator.CONFIG_VALID_POS_FLOAT,
    )
    MAX_CALLS = Config(
        "rpc-max-calls",
        "Maximum concurrent manager calls (running or waiting for a worker); beyond it, RESOURCE_EXHAUSTED at once",
        "100",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_CALLS_PER_CALLER = Config(
        "rpc-max-calls-per-caller",
        "Maximum concurrent calls of one caller (its identity with rpc-auth-policy, else its IP address) running"
        " on the workers; beyond it, RESOURCE_EXHAUSTED at once",
        "24",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_STREAMS_PER_CALLER = Config(
        "rpc-max-streams-per-caller",
        "Maximum concurrent long-lived streams (proxied calls, live event listeners) of one caller (its identity"
        " with rpc-auth-policy, else its IP address); beyond it, RESOURCE_EXHAUSTED at once",
        "16",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_WATCHES_PER_CALLER = Config(
        "rpc-max-watches-per-caller",
        "Maximum concurrent health Watch streams of one caller (its IP address: health is open to all); beyond it,"
        " RESOURCE_EXHAUSTED at once",
        "100",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    CLIENT_DIRECT = Config(
        "rpc-client-direct",
        "Whether the auto-client and proxied managers' clients of main call proxied services' replicas"
        " directly (RpcClient direct mode) instead of through main (true/false)",
        "false",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=validate_bool,
    )
    ERROR_STACK = Config(
        "rpc-error-stack",
        "Whether an error answered by a manager carries the server's traceback in `r.stack` (true/false)",
        "true",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=validate_bool,
    )
    EVENT_MAX_RETAINED = Config(
        "rpc-event-max-retained",
        "Maximum event queues retained for absent listeners; beyond it the longest retained are dropped",
        "1000",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    EVENT_QUEUE_MAX_BYTES = Config(
        "rpc-event-queue-max-bytes",
        "Maximum bytes of events (serialized size) kept per event queue; on overflow the oldest are dropped",
        str(8 << 20),
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    EVENT_MAX_RETAINED_BYTES = Config(
        "rpc-event-max-retained-bytes",
        "Maximum bytes of events kept by all retained event queues together (counted per queue); beyond it"
        " the longest retained queues are dropped",
        str(64 << 20),
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    # Network faults: HTTP/2 keepalive on every connection (see grpc_helper.keepalive)
    KEEPALIVE_TIME = Config(
        "rpc-keepalive-time",
        "Every connection pings its peer this often (seconds, at least 1): a peer that vanished without a"
        " reset (lost host, network cut) is noticed within rpc-keepalive-time + rpc-keepalive-timeout",
        "2",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=keepalive_seconds,
    )
    KEEPALIVE_TIMEOUT = Config(
        "rpc-keepalive-timeout",
        "A ping not acknowledged within this long closes its connection, failing the calls on it (seconds, at least 1)",
        "2",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=keepalive_seconds,
    )
    # Message sizes: every server, main's hops, RpcClient and the CLI (see grpc_helper.options)
    MAX_RECEIVE_MESSAGE = Config(
        "rpc-max-receive-message-size",
        "Largest message received (bytes, serialized): a larger one fails its call with RESOURCE_EXHAUSTED",
        str(4 << 20),
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_SEND_MESSAGE = Config(
        "rpc-max-send-message-size",
        "Largest message sent (bytes, serialized): a larger one fails its call with RESOURCE_EXHAUSTED",
        str(4 << 20),
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    # Security (TLS, bind address, authorization)
    BIND_ADDRESS = Config(
        "rpc-bind-address",
        "Address to listen on (empty: every interface, IPv6 and IPv4; e.g. 127.0.0.1 for loopback only)",
        "",
        can_be_empty=True,
    )
    METRICS_PORT = Config(
        "rpc-metrics-port",
        "Port of the Prometheus metrics endpoint (/metrics) on rpc-bind-address; 0: none. With TLS it serves"
        " HTTPS, requiring a client certificate issued by rpc-tls-ca",
        "0",
        validator=ConfigValidator.CONFIG_VALID_INT,
    )
    TLS_CERT = Config(
        "rpc-tls-cert",
        "Certificate chain (PEM file, absolute or workspace-relative) of the server; set, it serves TLS only",
        "",
        can_be_empty=True,
    )
    TLS_KEY = Config("rpc-tls-key", "Private key (PEM file) of rpc-tls-cert", "", can_be_empty=True)
    TLS_CA = Config(
        "rpc-tls-ca",
        "CA bundle (PEM file) verifying client certificates, and the servers this one calls (main, backends)",
        "",
        can_be_empty=True,
    )
    TLS_CLIENT_AUTH = Config(
        "rpc-tls-client-auth",
        "Client certificates: none (not asked for) or required (mTLS: verified against rpc-tls-ca)",
        "none",
        validator=ConfigValidator.CONFIG_VALID_CUSTOM,
        custom_validator=validate_client_auth,
    )
    TLS_BACKEND_NAME = Config(
        "rpc-tls-backend-name",
        "Name a proxied backend's certificate is verified against ({service}: the service it registered for)",
        "{service}",
    )
    AUTH_POLICY = Config(
        "rpc-auth-policy",
        "Authorization policy (JSON file, absolute or workspace-relative); empty: no authentication (as 2.x)",
        "",
        can_be_empty=True,
    )
    AUTH_TOKEN_FILE = Config(
        "rpc-auth-token-file",
        "Bearer token (file, absolute or workspace-relative) this server sends to main and its backends (needs TLS)",
        "",
        can_be_empty=True,
    )
