"""grpc_helper.testing: the helpers users test their managers with."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpc_helper import Config, ConfigHolder, RpcException, RpcStaticConfig, current_call
from grpc_helper.api import Filter, ResultCode
from grpc_helper.testing import Served, TemporaryFolders, rc_of, restored_config, serve
from grpc_helper_samples.api import EchoRequest, EchoResponse

from helpers import EchoManager, accepts_connections, echo_descriptor


class Named(EchoManager):
    """Answers with the caller's `client` metadata; writes what it got in its workspace, if it has one."""

    def echo(self, request: EchoRequest) -> EchoResponse:
        call = current_call()
        assert call is not None
        if self.folders.workspace is not None:
            (self.folders.workspace / "seen.txt").write_text(request.text)
        return EchoResponse(text=dict(call.metadata)["client"])


class TestServe:
    def test_server_on_a_free_port_and_a_client_of_every_service(self, tmp_path: Path) -> None:
        manager = Named()
        with serve([echo_descriptor(manager)], folders=TemporaryFolders(tmp_path), with_events=True) as served:
            assert isinstance(served, Served)
            server, client = served
            assert server.port > 0
            assert accepts_connections(server.port)
            assert manager.loaded
            assert server.is_running
            assert [i.name for i in client.srv.info(Filter()).items] == ["srv", "config", "log", "events", "echo"]
            assert client.echo.echo(EchoRequest(text="x")).text == "test-client"  # its own client, not the server's
            assert (tmp_path / "workspace" / "seen.txt").read_text() == "x"
        assert manager.shut_down
        assert not server.is_running
        assert not accepts_connections(server.port)

    def test_shut_down_when_the_block_fails(self) -> None:
        with pytest.raises(ValueError, match="test failed"), serve([echo_descriptor()]) as (server, _):
            raise ValueError("test failed")
        assert not server.is_running

    def test_client_name_and_no_folders_by_default(self) -> None:
        with serve([echo_descriptor(Named())], client_name="mine") as (server, client):
            assert client.echo.echo(EchoRequest(text="hi")).text == "mine"
            assert (server.folders.system, server.folders.user, server.folders.workspace) == (None, None, None)

    def test_two_servers_get_two_ports(self) -> None:
        with serve() as (first, _), serve() as (second, _):
            assert first.port != second.port

    def test_a_failed_start_raises(self) -> None:
        with pytest.raises(RpcException) as exc, serve([echo_descriptor(), echo_descriptor()]):
            pass
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID


class TestTemporaryFolders:
    def test_given_root_is_used_and_kept(self, tmp_path: Path) -> None:
        with TemporaryFolders(tmp_path) as folders:
            assert folders.root == tmp_path
            assert (folders.system, folders.user, folders.workspace) == (
                tmp_path / "system",
                tmp_path / "user",
                tmp_path / "workspace",
            )
            assert all(p.is_dir() for p in (tmp_path / "system", tmp_path / "user", tmp_path / "workspace"))
        assert (tmp_path / "workspace").is_dir()

    def test_own_root_is_removed_on_exit(self) -> None:
        with TemporaryFolders() as folders:
            assert folders.workspace is not None
            (folders.workspace / "state.json").write_text("{}")
            root = folders.root
            assert root.is_dir()
        assert not root.exists()
        folders.cleanup()  # idempotent


class TestRcOf:
    def test_code_of_the_exception(self) -> None:
        def fail() -> None:
            raise RpcException("busy", ResultCode.ERROR_ITEM_BUSY)

        assert rc_of(fail) == ResultCode.ERROR_ITEM_BUSY

    def test_no_exception_is_a_failed_assertion(self) -> None:
        with pytest.raises(AssertionError):
            rc_of(lambda: None)

    def test_other_exceptions_go_through(self) -> None:
        with pytest.raises(ValueError, match="other"):
            rc_of(lambda: int("other"))


class Items(ConfigHolder):
    SIZE = Config("testing-size", default_value="1")


class TestRestoredConfig:
    def test_values_and_defaults_restored(self) -> None:
        single = Config("testing-single", default_value="a")
        with restored_config(Items, single):
            Items.SIZE.update("2")
            Items.SIZE.item.default_value = "3"
            single.update("b")
        assert (Items.SIZE.str_val, Items.SIZE.default_value, single.str_val) == ("1", "1", "a")

    def test_static_config_by_default(self) -> None:
        before = RpcStaticConfig.CLIENT_TIMEOUT.str_val
        with restored_config():
            with serve(cli_config={"rpc-client-timeout": "1.5"}) as (_, client):
                assert client.timeout == 1.5
            assert RpcStaticConfig.CLIENT_TIMEOUT.str_val == "1.5"  # process-wide, beyond the server
        assert RpcStaticConfig.CLIENT_TIMEOUT.str_val == before
