"""The folders a server uses: system (shared, read-only), user, and workspace."""

from __future__ import annotations

from pathlib import Path


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value).expanduser()


class Folders:
    """System, user and workspace folders.

    - `system`: config shared by users and applications; may be read-only, never created.
    - `user`: config shared by the applications of the running user; created on access.
    - `workspace`: this server's persistent state (config, loggers, proxies, events, logs); created on access.

    A folder left to None is simply not used (no file is read or written there).
    """

    def __init__(
        self, system: str | Path | None = None, user: str | Path | None = None, workspace: str | Path | None = None
    ) -> None:
        self.system: Path | None = _path(system)
        self._user = _path(user)
        self._workspace = _path(workspace)

    @staticmethod
    def _created(path: Path | None) -> Path | None:
        if path is not None:
            path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def user(self) -> Path | None:
        return self._created(self._user)

    @property
    def workspace(self) -> Path | None:
        return self._created(self._workspace)

    def __repr__(self) -> str:
        return f"Folders(system={self.system}, user={self._user}, workspace={self._workspace})"
