"""Public surface, generated code freshness, and wire compatibility with grpc-helper-api 2.x."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pool

import grpc_helper
import grpc_helper.api as api

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    "ClientSecurity",
    "Config",
    "ConfigHolder",
    "ConfigManager",
    "EventsListener",
    "Folders",
    "RpcCliParser",
    "RpcClient",
    "RpcException",
    "RpcManager",
    "RpcMetadata",
    "RpcProxiedManager",
    "RpcServer",
    "RpcServiceDescriptor",
    "RpcStaticConfig",
    "RpcTransportError",
    "__title__",
    "__version__",
    "current_call",
    "current_identity",
    "graceful_exit",
}


def test_public_surface() -> None:
    assert set(grpc_helper.__all__) == PUBLIC
    for name in grpc_helper.__all__:
        assert getattr(grpc_helper, name) is not None
    # What the module really exposes (httpx's test_exported_members): every public name and nothing
    # else that is not private, a submodule or a dunder
    exposed = set(dir(grpc_helper))
    submodules = {n for n in exposed if type(getattr(grpc_helper, n)).__name__ == "module"}
    assert exposed - submodules == PUBLIC
    with pytest.raises(AttributeError):
        grpc_helper.NotAThing  # noqa: B018 - the attribute access is the test


def test_operator_cli_does_not_import_the_server() -> None:
    """`grpc-helper health` runs every few seconds in containers: it must stay light."""
    code = (
        "import sys, grpc_helper.ctl; "
        "print(sorted(m for m in sys.modules if m.startswith(('grpc_helper.server', 'grpc_reflection.v1', "
        "'grpc_helper.proxy', 'grpc_helper.events'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_title_and_version_from_metadata() -> None:
    from importlib.metadata import version

    assert grpc_helper.__title__ == "grpc-helper"
    assert grpc_helper.__version__ == version("grpc-helper")


def test_api_reexports_every_message_and_enum() -> None:
    from grpc_helper.api import common_pb2, config_pb2, events_pb2, logger_pb2, server_pb2

    for module in (common_pb2, config_pb2, events_pb2, logger_pb2, server_pb2):
        names = [*module.DESCRIPTOR.message_types_by_name, *module.DESCRIPTOR.enum_types_by_name]
        for name in names:
            assert getattr(api, name) is getattr(module, name), name
            assert name in api.__all__


def test_generated_code_is_fresh() -> None:
    """Generated *_pb2 files must match the protos: rerun scripts/gen-protos.py after any change."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-protos.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


def test_generated_code_check_finds_orphans(tmp_path: Path) -> None:
    """A generated module whose .proto was removed is reported (copy of the script run on a copied tree)."""
    tree = tmp_path / "repo"
    for folder in ("scripts", "protos", "grpc_helper", "services", "examples"):
        shutil.copytree(ROOT / folder, tree / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "protos" / "grpc_helper_samples" / "api" / "echo.proto").unlink()
    run = subprocess.run(
        [sys.executable, str(tree / "scripts" / "gen-protos.py"), "--check"], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "services/api/echo_pb2.py has no .proto any more" in run.stderr


# --- wire contract (WIRE-API.md) ---

RESULT_CODES = {
    "OK": 0, "ERROR": 1, "ARGS": 2, "ERROR_PORT_BUSY": 10, "ERROR_API_CLIENT_TOO_OLD": 11,
    "ERROR_API_SERVER_TOO_OLD": 12, "ERROR_RPC": 13, "ERROR_PROXY_UNREGISTERED": 14, "ERROR_STREAM_SHUTDOWN": 15,
    "ERROR_PROXY_FORGOTTEN": 16,
    "ERROR_PARAM_MISSING": 20, "ERROR_PARAM_INVALID": 21, "ERROR_PARAM_UNSUPPORTED": 22, "ERROR_ITEM_UNKNOWN": 30,
    "ERROR_ITEM_CONFLICT": 31, "ERROR_ITEM_BUSY": 32, "ERROR_ITEM_MULTIPLE": 33, "ERROR_MODEL_INVALID": 40,
    "ERROR_MODEL_SYNTAX": 41, "ERROR_REQUEST_FAILED": 50, "ERROR_REQUEST_TIMEOUT": 51,
    "ERROR_REQUEST_UNSUPPORTED": 52, "ERROR_STATE_UNREACHABLE": 60, "ERROR_STATE_UNEXPECTED": 61, "ERROR_CUSTOM": 100,
}  # fmt: skip

ENUMS = {
    "ResultCode": RESULT_CODES,
    "ServerApiVersion": {"SERVER_API_UNKNOWN": 0, "SERVER_API_SUPPORTED": 1, "SERVER_API_CURRENT": 1},
    "ConfigApiVersion": {"CONFIG_API_UNKNOWN": 0, "CONFIG_API_SUPPORTED": 1, "CONFIG_API_CURRENT": 2},
    "ConfigValidator": {
        "CONFIG_VALID_STRING": 0, "CONFIG_VALID_CUSTOM": 1, "CONFIG_VALID_INT": 2, "CONFIG_VALID_POS_INT": 3,
        "CONFIG_VALID_FLOAT": 4, "CONFIG_VALID_POS_FLOAT": 5,
    },
    "LoggerApiVersion": {"LOGGER_API_UNKNOWN": 0, "LOGGER_API_SUPPORTED": 1, "LOGGER_API_CURRENT": 1},
    "LoggerLevel": {
        "LVL_UNKNOWN": 0, "LVL_DEBUG": 10, "LVL_INFO": 20, "LVL_WARNING": 30, "LVL_ERROR": 40, "LVL_CRITICAL": 50,
    },
    "EventApiVersion": {"EVENT_API_UNKNOWN": 0, "EVENT_API_SUPPORTED": 1, "EVENT_API_CURRENT": 2},
}  # fmt: skip

# message -> {field: (number, type name or message/enum name, repeated)}
MESSAGES = {
    "Result": {"code": (1, "ResultCode", False), "msg": (2, "string", False), "stack": (3, "string", False)},
    "ResultStatus": {"r": (1, "Result", False)},
    "Empty": {},
    # New fields of 3 (after 2.x's, with new numbers only): Filter.endpoint, ServiceInfo.endpoints, .renewable and
    # .channel_target, ProxyEndpoint.channel_target, ProxyRegisterRequest.renew and .grpc_services
    "Filter": {"names": (1, "string", True), "ignore_unknown": (2, "bool", False), "endpoint": (3, "Endpoint", False)},
    "Endpoint": {"host": (1, "string", False), "port": (2, "uint32", False)},
    "ServiceInfo": {
        "name": (1, "string", False), "version": (2, "string", False), "current_api_version": (3, "uint32", False),
        "supported_api_version": (4, "uint32", False), "is_proxy": (5, "bool", False),
        "proxy_host": (6, "string", False), "proxy_port": (7, "uint32", False),
        "endpoints": (8, "ProxyEndpoint", True), "renewable": (9, "bool", False),
        "channel_target": (10, "string", False),
    },
    "ProxyEndpoint": {
        "host": (1, "string", False), "port": (2, "uint32", False), "version": (3, "string", False),
        "serving": (4, "bool", False), "channel_target": (5, "string", False),
    },
    # New messages of 3: the live view (srv.stat)
    "StatRequest": {"names": (1, "string", True), "window": (2, "uint32", False), "idle": (3, "bool", False)},
    "MethodStat": {
        "service": (1, "string", False), "method": (2, "string", False), "seconds": (3, "double", False),
        "calls": (4, "uint64", False), "failures": (5, "uint64", False), "p50": (6, "double", False),
        "p95": (7, "double", False), "p99": (8, "double", False),
    },
    "StatStatus": {"r": (1, "Result", False), "items": (2, "MethodStat", True)},
    "MultiServiceInfo": {"r": (1, "Result", False), "items": (2, "ServiceInfo", True)},
    "ShutdownRequest": {"timeout": (1, "int32", False)},
    "ProxyRegisterRequest": {
        "names": (1, "string", True), "version": (2, "string", False), "host": (3, "string", False),
        "port": (4, "uint32", False), "renew": (5, "bool", False), "grpc_services": (6, "string", True),
    },
    "ConfigItem": {
        "name": (1, "string", False), "description": (2, "string", False), "value": (3, "string", False),
        "default_value": (4, "string", False), "can_be_empty": (5, "bool", False),
        "validator": (6, "ConfigValidator", False),
    },
    "ConfigStatus": {"r": (1, "Result", False), "items": (2, "ConfigItem", True)},
    "ConfigItemUpdate": {"name": (1, "string", False), "value": (2, "string", False)},
    "ConfigUpdate": {"items": (1, "ConfigItemUpdate", True), "ignore_unknown": (2, "bool", False)},
    "LoggerConfig": {"name": (1, "string", False), "enabled": (2, "bool", False), "level": (3, "LoggerLevel", False)},
    "LoggerStatus": {"r": (1, "Result", False), "items": (2, "LoggerConfig", True)},
    "LoggerUpdate": {"items": (1, "LoggerConfig", True)},
    "EventProperty": {"name": (1, "string", False), "value": (2, "string", False)},
    "Event": {"name": (1, "string", False), "properties": (2, "EventProperty", True)},
    "EventStatus": {
        "r": (1, "Result", False), "event": (2, "Event", False), "client_id": (3, "uint32", False),
        "seq": (4, "uint64", False),  # new in 3
    },
    "EventFilter": {
        "names": (1, "string", True), "client_id": (2, "uint32", False), "last_seq": (3, "uint64", False),  # new in 3
    },
    "EventInterrupt": {"client_id": (1, "uint32", False)},
    "EventQueueStatus": {"r": (1, "Result", False), "client_ids": (2, "uint32", True)},
}  # fmt: skip

SERVICES = {
    "RpcServerService": {
        "info": ("Filter", "MultiServiceInfo", False), "shutdown": ("ShutdownRequest", "ResultStatus", False),
        "proxy_register": ("ProxyRegisterRequest", "ResultStatus", False),
        "proxy_forget": ("Filter", "ResultStatus", False),
        "stat": ("StatRequest", "StatStatus", False),  # new in 3
    },
    "ConfigService": {
        "get": ("Filter", "ConfigStatus", False), "set": ("ConfigUpdate", "ConfigStatus", False),
        "reset": ("Filter", "ConfigStatus", False),
    },
    "LoggerService": {
        "get": ("Filter", "LoggerStatus", False), "set": ("LoggerUpdate", "LoggerStatus", False),
        "reset": ("Filter", "LoggerStatus", False),
    },
    "EventService": {
        "listen": ("EventFilter", "EventStatus", True), "interrupt": ("EventInterrupt", "ResultStatus", False),
        "send": ("Event", "ResultStatus", False), "inspect": ("Empty", "EventQueueStatus", False),
    },
}  # fmt: skip

_SCALARS = {9: "string", 8: "bool", 13: "uint32", 5: "int32", 4: "uint64", 1: "double"}


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enum_values(name: str) -> None:
    enum = descriptor_pool.Default().FindEnumTypeByName(name)
    assert enum.full_name == name, "no proto package: names are global"
    assert {v.name: v.number for v in enum.values} == ENUMS[name]


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_message_fields(name: str) -> None:
    msg = descriptor_pool.Default().FindMessageTypeByName(name)
    assert msg.full_name == name
    fields = {}
    for f in msg.fields:
        kind = f.message_type.name if f.message_type else f.enum_type.name if f.enum_type else _SCALARS[f.type]
        fields[f.name] = (f.number, kind, f.is_repeated)
    assert fields == MESSAGES[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_methods(name: str) -> None:
    service = descriptor_pool.Default().FindServiceByName(name)
    assert service.full_name == name
    methods = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in service.methods}
    assert methods == SERVICES[name]
    assert not any(m.client_streaming for m in service.methods)


def test_proto_files_have_no_package() -> None:
    for proto in (ROOT / "protos" / "grpc_helper" / "api").glob("*.proto"):
        assert not any(line.strip().startswith("package ") for line in proto.read_text().splitlines()), proto
