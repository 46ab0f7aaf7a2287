"""One thread's or one agent run's events, as their own async iterator (``Consumer.thread`` and
``Consumer.run``): the consumer subscribes the connection to it on the server (``subscribe`` with
``thread_id`` or ``run_id``, sent again after every reconnect, before ``resume``) and hands each
matching event to the iterators of its thread or run instead of its own iterator. Leaving the
loop (``aclose()``, or the ``async with`` block) unsubscribes unless another iterator still
wants the same thread or run.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Optional, Union

from .errors import QueueOverflow
from .frames import Event

if TYPE_CHECKING:
    from .consumer import Consumer


class Subscription:
    """Events of one thread (``thread``) or one run (``run``), oldest first."""

    def __init__(self, consumer: "Consumer", *, thread: Optional[str] = None, run: Optional[str] = None,
                 max_queue: int = 10_000):
        self.thread = thread
        self.run = run
        self._consumer = consumer
        self._queue: asyncio.Queue[Union[Event, BaseException, None]] = asyncio.Queue()
        self._max_queue = max_queue
        self._closed = False
        #: The ``subscribe`` frame on its way (when the connection was live) until the server has
        #: handled it; ``async with`` waits for it, so the server narrows from the block's start.
        self._subscribed: Optional[asyncio.Future] = None

    def matches(self, e: Event) -> bool:
        """Whether ``e`` belongs to this thread or run."""
        return (self.thread is None or e.thread_id == self.thread) and (self.run is None or e.run_id == self.run)

    def _push(self, item: Union[Event, BaseException]) -> None:
        if self._closed:
            return
        if isinstance(item, Event) and self._queue.qsize() >= self._max_queue:
            item = QueueOverflow(f"the reader fell {self._max_queue} events behind")
        if isinstance(item, BaseException):
            self._closed = True
            self._consumer._forget(self)
        self._queue.put_nowait(item)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        item = await self._queue.get()
        if item is None or isinstance(item, BaseException):
            self._queue.put_nowait(item)  # every later read ends the same way
            if item is None:
                raise StopAsyncIteration
            raise item
        return item

    async def aclose(self) -> None:
        """Ends the iteration and drops the subscription (unless another iterator has it too)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        self._consumer._forget(self)
        await self._consumer._release(self.thread, self.run)

    async def __aenter__(self) -> "Subscription":
        if self._subscribed is not None:
            await self._subscribed  # the server narrows from here on
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
