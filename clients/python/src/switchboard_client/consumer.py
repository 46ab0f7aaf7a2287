"""The consumer: one logical connection that survives reconnects, as an async iterator of events.

The same semantics as the TypeScript client: positions per stream kept across reconnects, the
thread subscriptions then ``resume`` sent first after each reconnect, events deduplicated by
(stream, epoch, seq), streams that could not be recovered reported to ``on_resync``, full-jitter
backoff, and the server's close codes followed (README, "Close codes").
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .backoff import Backoff
from .errors import ConsumerStopped, QueueOverflow, ReplyFailed, ReplyTimeout
from .frames import (
    Connected, Event, Frame, FrameError, Joined, Left, Presence, PresenceDiff, RefreshRequired,
    Reply, Resumed, Resync, Position, decode_frame,
)

#: Close codes after which the client must not reconnect, and the one that needs a new token.
# Every other code (4009 max_lifetime among them) reconnects and resumes.
STOP_CODES = {4002: "replaced", 4004: "protocol_violation", 4005: "kicked", 4008: "user_limit"}
SESSION_EXPIRED = 4001

TokenSource = Union[str, Callable[[str], Union[str, Awaitable[str]]]]


@dataclass(frozen=True)
class ResyncReport:
    """A stream whose missed messages did not all come: refetch its state, continue from ``position``."""

    stream: str
    position: Position
    reason: str


class Consumer:
    """Consumes a user's events from a switchboard server.

    ``token`` is a token or a function ``reason -> token`` (``"connect"``, ``"refresh"``,
    ``"expired"``; it may be async). Iterate with ``async for event in consumer``; use as
    ``async with Consumer(...) as c:`` (or call :meth:`start` and :meth:`close`).
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        backoff: Backoff = Backoff(),
        positions: Optional[dict[str, Position]] = None,
        threads: tuple[str, ...] = (),
        on_resync: Optional[Callable[[ResyncReport], Any]] = None,
        max_queue: int = 10_000,
        rng: Optional[random.Random] = None,
    ):
        self.url = url
        self._token_source = token
        self._token: Optional[str] = token if isinstance(token, str) else None
        self.backoff = backoff
        #: Stream → last position processed; pass it to a new consumer to resume where this one was.
        self.positions: dict[str, Position] = dict(positions or {})
        self.threads = set(threads)
        self.on_resync = on_resync
        self._queue: asyncio.Queue[Union[Event, BaseException]] = asyncio.Queue(max_queue + 1)
        self._max_queue = max_queue
        self._rng = rng or random.Random()
        self._task: Optional[asyncio.Task] = None
        self._ws: Optional[ClientConnection] = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._resuming = False
        self._live = asyncio.Event()
        #: The current (or last) ``connected`` frame.
        self.connection: Optional[Connected] = None
        self.stats = {"connects": 0, "reconnects": 0, "duplicates": 0, "replayed": 0, "events": 0}
        #: Every reconnect's (attempt, delay in s, close code).
        self.reconnects: list[tuple[int, float, int]] = []
        self.resyncs: list[ResyncReport] = []

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

    async def __anext__(self) -> Event:
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

    async def drop(self) -> None:
        """Closes the current socket cleanly; the consumer reconnects and resumes as after any drop."""
        if self._ws is not None:
            await self._ws.close(1000, "dropped by the client")

    # -----------------------------------------------------------------------------------------

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
        self._queue.put_nowait(err)
        return err

    async def _run(self) -> None:
        """The connection loop; whatever ends it also ends the iterator (never a silent hang)."""
        try:
            await self._loop()
        except (asyncio.CancelledError, ConsumerStopped, QueueOverflow):
            raise  # cancelled by close(), or already queued for the reader
        except BaseException as err:
            self._queue.put_nowait(err)
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
            self.connection = f
            self.stats["connects"] += 1
            resume = bool(self.positions)
            for name, pos in f.streams.items():
                self.positions.setdefault(name, pos)
            for t in sorted(self.threads):
                await ws.send(json.dumps({"type": "subscribe", "thread_id": t}))
            if resume:
                self._resuming = True
                positions = {k: {"epoch": p.epoch, "seq": p.seq} for k, p in self.positions.items()}
                await ws.send(json.dumps({"type": "resume", "positions": positions}))
            else:
                await ws.send(json.dumps({"type": "ping"}))
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
            if self._queue.qsize() >= self._max_queue:
                # Never unbounded: the reader learns it fell behind, and the consumer stops.
                err = QueueOverflow(f"the reader fell {self._max_queue} events behind")
                self._queue.put_nowait(err)
                raise err
            self._queue.put_nowait(f)
        elif isinstance(f, Joined):
            self.positions.setdefault(f.stream, Position(f.epoch, f.seq))
        elif isinstance(f, Left):
            self.positions.pop(f.stream, None)
        elif isinstance(f, Resync):
            self._resync(f.stream, Position(f.epoch, f.seq), f.reason)
        elif isinstance(f, RefreshRequired):
            if not isinstance(self._token_source, str):
                token = await self._get_token("refresh")
                await ws.send(json.dumps({"type": "refresh", "token": token}))
        elif isinstance(f, Reply):
            fut = self._pending.get(f.id)
            if fut is not None and not fut.done():
                if f.error is not None:
                    fut.set_exception(ReplyFailed(f.error.code, f.error.message))
                else:
                    fut.set_result(f.data)
        elif isinstance(f, (Presence, PresenceDiff)):
            pass  # presence is the TypeScript client's (browsers show it); frames are still decoded

    def _resync(self, stream: str, position: Position, reason: str) -> None:
        self.positions[stream] = position
        report = ResyncReport(stream, position, reason)
        self.resyncs.append(report)
        if self.on_resync is not None:
            self.on_resync(report)
