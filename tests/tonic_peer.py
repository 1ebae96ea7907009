"""The tonic test peer (tests/peers/tonic-echo): a gRPC client and server of echo.proto on Rust's tonic, a peer
that is not grpcio. Its binary, built by scripts/build-tonic-peer.sh; its server as a process; its client's calls.

`peer_binary()` builds it (incremental: a no-op once built) and returns its path, once per test session; when
cargo is missing, the tests skip, except under CI=true where they fail, as they do when the build fails.
See tests/peers/tonic-echo/README.md for what the peer does.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers import WAIT, wait_until

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "scripts" / "build-tonic-peer.sh"
NO_CARGO = 2  # the build script's exit code when cargo is not found
BUILD_TIMEOUT = 900  # a build from nothing takes about 100 s on 2 cores

Event = dict[str, Any]


@functools.cache
def _build() -> tuple[Path | None, str]:
    """(binary, "") once built, or (None, why not)."""
    try:
        done = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        return None, f"building the tonic peer took over {BUILD_TIMEOUT} s"
    if done.returncode == NO_CARGO:
        return None, "cargo is not installed: the tonic peer (tests/peers/tonic-echo) can't be built"
    if done.returncode != 0:
        return None, f"building the tonic peer failed (exit code {done.returncode}):\n{done.stderr[-4000:]}"
    return Path(done.stdout.strip().splitlines()[-1]), ""


def peer_binary() -> Path:
    """The tonic-echo binary, built if needed; skips the test without cargo (fails under CI=true), fails when
    the build fails."""
    binary, why = _build()
    if binary is None:
        if why.startswith("cargo is not installed") and os.environ.get("CI") != "true":
            pytest.skip(why)
        pytest.fail(why)
    return binary


class PeerServer:
    """`tonic-echo server` as a process: its stdout JSON lines are collected in `events` as they come, its
    stderr goes to a file. `port` once it listens (the constructor waits for it)."""

    def __init__(self, binary: Path, log_dir: Path, *args: str) -> None:
        self.args = args
        self.stderr_path = log_dir / f"tonic-echo-{os.getpid()}-{threading.get_ident()}-{id(self)}.err"
        self.events: list[Event] = []
        self._lock = threading.Lock()
        with self.stderr_path.open("w") as stderr:
            command = [str(binary), "server", "--port", "0", *args]
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        listening = self.wait_event(lambda e: "listening" in e, "listening")
        self.port: int = listening["listening"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"unparsed": line.rstrip("\n")}
            with self._lock:
                self.events.append(event)

    def found(self, match: Callable[[Event], bool]) -> list[Event]:
        with self._lock:
            return [e for e in self.events if match(e)]

    def wait_event(self, match: Callable[[Event], bool], what: str, timeout: float = WAIT) -> Event:
        """The first event that `match`es, once printed (bounded); fails naming `what` if the process ended or
        nothing came in time."""

        def came() -> bool:
            return bool(self.found(match)) or self.proc.poll() is not None

        wait_until(came, timeout)
        matched = self.found(match)
        assert matched, f"tonic-echo {' '.join(self.args)}: no {what} (exit code {self.proc.poll()}):\n{self.stderr}"
        return matched[0]

    def wait_registered(self, timeout: float = 45) -> None:
        self.wait_event(lambda e: e.get("registered") is True, "registration", timeout)

    def calls(self, method: str | None = None) -> int:
        """How many calls it logged (with --log-calls), of `method` or all."""
        return len(self.found(lambda e: e.get("event") == "call" and method in (None, e.get("method"))))

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> int:
        """SIGTERM (it forgets its registration, then ends), kill if it does not end in time; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.wait()

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait()

    def wait(self) -> int:
        code = self.proc.wait(WAIT)
        self._reader.join(WAIT)
        return code


@contextmanager
def peer_server(log_dir: Path, *args: str, register: int | None = None) -> Iterator[PeerServer]:
    """A tonic-echo server with these arguments; with `register` (main's port), registered on main at
    127.0.0.1 as `echo` (host 127.0.0.1) before it is yielded. Killed at the end if still running."""
    extra = ("--register", f"127.0.0.1:{register}", "--host", "127.0.0.1") if register is not None else ()
    server = PeerServer(peer_binary(), log_dir, *args, *extra)
    try:
        if register is not None:
            server.wait_registered()
        yield server
    finally:
        server.kill()


def peer_call(target: str, method: str, text: str, *args: str, timeout: float = WAIT) -> Event:
    """One call by `tonic-echo client --target TARGET ARGS... METHOD TEXT`: what it printed, parsed
    (status, message, details_b64, headers, trailers, responses)."""
    command = [str(peer_binary()), "client", "--target", target, *args, method, text]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(command)}: exit code {done.returncode}\n{done.stderr}"
    result: Event = json.loads(done.stdout.strip().splitlines()[-1])
    return result
