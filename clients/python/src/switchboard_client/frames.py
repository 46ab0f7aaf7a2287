"""The wire protocol's server → client frames as dataclasses (README, "Wire protocol").

The Rust test ``tests/client_fixtures.rs`` writes one sample of every frame type from the real hub
to ``clients/fixtures/server-frames.json``; this package's tests decode each sample and check
that the dataclass has a field for every key the server sends.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union


class FrameError(ValueError):
    """Text that is not a frame of the protocol."""


@dataclass(frozen=True)
class Position:
    """A stream's epoch and the last seq seen."""

    epoch: int
    seq: int


@dataclass(frozen=True)
class Event:
    """An event: ``kind`` is its wire ``type`` (an agent kind or a custom one)."""

    kind: str
    stream: str
    epoch: int
    seq: int
    thread_id: Optional[str] = None
    run_id: Optional[str] = None
    data: Any = None
    #: Whether it came in the replay after a ``resume``.
    replayed: bool = False


@dataclass(frozen=True)
class Connected:
    conn_id: str
    tenant: str
    user: str
    heartbeat_ms: int
    session_expires_in_ms: Optional[int]
    streams: dict[str, Position]


@dataclass(frozen=True)
class RefreshRequired:
    expires_in_ms: int


@dataclass(frozen=True)
class Refreshed:
    session_expires_in_ms: Optional[int]


@dataclass(frozen=True)
class StreamReport:
    recovered: bool
    epoch: int
    seq: int
    available_from: int
    replayed: int
    reason: Optional[str] = None


@dataclass(frozen=True)
class Resumed:
    recovered: bool
    streams: dict[str, StreamReport]


@dataclass(frozen=True)
class Skipped:
    count: int


@dataclass(frozen=True)
class Joined:
    stream: str
    epoch: int
    seq: int


@dataclass(frozen=True)
class Left:
    stream: str


@dataclass(frozen=True)
class Error:
    code: str
    message: str
    #: The refused frame's ``id`` (a ``request``'s or a ``history`` request's), when it had one.
    id: Optional[str] = None


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class ReplyError:
    code: str
    message: str


@dataclass(frozen=True)
class Reply:
    id: str
    data: Any = None
    error: Optional[ReplyError] = None


@dataclass(frozen=True)
class Resync:
    stream: str
    epoch: int
    seq: int
    recovered: bool
    reason: str


@dataclass(frozen=True)
class History:
    """The answer to a ``history`` request: the stream's position now and a page of its events as
    they were delivered live, oldest first (``more``: further events lie beyond this page)."""

    stream: str
    epoch: int
    seq: int
    available_from: int
    more: bool
    messages: list = field(default_factory=list)
    id: Optional[str] = None
    reason: Optional[str] = None


@dataclass(frozen=True)
class PresenceMember:
    user: str
    conns: int
    meta: Optional[dict] = None


@dataclass(frozen=True)
class Presence:
    scope: str
    count: int
    members: Optional[list[PresenceMember]]


@dataclass(frozen=True)
class PresenceJoin:
    user: str
    meta: Optional[dict] = None


@dataclass(frozen=True)
class PresenceDiff:
    scope: str
    joins: list[PresenceJoin] = field(default_factory=list)
    leaves: list[str] = field(default_factory=list)


Frame = Union[
    Event, Connected, RefreshRequired, Refreshed, Resumed, Skipped, Joined, Left, Error, Pong,
    Reply, Resync, History, Presence, PresenceDiff,
]

#: Control frame type → its dataclass. New frame types (history, runs) are added here.
CONTROL: dict[str, type] = {
    "connected": Connected,
    "refresh_required": RefreshRequired,
    "refreshed": Refreshed,
    "resumed": Resumed,
    "skipped": Skipped,
    "joined": Joined,
    "left": Left,
    "error": Error,
    "pong": Pong,
    "reply": Reply,
    "resync": Resync,
    "history": History,
    "presence": Presence,
    "presence_diff": PresenceDiff,
}


def _build(cls: type, obj: dict) -> Any:
    names = {f.name for f in fields(cls)}
    kwargs = {k: v for k, v in obj.items() if k in names}
    if cls is Connected:
        kwargs["streams"] = {k: Position(v["epoch"], v["seq"]) for k, v in obj["streams"].items()}
    elif cls is Resumed:
        kwargs["streams"] = {k: _build(StreamReport, v) for k, v in obj["streams"].items()}
    elif cls is Reply and obj.get("error") is not None:
        kwargs["error"] = _build(ReplyError, obj["error"])
    elif cls is Presence and obj.get("members") is not None:
        kwargs["members"] = [_build(PresenceMember, m) for m in obj["members"]]
    elif cls is History:
        kwargs["messages"] = [_event(dict(m), False) for m in obj["messages"]]
    elif cls is PresenceDiff:
        kwargs["joins"] = [_build(PresenceJoin, j) for j in obj.get("joins", [])]
    return cls(**kwargs)


def decode_frame(text: str, replayed: bool = False) -> Frame:
    """Reads one text frame; raises :class:`FrameError` for anything else."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise FrameError("not JSON") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise FrameError("no type")
    ty = obj.pop("type")
    try:
        cls = CONTROL.get(ty)
        if cls is not None:
            return _build(cls, obj)
        obj["type"] = ty
        return _event(obj, replayed)
    except (KeyError, TypeError, AttributeError) as e:
        raise FrameError(f"{ty}: {e!r}") from e


def _event(obj: dict, replayed: bool) -> Event:
    """An event frame's fields (its ``type`` included) as an :class:`Event`."""
    ty = obj.pop("type")
    if not all(isinstance(obj.get(k), int) for k in ("epoch", "seq")) or not isinstance(obj.get("stream"), str):
        raise FrameError(f"{ty}: not a known frame, and not an event")
    return Event(kind=ty, replayed=replayed, **{k: v for k, v in obj.items() if k in _EVENT_FIELDS})


_EVENT_FIELDS = {"stream", "epoch", "seq", "thread_id", "run_id", "data"}
