"""The publisher: what a backend (the origin system) uses to publish events through ``POST /publish``.

Every envelope gets an idempotency key when it is made, and keeps it across retries, so a retried
publish is delivered once (the server answers ``duplicate: True`` with the first position).
Retries happen only where repeating is safe and may help: a 503 (honouring ``Retry-After``) or a
transport failure (no answer: the request may or may not have been published, which the key
settles). Every other refusal is raised at once as a typed error.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import httpx

from .backoff import Backoff
from .errors import PublishError, error_for

#: The most envelopes one batch may hold (the server's ``MAX_BATCH``).
MAX_BATCH = 100


def _new_key() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Envelope:
    """One event to publish. The target follows the fields given: ``user`` (and ``thread``),
    ``room``, or neither (the tenant's broadcast, narrowed by ``role``)."""

    tenant: str
    kind: str
    data: Any = None
    user: Optional[str] = None
    thread: Optional[str] = None
    room: Optional[str] = None
    role: Optional[str] = None
    run: Optional[str] = None
    #: A custom kind's priority: ``"critical"`` (the server's default) or ``"low"`` (skipped for a
    #: connection that is behind, like ``agent_thinking``). The agent kinds' priorities are fixed.
    priority: Optional[str] = None
    #: A connection id (its client's ``connected.conn_id``) left out of the recipients, such as
    #: the sender's own; ``Published.excluded`` says whether it named an open connection.
    exclude: Optional[str] = None
    #: Generated when the envelope is made; the same for every retry of it.
    idempotency_key: str = field(default_factory=_new_key)

    def body(self) -> dict:
        """The ``POST /publish`` body."""
        out: dict[str, Any] = {"tenant": self.tenant, "kind": self.kind, "idempotency_key": self.idempotency_key}
        for name in ("user", "thread", "room", "role", "run", "priority", "exclude"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class Published:
    """Where a published event went: its stream position, and whether it was a retry's duplicate."""

    stream: Optional[str]
    epoch: Optional[int]
    seq: Optional[int]
    duplicate: bool
    #: Single node only (cluster mode delivers on every node and cannot count here): connections
    #: it was written to, held back for a resume window, skipped as behind (low priority), or
    #: closed as slow consumers by it.
    delivered: Optional[int] = None
    held: Optional[int] = None
    skipped: Optional[int] = None
    closed: Optional[int] = None
    #: With ``exclude``: whether it named an open connection of the node that took the request.
    excluded: Optional[bool] = None
    #: Single node: kept in its stream's recovery buffer (a user with no connection now gets it
    #: on its next one).
    buffered: Optional[bool] = None

    @classmethod
    def from_body(cls, body: dict) -> "Published":
        return cls(
            stream=body.get("stream"),
            epoch=body.get("epoch"),
            seq=body.get("seq"),
            duplicate=bool(body.get("duplicate", False)),
            delivered=body.get("delivered"),
            held=body.get("held"),
            skipped=body.get("skipped"),
            closed=body.get("closed"),
            excluded=body.get("excluded"),
            buffered=body.get("buffered"),
        )


def _retry_after(headers: httpx.Headers) -> Optional[float]:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


class Publisher:
    """Publishes events to a switchboard server with its admin key.

    Use as ``async with Publisher(url, key) as pub:`` (or call :meth:`aclose`). With
    ``batching=True``, concurrent publishes share requests: the first goes at once, and those
    made while it is in flight go together in the next one (a backend streaming many small
    events from many tasks then makes a request per round trip, not per event).
    """

    def __init__(
        self,
        base_url: str,
        admin_key: str,
        *,
        max_attempts: int = 5,
        backoff: Backoff = Backoff(base=0.2, max=5.0),
        timeout: float = 10.0,
        rng: Optional[random.Random] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        batching: bool = False,
    ):
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=timeout,
            transport=transport,
        )
        self.max_attempts = max_attempts
        self.backoff = backoff
        self._rng = rng or random.Random()
        #: Requests sent, retries included (for tests and metrics).
        self.requests = 0
        #: With ``batching``: publishes waiting for the request in flight to end, in call order.
        self._batching = batching
        self._waiting: list[tuple[Envelope, asyncio.Future]] = []
        self._sender: Optional[asyncio.Task] = None

    async def __aenter__(self) -> "Publisher":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Sends what is still waiting (with ``batching``), then closes the HTTP client."""
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._http.aclose()

    async def _wait(self, attempt: int, retry_after: Optional[float]) -> None:
        delay = self.backoff.delay(attempt, self._rng)
        await asyncio.sleep(max(delay, retry_after or 0.0))

    async def _post(self, body: Any) -> httpx.Response:
        """One request, retried on transport failures (the keys make that safe)."""
        for attempt in range(self.max_attempts):
            self.requests += 1
            try:
                return await self._http.post("/publish", json=body)
            except httpx.TransportError:
                if attempt + 1 == self.max_attempts:
                    raise
                await self._wait(attempt, None)
        raise AssertionError("unreachable")

    async def publish(self, envelope: Envelope) -> Published:
        """Publishes one envelope; raises a :class:`PublishError` subclass if refused.

        With ``batching=True`` (see the class), publishes made while a request is in flight wait
        for it to end and then go together, up to :data:`MAX_BATCH` per request, in call order;
        each call still returns its own :class:`Published` or raises its own error. A publish
        whose caller is cancelled while it waits is still sent."""
        if not self._batching:
            return await self._publish_one(envelope)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((envelope, fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.ensure_future(self._send_waiting())
        return await fut

    async def _send_waiting(self) -> None:
        """Sends the waiting publishes, a batch at a time, until none is left. One request at a
        time keeps them in call order on the server."""
        while self._waiting:
            take, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            results: list[Union[Published, BaseException]]
            try:
                if len(take) == 1:
                    try:
                        results = [await self._publish_one(take[0][0])]
                    except PublishError as e:
                        results = [e]
                else:
                    results = list(await self.publish_batch([env for env, _ in take]))
            except BaseException as e:  # the whole request failed: every caller in it hears so
                results = [e] * len(take)
            for (_, fut), result in zip(take, results):
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _publish_one(self, envelope: Envelope) -> Published:
        """One envelope in its own request, retried where safe."""
        for attempt in range(self.max_attempts):
            res = await self._post(envelope.body())
            body = res.json()
            if res.status_code == 200:
                return Published.from_body(body)
            err = error_for(res.status_code, body, _retry_after(res.headers))
            if not err.retryable or attempt + 1 == self.max_attempts:
                raise err
            await self._wait(attempt, err.retry_after)
        raise AssertionError("unreachable")

    async def to_user(self, tenant: str, user: str, kind: str, data: Any = None, *, run: Optional[str] = None) -> Published:
        """An event for every connection of one user."""
        return await self.publish(Envelope(tenant, kind, data, user=user, run=run))

    async def to_thread(
        self, tenant: str, user: str, thread: str, kind: str, data: Any = None, *, run: Optional[str] = None
    ) -> Published:
        """An event for one thread of one user."""
        return await self.publish(Envelope(tenant, kind, data, user=user, thread=thread, run=run))

    async def to_run(
        self, tenant: str, user: str, run: str, kind: str, data: Any = None, *, thread: Optional[str] = None
    ) -> Published:
        """An event of one agent run (carried as ``run_id``): for the user's connections subscribed to
        the run, and those not narrowed to threads or runs at all."""
        return await self.publish(Envelope(tenant, kind, data, user=user, thread=thread, run=run))

    async def to_room(self, tenant: str, room: str, kind: str, data: Any = None) -> Published:
        """An event for one room of a tenant."""
        return await self.publish(Envelope(tenant, kind, data, room=room))

    async def to_tenant(self, tenant: str, kind: str, data: Any = None, *, role: Optional[str] = None) -> Published:
        """A broadcast to a whole tenant, or to one role of it."""
        return await self.publish(Envelope(tenant, kind, data, role=role))

    async def publish_batch(self, envelopes: Sequence[Envelope]) -> list[Union[Published, PublishError]]:
        """Publishes up to :data:`MAX_BATCH` envelopes in order in one request.

        Returns one result per envelope, in order: its :class:`Published`, or the typed error it
        got (entries are independent: one refused envelope does not stop the others). Entries
        answered 503 are sent again, with their keys, in a later batch.
        """
        if not 1 <= len(envelopes) <= MAX_BATCH:
            raise ValueError(f"a batch holds 1 to {MAX_BATCH} envelopes, not {len(envelopes)}")
        results: list[Union[Published, PublishError, None]] = [None] * len(envelopes)
        todo = list(range(len(envelopes)))
        for attempt in range(self.max_attempts):
            res = await self._post([envelopes[i].body() for i in todo])
            body = res.json()
            if res.status_code != 200:
                err = error_for(res.status_code, body, _retry_after(res.headers))
                if not err.retryable or attempt + 1 == self.max_attempts:
                    raise err
                await self._wait(attempt, err.retry_after)
                continue
            again: list[int] = []
            wait_for: Optional[float] = None
            for i, entry in zip(todo, body["results"]):
                status = entry.get("status", 500)
                if status == 200:
                    results[i] = Published.from_body(entry)
                    continue
                err = error_for(status, entry)
                results[i] = err
                if err.retryable:
                    again.append(i)
                    wait_for = max(wait_for or 0.0, err.retry_after or 0.0)
            if not again or attempt + 1 == self.max_attempts:
                break
            todo = again
            await self._wait(attempt, wait_for)
        return [r for r in results if r is not None]
