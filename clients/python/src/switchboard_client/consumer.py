"""The consumer: one logical connection that survives reconnects, as an async iterator of events.

The same semantics as the TypeScript client: positions per stream kept across reconnects, the
thread and run subscriptions then ``resume`` sent first after each reconnect, events deduplicated
by (stream, epoch, seq), streams that could not be recovered reported to ``on_resync``,
full-jitter backoff, and the server's close codes followed (README, "Close codes"). Presence
frames are kept in ``presence`` and yielded by the iterator; ``history`` asks for a page of a
stream, a thread or a run.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .backoff import Backoff
from .errors import ConsumerStopped, HistoryFailed, QueueOverflow, ReplyFailed, ReplyTimeout
from .frames import (
    Connected, Error, Event, Frame, FrameError, History, Joined, Left, Pong, Presence, PresenceDiff,
    RefreshRequired, Reply, Resumed, Resync, Position, Skipped, decode_frame,
)
from .subscription import Subscription

#: Close codes after which the client must not reconnect, and the one that needs a new token.
# Every other code (4009 max_lifetime among them) reconnects and resumes.
STOP_CODES = {4002: "replaced", 4004: "protocol_violation", 4005: "kicked", 4008: "user_limit"}
SESSION_EXPIRED = 4001

log = logging.getLogger("switchboard_client")

#: How many reconnects and resync reports a consumer keeps for inspection.
HISTORY_KEPT = 100

TokenSource = Union[str, Callable[[str], Union[str, Awaitable[str]]]]

#: What the consumer's own iterator yields: events, and presence as the server announces it.
Item = Union[Event, Presence, PresenceDiff]

#: Error codes only a ``history`` request gets: such an ``error`` answers the one in flight.
HISTORY_REFUSALS = {"unknown_stream", "history_busy"}


class _Cut(Exception):
    """The connection closed while a history request waited: it is asked again."""


@dataclass
class PresenceState:
    """Who is present in a scope (``"t"`` or ``"r:<room>"``): the last snapshot plus the diffs since.

    ``members`` maps user → meta, or is ``None`` when the scope is too large for a list.
    """

    scope: str
    count: int
    members: Optional[dict[str, Optional[dict]]]


@dataclass(frozen=True)
class ResyncReport:
    """A stream whose missed messages did not all come: refetch its state, continue from ``position``."""

    stream: str
    position: Position
    reason: str


class Consumer:
    """Consumes a user's events from a switchboard server.

    ``token`` is a token or a function ``reason -> token`` (``"connect"``, ``"refresh"``,
    ``"expired"``, ``"rejected"``; it may be async). Iterate with ``async for item in
    consumer``: events, and ``Presence`` / ``PresenceDiff`` frames unless ``presence=False``
    (``presence`` keeps each scope's members either way); use as ``async with Consumer(...) as
    c:`` (or call :meth:`start` and :meth:`close`). ``thread(id)`` and ``run(id)`` iterate one thread's or run's
    events; ``history(...)`` asks for a page of history.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        backoff: Backoff = Backoff(),
        positions: Optional[dict[str, Position]] = None,
        threads: tuple[str, ...] = (),
        runs: tuple[str, ...] = (),
        presence: bool = True,
        on_resync: Optional[Callable[[ResyncReport], Any]] = None,
        on_error: Optional[Callable[[Error], Any]] = None,
        max_queue: int = 10_000,
        rng: Optional[random.Random] = None,
    ):
        self.url = url
        self._token_source = token
        self._token: Optional[str] = token if isinstance(token, str) else None
        self.backoff = backoff
        #: Stream → last position processed; pass it to a new consumer to resume where this one was.
        self.positions: dict[str, Position] = dict(positions or {})
        #: The threads and runs the connection is narrowed to (``subscribe``), kept across reconnects.
        self.threads = set(threads)
        self.runs = set(runs)
        #: Scope → who is present there, for the scopes with presence this connection is in.
        self.presence: dict[str, PresenceState] = {}
        self._yield_presence = presence
        self._subs: list[Subscription] = []
        self._history_lock = asyncio.Lock()
        self._history_wait: Optional[tuple[str, asyncio.Future, int]] = None
        self._pings = 0
        self._pongs = 0
        self._pong_waiters: list[tuple[int, asyncio.Future]] = []
        self.on_resync = on_resync
        #: Called with each ``error`` frame that answers no request of this consumer (a refused
        #: ``send``, ``subscribe`` or ``presence`` request, for example); counted in ``stats``.
        self.on_error = on_error
        self._queue: asyncio.Queue[Union[Item, BaseException]] = asyncio.Queue(max_queue + 1)
        self._max_queue = max_queue
        self._rng = rng or random.Random()
        self._task: Optional[asyncio.Task] = None
        self._ws: Optional[ClientConnection] = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._resuming = False
        self._rejected_once = False
        self._refresh_task: Optional[asyncio.Task] = None
        self._live = asyncio.Event()
        #: The current (or last) ``connected`` frame.
        self.connection: Optional[Connected] = None
        self.stats = {
            "connects": 0, "reconnects": 0, "duplicates": 0, "replayed": 0, "events": 0,
            "skipped": 0, "server_errors": 0,
        }
        #: The last reconnects' (attempt, delay in s, close code), and the last resync reports,
        #: at most :data:`HISTORY_KEPT` of each: a consumer that lives for months stays bounded
        #: (``stats`` counts them all).
        self.reconnects: deque[tuple[int, float, int]] = deque(maxlen=HISTORY_KEPT)
        self.resyncs: deque[ResyncReport] = deque(maxlen=HISTORY_KEPT)

    async def __aenter__(self) -> "Consumer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Starts connecting and waits until the connection is live (after ``resumed`` when resuming)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        live = asyncio.create_task(self._live.wait())
        done, _ = await asyncio.wait({live, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            live.cancel()
            self._task.result()  # raises why it stopped

    async def close(self) -> None:
        """Closes for good."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, ConsumerStopped):
                pass
        self._fail_pending(ConnectionError("the consumer was closed"))

    def __aiter__(self) -> "Consumer":
        return self

    async def __anext__(self) -> Item:
        if self._task is None:
            await self.start()
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later read fails the same way
            if isinstance(item, ConsumerStopped) and item.code == 1000:
                raise StopAsyncIteration
            raise item
        return item

    async def send(self, data: Any, thread: Optional[str] = None) -> None:
        """Sends a client ``message`` to the application."""
        await self._send({"type": "message", "thread_id": thread, "data": data})

    async def request(self, data: Any, thread: Optional[str] = None, timeout: float = 10.0) -> Any:
        """Sends a ``message`` with an ``id``; returns the ``reply``'s data."""
        rid = f"q{next(self._ids)}"
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._send({"type": "message", "id": rid, "thread_id": thread, "data": data})
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ReplyTimeout(f"no reply within {timeout} s") from None
        finally:
            self._pending.pop(rid, None)

    async def request_presence(self, scope: str) -> None:
        """Asks for a fresh ``presence`` snapshot of a scope the connection is in (``"t"`` or
        ``"r:<room>"``); it arrives like any other (kept in ``presence``, and yielded unless
        ``presence=False``). A scope without presence, or a room the connection is not in, gets
        an ``error`` ``no_presence`` (to ``on_error``)."""
        await self._send({"type": "presence", "scope": scope})

    async def subscribe(self, thread: Optional[str] = None, run: Optional[str] = None) -> None:
        """Narrows the connection to a thread and/or an agent run (plus the user's events that name
        neither); kept across reconnects. Subscriptions add up: an event passes if its thread or its
        run is one of them."""
        if thread is not None:
            self.threads.add(thread)
        if run is not None:
            self.runs.add(run)
        if (thread is not None or run is not None) and self._live.is_set():
            await self._send({"type": "subscribe", "thread_id": thread, "run_id": run})

    async def unsubscribe(self, thread: Optional[str] = None, run: Optional[str] = None) -> None:
        """Drops a thread or a run; without either, every subscription (all events come again)."""
        if thread is None and run is None:
            self.threads.clear()
            self.runs.clear()
        if thread is not None:
            self.threads.discard(thread)
        if run is not None:
            self.runs.discard(run)
        if self._live.is_set():
            await self._send({"type": "unsubscribe", "thread_id": thread, "run_id": run})

    def thread(self, thread: str) -> Subscription:
        """One thread's events as their own iterator (``async with c.thread("t1") as events``)."""
        return self._narrowed(Subscription(self, thread=thread, max_queue=self._max_queue))

    def run(self, run: str) -> Subscription:
        """One agent run's events as their own iterator, narrowed by the server (``subscribe`` with
        ``run_id``); the subscription ends with the iteration (``async with c.run("r9") as events``)."""
        return self._narrowed(Subscription(self, run=run, max_queue=self._max_queue))

    async def history(
        self,
        stream: str = "u",
        *,
        thread: Optional[str] = None,
        run: Optional[str] = None,
        limit: Optional[int] = None,
        before: Optional[int] = None,
        after: Optional[int] = None,
        epoch: Optional[int] = None,
        timeout: float = 10.0,
    ) -> History:
        """A page of a stream's history (``"u"``, ``"t"``, ``"r:<room>"``), or of one thread's or
        run's events in it: the last ``limit`` events this connection may see, or those ``before`` or
        ``after`` a seq. ``History.messages`` holds them as :class:`Event`, oldest first; ``more``
        says an older page exists (ask with ``before`` the first seq).

        Waits for a resume in progress; requests go one at a time; one cut off by a reconnect is
        asked again on the next connection. Raises :class:`HistoryFailed` for a refusal (its
        ``code``: ``unknown_stream``, ``invalid_field``, ...; bad input is refused before sending)
        or ``timeout``, and ``ConnectionError`` when the consumer was not started or stopped.
        """
        frame = _history_request(stream, thread, run, limit, before, after, epoch)
        if self._task is None or self._task.done():
            raise ConnectionError("not connected")
        frame["id"] = f"h{next(self._ids)}"
        try:
            return await asyncio.wait_for(self._ask_history(frame), timeout)
        except asyncio.TimeoutError:
            raise HistoryFailed("timeout", f"no history within {timeout} s") from None

    async def drop(self) -> None:
        """Closes the current socket cleanly; the consumer reconnects and resumes as after any drop."""
        if self._ws is not None:
            await self._ws.close(1000, "dropped by the client")

    # -----------------------------------------------------------------------------------------

    def _narrowed(self, sub: Subscription) -> Subscription:
        self._subs.append(sub)
        if sub.thread is not None:
            self.threads.add(sub.thread)
        if sub.run is not None:
            self.runs.add(sub.run)
        if self._live.is_set():
            frame = {"type": "subscribe", "thread_id": sub.thread, "run_id": sub.run}
            sub._subscribed = asyncio.ensure_future(self._send_and_sync(frame))
        return sub

    async def _send_and_sync(self, frame: dict) -> None:
        """Sends a frame, then waits until the server has handled it (the pong of a ping after it:
        frames are handled in order). Quietly gives up when the connection goes: the next one
        sends the subscriptions before anything else anyway."""
        try:
            await self._send(frame)
            fut: asyncio.Future = asyncio.get_running_loop().create_future()
            self._pong_waiters.append((self._pings + 1, fut))
            await self._send({"type": "ping"})
            self._pings += 1
            await asyncio.wait_for(fut, 10)
        except (ConnectionError, ConnectionClosed, asyncio.TimeoutError, _Cut):
            pass

    def _forget(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    async def _release(self, thread: Optional[str], run: Optional[str]) -> None:
        """A thread's or run's iterator ended: unsubscribe unless another one has it."""
        if any(s.thread == thread and s.run == run for s in self._subs):
            return
        if thread is not None:
            self.threads.discard(thread)
        if run is not None:
            self.runs.discard(run)
        if self._live.is_set():
            await self._send_quietly({"type": "unsubscribe", "thread_id": thread, "run_id": run})

    async def _send_quietly(self, frame: dict) -> None:
        """Sends if connected; otherwise the next connection sends the subscriptions anyway."""
        try:
            await self._send(frame)
        except (ConnectionError, ConnectionClosed):
            pass

    async def _ask_history(self, frame: dict) -> History:
        async with self._history_lock:
            while True:
                await self._until_live()
                ws = self._ws
                fut: asyncio.Future = asyncio.get_running_loop().create_future()
                if ws is None:
                    await asyncio.sleep(0.01)  # the connection is being set up or torn down
                    continue
                # Until the pong of the ping sent right after it, an ``error`` is this request's refusal.
                self._history_wait = (frame["id"], fut, self._pings + 1)
                try:
                    await ws.send(json.dumps({k: v for k, v in frame.items() if v is not None}))
                    await ws.send('{"type":"ping"}')
                    self._pings += 1
                    return await fut
                except (_Cut, ConnectionClosed):
                    await asyncio.sleep(0)  # asked again once the next connection is live
                finally:
                    self._history_wait = None

    async def _until_live(self) -> None:
        """Waits for a live connection; ``ConnectionError`` if the consumer stops first."""
        if self._live.is_set():
            return
        live = asyncio.ensure_future(self._live.wait())
        try:
            assert self._task is not None
            await asyncio.wait({live, self._task}, return_when=asyncio.FIRST_COMPLETED)
            if not live.done():
                raise ConnectionError("the consumer stopped")
        finally:
            live.cancel()

    def _history_answered(self, f: Union[History, Error]) -> bool:
        """The waiting history request's answer, or an ``error`` that is its refusal."""
        if self._history_wait is None:
            return False
        rid, fut, ping = self._history_wait
        if fut.done():
            return False
        if isinstance(f, History):
            if f.id != rid:
                return False
            fut.set_result(f)
        else:
            # With an id, only a refusal naming this request is its own. Without (an older
            # server): one whose code only history requests get, or one before the pong that
            # answers the ping sent after the request.
            if f.id is not None:
                if f.id != rid:
                    return False
            elif f.code not in HISTORY_REFUSALS and self._pongs >= ping:
                return False
            fut.set_exception(HistoryFailed(f.code, f.message))
        return True

    def _dispatch(self, item: Union[Item, BaseException]) -> None:
        """An event to its thread's or run's iterators, else (and anything else) to the consumer's."""
        if isinstance(item, Event):
            subs = [s for s in self._subs if s.matches(item)]
            for sub in subs:
                sub._push(item)
            if subs:
                return
        elif isinstance(item, BaseException):
            for sub in list(self._subs):
                sub._push(item)
        if not isinstance(item, BaseException) and self._queue.qsize() >= self._max_queue:
            # Never unbounded: the reader learns it fell behind, and the consumer stops.
            err = QueueOverflow(f"the reader fell {self._max_queue} items behind")
            self._dispatch(err)
            raise err
        self._queue.put_nowait(item)

    async def _send(self, frame: dict) -> None:
        if self._ws is None or not self._live.is_set():
            raise ConnectionError("not connected")
        await self._ws.send(json.dumps({k: v for k, v in frame.items() if v is not None}))

    async def _get_token(self, reason: str) -> str:
        src = self._token_source
        if isinstance(src, str):
            return src
        token = src(reason)
        if inspect.isawaitable(token):
            token = await token
        self._token = token
        return token

    def _ws_url(self, token: str) -> str:
        parts = urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        query = (parts.query + "&" if parts.query else "") + urlencode({"token": token})
        return urlunsplit((scheme, parts.netloc, parts.path, query, parts.fragment))

    def _fail_pending(self, err: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)

    def _stop(self, code: int, reason: str) -> ConsumerStopped:
        err = ConsumerStopped(code, reason)
        self._dispatch(err)
        return err

    async def _run(self) -> None:
        """The connection loop; whatever ends it also ends the iterator (never a silent hang)."""
        try:
            await self._loop()
        except (asyncio.CancelledError, ConsumerStopped, QueueOverflow):
            raise  # cancelled by close(), or already queued for the reader
        except BaseException as err:
            self._dispatch(err)
            raise

    async def _loop(self) -> None:
        attempt = 0
        while True:
            code, min_delay = 1006, 0.0
            try:
                token = self._token or await self._get_token("expired" if self.stats["connects"] else "connect")
            except Exception:
                # The provider failed (its backend is down?): try again after a backoff.
                token = None
            try:
                if token is None:
                    raise OSError("no token")
                async with connect(self._ws_url(token), max_size=None, open_timeout=10) as ws:
                    self._ws = ws
                    opened = asyncio.get_running_loop().time()
                    try:
                        async for text in ws:
                            if isinstance(text, str):
                                await self._on_text(ws, text)
                    except ConnectionClosed:
                        pass
                    # A connection that stayed up long enough was healthy: start the backoff over.
                    if asyncio.get_running_loop().time() - opened >= self.backoff.stable_after:
                        attempt = 0
                    code = ws.close_code or 1006
            except InvalidStatus as e:
                status = e.response.status_code
                if status == 401 and not isinstance(self._token_source, str) and not self._rejected_once:
                    # A provider may have a better token (the old one expired): ask it once.
                    self._rejected_once = True
                    try:
                        fresh = await self._get_token("rejected")
                    except Exception:
                        fresh = token
                    if fresh != token:
                        continue
                if status in (401, 403):
                    raise self._stop(status, "token refused" if status == 401 else "origin refused") from None
                try:
                    min_delay = float(e.response.headers.get("Retry-After", 0))
                except ValueError:
                    min_delay = 0.0
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                self._ws = None
                self._live.clear()
                self._fail_pending(ConnectionError("the connection closed before the reply"))
                if self._history_wait is not None and not self._history_wait[1].done():
                    self._history_wait[1].set_exception(_Cut())
                for _, fut in self._pong_waiters:
                    if not fut.done():
                        fut.set_exception(_Cut())
                self._pong_waiters.clear()
            if code in STOP_CODES:
                raise self._stop(code, STOP_CODES[code])
            if code == SESSION_EXPIRED:
                if isinstance(self._token_source, str):
                    raise self._stop(code, "session_expired")
                self._token = None
            delay = max(min_delay, self.backoff.delay(attempt, self._rng))
            attempt += 1
            self.stats["reconnects"] += 1
            self.reconnects.append((attempt, delay, code))
            await asyncio.sleep(delay)

    async def _on_text(self, ws: ClientConnection, text: str) -> None:
        try:
            f: Frame = decode_frame(text, self._resuming)
        except FrameError:
            return
        if isinstance(f, Connected):
            self._rejected_once = False
            # Positions saved for another user (the provider's token named someone else) must
            # not be resumed: they are another user's streams.
            if self.connection is not None and (self.connection.tenant, self.connection.user) != (f.tenant, f.user):
                self.positions.clear()
            self.connection = f
            self.stats["connects"] += 1
            resume = bool(self.positions)
            self._pings = self._pongs = 0
            for name, pos in f.streams.items():
                self.positions.setdefault(name, pos)
            for t in sorted(self.threads):
                await ws.send(json.dumps({"type": "subscribe", "thread_id": t}))
            for r in sorted(self.runs):
                await ws.send(json.dumps({"type": "subscribe", "run_id": r}))
            if resume:
                self._resuming = True
                positions = {k: {"epoch": p.epoch, "seq": p.seq} for k, p in self.positions.items()}
                await ws.send(json.dumps({"type": "resume", "positions": positions}))
            else:
                await ws.send(json.dumps({"type": "ping"}))
                self._pings = 1
                self._live.set()
        elif isinstance(f, Resumed):
            self._resuming = False
            for name, r in f.streams.items():
                if not r.recovered:
                    self._resync(name, Position(r.epoch, r.seq), r.reason or "unknown")
            self._live.set()
        elif isinstance(f, Event):
            last = self.positions.get(f.stream)
            if last and last.epoch == f.epoch and f.seq <= last.seq:
                self.stats["duplicates"] += 1
                return
            self.positions[f.stream] = Position(f.epoch, f.seq)
            self.stats["events"] += 1
            if f.replayed:
                self.stats["replayed"] += 1
            self._dispatch(f)
        elif isinstance(f, Joined):
            self.positions.setdefault(f.stream, Position(f.epoch, f.seq))
        elif isinstance(f, Left):
            self.positions.pop(f.stream, None)
            self.presence.pop(f.stream, None)
        elif isinstance(f, Resync):
            self._resync(f.stream, Position(f.epoch, f.seq), f.reason)
        elif isinstance(f, RefreshRequired):
            if not isinstance(self._token_source, str):
                # Beside the frame loop: the provider may take a network round trip.
                self._refresh_task = asyncio.ensure_future(self._refresh(ws))
        elif isinstance(f, Reply):
            fut = self._pending.get(f.id)
            if fut is not None and not fut.done():
                if f.error is not None:
                    fut.set_exception(ReplyFailed(f.error.code, f.error.message))
                else:
                    fut.set_result(f.data)
        elif isinstance(f, Error):
            # A refused request (the frame carries its id) fails at once, not at its timeout.
            fut = self._pending.get(f.id) if f.id is not None else None
            if fut is not None:
                if not fut.done():
                    fut.set_exception(ReplyFailed(f.code, f.message))
            elif not self._history_answered(f):
                self.stats["server_errors"] += 1
                self._call(self.on_error, f)
        elif isinstance(f, History):
            self._history_answered(f)
        elif isinstance(f, Skipped):
            self.stats["skipped"] += f.count
        elif isinstance(f, Pong):
            self._pongs += 1
            for n, fut in [w for w in self._pong_waiters if w[0] <= self._pongs]:
                self._pong_waiters.remove((n, fut))
                if not fut.done():
                    fut.set_result(None)
        elif isinstance(f, Presence):
            members = None if f.members is None else {m.user: m.meta for m in f.members}
            self.presence[f.scope] = PresenceState(f.scope, f.count, members)
            if self._yield_presence:
                self._dispatch(f)
        elif isinstance(f, PresenceDiff):
            state = self.presence.get(f.scope)
            if state is not None and state.members is not None:
                for j in f.joins:
                    state.members[j.user] = j.meta
                for user in f.leaves:
                    state.members.pop(user, None)
                state.count = len(state.members)
            if self._yield_presence:
                self._dispatch(f)

    def _resync(self, stream: str, position: Position, reason: str) -> None:
        self.positions[stream] = position
        report = ResyncReport(stream, position, reason)
        self.resyncs.append(report)
        self._call(self.on_resync, report)

    async def _refresh(self, ws: ClientConnection) -> None:
        """Sends a ``refresh`` with the provider's new token. If the provider fails (or the
        connection is gone), the session expires (4001) and the consumer re-authenticates."""
        try:
            token = await self._get_token("refresh")
            await ws.send(json.dumps({"type": "refresh", "token": token}))
        except Exception:
            log.warning("switchboard_client: no refreshed token; the session will be renewed at expiry")

    @staticmethod
    def _call(callback: Optional[Callable[[Any], Any]], arg: Any) -> None:
        """Calls an application callback; its bug is logged, and never ends the connection."""
        if callback is None:
            return
        try:
            callback(arg)
        except Exception:
            log.exception("switchboard_client: a callback raised; the consumer goes on")


def _history_request(
    stream: str, thread: Optional[str], run: Optional[str], limit: Optional[int], before: Optional[int],
    after: Optional[int], epoch: Optional[int],
) -> dict:
    """The ``history`` frame (without its id); :class:`HistoryFailed` ``invalid_field`` for bad input."""

    def bad(field: str, why: str) -> HistoryFailed:
        return HistoryFailed("invalid_field", f"history: {field} {why}")

    def seq(v: object) -> bool:
        return v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)

    if not isinstance(stream, str) or not stream:
        raise bad("stream", "must be a stream name")
    for name, v in (("thread", thread), ("run", run)):
        if v is not None and (not isinstance(v, str) or not v):
            raise bad(name, "must be a non-empty string")
    if limit is not None and not (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1):
        raise bad("limit", "must be 1 or more")
    for name, v in (("before", before), ("after", after), ("epoch", epoch)):
        if not seq(v):
            raise bad(name, "must be a non-negative integer")
    if before is not None and after is not None:
        raise bad("after", "cannot go with before")
    return {"type": "history", "stream": stream, "limit": limit, "before": before, "after": after,
            "epoch": epoch, "thread_id": thread, "run_id": run}
