"""Notes sample service: a persistent key/value store of text notes, proxied by the main server.

Run it with `grpc-helper-notes` or `python -m grpc_helper_samples.notes` (default port 54323); it
registers "notes" on the main server (`rpc-main-host`:`rpc-main-port`) once it is up.

- Notes are kept in the workspace `notes.json` (an object key -> text, written atomically), loaded
  at start: they survive restarts.
- User config items (settable through the main server's config service):
  `notes-max-count` (default 100) and `notes-max-length` (default 1000 characters).
- Every change sends a `NOTE_CHANGED` event (properties `key`, and `action`: `create`, `update` or
  `delete`) to the main server's events service, from a background sender: a main server that is
  down never fails nor delays the calls.

Result codes: empty key ERROR_PARAM_MISSING; unknown key ERROR_ITEM_UNKNOWN; text longer than
`notes-max-length` ERROR_PARAM_INVALID; a new key while `notes-max-count` notes exist
ERROR_STATE_UNEXPECTED (the store is full; replacing an existing note is still allowed).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import grpc_helper_samples
from grpc_helper import Config, ConfigHolder, RpcException, RpcProxiedManager, RpcServiceDescriptor
from grpc_helper.api import ConfigValidator, Event, EventProperty, Filter, ResultCode, ResultStatus
from grpc_helper.persist import read_json_object, write_json
from grpc_helper_samples._events import EventSender
from grpc_helper_samples._run import proxy_use_current_host, run_server, samples_version
from grpc_helper_samples.api import Note, NoteKey, NoteList, NotesApiVersion, NoteStatus
from grpc_helper_samples.api.notes_pb2_grpc import (
    NotesServiceServicer,
    NotesServiceStub,
    add_NotesServiceServicer_to_server,
)

NAME = "notes"
DEFAULT_PORT = 54323
NOTES_FILE = "notes.json"
EVENT_NAME = "NOTE_CHANGED"

# Shutdown budget for delivering pending events
_EVENTS_FLUSH_TIMEOUT = 3.0


class NotesConfig(ConfigHolder):
    """User config items of the notes service."""

    MAX_COUNT = Config(
        "notes-max-count",
        "Maximum number of notes",
        "100",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )
    MAX_LENGTH = Config(
        "notes-max-length",
        "Maximum length of a note text (characters)",
        "1000",
        validator=ConfigValidator.CONFIG_VALID_POS_INT,
    )


class NotesManager(NotesServiceServicer, RpcProxiedManager):
    """The notes store; every change is persisted before it is answered."""

    def __init__(self) -> None:
        super().__init__()
        self._notes: dict[str, str] = {}
        self._path: Path | None = None
        self.event_sender = EventSender(self._send_event, self.logger)

    # --- lifecycle ---
    def _load(self) -> None:
        wks = self.folders.workspace
        self._path = wks / NOTES_FILE if wks is not None else None
        # A malformed file raises ERROR_MODEL_INVALID: the server refuses to start rather than lose notes
        self._notes = dict(read_json_object(self._path, (str,), "notes"))
        if self._path is None:
            self.logger.warning("No workspace: notes are not persisted")
        else:
            self.logger.info("Loaded %d note(s) from %s", len(self._notes), self._path)
        self.event_sender.logger = self.logger  # the server has set our logger meanwhile
        super()._load()  # registration on the main server, which creates proxy_client
        self.event_sender.start()

    def _shutdown(self) -> None:
        self.event_sender.close(_EVENTS_FLUSH_TIMEOUT)  # before proxy_client is closed by the base class
        super()._shutdown()

    # --- proxy registration ---
    def _proxied_services(self) -> list[str]:
        return [NAME]

    def _proxied_version(self) -> str:
        return samples_version()

    def _proxy_use_current_host(self) -> bool:
        return proxy_use_current_host()

    # --- service ---
    def put(self, request: Note) -> NoteStatus:
        key, text = _check_key(request.key), request.text
        max_length = NotesConfig.MAX_LENGTH.int_val
        if len(text) > max_length:
            raise RpcException(
                f"Note {key!r} is too long: {len(text)} characters (notes-max-length: {max_length})",
                ResultCode.ERROR_PARAM_INVALID,
            )
        with self.lock:
            created = key not in self._notes
            max_count = NotesConfig.MAX_COUNT.int_val
            if created and len(self._notes) >= max_count:
                raise RpcException(
                    f"Can't add note {key!r}: the store is full ({len(self._notes)} notes, notes-max-count: "
                    f"{max_count})",
                    ResultCode.ERROR_STATE_UNEXPECTED,
                )
            self._save({**self._notes, key: text})
            # Posted under the lock so that events come in the order of the changes
            self._notify(key, "create" if created else "update")
        return NoteStatus(note=Note(key=key, text=text))

    def get(self, request: NoteKey) -> NoteStatus:
        key = _check_key(request.key)
        text = self._notes.get(key)
        if text is None:
            raise RpcException(f"Unknown note: {key!r}", ResultCode.ERROR_ITEM_UNKNOWN)
        return NoteStatus(note=Note(key=key, text=text))

    def delete(self, request: NoteKey) -> ResultStatus:
        key = _check_key(request.key)
        with self.lock:
            if key not in self._notes:
                raise RpcException(f"Unknown note: {key!r}", ResultCode.ERROR_ITEM_UNKNOWN)
            self._save({k: v for k, v in self._notes.items() if k != key})
            self._notify(key, "delete")
        return ResultStatus()

    def list(self, request: Filter) -> NoteList:
        """All notes sorted by key, or the named ones in the given order."""
        notes = self._notes  # replaced, never mutated: a consistent snapshot without locking
        if not request.names:
            return NoteList(notes=[Note(key=k, text=notes[k]) for k in sorted(notes)])
        out = []
        for key in dict.fromkeys(request.names):  # without duplicates, in order
            _check_key(key)
            if key in notes:
                out.append(Note(key=key, text=notes[key]))
            elif not request.ignore_unknown:
                raise RpcException(f"Unknown note: {key!r}", ResultCode.ERROR_ITEM_UNKNOWN)
        return NoteList(notes=out)

    # --- internals ---
    def _save(self, notes: dict[str, str]) -> None:
        """Persist, then switch to the new notes: the store never answers with unsaved state."""
        if self._path is not None:
            try:
                write_json(self._path, notes)
            except OSError as exc:
                raise RpcException(f"Can't save notes in {self._path}: {exc}", ResultCode.ERROR_REQUEST_FAILED) from exc
        self._notes = notes

    def _notify(self, key: str, action: str) -> None:
        self.event_sender.post(
            Event(
                name=EVENT_NAME,
                properties=[EventProperty(name="key", value=key), EventProperty(name="action", value=action)],
            )
        )

    def _send_event(self, event: Event, timeout: float) -> None:
        self.proxy_client.events.send(event, timeout=timeout)


def _check_key(key: str) -> str:
    if not key:
        raise RpcException("Missing note key", ResultCode.ERROR_PARAM_MISSING)
    return key


def descriptor(proxy: bool = False) -> RpcServiceDescriptor:
    """The notes service descriptor: served by a `NotesManager`, or proxied (on the main server)."""
    manager = NotesServiceServicer() if proxy else NotesManager()
    return RpcServiceDescriptor(
        grpc_helper_samples,
        NAME,
        NotesApiVersion,
        manager,
        add_NotesServiceServicer_to_server,
        NotesServiceStub,
        is_proxy=proxy,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the notes service until shut down; returns the process exit code."""
    return run_server(
        "grpc-helper sample notes service (proxied by the main server)",
        DEFAULT_PORT,
        lambda: [descriptor()],
        argv,
        user_items=[NotesConfig],
    )


if __name__ == "__main__":
    sys.exit(main())
