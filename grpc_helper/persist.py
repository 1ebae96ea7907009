"""Atomic JSON persistence, for the workspace files and for managers' own files (public: the samples use it)."""

from __future__ import annotations

import glob
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from grpc_helper.api import ResultCode
from grpc_helper.errors import RpcException

# One writer at a time per process and file: concurrent writers could otherwise rename over each other out of order
_locks: dict[Path, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path.resolve(), threading.Lock())


def write_json(path: Path, data: Any) -> None:
    """Write `data` as JSON: temp file in the same folder, fsync, rename. A crash never leaves a partial file."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename, fsync of the folder),
    the file created with permissions `mode` when given (e.g. 0o600 for a key: never readable by others,
    not even for a moment)."""
    write_stream(path, (data,), mode)


def write_stream(
    path: Path,
    chunks: Iterable[bytes],
    mode: int | None = None,
    before_rename: Callable[[tuple[int, int, int]], None] | None = None,
) -> int:
    """`write_atomic` for data made piece by piece (never whole in memory); its size. `before_rename` gets the
    `file_stamp` the file will have once renamed (the rename keeps it), once the data is on disk: a journal
    can then name the snapshot it follows before that snapshot replaces the previous one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock_for(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            size = os.stat(tmp).st_size
            if before_rename is not None:
                before_rename(file_stamp(Path(tmp)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # Make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return size


def _temp_pattern(path: Path) -> str:
    """The glob of `write_json`'s temp files for `path` (its `mkstemp` prefix and suffix)."""
    return f".{glob.escape(path.name)}.*.tmp"


def remove_leftovers(path: Path) -> list[Path]:
    """Remove the temp files an interrupted `write_json` of `path` left beside it (a crash between the
    temp file's creation and its rename); the files removed. Safe against this process's own writers
    (taken under the file's lock); another process writing the same file at the same time is not supported."""
    removed = []
    with _lock_for(path):
        for leftover in path.parent.glob(_temp_pattern(path)):
            try:
                leftover.unlink()
            except OSError:  # gone already, or not ours to remove (permissions): the read goes on
                continue
            removed.append(leftover)
    return removed


def read_json(path: Path | None, default: Any = None) -> Any:
    """Read a JSON file; a missing file gives `default`, a malformed one ERROR_MODEL_INVALID naming it.

    Persisted files are read once, when their owner starts: leftovers of an interrupted write of it are
    removed first (`remove_leftovers`), so they never pile up across crashes.
    """
    if path is not None and path.parent.is_dir():
        remove_leftovers(path)
    if path is None or not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        raise RpcException(f"Invalid JSON file {path}: {exc}", ResultCode.ERROR_MODEL_INVALID) from exc


def read_json_object(path: Path | None, value_types: tuple[type, ...], what: str) -> dict[str, Any]:
    """Read a JSON object whose values all have one of `value_types`; anything else is ERROR_MODEL_INVALID."""
    data = read_json(path, {})
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, value_types) for k, v in data.items()
    ):
        names = " or ".join(t.__name__ for t in value_types)
        raise RpcException(
            f"Invalid {what} file {path}: expected a JSON object of {names} values", ResultCode.ERROR_MODEL_INVALID
        )
    return data


def file_stamp(path: Path) -> tuple[int, int, int]:
    """What tells that a file changed, replaced atomically included: (mtime ns, size, inode); a missing
    file is (0, -1, 0)."""
    try:
        st = path.stat()
    except OSError:
        return 0, -1, 0
    return st.st_mtime_ns, st.st_size, st.st_ino
