"""The events service and EventsListener, on real servers."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import time
import typing
from typing import Any

import pytest

from grpc_helper import RpcClient, RpcException, RpcServer, RpcStaticConfig
from grpc_helper.api import (
    Empty,
    Event,
    EventApiVersion,
    EventFilter,
    EventInterrupt,
    EventProperty,
    EventStatus,
    Filter,
    ResultCode,
)
from grpc_helper.api.events_pb2_grpc import EventServiceStub
from grpc_helper.calls import PushStream
from grpc_helper.events.queues import REDELIVER_MAX, EventQueue, Listener, Pending, event_field, pending_of
from grpc_helper.persist import file_stamp
from grpc_helper.testing import rc_of

from helpers import Collector, Servers, Stream, event, wait_until


@pytest.fixture
def srv(servers: Servers, folders) -> RpcServer:
    return servers(0, [], folders=folders, with_events=True)


class TestService:
    def test_first_status_and_delivery_in_order(self, srv: RpcServer) -> None:
        s = Stream(srv.client)
        assert s.client_id > 0
        for i in range(5):
            srv.client.events.send(event("TICK", i=str(i)))
        got = [s.next_event() for _ in range(5)]
        assert [e.properties[0].value for e in got] == ["0", "1", "2", "3", "4"]
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))

    def test_events_of_every_size_arrive_whole_and_numbered(self, srv: RpcServer) -> None:
        # Deliveries are written on the wire by hand (queues.event_field): sizes across each step of the
        # length's varint (1, 2 and 3 bytes), up to the largest property value a request may carry
        values = ["", "v" * 100, "w" * 200, "x" * 16_000, "y" * 20_000, "z" * (64 * 1024)]
        it = srv.client.events.listen(EventFilter(names=["SIZED"]))
        cid = next(it).client_id
        for v in values:
            srv.client.events.send(event("SIZED", v=v))
        statuses = [next(it) for _ in values]
        assert [st.event for st in statuses] == [event("SIZED", v=v) for v in values]
        assert {st.client_id for st in statuses} == {cid}
        seqs = [st.seq for st in statuses]
        assert seqs[0] > 0
        assert seqs == list(range(seqs[0], seqs[0] + len(values)))
        srv.client.events.interrupt(EventInterrupt(client_id=cid))

    @pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2_097_151, 2_097_152])
    def test_a_delivery_is_the_status_protobuf_writes(self, size: int) -> None:
        data = Event(name="E", properties=[EventProperty(name="p", value="x" * size)]).SerializeToString()
        for cid, seq in [(1, 1), (0xFFFFFFFF, 2**63 - 1), (437, time.time_ns() // 1000)]:
            status = EventStatus(client_id=cid, seq=seq)
            status.event.MergeFromString(data)
            assert event_field(data) + EventStatus(client_id=cid, seq=seq).SerializeToString() == (
                status.SerializeToString()
            )

    def test_filter_by_name(self, srv: RpcServer) -> None:
        s = Stream(srv.client, ["WANTED"])
        srv.client.events.send(event("OTHER"))
        srv.client.events.send(event("WANTED", n="1"))
        assert s.next_event().name == "WANTED"
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))

    def test_errors(self, srv: RpcServer) -> None:
        ev = srv.client.events
        assert rc_of(lambda: next(ev.listen(EventFilter(names=[""])))) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: next(ev.listen(EventFilter(names=["a b"])))) == ResultCode.ERROR_PARAM_INVALID
        assert rc_of(lambda: next(ev.listen(EventFilter(client_id=424242)))) == ResultCode.ERROR_ITEM_UNKNOWN
        assert rc_of(lambda: ev.send(Event())) == ResultCode.ERROR_PARAM_MISSING
        assert rc_of(lambda: ev.send(Event(name="with space"))) == ResultCode.ERROR_PARAM_INVALID
        assert rc_of(lambda: ev.interrupt(EventInterrupt(client_id=424242))) == ResultCode.ERROR_ITEM_UNKNOWN
        s = Stream(srv.client)
        ev.interrupt(EventInterrupt(client_id=s.client_id))
        assert rc_of(lambda: ev.interrupt(EventInterrupt(client_id=s.client_id))) == ResultCode.ERROR_STATE_UNEXPECTED

    def test_interrupt_ends_stream_and_resume_gets_missed_events(self, srv: RpcServer) -> None:
        s = Stream(srv.client, ["E"])
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        assert list(s.it) == []  # the stream ends
        assert srv.client.events.inspect(Empty()).client_ids == [s.client_id]
        for i in range(3):
            srv.client.events.send(event("E", i=str(i)))
        resumed = Stream(srv.client, client_id=s.client_id)
        assert resumed.client_id == s.client_id
        assert [resumed.next_event().properties[0].value for _ in range(3)] == ["0", "1", "2"]
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))

    def test_resume_takes_over_live_stream(self, srv: RpcServer) -> None:
        first = Stream(srv.client)
        second = Stream(srv.client, client_id=first.client_id)
        srv.client.events.send(event("X"))
        assert second.next_event().name == "X"
        assert list(first.it) == []  # the previous stream ended
        srv.client.events.interrupt(EventInterrupt(client_id=first.client_id))

    def test_retained_queue_expires(self, srv: RpcServer) -> None:
        RpcStaticConfig.EVENT_RETAIN_TIMEOUT.update("1")
        s = Stream(srv.client)
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        assert s.client_id in srv.client.events.inspect(Empty()).client_ids
        assert wait_until(lambda: s.client_id not in srv.client.events.inspect(Empty()).client_ids, 30)
        assert rc_of(lambda: next(srv.client.events.listen(EventFilter(client_id=s.client_id)))) == (
            ResultCode.ERROR_ITEM_UNKNOWN
        )

    def test_disconnect_retains_the_queue(self, srv: RpcServer, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO, logger=srv.managers["events"].logger.name)
        s = Stream(srv.client)
        s.it.cancel()
        assert rc_of(lambda: next(s.it)) == ResultCode.ERROR_RPC
        # the server saw the client go, and retains the queue
        assert wait_until(lambda: f"Event queue {s.client_id} retained: its listener went away" in caplog.text)
        srv.client.events.send(event("WHILE_AWAY"))
        assert Stream(srv.client, client_id=s.client_id).next_event().name == "WHILE_AWAY"

    def test_a_lost_stream_gets_its_last_events_again_once(self, srv: RpcServer) -> None:
        """Events sent to a stream lost meanwhile (the client went away without interrupting, as a vanished
        peer looks) are sent again on resume: a client that says the last one it got (`last_seq`) gets
        each once, one that does not (2.x) at least once."""
        events = srv.client.events
        queues = srv.managers["events"]._queues

        def lost(stream: Any, cid: int) -> None:
            stream.cancel()
            assert wait_until(lambda: queues[cid].owner is None)

        first = events.listen(EventFilter(names=["E"]))
        cid = next(first).client_id
        for i in range(3):
            events.send(event("E", i=str(i)))
        got = [next(first) for _ in range(3)]
        seqs = [status.seq for status in got]
        assert seqs == list(range(seqs[0], seqs[0] + 3))  # numbered in order
        lost(first, cid)
        again = events.listen(EventFilter(client_id=cid))  # as a 2.x client resumes: without last_seq
        assert next(again).client_id == cid
        assert [next(again) for _ in range(3)] == got  # the same events, the same numbers
        lost(again, cid)
        events.send(event("E", i="3"))
        resumed = events.listen(EventFilter(client_id=cid, last_seq=seqs[-1]))
        next(resumed)
        new = next(resumed)
        assert (new.event.properties[0].value, new.seq) == ("3", seqs[-1] + 1)
        events.interrupt(EventInterrupt(client_id=cid))

    def test_keepalive(self, srv: RpcServer) -> None:
        RpcStaticConfig.EVENT_KEEPALIVE_TIMEOUT.update("1")
        it = srv.client.events.listen(EventFilter())
        first = next(it)
        t0 = time.monotonic()
        keepalive = next(it)  # nothing was sent: an empty event
        assert keepalive.event.name == ""
        assert keepalive.r.code == ResultCode.OK
        assert 0.5 <= time.monotonic() - t0 < 10
        srv.client.events.interrupt(EventInterrupt(client_id=first.client_id))

    def test_shutdown_ends_streams_with_error(self, srv: RpcServer) -> None:
        client = RpcClient(
            "127.0.0.1", srv.port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)}, exception=False
        )
        it = client.events.listen(EventFilter())
        next(it)
        srv.shutdown()
        statuses = list(it)
        assert statuses[-1].r.code == ResultCode.ERROR_STREAM_SHUTDOWN

    def test_queue_overflow_drops_oldest(self, srv: RpcServer, caplog: pytest.LogCaptureFixture) -> None:
        RpcStaticConfig.EVENT_QUEUE_MAX.update("3")
        s = Stream(srv.client)
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        with caplog.at_level(logging.WARNING):
            for i in range(5):
                srv.client.events.send(event("E", i=str(i)))
        assert any(str(s.client_id) in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
        resumed = Stream(srv.client, client_id=s.client_id)
        assert [resumed.next_event().properties[0].value for _ in range(3)] == ["2", "3", "4"]

    def test_inspect_lists_live_and_retained(self, srv: RpcServer) -> None:
        live, retained = Stream(srv.client), Stream(srv.client)
        srv.client.events.interrupt(EventInterrupt(client_id=retained.client_id))
        assert srv.client.events.inspect(Empty()).client_ids == sorted([live.client_id, retained.client_id])


class TestPersistence:
    def test_queues_and_events_survive_restart(self, servers: Servers, folders) -> None:
        srv = servers(0, [], folders=folders, with_events=True)
        s = Stream(srv.client, ["KEEP"])
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        srv.client.events.send(event("KEEP", n="1"))
        srv.client.events.send(event("DROP"))
        srv.client.events.send(event("KEEP", n="2"))
        live = Stream(srv.client)
        srv.client.events.send(event("LIVE"))
        srv.shutdown()
        data = json.loads((folders.workspace / "queues.json").read_text())
        assert {int(k) for k in data} == {s.client_id, live.client_id}

        srv2 = servers(0, [], folders=folders, with_events=True)
        assert srv2.client.events.inspect(Empty()).client_ids == sorted([s.client_id, live.client_id])
        resumed = Stream(srv2.client, client_id=s.client_id)
        assert [resumed.next_event().properties[0].value for _ in range(2)] == ["1", "2"]
        fresh = Stream(srv2.client)
        assert fresh.client_id not in (s.client_id, live.client_id)

    def test_legacy_list_of_ids(self, servers: Servers, folders) -> None:
        (folders.workspace / "queues.json").write_text("[7, 9]")
        srv = servers(0, [], folders=folders, with_events=True)
        assert srv.client.events.inspect(Empty()).client_ids == [7, 9]
        assert Stream(srv.client).client_id == 10

    @pytest.mark.parametrize(
        "content",
        [
            '{"next_id": 3, "queues": {"x": {}}}',  # not an id
            '{"next_id": 3, "queues": {"0": {}}}',  # 0 means "no id"
            '{"next_id": -1, "queues": {}}',
            '{"next_id": 3, "queues": {"4": {"names": "A"}}}',  # names must be a list
            '{"next_id": 3, "queues": {"4": {"events": [{"name": 5}]}}}',
            '"queues"',
            '{"queues": ',  # not JSON at all
        ],
    )
    def test_invalid_file_is_refused_and_kept(self, servers: Servers, folders, content: str) -> None:
        path = folders.workspace / "queues.json"
        path.write_text(content)
        assert rc_of(lambda: servers(0, [], folders=folders, with_events=True)) == ResultCode.ERROR_MODEL_INVALID
        assert path.read_text() == content  # nothing overwritten: the operator can fix it

    def test_ids_wrap_around_the_uint32_range_skipping_held_ones(self, servers: Servers, folders) -> None:
        data = {"next_id": 0xFFFFFFFF, "queues": {"1": {"names": [], "events": []}}}
        (folders.workspace / "queues.json").write_text(json.dumps(data))
        srv = servers(0, [], folders=folders, with_events=True)
        assert Stream(srv.client).client_id == 0xFFFFFFFF
        assert Stream(srv.client).client_id == 2  # wrapped; 1 is still held


class TestJournalI20:
    """Changes are journaled (queues-journal-<gen>.jsonl) and compacted into queues.json (issue 20)."""

    @staticmethod
    def journal(folders: Any, *lines: bytes) -> None:
        """queues.json `{"1": []}` and a journal following it, as a crash would leave them."""
        queues = folders.workspace / "queues.json"
        queues.write_text('{"1": []}')
        base = json.dumps(["base", list(file_stamp(queues))]).encode()
        (folders.workspace / "queues-journal-3.jsonl").write_bytes(b"\n".join([base, *lines]))

    def test_replayed_and_a_torn_last_line_is_ignored(self, servers: Servers, folders) -> None:
        data = base64.b64encode(event("J", n="1").SerializeToString()).decode()
        self.journal(folders, json.dumps(["ev", "J", data]).encode(), b'["new", 2, ["J"]')  # torn: cut mid-way
        srv = servers(0, [], folders=folders, with_events=True)
        assert srv.client.events.inspect(Empty()).client_ids == [1]
        resumed = Stream(srv.client, client_id=1)
        assert resumed.next_event().properties[0].value == "1"
        # Compacted at the start: one snapshot holding it, and a new journal following it
        assert json.loads((folders.workspace / "queues.json").read_text())["1"][0]["name"] == "J"
        journals = [p.name for p in folders.workspace.glob("queues-journal-*")]
        assert len(journals) == 1, journals
        assert journals != ["queues-journal-3.jsonl"]

    def test_a_journal_older_than_queues_json_is_ignored(self, servers: Servers, folders) -> None:
        data = base64.b64encode(event("J").SerializeToString()).decode()
        self.journal(folders, json.dumps(["ev", "J", data]).encode(), b"")
        (folders.workspace / "queues.json").write_text('{"1": [], "5": []}')  # rewritten since, e.g. by 2.x
        srv = servers(0, [], folders=folders, with_events=True)
        assert srv.client.events.inspect(Empty()).client_ids == [1, 5]
        srv.client.events.send(event("MARK"))
        resumed = Stream(srv.client, client_id=1)
        assert resumed.next_event().name == "MARK"  # not J

    def test_sends_to_retained_queues_append_to_the_journal(self, srv: RpcServer, folders) -> None:
        s = Stream(srv.client)
        srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        srv.client.events.send(event("JOURNALED", n="1"))

        def journaled() -> bool:
            return any(b'"JOURNALED"' in p.read_bytes() for p in folders.workspace.glob("queues-journal-*.jsonl"))

        # The janitor may have compacted it into queues.json already: then it is there
        queues = folders.workspace / "queues.json"
        assert wait_until(lambda: journaled() or (queues.exists() and "JOURNALED" in queues.read_text()))


class _Unsent:
    """Stands in for a listener's stream where the queue is driven by hand: nothing is sent."""

    def end(self, last: EventStatus | None = None) -> None:
        pass


def _listener(q: EventQueue) -> Listener:
    """A listener of `q`, now its owner."""
    listener = Listener(q, typing.cast(PushStream, _Unsent()), lambda _: None)
    q.attach(listener)
    return listener


class TestRedelivery:
    """What a queue sends again when its stream is lost (unit: the queue driven by hand, no stream)."""

    @staticmethod
    def taken(q: EventQueue, listener: Listener, count: int) -> tuple[list[Pending], int]:
        for i in range(count):
            q.push(pending_of(event("E", i=str(i))), 10_000, 1 << 30)
        batch, seq, _, _ = q._work_for(listener)
        return batch, seq

    def test_a_lost_stream_gets_its_last_events_again_with_their_numbers(self) -> None:
        q = EventQueue(7)
        listener = _listener(q)
        first, seq = self.taken(q, listener, 600)
        second, _ = self.taken(q, listener, 600)
        assert q.detach(listener, lost=True)
        # At most REDELIVER_MAX of the newest: the first batch's last 200, then the whole second one
        assert list(q.events) == first[600 - (REDELIVER_MAX - 600) :] + second
        assert q.next_seq == seq + 1200 - REDELIVER_MAX
        assert q.size == sum(len(data) for _, data in q.events)
        listener.finish()

    def test_an_interrupted_stream_or_an_old_batch_is_not_sent_again(self) -> None:
        q = EventQueue(8)
        listener = _listener(q)
        self.taken(q, listener, 3)
        assert q.detach(listener)  # interrupted: it got what was sent
        assert not q.events
        again = _listener(q)
        self.taken(q, again, 3)
        q.redeliver = -1.0  # every batch sent is older than the window
        assert q.detach(again, lost=True)
        assert not q.events
        assert not q.recent
        listener.finish()
        again.finish()

    def test_what_was_sent_before_the_window_is_forgotten_by_the_janitor(self) -> None:
        q = EventQueue(9)
        listener = _listener(q)
        self.taken(q, listener, 3)
        q.tick(time.monotonic(), keepalive_timeout=3600)
        assert len(q.recent) == len(q.recent_times) == 3  # within the window
        q.redeliver = -1.0
        q.tick(time.monotonic(), keepalive_timeout=3600)
        assert not q.recent
        assert not q.recent_times
        listener.finish()


class TestListener:
    def test_receives_and_interrupts(self, srv: RpcServer) -> None:
        listener = Collector(srv.client, ["A"])
        assert listener.ready.wait(30)
        assert listener.client_id > 0
        srv.client.events.send(event("B"))
        srv.client.events.send(event("A"))
        assert listener.wait_count(1)
        assert [e.name for e in listener.events] == ["A"]
        listener.interrupt()
        assert not listener.is_alive
        assert rc_of(listener.interrupt) == ResultCode.ERROR_STATE_UNEXPECTED

    def test_a_lost_stream_loses_nothing_and_repeats_nothing(self, srv: RpcServer) -> None:
        listener = Collector(srv.client, ["A"])
        assert listener.ready.wait(30)
        for i in range(3):
            srv.client.events.send(event("A", i=str(i)))
        assert listener.wait_count(3)
        stream = listener._stream
        assert stream is not None
        stream.cancel()  # lost: the server sends the last events again, the listener skips them
        assert wait_until(lambda: listener.connected.is_set() and listener._stream is not stream)
        srv.client.events.send(event("A", i="3"))
        assert listener.wait_count(4)
        listener.interrupt()
        assert [e.properties[0].value for e in listener.events] == ["0", "1", "2", "3"]

    def test_interrupt_unknown_id(self, srv: RpcServer) -> None:
        RpcStaticConfig.EVENT_RETAIN_TIMEOUT.update("1")
        listener = Collector(srv.client, [])
        assert listener.ready.wait(30)
        srv.client.events.interrupt(EventInterrupt(client_id=listener.client_id))  # by someone else
        assert wait_until(lambda: not listener.is_alive)  # the listening loop stopped
        assert wait_until(lambda: listener.client_id not in srv.client.events.inspect(Empty()).client_ids)
        assert rc_of(listener.interrupt) == ResultCode.ERROR_ITEM_UNKNOWN

    def test_invalid_names_are_refused_at_construction(self, srv: RpcServer) -> None:
        assert rc_of(lambda: Collector(srv.client, ["A", "has space"])) == ResultCode.ERROR_PARAM_INVALID
        assert rc_of(lambda: Collector(srv.client, [""])) == ResultCode.ERROR_PARAM_MISSING

    def test_api_version_mismatch_stops_it_with_the_error(self, srv: RpcServer) -> None:
        too_new = EventApiVersion.EVENT_API_CURRENT + 1
        client = RpcClient("127.0.0.1", srv.port, {"events": (EventServiceStub, too_new)})
        listener = Collector(client, [])
        assert wait_until(lambda: not listener.is_alive)  # no retry can fix this
        assert listener.error is not None
        assert listener.error.rc == ResultCode.ERROR_API_SERVER_TOO_OLD
        assert not listener.ready.is_set()
        client.close()

    def test_unknown_id_asks_for_a_new_one(self, srv: RpcServer) -> None:
        listener = Collector(srv.client, [], client_id=31337)
        assert wait_until(lambda: listener.ready.is_set())
        assert listener.client_id not in (0, 31337)
        listener.interrupt()

    def test_reconnects_after_server_restart(self, servers: Servers, folders) -> None:
        srv = servers(0, [], folders=folders, with_events=True)
        port = srv.port
        client = RpcClient("127.0.0.1", port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)})
        listener = Collector(client, ["R"])
        assert listener.ready.wait(30)
        srv.client.events.send(event("R", n="before"))
        assert listener.wait_count(1)
        client_id = listener.client_id
        assert listener.connected.is_set()
        srv.shutdown()
        assert wait_until(lambda: not listener.connected.is_set())
        assert listener.ready.is_set()  # it stays set: client_id stays known
        srv2 = servers(port, [], folders=folders, with_events=True)
        assert listener.connected.wait(60)
        assert listener.client_id == client_id  # resumed its persisted queue
        srv2.client.events.send(event("R", n="after"))
        assert listener.wait_count(2, 60)
        assert [e.properties[0].value for e in listener.events] == ["before", "after"]
        listener.interrupt()


def test_200_listeners_do_not_starve_the_server(servers: Servers) -> None:
    # 200 listeners from one host: lift its share (tests/test_fairness.py covers it)
    config = {"rpc-max-workers": "30", "rpc-max-streams-per-caller": "1000"}
    srv = servers(0, [], with_events=True, cli_config=config)
    client = RpcClient("127.0.0.1", srv.port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)})
    listeners = [Collector(client, ["LOAD"]) for _ in range(200)]
    try:
        assert all(listener.ready.wait(120) for listener in listeners)
        t0 = time.monotonic()
        assert srv.client.srv.info(Filter(), timeout=30).items
        assert time.monotonic() - t0 < 30
        for i in range(20):
            srv.client.events.send(event("LOAD", i=str(i)))
        assert all(listener.wait_count(20, 120) for listener in listeners)
        for listener in listeners:
            assert [e.properties[0].value for e in listener.events] == [str(i) for i in range(20)]
    finally:
        for listener in listeners:
            listener.interrupt()


def test_live_listeners_hold_no_thread(servers: Servers) -> None:
    """Listen streams are pushed (issue 11, item 10): 100 live listeners hold none of the server's stream
    threads, and an event reaches every one of them."""
    # 100 listeners from one host: lift its share (tests/test_fairness.py covers it)
    srv = servers(0, [], with_events=True, cli_config={"rpc-max-streams-per-caller": "1000"})
    client = RpcClient("127.0.0.1", srv.port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)})
    listeners = [Collector(client, ["LOAD"]) for _ in range(100)]
    try:
        assert all(listener.ready.wait(60) for listener in listeners)
        # Once each listen call has sent its id, its stream-pool thread is free again
        assert wait_until(lambda: srv.streams.pending == 0)
        srv.client.events.send(event("LOAD", i="0"))
        assert all(listener.wait_count(1, 60) for listener in listeners)
        assert srv.streams.pending == 0
    finally:
        for listener in listeners:
            listener.interrupt()


def test_a_listener_that_stops_reading_does_not_hold_up_the_others(servers: Servers) -> None:
    """Two listeners that never read: once their flow-control windows are full (a few MB), the sends to
    them block the delivery threads; a third listener still gets every event (another thread takes over
    from the stuck ones within about a second)."""
    # Queues big enough to hold every event: the reader may lag behind the sender
    srv = servers(0, [], with_events=True, cli_config={"rpc-event-queue-max-bytes": str(64 << 20)})
    stalled = [srv.client.events.listen(EventFilter(names=["BIG"])) for _ in range(2)]
    for it in stalled:
        next(it)  # the first status, then never read again
    reader = Collector(srv.client, ["BIG"])
    assert reader.ready.wait(30)
    big = "x" * 60_000
    try:
        for i in range(300):  # 18 MB for each listener: far more than a stream's flow-control window
            srv.client.events.send(event("BIG", i=str(i), data=big))
        assert reader.wait_count(300, 30)
        assert [e.properties[0].value for e in reader.events] == [str(i) for i in range(300)]
    finally:
        reader.interrupt()
        for it in stalled:
            it.cancel()


class TestBoundsI11:
    """What event queues keep is bounded in bytes too, and queues.json holds each event once (issue 11, item 11)."""

    def test_a_queue_keeps_at_most_its_bytes_newest_first(self, servers: Servers, folders) -> None:
        srv = servers(0, [], folders=folders, with_events=True, cli_config={"rpc-event-queue-max-bytes": "1000"})
        stream = srv.client.events.listen(EventFilter(names=["BIG"]))
        client_id = next(stream).client_id
        srv.client.events.interrupt(EventInterrupt(client_id=client_id))  # retained: events pile up
        for i in range(10):
            srv.client.events.send(event("BIG", i=str(i), data="x" * 300))  # ~320 bytes each
        resumed = Stream(srv.client, client_id=client_id)
        got = [resumed.next_event().properties[0].value for _ in range(3)]
        assert got == ["7", "8", "9"]  # 3 x ~320 bytes fit in 1000, the older ones were dropped
        srv.client.events.interrupt(EventInterrupt(client_id=client_id))

    def test_retained_queues_keep_at_most_their_total_bytes(self, servers: Servers, folders) -> None:
        config = {"rpc-event-max-retained-bytes": "2500"}
        srv = servers(0, [], folders=folders, with_events=True, cli_config=config)
        ids = []
        for n in range(3):
            stream = srv.client.events.listen(EventFilter(names=[f"Q{n}"]))
            ids.append(next(stream).client_id)
            srv.client.events.interrupt(EventInterrupt(client_id=ids[-1]))
            srv.client.events.send(event(f"Q{n}", data="x" * 1000))  # ~1 KB for this queue only
        # The oldest retained queue goes: the two newest hold ~2 KB
        assert wait_until(lambda: list(srv.client.events.inspect(Empty()).client_ids) == ids[1:])

    def test_queues_json_holds_each_event_once(self, servers: Servers, folders) -> None:
        srv = servers(0, [], folders=folders, with_events=True)
        ids = []
        for _ in range(20):
            stream = srv.client.events.listen(EventFilter())
            ids.append(next(stream).client_id)
            srv.client.events.interrupt(EventInterrupt(client_id=ids[-1]))
        for i in range(50):
            srv.client.events.send(event("SHARED", i=str(i), data="x" * 1000))
        srv.shutdown()
        path = folders.workspace / "queues.json"
        data = json.loads(path.read_text())
        assert sorted(data) == sorted(str(i) for i in ids)  # the shape both generations read
        assert all(isinstance(v, list) and len(v) == 50 for v in data.values())
        # 50 KB of events for 20 queues: written once (plus short references), not 20 times
        assert path.stat().st_size < 2 * 50 * 1000
        srv2 = servers(0, [], folders=folders, with_events=True)
        for client_id in (ids[0], ids[-1]):
            resumed = Stream(srv2.client, client_id=client_id)
            assert [resumed.next_event().properties[0].value for _ in range(50)] == [str(i) for i in range(50)]
            srv2.client.events.interrupt(EventInterrupt(client_id=client_id))

    def test_live_listeners_are_bounded(self, servers: Servers) -> None:
        srv = servers(0, [], with_events=True, cli_config={"rpc-max-streams": "3"})
        streams = [Stream(srv.client) for _ in range(3)]
        assert rc_of(lambda: next(srv.client.events.listen(EventFilter()))) == ResultCode.ERROR_ITEM_BUSY
        # Taking a live queue over replaces its listener: allowed
        taken = Stream(srv.client, client_id=streams[0].client_id)
        assert taken.client_id == streams[0].client_id
        for s in streams[1:]:
            srv.client.events.interrupt(EventInterrupt(client_id=s.client_id))
        srv.client.events.interrupt(EventInterrupt(client_id=taken.client_id))


def test_listener_leaves_a_server_that_never_answers_its_listen(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that took the listen call but never answers it (wedged): the listener gives up on that
    stream after FIRST_STATUS_TIMEOUT and reconnects, instead of waiting forever."""
    import threading
    from concurrent import futures

    import grpc

    from grpc_helper.api import EventStatus
    from grpc_helper.api.events_pb2_grpc import EventServiceServicer, add_EventServiceServicer_to_server
    from grpc_helper.events import listener as listener_module

    monkeypatch.setattr(listener_module, "FIRST_STATUS_TIMEOUT", 0.5)
    release = threading.Event()
    calls = []

    class Wedged(EventServiceServicer):
        def listen(self, request: EventFilter, _context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
            calls.append(request)
            if len(calls) == 1:
                release.wait(30)  # the first call: taken, never answered
                return
            yield EventStatus(client_id=7)
            release.wait(30)

    server = grpc.server(futures.ThreadPoolExecutor(4))
    add_EventServiceServicer_to_server(Wedged(), server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = RpcClient(
        "127.0.0.1", port, {"events": (EventServiceStub, EventApiVersion.EVENT_API_CURRENT)}, timeout=None
    )
    listener = Collector(client, [])
    try:
        assert listener.ready.wait(10)  # without the watchdog: never
        assert listener.client_id == 7
        assert len(calls) >= 2
    finally:
        release.set()
        with contextlib.suppress(RpcException):  # the wedged servicer implements no interrupt
            listener.interrupt(timeout=5)
        server.stop(0)
        client.close()
