"""The consumer against the real server: exact resume after the network drops, resync after a
restart, the close codes that stop it, and replies."""

import asyncio

import pytest

from conftest import ADMIN, Server, free_port, token
from switchboard_client import Backoff, Consumer, ConsumerStopped, Publisher, ReplyFailed


async def take(c: Consumer, n: int) -> list:
    return [await asyncio.wait_for(c.__anext__(), 10) for _ in range(n)]


async def test_after_a_dropped_connection_the_consumer_gets_exactly_what_it_missed(server, proxy):
    async with Publisher(server.http, ADMIN) as pub, \
            Consumer(proxy.ws, token("py-resume"), backoff=Backoff(base=0.05, max=0.2)) as c:
        for n in (1, 2):
            await pub.to_user("acme", "py-resume", "notice", {"n": n})
        first = await take(c, 2)
        # Its reconnect (the backoff may draw 0 s) waits at the proxy until all three are published.
        proxy.hold_new()
        proxy.drop()
        for n in (3, 4, 5):
            await pub.to_user("acme", "py-resume", "notice", {"n": n})
        proxy.release_new()
        rest = await take(c, 3)
        await pub.to_user("acme", "py-resume", "notice", {"n": 6})
        rest += await take(c, 1)
        events = first + rest
        assert [e.data["n"] for e in events] == [1, 2, 3, 4, 5, 6]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
        assert [e.replayed for e in events] == [False, False, True, True, True, False]
        assert proxy.connections == 2 and c.stats["reconnects"] == 1
        assert list(c.resyncs) == []


async def test_a_restarted_server_is_a_resync_not_a_silent_gap(server):
    own = Server(free_port())
    reports = []
    c = Consumer(own.ws, token("py-restart"), backoff=Backoff(base=0.1, max=0.3), on_resync=reports.append)
    try:
        await c.start()
        async with Publisher(own.http, ADMIN) as pub:
            await pub.to_user("acme", "py-restart", "notice", {"n": 1})
        (e1,) = await take(c, 1)
        own.proc.send_signal(2)  # SIGINT: every connection closed with server_shutdown (4006)
        own.proc.wait()
        again = Server(own.port)
        try:
            for _ in range(200):
                if reports:
                    break
                await asyncio.sleep(0.05)
            assert reports and reports[0].stream in ("u", "t")
            u = next(r for r in reports if r.stream == "u")
            assert u.reason == "epoch_mismatch" and u.position.epoch != e1.epoch
            assert c.reconnects[0][2] == 4006
            async with Publisher(again.http, ADMIN) as pub:
                await pub.to_user("acme", "py-restart", "notice", {"n": 2})
            (e2,) = await take(c, 1)
            assert e2.epoch == u.position.epoch and e2.data == {"n": 2}
        finally:
            await c.close()
            again.stop()
    finally:
        own.stop()


async def test_protocol_violation_stops_the_consumer_for_good(server):
    c = Consumer(server.ws, token("py-violator"))
    await c.start()
    for _ in range(5):
        await c._ws.send('{"type":"no_such_frame"}')
    with pytest.raises(ConsumerStopped) as e:
        await asyncio.wait_for(c.__anext__(), 10)
    assert (e.value.code, e.value.reason) == (4004, "protocol_violation")
    assert c.stats["reconnects"] == 0
    await c.close()


async def test_a_refused_token_stops_at_the_handshake(server):
    bad = token("py-mallory")[:-4] + "AAAA"
    with pytest.raises(ConsumerStopped) as e:
        async with Consumer(server.ws, bad):
            pass
    assert e.value.code == 401


async def test_a_provider_is_asked_once_more_after_a_refused_token(server):
    bad = token("py-renew")[:-4] + "AAAA"
    calls = []

    def renewing(reason: str) -> str:
        calls.append(reason)
        return bad if reason == "connect" else token("py-renew")

    async with Consumer(server.ws, renewing) as c:
        assert c.connection is not None and c.connection.user == "py-renew"
        assert calls == ["connect", "rejected"]

    # A provider that has nothing better: asked once, then the consumer stops with the 401.
    stuck = []
    with pytest.raises(ConsumerStopped) as e:
        async with Consumer(server.ws, lambda reason: stuck.append(reason) or bad):
            pass
    assert e.value.code == 401 and stuck == ["connect", "rejected"]


async def test_a_request_gets_the_applications_reply_then_the_run(server):
    async with Consumer(server.ws, token("py-asker"), threads=("t9",)) as c:
        reply = await c.request({"text": "hi"}, thread="t9")
        assert reply["accepted"] is True
        events = await take(c, 7)
        assert {e.run_id for e in events} == {reply["run_id"]}
        assert [e.kind for e in events][0] == "agent_started" and events[-1].kind == "agent_completed"


async def test_a_refused_request_fails_at_once_and_other_refusals_reach_on_error(server):
    stray = []
    async with Consumer(server.ws, token("py-flood", tier="free"), on_error=stray.append) as c:
        # More requests at once than the free tier's burst (30): those over it are refused, with their ids.
        # The timeout is far off: a refusal that waited for it would raise ReplyTimeout instead.
        asked = [c.request({"text": f"q{n}"}, timeout=50) for n in range(60)]
        results = await asyncio.gather(*asked, return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert 0 < len(refused) < 60, results
        assert all(isinstance(r, ReplyFailed) and r.code == "rate_limited" for r in refused), refused
        assert stray == [] and c.stats["server_errors"] == 0
        # A refusal that answers no request goes to on_error: a plain message, still over the rate.
        await c.send({"text": "no id"})
        for _ in range(200):
            if stray:
                break
            await asyncio.sleep(0.01)
        assert [(e.code, e.id) for e in stray] == [("rate_limited", None)]
        assert c.stats["server_errors"] == 1


async def test_a_callback_that_raises_does_not_end_the_consumer(server, caplog):
    def broken(_):
        raise RuntimeError("the application's bug")

    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, token("py-broken"), on_error=broken) as c:
        await c.request_presence("t")  # refused: on_error raises
        for _ in range(200):
            if c.stats["server_errors"]:
                break
            await asyncio.sleep(0.01)
        assert c.stats["server_errors"] == 1
        await pub.to_user("acme", "py-broken", "notice", {"n": 1})
        assert (await take(c, 1))[0].data == {"n": 1}
        assert c.stats["connects"] == 1, "the same connection went on"
        assert "a callback raised" in caplog.text


async def test_a_provider_failing_to_refresh_is_renewed_at_expiry(server):
    calls = []

    async def provider(reason: str) -> str:
        calls.append(reason)
        if reason == "refresh":
            raise RuntimeError("the token service is down")
        # 3 s sessions at first (refresh_required comes at once: the grace is 60 s), then long.
        return token("py-refresh-down", ttl=3 if reason == "connect" else 3600)

    async with Publisher(server.http, ADMIN) as pub, Consumer(server.ws, provider, backoff=Backoff(base=0.02, max=0.05)) as c:
        for _ in range(800):
            if c.stats["connects"] == 2:
                break
            await asyncio.sleep(0.01)
        assert calls[:3] == ["connect", "refresh", "expired"], calls
        assert c.reconnects[0][2] == 4001
        await pub.to_user("acme", "py-refresh-down", "notice", {"n": 1})
        assert (await take(c, 1))[0].data == {"n": 1}


async def test_a_failing_token_provider_is_retried_with_backoff(server):
    calls = []

    async def provider(reason: str) -> str:
        calls.append(reason)
        if len(calls) < 3:
            raise RuntimeError("the token service is down")
        return token("py-provider")

    async with Consumer(server.ws, provider, backoff=Backoff(base=0.02, max=0.05)) as c:
        assert c.connection is not None and c.connection.user == "py-provider"
        assert calls == ["connect", "connect", "connect"]
        assert c.stats["reconnects"] == 2
