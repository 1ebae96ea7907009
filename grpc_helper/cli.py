"""RpcCliParser: the command-line options every RpcServer program shares."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from grpc_helper.config.items import CONFIG_NAME_RE
from grpc_helper.config.static import RpcStaticConfig
from grpc_helper.errors import RpcException
from grpc_helper.folders import Folders

_CONFIG_ARG_RE = re.compile(rf"({CONFIG_NAME_RE.pattern})=(.*)", re.DOTALL)

DEFAULT_PORT = 54321
DEFAULT_SYSTEM = "/etc/grpc_helper"
DEFAULT_USER = "~/.config/grpc_helper"
DEFAULT_WORKSPACE = "./grpc_helper"


def _config_arg(value: str) -> tuple[str, str]:
    m = _CONFIG_ARG_RE.fullmatch(value)
    if m is None:
        raise argparse.ArgumentTypeError(f"Invalid syntax for config item definition: {value}")
    return m.group(1), m.group(2)


class RpcCliParser:
    """Argument parser for RPC server programs.

    `RpcCliParser("My server", "1.0").with_rpc_args(12345).parse()` gives a namespace with
    `port`, `folders` (a `Folders`) and `config` (a dict of config item defaults from `-c`).
    """

    def __init__(self, description: str, version: str | None = None) -> None:
        self.parser = argparse.ArgumentParser(description=description)
        if version is not None:
            self.parser.add_argument("-V", "--version", action="version", version=version)
        self._with_rpc = False

    def with_rpc_args(
        self,
        default_port: int = DEFAULT_PORT,
        default_sys: str = DEFAULT_SYSTEM,
        default_usr: str = DEFAULT_USER,
        default_wks: str = DEFAULT_WORKSPACE,
    ) -> RpcCliParser:
        """Add the RPC server options; returns self for chaining."""
        p = self.parser
        p.add_argument("--system", metavar="PATH", default=default_sys, help=f"system folder (default: {default_sys})")
        p.add_argument("--user", metavar="PATH", default=default_usr, help=f"user folder (default: {default_usr})")
        p.add_argument(
            "-w", "--workspace", metavar="PATH", default=default_wks, help=f"workspace folder (default: {default_wks})"
        )
        p.add_argument(
            "-p", "--port", metavar="PORT", type=int, default=default_port, help=f"RPC port (default: {default_port})"
        )
        # Kept as raw strings: syntax is checked in parse(), which raises ArgumentTypeError as documented
        p.add_argument(
            "-c",
            "--config",
            metavar="NAME=VALUE",
            action="append",
            default=[],
            help="config item default value (repeatable)",
        )
        self._with_rpc = True
        return self

    def parse(self, args: Sequence[str] | None = None, *, exit_on_error: bool = False) -> argparse.Namespace:
        """Parse `args` (default: the command line); adds `folders` and a `config` dict.

        A `-c` that is not `name=value` raises `argparse.ArgumentTypeError` (2.x's behaviour). With
        `exit_on_error`, for a program's own command line, it ends the program instead, with one line on stderr
        and exit code 2 as argparse does for its own options, and so does a value the library's static item of
        that name refuses (`-c rpc-client-timeout=-1`), which would otherwise stop the server's start."""
        ns = self.parser.parse_args(list(args) if args is not None else None)
        if self._with_rpc:
            try:
                ns.config = dict(_config_arg(a) for a in ns.config)
                if exit_on_error:
                    _check_static(ns.config)
            except (argparse.ArgumentTypeError, RpcException) as exc:
                if not exit_on_error:
                    raise
                self.parser.error(str(exc))  # exits (2)
            ns.folders = Folders(ns.system, ns.user, ns.workspace)
        return ns


def _check_static(config: dict[str, str]) -> None:
    """Validate the values given to the library's static items (others are checked when the server starts)."""
    items = {item.name: item for item in RpcStaticConfig.config_items()}
    for name, value in config.items():
        item = items.get(name)
        if item is not None:
            item.validate(name, value)
