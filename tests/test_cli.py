"""RpcCliParser and Folders."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from grpc_helper import Folders, RpcCliParser


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory (and current directory) of the test's own: default folders are created there."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_defaults(home: Path) -> None:
    args = RpcCliParser("test").with_rpc_args().parse([])
    assert args.port == 54321
    assert args.folders.system == Path("/etc/grpc_helper")
    assert args.folders.user == home / ".config" / "grpc_helper"
    assert args.folders.user.is_dir()
    assert args.folders.workspace == Path("grpc_helper")  # relative: to the current directory
    assert (home / "grpc_helper").is_dir()
    assert args.config == {}


def test_options(tmp_path: Path) -> None:
    args = (
        RpcCliParser("test")
        .with_rpc_args(1234, "/sys", "/usr", "wks")
        .parse(
            [
                "--system", str(tmp_path / "s"), "--user", str(tmp_path / "u"), "-w", str(tmp_path / "w"),
                "-p", "4321", "-c", "rpc-max-workers=4", "--config", "my-item=a=b", "-c", "empty=",
            ]
        )
    )  # fmt: skip
    assert args.port == 4321
    assert args.folders.system == tmp_path / "s"
    assert args.config == {"rpc-max-workers": "4", "my-item": "a=b", "empty": ""}
    assert args.folders.workspace == tmp_path / "w"


def test_with_rpc_args_defaults(home: Path) -> None:
    args = RpcCliParser("test").with_rpc_args(1234, "/sys", "~/usr", "wks").parse([])
    assert args.port == 1234
    assert args.folders.system == Path("/sys")
    assert args.folders.user == home / "usr"


@pytest.mark.parametrize("bad", ["noequal", "Upper=1", "1abc=2", "=value", "a_b=c"])
def test_bad_config_syntax(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as exc:
        RpcCliParser("test").with_rpc_args().parse(["-c", bad])
    assert str(exc.value) == f"Invalid syntax for config item definition: {bad}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        RpcCliParser("test", "1.2.3").with_rpc_args().parse(["-V"])
    assert exc.value.code == 0
    assert "1.2.3" in capsys.readouterr().out


def test_folders_created_on_access(tmp_path: Path) -> None:
    f = Folders(tmp_path / "sys", tmp_path / "usr", tmp_path / "wks")
    assert not (tmp_path / "usr").exists()
    assert not (tmp_path / "wks").exists()
    assert f.user == tmp_path / "usr"
    assert (tmp_path / "usr").is_dir()
    assert f.workspace == tmp_path / "wks"
    assert (tmp_path / "wks").is_dir()
    assert f.system == tmp_path / "sys"
    assert not (tmp_path / "sys").exists()


def test_folders_unset() -> None:
    f = Folders()
    assert f.system is None
    assert f.user is None
    assert f.workspace is None


@pytest.mark.parametrize(
    ("arg", "said"),
    [("foo", "Invalid syntax for config item definition: foo"), ("rpc-client-timeout=-1", "rpc-client-timeout")],
)
def test_a_bad_option_is_one_line_and_exit_code_2(arg: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        RpcCliParser("prog").with_rpc_args().parse(["-c", arg], exit_on_error=True)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert said in err
    assert "Traceback" not in err
    assert ": error: " in err.strip().splitlines()[-1]  # argparse's usage, then the error, on one line
