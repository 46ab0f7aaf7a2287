"""The consumer's runs, history and presence against the real server: a run's iterator narrowed
by the server (``subscribe`` with ``run_id``), kept across a dropped connection and dropped when
the loop ends; history pages of a stream, a thread and a run, refusals as typed errors, a request
cut off by a drop asked again; presence frames yielded by the iterator and kept in ``presence``."""

import asyncio
import random

import pytest

from conftest import ADMIN, token
from switchboard_client import (
    Backoff, Consumer, Event, HistoryFailed, Presence, PresenceDiff, Publisher, Subscription,
)


class _Late(random.Random):
    """Every jitter draw near the top of the window: a reconnect waits ~0.4 s, long enough to
    publish while the consumer is away."""

    def random(self) -> float:
        return 0.99


AWAY = {"backoff": Backoff(base=0.4, max=0.4), "rng": _Late()}


async def next_of(it, timeout: float = 10):
    return await asyncio.wait_for(it.__anext__(), timeout)


async def settle(c: Consumer, user: str, seq: int) -> None:
    for _ in range(400):
        if c.positions.get("u") is not None and c.positions["u"].seq >= seq:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{user}: seq {seq} never arrived")


async def test_a_runs_iterator_is_narrowed_by_the_server_across_a_reconnect(server, proxy):
    async with Publisher(server.http, ADMIN) as pub, \
            Consumer(proxy.ws, token("py-runs"), **AWAY) as c:
        async with c.run("r1") as r1:
            assert isinstance(r1, Subscription) and c.runs == {"r1"}  # the server has it from here
            await pub.to_run("acme", "py-runs", "r2", "notice", {"n": 1})
            await pub.to_run("acme", "py-runs", "r1", "notice", {"n": 2})
            await pub.to_user("acme", "py-runs", "notice", {"n": 3})  # names no run: still comes
            first = await next_of(r1)
            notice = await next_of(c)
            # The reconnect (its backoff may draw 0 s) waits at the proxy until both are published,
            # so the r1 event is always a replayed one.
            proxy.hold_new()
            proxy.drop()
            await pub.to_run("acme", "py-runs", "r2", "notice", {"n": 4})
            await pub.to_run("acme", "py-runs", "r1", "notice", {"n": 5})
            proxy.release_new()
            second = await next_of(r1)
            assert [(e.run_id, e.data["n"], e.replayed) for e in (first, second)] == [("r1", 2, False), ("r1", 5, True)]
            assert (notice.run_id, notice.data) == (None, {"n": 3})
            # r2's events never reached the consumer: the server filtered them, live and replayed.
            await asyncio.sleep(0.2)
            assert c._queue.empty() and c.stats["events"] == 3
            assert c.stats["reconnects"] == 1
        assert c.runs == set()  # the loop ended: unsubscribed
        await asyncio.sleep(0.05)
        await pub.to_run("acme", "py-runs", "r2", "notice", {"n": 6})
        e = await next_of(c)
        assert (e.run_id, e.data) == ("r2", {"n": 6})
        with pytest.raises(StopAsyncIteration):
            await next_of(r1)


async def test_a_thread_iterator_takes_its_threads_events(server):
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-threads")) as c:
        async with c.thread("ta") as ta:
            await pub.to_thread("acme", "py-threads", "tb", "notice", {"n": 1})
            await pub.to_thread("acme", "py-threads", "ta", "notice", {"n": 2})
            e = await next_of(ta)
            assert (e.thread_id, e.data) == ("ta", {"n": 2})
        await asyncio.sleep(0.2)
        assert c.stats["events"] == 1


async def test_history_pages_of_a_stream_a_thread_and_a_run(server):
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-hist")) as c:
        await pub.to_thread("acme", "py-hist", "ta", "notice", {"n": 1})
        await pub.to_run("acme", "py-hist", "ra", "notice", {"n": 2})
        await pub.to_thread("acme", "py-hist", "ta", "notice", {"n": 3})
        await pub.to_user("acme", "py-hist", "notice", {"n": 4})
        await settle(c, "py-hist", 4)
        last = await c.history(limit=2)
        assert (last.stream, last.seq, last.more) == ("u", 4, True)
        assert [e.data["n"] for e in last.messages] == [3, 4]
        assert all(isinstance(e, Event) and not e.replayed for e in last.messages)
        older = await c.history(limit=2, before=last.messages[0].seq)
        assert [e.data["n"] for e in older.messages] == [1, 2] and older.more is False
        ta, ra = await asyncio.gather(c.history(thread="ta"), c.history(run="ra"))
        assert [e.data["n"] for e in ta.messages] == [1, 3]
        assert [e.data["n"] for e in ra.messages] == [2]
        stale = await c.history(epoch=last.epoch + 1)
        assert (stale.messages, stale.reason) == ([], "epoch_mismatch")


async def test_history_refusals_are_typed_and_the_connection_goes_on(server):
    c = Consumer(server.ws, token("py-hist-bad"))
    with pytest.raises(ConnectionError):
        await c.history()
    async with c:
        with pytest.raises(HistoryFailed) as e:
            await c.history("r:elsewhere")
        assert e.value.code == "unknown_stream"
        with pytest.raises(HistoryFailed) as e:
            await c.history(limit=100_000)
        assert e.value.code == "invalid_field"
        for bad in ({"before": 3, "after": 1}, {"limit": 0}, {"thread": ""}, {"before": -1}):
            with pytest.raises(HistoryFailed) as e:
                await c.history(**bad)
            assert e.value.code == "invalid_field"
        async with Publisher(server.http, ADMIN) as pub:
            await pub.to_user("acme", "py-hist-bad", "notice", {"n": 1})
        await settle(c, "py-hist-bad", 1)
        page = await c.history()
        assert [m.data for m in page.messages] == [{"n": 1}]
    with pytest.raises(ConnectionError):  # closed: no waiting for a connection that never comes
        await c.history(timeout=5)


async def test_history_times_out_and_a_request_cut_off_by_a_drop_is_asked_again(server, proxy):
    async with Publisher(server.http, ADMIN) as pub, \
            Consumer(proxy.ws, token("py-hist-drop"), backoff=Backoff(base=0.05, max=0.1)) as c:
        await pub.to_user("acme", "py-hist-drop", "notice", {"n": 1})
        await settle(c, "py-hist-drop", 1)
        proxy.cut_first_answer = True  # the server answers; the proxy swallows it and cuts the connection
        page = await c.history(timeout=10)
        assert [m.data["n"] for m in page.messages] == [1]
        assert c.stats["reconnects"] == 1
        with pytest.raises(HistoryFailed) as e:
            await c.history(timeout=0.000001)
        assert e.value.code == "timeout"


async def test_presence_frames_come_out_of_the_iterator_and_are_kept(server):
    async with Consumer(server.ws, token("py-pres-a", rooms=["py-hall"])) as a:
        snap = await next_of(a)
        assert isinstance(snap, Presence) and snap.scope == "r:py-hall"
        async with Consumer(server.ws, token("py-pres-b", rooms=["py-hall"])):
            diff = await next_of(a)
            while not (isinstance(diff, PresenceDiff) and "py-pres-b" in {j.user for j in diff.joins}):
                diff = await next_of(a)
            state = a.presence["r:py-hall"]
            assert set(state.members) == {"py-pres-a", "py-pres-b"} and state.count == 2
            # Asked again: a fresh snapshot, with both.
            await a.request_presence("r:py-hall")
            snap = await next_of(a)
            while not isinstance(snap, Presence):
                snap = await next_of(a)
            assert snap.scope == "r:py-hall" and {m.user for m in snap.members} == {"py-pres-a", "py-pres-b"}


async def test_presence_asked_where_there_is_none_is_refused_to_on_error(server):
    refused = []
    async with Consumer(server.ws, token("py-pres-c"), on_error=refused.append) as c:
        await c.request_presence("t")  # the server runs room presence only
        for _ in range(200):
            if refused:
                break
            await asyncio.sleep(0.01)
        assert [e.code for e in refused] == ["no_presence"] and c.stats["server_errors"] == 1


async def test_a_history_request_waiting_for_a_connection_ends_when_the_consumer_stops(server, proxy):
    c = Consumer(proxy.ws, token("py-hist-stop"), **AWAY)
    await c.start()
    proxy.drop()
    for _ in range(200):
        if not c._live.is_set():
            break
        await asyncio.sleep(0.01)
    asking = asyncio.ensure_future(c.history(timeout=5))
    await asyncio.sleep(0.1)
    assert not asking.done(), "it waits for the next connection"
    await c.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(asking, 2)
