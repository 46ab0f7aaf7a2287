"""The publisher against the real server: every target, batches with per-entry results, an
idempotent retry after a lost answer, typed errors, and backoff bounds."""

import asyncio
import random

import pytest

from conftest import ADMIN, token
from switchboard_client import (
    MAX_BATCH, Backoff, BadRequest, Consumer, Envelope, Published, Publisher, TooLarge, Unauthorized,
)


async def test_publish_to_every_target_returns_positions_and_reaches_the_consumer(server):
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-pub-1", rooms=["den"]), presence=False) as c:
        got = await pub.to_user("acme", "py-pub-1", "notice", {"n": 1})
        assert (got.stream, got.seq, got.duplicate, got.buffered) == ("u", 1, False, True)
        # Delivered, or held while the consumer's first frame is still on its way (it then
        # arrives when the connection goes live).
        assert got.delivered + got.held == 1, got
        got = await pub.to_thread("acme", "py-pub-1", "t1", "agent_started", {"n": 2}, run="r1")
        assert (got.stream, got.seq) == ("u", 2)
        got = await pub.to_run("acme", "py-pub-1", "r1", "agent_completed", {"n": 3})
        assert (got.stream, got.seq) == ("u", 3)
        room = await pub.to_room("acme", "den", "notice", {"n": 4})
        assert room.stream == "r:den" and room.seq == 1
        tenant = await pub.to_tenant("acme", "notice", {"n": 5}, role="member")
        assert tenant.stream == "t"
        events = [await asyncio.wait_for(c.__anext__(), 10) for _ in range(5)]
        assert [e.data["n"] for e in events] == [1, 2, 3, 4, 5]
        assert [(e.stream, e.thread_id, e.run_id) for e in events[:3]] == [("u", None, None), ("u", "t1", "r1"), ("u", None, "r1")]


async def test_exclude_leaves_out_the_senders_connection_and_priority_reaches_the_server(server):
    t = token("py-excl")
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, t) as sender, Consumer(server.ws, t) as other:
        for c in (sender, other):
            for _ in range(200):
                if c.connection is not None:
                    break
                await asyncio.sleep(0.01)
        env = Envelope("acme", "notice", {"n": 1}, user="py-excl", exclude=sender.connection.conn_id)
        got = await pub.publish(env)
        assert got.excluded is True and got.delivered + got.held == 1, got
        event = await asyncio.wait_for(other.__anext__(), 10)
        assert event.data == {"n": 1}
        # The agent kinds' priorities are fixed: naming another one is refused, typed.
        with pytest.raises(BadRequest):
            await pub.publish(Envelope("acme", "agent_started", user="py-excl", priority="low"))
        low = await pub.publish(Envelope("acme", "progress", {"n": 2}, user="py-excl", priority="low"))
        assert (low.seq, low.skipped) == (2, 0), low
        assert (await asyncio.wait_for(other.__anext__(), 10)).data == {"n": 2}
        assert (await asyncio.wait_for(sender.__anext__(), 10)).data == {"n": 2}, "excluded from 1 only"


async def test_batching_sends_concurrent_publishes_together_in_call_order(server):
    async with Publisher(server.http, ADMIN, batching=True) as pub, Consumer(server.ws, token("py-coalesce")) as c:
        calls = [pub.to_user("acme", "py-coalesce", "notice", {"n": n}) for n in range(50)]
        calls.insert(7, pub.publish(Envelope("acme", "notice", user="py-coalesce", room="both")))
        results = await asyncio.gather(*calls, return_exceptions=True)
        # The invalid one raised for its caller only; the others went in call order.
        assert isinstance(results.pop(7), BadRequest)
        assert [r.seq for r in results] == list(range(1, 51)), results
        assert pub.requests <= 2, pub.requests
        got = [await asyncio.wait_for(c.__anext__(), 10) for _ in range(50)]
        assert [e.data["n"] for e in got] == list(range(50))
        # Alone, a publish goes at once, in a request of its own.
        before = pub.requests
        assert (await pub.to_user("acme", "py-coalesce", "notice", {"n": 50})).seq == 51
        assert pub.requests == before + 1


async def test_a_batch_answers_each_envelope_in_order(server):
    # A user the server has never seen has no stream: the consumer makes one.
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-batch")) as c:
        envs = [Envelope("acme", "notice", {"n": n}, user="py-batch") for n in range(3)]
        envs.insert(1, Envelope("acme", "notice", user="py-batch", room="both"))  # user and room: invalid
        results = await pub.publish_batch(envs)
        assert len(results) == 4
        assert isinstance(results[1], BadRequest) and results[1].status == 400
        ok = [r for r in results if isinstance(r, Published)]
        assert [r.seq for r in ok] == [1, 2, 3]
        assert pub.requests == 1
        assert [e.data["n"] for e in [await asyncio.wait_for(c.__anext__(), 10) for _ in range(3)]] == [0, 1, 2]
        with pytest.raises(ValueError):
            await pub.publish_batch([Envelope("acme", "notice", user="x")] * (MAX_BATCH + 1))


async def test_a_lost_answer_is_retried_with_the_same_key_and_published_once(server, proxy):
    async with Publisher(proxy.http, ADMIN, backoff=Backoff(base=0.05, max=0.1)) as pub, \
            Consumer(server.ws, token("py-retry")) as c:
        env = Envelope("acme", "notice", {"n": 1}, user="py-retry")
        proxy.cut_first_answer = True  # the server publishes, the answer never arrives
        got = await pub.publish(env)
        assert pub.requests == 2, "one retry"
        assert got.duplicate is True and got.seq == 1, got
        # A batch retried the same way: every entry is a duplicate of the first attempt.
        batch = [Envelope("acme", "notice", {"n": n}, user="py-retry") for n in (2, 3)]
        proxy.cut_first_answer = True
        results = await pub.publish_batch(batch)
        assert [(r.seq, r.duplicate) for r in results] == [(2, True), (3, True)]
        events = [await asyncio.wait_for(c.__anext__(), 10) for _ in range(3)]
        assert [e.data["n"] for e in events] == [1, 2, 3]
        await asyncio.sleep(0.2)
        assert c._queue.empty(), "each event delivered once"


async def test_refusals_are_typed_and_not_retried(server):
    async with Publisher(server.http, "not-the-admin-key") as pub:
        with pytest.raises(Unauthorized):
            await pub.to_tenant("acme", "notice")
        assert pub.requests == 1
    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-big")):
        with pytest.raises(BadRequest) as e:
            await pub.publish(Envelope("acme", "notice", user="u", room="r"))
        assert e.value.code == "bad_target"
        with pytest.raises(TooLarge):
            await pub.to_user("acme", "py-big", "notice", {"blob": "x" * (1024 * 1024 + 10)})
        assert pub.requests == 2


def test_backoff_is_full_jitter_within_its_bounds():
    b = Backoff(base=0.1, max=1.0)
    rng = random.Random(7)
    for attempt in range(20):
        d = b.delay(attempt, rng)
        assert 0 <= d < b.ceiling(attempt) <= 1.0
    assert [b.ceiling(a) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
