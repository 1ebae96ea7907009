"""Config items, layered defaults, the config service and its persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from grpc_helper import Config, ConfigHolder, ConfigManager, Folders, RpcException, RpcStaticConfig
from grpc_helper.api import ConfigItemUpdate, ConfigUpdate, ConfigValidator, Filter, ResultCode
from grpc_helper.testing import rc_of
from grpc_helper_samples.api import EchoRequest, EchoResponse

from helpers import EchoManager, Servers, echo_descriptor

V = ConfigValidator


class CountingEcho(EchoManager):
    """`echo` counts the calls that entered it in `running`, then blocks until `release` (30 s at most)."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.changed = threading.Condition()
        self.release = threading.Event()

    def echo(self, _request: EchoRequest) -> EchoResponse:
        with self.changed:
            self.running += 1
            self.changed.notify_all()
        self.release.wait(30)
        return EchoResponse(text="done")


class UserItems(ConfigHolder):
    SIZE = Config("my-size", "A size", "10", validator=V.CONFIG_VALID_POS_INT)
    LABEL = Config("my-label", "A label", "hello")
    RATIO = Config("my-ratio", "A ratio", "0.5", validator=V.CONFIG_VALID_FLOAT)
    OPTIONAL = Config("my-optional", "May be empty", "", can_be_empty=True)


@pytest.fixture(autouse=True)
def restore_user_items():
    saved = [(i, i.item.default_value, i.item.value) for i in UserItems.config_items()]
    yield
    for item, default, value in saved:
        item.item.default_value, item.item.value = default, value


class TestConfigItem:
    @pytest.mark.parametrize("name", ["", "Upper", "1abc", "a_b", "a b", "-a"])
    def test_invalid_names(self, name: str) -> None:
        assert rc_of(lambda: Config(name)) == ResultCode.ERROR_PARAM_INVALID

    def test_custom_without_validator(self) -> None:
        assert rc_of(lambda: Config("x", validator=V.CONFIG_VALID_CUSTOM)) == ResultCode.ERROR_PARAM_MISSING

    @pytest.mark.parametrize(
        ("validator", "good", "bad"),
        [
            (V.CONFIG_VALID_STRING, ["x", "1"], []),
            (V.CONFIG_VALID_INT, ["0", "-3", "12"], ["1.5", "abc"]),
            (V.CONFIG_VALID_POS_INT, ["1", "42"], ["0", "-1", "x"]),
            (V.CONFIG_VALID_FLOAT, ["0", "-1.5", "2e3"], ["abc", "nan", "inf"]),
            (V.CONFIG_VALID_POS_FLOAT, ["0.1", "3"], ["0", "-0.5", "abc"]),
        ],
    )
    def test_builtin_validators(self, validator: int, good: list[str], bad: list[str]) -> None:
        item = Config("item", validator=validator, default_value="1")
        for value in good:
            item.validate("item", value)
        for value in bad:
            assert rc_of(lambda v=value: item.validate("item", v)) == ResultCode.ERROR_PARAM_INVALID

    def test_custom_validator(self) -> None:
        def only_ab(name: str, value: str) -> None:
            if value not in ("a", "b"):
                raise RpcException(f"{name}: bad {value}", ResultCode.ERROR_PARAM_INVALID)

        item = Config("choice", default_value="a", validator=V.CONFIG_VALID_CUSTOM, custom_validator=only_ab)
        item.update("b")
        assert item.str_val == "b"
        assert rc_of(lambda: item.update("c")) == ResultCode.ERROR_PARAM_INVALID
        assert item.str_val == "b"

    def test_empty_values(self) -> None:
        assert rc_of(lambda: Config("x", default_value="1").validate("x", "")) == ResultCode.ERROR_PARAM_MISSING
        Config("x", can_be_empty=True, validator=V.CONFIG_VALID_INT).validate("x", "")

    def test_accessors(self) -> None:
        item = Config("num", "desc", "12", validator=V.CONFIG_VALID_INT)
        assert (item.name, item.str_val, item.int_val, item.float_val, item.default_value) == (
            "num",
            "12",
            12,
            12.0,
            "12",
        )
        assert item.item.description == "desc"
        item.update("13")
        assert item.int_val == 13
        assert item.default_value == "12"
        item.reset()
        assert item.int_val == 12

    def test_holder_collects_items(self) -> None:
        assert {i.name for i in UserItems.config_items()} == {"my-size", "my-label", "my-ratio", "my-optional"}

    def test_rollover_unit_validator(self) -> None:
        item = RpcStaticConfig.LOGS_ROLLOVER_INTERVAL_UNIT
        for ok in ["S", "m", "h", "D", "midnight", "W0", "w6"]:
            item.validate(item.name, ok)
        for bad in ["W7", "X", "hour"]:
            assert rc_of(lambda b=bad: item.validate(item.name, b)) == ResultCode.ERROR_PARAM_INVALID


class TestStaticConfigTable:
    def test_seed_table(self) -> None:
        expected = {
            "rpc-max-workers": ("30", V.CONFIG_VALID_POS_INT),
            "rpc-shutdown-grace": ("30", V.CONFIG_VALID_POS_FLOAT),
            "rpc-shutdown-timeout": ("60", V.CONFIG_VALID_POS_FLOAT),
            "rpc-logs-folder": ("logs", V.CONFIG_VALID_STRING),
            "rpc-logs-backup": ("10", V.CONFIG_VALID_INT),
            "rpc-logs-interval-unit": ("H", V.CONFIG_VALID_CUSTOM),
            "rpc-logs-interval": ("1", V.CONFIG_VALID_POS_INT),
            "rpc-main-host": ("localhost", V.CONFIG_VALID_STRING),
            "rpc-main-port": ("54321", V.CONFIG_VALID_POS_INT),
            "rpc-client-timeout": ("60", V.CONFIG_VALID_POS_FLOAT),
            "rpc-event-retain-timeout": ("300", V.CONFIG_VALID_POS_INT),
            "rpc-event-keepalive-timeout": ("60", V.CONFIG_VALID_POS_INT),
        }
        items = {i.name: i for i in RpcStaticConfig.config_items()}
        for name, (default, validator) in expected.items():
            assert (items[name].hard_coded_default, items[name].item.validator) == (default, validator), name
        attrs = ["MAX_WORKERS", "SHUTDOWN_GRACE", "SHUTDOWN_TIMEOUT", "LOGS_FOLDER", "LOGS_BACKUP",
                 "LOGS_ROLLOVER_INTERVAL_UNIT", "LOGS_ROLLOVER_INTERVAL", "MAIN_HOST", "MAIN_PORT", "CLIENT_TIMEOUT",
                 "EVENT_RETAIN_TIMEOUT", "EVENT_KEEPALIVE_TIMEOUT"]  # fmt: skip
        assert all(isinstance(getattr(RpcStaticConfig, a), Config) for a in attrs)


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))


class TestLayers:
    def test_each_layer_overrides_the_previous(self, folders: Folders, monkeypatch: pytest.MonkeyPatch) -> None:
        assert folders.system
        assert folders.user
        write(folders.system / "config.json", {"my-size": "2", "my-label": "sys", "my-ratio": "1.5"})
        write(folders.user / "config.json", {"my-size": "3", "my-label": "usr"})
        monkeypatch.setenv("MY_SIZE", "4")
        ConfigManager(folders, {"my-size": "5"}, user_items=[UserItems])
        assert UserItems.SIZE.default_value == "5"
        assert UserItems.SIZE.str_val == "5"
        assert UserItems.LABEL.str_val == "usr"
        assert UserItems.RATIO.str_val == "1.5"
        monkeypatch.delenv("MY_SIZE")
        ConfigManager(folders, {}, user_items=[UserItems])
        assert UserItems.SIZE.str_val == "3"

    def test_environment_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MY_LABEL", "from-env")
        ConfigManager(None, None, user_items=[UserItems])
        assert UserItems.LABEL.str_val == "from-env"

    def test_invalid_default_names_item_value_and_layer(
        self, folders: Folders, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert folders.user
        write(folders.user / "config.json", {"my-size": "-1"})
        with pytest.raises(RpcException) as exc:
            ConfigManager(folders, None, user_items=[UserItems])
        assert exc.value.rc == ResultCode.ERROR_PARAM_INVALID
        assert "my-size" in str(exc.value)
        assert "'-1'" in str(exc.value)
        assert "user config file" in str(exc.value)
        monkeypatch.setenv("MY_SIZE", "zz")
        with pytest.raises(RpcException) as exc:
            ConfigManager(folders, None, user_items=[UserItems])
        assert "environment" in str(exc.value)
        assert "'zz'" in str(exc.value)
        with pytest.raises(RpcException) as exc:
            ConfigManager(folders, {"my-size": "0"}, user_items=[UserItems])
        assert "command line" in str(exc.value)

    def test_empty_default_not_allowed(self) -> None:
        with pytest.raises(RpcException) as exc:
            ConfigManager(None, {"my-label": ""}, user_items=[UserItems])
        assert exc.value.rc == ResultCode.ERROR_PARAM_MISSING
        assert "my-label" in str(exc.value)

    def test_invalid_hard_coded_default_stops_the_server(self, servers: Servers) -> None:
        bad = Config("bad-default", default_value="x", validator=V.CONFIG_VALID_INT)
        with pytest.raises(RpcException) as exc:
            servers(0, [], static_items=[bad])
        assert exc.value.rc == ResultCode.ERROR_PARAM_INVALID
        assert "hard-coded" in str(exc.value)

    @pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"my-size": 3}', '"text"'])
    def test_malformed_files(self, folders: Folders, content: str) -> None:
        assert folders.system
        write(folders.system / "config.json", content)
        with pytest.raises(RpcException) as exc:
            ConfigManager(folders, None, user_items=[UserItems])
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID
        assert str(folders.system / "config.json") in str(exc.value)

    def test_missing_system_folder_is_fine(self, tmp_path: Path) -> None:
        ConfigManager(Folders(system=tmp_path / "nowhere"), None, user_items=[UserItems])
        assert not (tmp_path / "nowhere").exists()

    def test_static_and_user_conflict(self) -> None:
        with pytest.raises(RpcException) as exc:
            ConfigManager(None, None, static_items=[UserItems.SIZE, UserItems.LABEL], user_items=[UserItems])
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID
        assert "my-label" in str(exc.value)
        assert "my-size" in str(exc.value)

    def test_dicts_of_items(self) -> None:
        m = ConfigManager(None, None, static_items=[RpcStaticConfig], user_items=[UserItems.SIZE])
        assert m.user_items == {"my-size": UserItems.SIZE}
        assert m.static_items["rpc-max-workers"] is RpcStaticConfig.MAX_WORKERS

    def test_static_items_drive_the_server(self, servers: Servers) -> None:
        gate = CountingEcho()
        srv = servers(0, [echo_descriptor(gate)], cli_config={"rpc-max-workers": "3", "rpc-client-timeout": "3.5"})
        assert srv.client.timeout == 3.5
        # rpc-max-workers bounds the manager calls running at once: 3 run, a 4th waits for one to end
        callers = [threading.Thread(target=srv.client.echo.echo, args=(EchoRequest(), 30)) for _ in range(4)]
        for caller in callers:
            caller.start()
        try:
            with gate.changed:
                assert gate.changed.wait_for(lambda: gate.running == 3, 30)
                assert not gate.changed.wait_for(lambda: gate.running > 3, 0.5)  # the 4th is not let in
        finally:
            gate.release.set()
            for caller in callers:
                caller.join(30)
        assert gate.running == 4


def update(*pairs: tuple[str, str], ignore_unknown: bool = False) -> ConfigUpdate:
    return ConfigUpdate(items=[ConfigItemUpdate(name=n, value=v) for n, v in pairs], ignore_unknown=ignore_unknown)


class TestConfigService:
    def test_only_user_items_are_visible(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [], folders=folders, user_items=[UserItems])
        items = srv.client.config.get(Filter()).items
        assert {i.name for i in items} == {"my-size", "my-label", "my-ratio", "my-optional"}
        size = next(i for i in items if i.name == "my-size")
        assert (size.value, size.default_value, size.validator) == ("10", "10", V.CONFIG_VALID_POS_INT)
        assert rc_of(lambda: srv.client.config.get(Filter(names=["rpc-max-workers"]))) == ResultCode.ERROR_ITEM_UNKNOWN

    def test_get_filter(self, servers: Servers) -> None:
        c = servers(0, [], user_items=[UserItems]).client
        assert [i.name for i in c.config.get(Filter(names=["my-label"])).items] == ["my-label"]
        assert rc_of(lambda: c.config.get(Filter(names=["my-label", "nope"]))) == ResultCode.ERROR_ITEM_UNKNOWN
        out = c.config.get(Filter(names=["my-label", "nope"], ignore_unknown=True))
        assert [i.name for i in out.items] == ["my-label"]

    def test_set_errors(self, servers: Servers) -> None:
        c = servers(0, [], user_items=[UserItems]).client
        assert rc_of(lambda: c.config.set(update())) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: c.config.set(update(("", "1")))) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: c.config.set(update(("my-size", "0")))) == ResultCode.ERROR_PARAM_INVALID
        assert rc_of(lambda: c.config.set(update(("my-label", "")))) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: c.config.set(update(("nope", "1")))) == ResultCode.ERROR_ITEM_UNKNOWN
        out = c.config.set(update(("nope", "1"), ("my-optional", ""), ignore_unknown=True))
        assert [(i.name, i.value) for i in out.items] == [("my-optional", "")]

    def test_set_is_atomic(self, servers: Servers) -> None:
        c = servers(0, [], user_items=[UserItems]).client
        assert (
            rc_of(lambda: c.config.set(update(("my-label", "new"), ("my-size", "-5"))))
            == ResultCode.ERROR_PARAM_INVALID
        )
        assert UserItems.LABEL.str_val == "hello"
        out = c.config.set(update(("my-label", "new"), ("my-size", "5")))
        assert {(i.name, i.value) for i in out.items} == {("my-label", "new"), ("my-size", "5")}
        assert UserItems.SIZE.int_val == 5

    def test_reset(self, servers: Servers, folders: Folders) -> None:
        c = servers(0, [], folders=folders, user_items=[UserItems]).client
        c.config.set(update(("my-size", "5"), ("my-label", "x")))
        assert rc_of(lambda: c.config.reset(Filter())) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: c.config.reset(Filter(names=["nope"]))) == ResultCode.ERROR_ITEM_UNKNOWN
        out = c.config.reset(Filter(names=["my-size"]))
        assert [(i.name, i.value) for i in out.items] == [("my-size", "10")]
        assert folders.workspace
        assert json.loads((folders.workspace / "config.json").read_text()) == {"my-label": "x"}

    def test_static_items_never_change_over_rpc(self, servers: Servers) -> None:
        c = servers(0, [], user_items=[UserItems]).client
        assert rc_of(lambda: c.config.set(update(("rpc-max-workers", "3")))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert RpcStaticConfig.MAX_WORKERS.str_val == "30"

    def test_persisted_only_if_different_and_reloaded(self, servers: Servers, folders: Folders) -> None:
        srv = servers(0, [], folders=folders, user_items=[UserItems])
        srv.client.config.set(update(("my-size", "7"), ("my-label", "hello")))
        assert folders.workspace
        assert json.loads((folders.workspace / "config.json").read_text()) == {"my-size": "7"}
        srv.shutdown()
        UserItems.SIZE.reset()
        srv2 = servers(0, [], folders=folders, user_items=[UserItems])
        assert UserItems.SIZE.str_val == "7"
        assert srv2.client.config.get(Filter(names=["my-size"])).items[0].value == "7"

    def test_invalid_persisted_value_falls_back(
        self, servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture
    ) -> None:
        assert folders.workspace
        write(folders.workspace / "config.json", {"my-size": "-3", "my-label": "kept", "other-item": "x"})
        srv = servers(0, [], folders=folders, user_items=[UserItems])
        assert UserItems.SIZE.str_val == "10"
        assert UserItems.LABEL.str_val == "kept"
        assert any("my-size" in r.getMessage() and "'-3'" in r.getMessage() for r in caplog.records)
        srv.client.config.set(update(("my-label", "changed")))
        # an item this server doesn't know is kept in the file
        assert json.loads((folders.workspace / "config.json").read_text())["other-item"] == "x"

    def test_malformed_workspace_file_stops_the_server(self, servers: Servers, folders: Folders) -> None:
        assert folders.workspace
        write(folders.workspace / "config.json", "{oops")
        with pytest.raises(RpcException) as exc:
            servers(0, [], folders=folders, user_items=[UserItems])
        assert exc.value.rc == ResultCode.ERROR_MODEL_INVALID

    def test_concurrent_sets_agree_with_file(self, servers: Servers, folders: Folders) -> None:
        # 50 concurrent sets from one host: lift its share (tests/test_fairness.py covers it)
        shares = {"rpc-max-calls-per-caller": "100"}
        srv = servers(0, [], folders=folders, cli_config=shares, user_items=[UserItems])
        errors: list[BaseException] = []

        def worker(i: int) -> None:
            try:
                srv.client.config.set(update(("my-size", str(i + 1)), ("my-label", f"l{i}")))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert folders.workspace
        persisted = json.loads((folders.workspace / "config.json").read_text())
        memory = {i.name: i.value for i in srv.client.config.get(Filter(names=["my-size", "my-label"])).items}
        assert persisted.get("my-size", "10") == memory["my-size"]
        assert persisted["my-label"] == memory["my-label"]
        assert memory["my-label"] == f"l{int(memory['my-size']) - 1}"  # both from the same update


def test_crash_mid_write_never_truncates(tmp_path: Path) -> None:
    """Kill -9 a process that rewrites config.json in a loop (config set, public API): the file always parses."""
    target = tmp_path / "config.json"
    script = textwrap.dedent(
        f"""
        from grpc_helper import Config, ConfigManager, Folders
        items = [Config("i", "", "0"), Config("big", "", "x")]
        manager = ConfigManager(Folders(workspace={str(tmp_path)!r}), user_items=items)
        big = "x" * 200_000
        i = 1
        manager.set_user([("i", str(i)), ("big", big)])
        print("ready", flush=True)
        while True:
            i += 1
            manager.set_user([("i", str(i)), ("big", big)])
        """
    )
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout
            assert proc.stdout.readline().strip() == "ready"
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(30)
        data = json.loads(target.read_text())
        assert len(data["big"]) == 200_000
    assert not [p for p in tmp_path.iterdir() if p.name != "config.json" and not p.name.startswith(".config.json.")]


def test_setting_a_static_item_says_it_is_static(servers: Servers) -> None:
    """`config set rpc-client-timeout=5`: unknown to the config service (2.x's code), and said why."""
    srv = servers(0, [])
    with pytest.raises(RpcException) as info:
        srv.client.config.set(ConfigUpdate(items=[ConfigItemUpdate(name="rpc-client-timeout", value="5")]))
    assert info.value.rc == ResultCode.ERROR_ITEM_UNKNOWN
    assert "rpc-client-timeout: static, read at start only" in str(info.value)
    with pytest.raises(RpcException) as info:
        srv.client.config.reset(Filter(names=["rpc-client-timeout"]))
    assert "static, read at start only" in str(info.value)
