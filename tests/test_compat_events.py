"""Events service compatibility with grpc-helper 2.x (issue 9, items 16-18), on real servers.

16: keep-alive statuses carry the client_id and an empty (but present) event.
17: the INFO lines of the events logger about listening queues.
18: queues.json in the shape both generations read, the filters in a sidecar file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from grpc_helper import RpcServer, RpcStaticConfig
from grpc_helper.api import Empty, Event, EventFilter, EventInterrupt, EventStatus, ResultCode
from grpc_helper.folders import Folders
from grpc_helper.testing import rc_of

from helpers import Servers, Stream, event, wait_until

EVENT_A = {"name": "A", "properties": [["k", "v"]]}


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def start(servers: Servers, folders: Folders) -> RpcServer:
    return servers(0, [], folders=folders, with_events=True)


def test_keepalive_carries_client_id_and_empty_event(servers: Servers, folders: Folders) -> None:
    srv = start(servers, folders)
    RpcStaticConfig.EVENT_KEEPALIVE_TIMEOUT.update("1")  # after the start, which sets every item
    it = srv.client.events.listen(EventFilter())
    first: EventStatus = next(it)
    assert first.client_id > 0
    assert not first.HasField("event")  # the first status: the id only
    keepalive: EventStatus = next(it)  # nothing was sent
    assert keepalive.client_id == first.client_id
    assert keepalive.HasField("event")
    assert keepalive.event == Event()  # present on the wire, empty
    assert keepalive.r.code == ResultCode.OK
    srv.client.events.interrupt(EventInterrupt(client_id=first.client_id))


def test_info_lines_on_listening_queues(servers: Servers, folders: Folders, caplog: pytest.LogCaptureFixture) -> None:
    srv = start(servers, folders)
    caplog.set_level(logging.INFO, logger=srv.managers["events"].logger.name)
    events = srv.client.events

    s1 = Stream(srv.client)
    cid = s1.client_id
    started, resumed, ended = (
        f"Starting new event listening queue #{cid}",
        f"Resuming interrupted event listening queue #{cid}",
        f"Event listening queue #{cid} interrupted",
    )
    logger_name = srv.managers["events"].logger.name

    def lines() -> list[str]:
        """This queue's lines, INFO on the events logger, in order."""
        return [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.INFO and r.name == logger_name and r.getMessage() in (started, resumed, ended)
        ]

    def settled(*expected: str) -> list[str]:
        """The lines once `expected` (in any order: streams end on their own threads) were all logged."""
        wait_until(lambda: sorted(lines()) == sorted(expected))
        return sorted(lines())

    assert lines() == [started]

    # interrupt: the stream ends (its end is logged before the client sees it)
    events.interrupt(EventInterrupt(client_id=cid))
    assert list(s1.it) == []
    assert lines() == [started, ended]

    # resume, then a take-over: the previous stream ends
    s2 = Stream(srv.client, client_id=cid)
    s3 = Stream(srv.client, client_id=cid)
    assert list(s2.it) == []
    expected = [started, ended, resumed, resumed, ended]
    assert settled(*expected) == sorted(expected)

    # the client goes away
    s3.it.cancel()
    expected.append(ended)
    assert settled(*expected) == sorted(expected)

    # shutdown ends the last stream
    last = Stream(srv.client, client_id=cid)
    srv.shutdown()
    assert rc_of(lambda: list(last.it)) == ResultCode.ERROR_STREAM_SHUTDOWN
    expected += [resumed, ended]
    assert settled(*expected) == sorted(expected)


class TestQueuesFile:
    def test_file_shape_while_running_and_at_shutdown(self, servers: Servers, folders: Folders) -> None:
        srv = start(servers, folders)
        queues, filters = folders.workspace / "queues.json", folders.workspace / "queues-filters.json"
        retained = Stream(srv.client, ["A"])
        assert retained.client_id == 1
        srv.client.events.interrupt(EventInterrupt(client_id=1))
        srv.client.events.send(event("A", k="v"))
        srv.client.events.send(event("B"))  # not accepted by queue 1
        live = Stream(srv.client)
        assert live.client_id == 2
        expected = {"1": [EVENT_A], "2": []}
        # written by the janitor while running, and again at shutdown
        assert wait_until(lambda: queues.is_file() and read(queues) == expected), queues.read_text()
        srv.shutdown()
        assert read(queues) == expected
        assert all(int(key) for key in read(queues))  # what 2.x does with every key
        assert read(filters) == {"1": ["A"]}

    def test_no_filters_file_without_filters(self, servers: Servers, folders: Folders) -> None:
        srv = start(servers, folders)
        Stream(srv.client)
        srv.shutdown()
        assert read(folders.workspace / "queues.json") == {"1": []}
        assert not (folders.workspace / "queues-filters.json").exists()

    def test_restores_the_original_file(self, servers: Servers, folders: Folders) -> None:
        (folders.workspace / "queues.json").write_text('{"1": [], "2": []}')
        srv = start(servers, folders)
        events = srv.client.events
        assert events.inspect(Empty()).client_ids == [1, 2]
        # both retained (interrupted): interrupting again is unexpected, resuming works
        assert rc_of(lambda: events.interrupt(EventInterrupt(client_id=2))) == ResultCode.ERROR_STATE_UNEXPECTED
        resumed = Stream(srv.client, client_id=1)
        assert resumed.client_id == 1
        events.send(event("ANY"))  # no filter known: every name is accepted
        assert resumed.next_event().name == "ANY"
        assert Stream(srv.client).client_id == 3

    def test_next_id_is_the_largest_restored_one_plus_one(self, servers: Servers, folders: Folders) -> None:
        (folders.workspace / "queues.json").write_text('{"10": [], "9": []}')  # not "9" as the largest string
        srv = start(servers, folders)
        assert Stream(srv.client).client_id == 11

    def test_previous_shape_is_migrated_with_its_filter(self, servers: Servers, folders: Folders) -> None:
        queues, filters = folders.workspace / "queues.json", folders.workspace / "queues-filters.json"
        queues.write_text(json.dumps({"next_id": 7, "queues": {"3": {"names": ["A"], "events": [EVENT_A]}}}))
        srv = start(servers, folders)
        assert srv.client.events.inspect(Empty()).client_ids == [3]
        assert Stream(srv.client, ["C"]).client_id == 7  # its next_id is kept
        srv.client.events.send(event("B"))
        srv.client.events.send(event("A", n="2"))
        srv.shutdown()
        assert read(queues) == {"3": [EVENT_A, {"name": "A", "properties": [["n", "2"]]}], "7": []}
        assert read(filters) == {"3": ["A"], "7": ["C"]}

        # The filter survives the restart: queue 3, resumed without names, still only gets A
        srv2 = start(servers, folders)
        resumed = Stream(srv2.client, client_id=3)
        assert [resumed.next_event().properties[0].value for _ in range(2)] == ["v", "2"]
        srv2.client.events.send(event("B"))
        srv2.client.events.send(event("A", n="3"))
        assert resumed.next_event().properties[0].value == "3"
        assert Stream(srv2.client).client_id == 8

    def test_resuming_with_a_filter_drops_events_it_does_not_accept(self, servers: Servers, folders: Folders) -> None:
        # As 2.x would leave it: a queue with no known filter, here holding events of any name
        content = {"1": [EVENT_A, {"name": "B", "properties": []}, {"name": "A", "properties": [["n", "2"]]}]}
        (folders.workspace / "queues.json").write_text(json.dumps(content))
        srv = start(servers, folders)
        resumed = Stream(srv.client, ["A"], client_id=1)
        assert [resumed.next_event().properties[0].value for _ in range(2)] == ["v", "2"]  # B is gone
        srv.client.events.send(event("B"))
        srv.client.events.send(event("A", n="3"))
        assert resumed.next_event().properties[0].value == "3"
        srv.shutdown()
        assert read(folders.workspace / "queues-filters.json") == {"1": ["A"]}

    @pytest.mark.parametrize(
        "content",
        [
            '{"1": {}}',  # not a list
            '{"1": "A"}',
            '{"x": []}',  # not an id
            '{"0": []}',  # 0 means "no id"
            '{"-1": []}',
            '{"4294967296": []}',  # beyond uint32
            '{"1": [], "extra": []}',  # 2.x refuses any other key too
            '{"1": [{"name": 5}]}',
            '{"1": [{"name": "A", "properties": [["k"]]}]}',
            '{"1": ["A"]}',
            "3",
            '[1, "a"]',
        ],
    )
    def test_malformed_file_is_refused_and_kept(self, servers: Servers, folders: Folders, content: str) -> None:
        path = folders.workspace / "queues.json"
        path.write_text(content)
        assert rc_of(lambda: start(servers, folders)) == ResultCode.ERROR_MODEL_INVALID
        assert path.read_text() == content

    @pytest.mark.parametrize("content", ['{"1": "A"}', '{"1": [5]}', '{"x": ["A"]}', '["A"]', "{"])
    def test_malformed_filters_file_is_refused_and_kept(self, servers: Servers, folders: Folders, content: str) -> None:
        queues, filters = folders.workspace / "queues.json", folders.workspace / "queues-filters.json"
        queues.write_text('{"1": []}')
        filters.write_text(content)
        assert rc_of(lambda: start(servers, folders)) == ResultCode.ERROR_MODEL_INVALID
        assert (queues.read_text(), filters.read_text()) == ('{"1": []}', content)
