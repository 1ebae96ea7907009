"""Atomic JSON persistence, for the workspace files and for managers' own files (public: the samples use it)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
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
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with _lock_for(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
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


def read_json(path: Path | None, default: Any = None) -> Any:
    """Read a JSON file; a missing file gives `default`, a malformed one ERROR_MODEL_INVALID naming it."""
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
