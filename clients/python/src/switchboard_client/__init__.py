"""asyncio clients for switchboard servers.

- :class:`Publisher`: a backend publishes events (``POST /publish``): to a user, thread, run,
  room or tenant, in batches, with idempotency keys kept across retries and typed errors.
- :class:`Consumer`: a user's events over WebSocket, as an async iterator of :class:`Event` (and
  presence), resuming exactly after reconnects; per-thread and per-run iterators
  (:class:`Subscription`) and history pages (:class:`History`).
"""

from .backoff import Backoff
from .consumer import Consumer, Item, PresenceState, ResyncReport
from .errors import (
    BadRequest, ConsumerStopped, Forbidden, HistoryFailed, PublishError, QueueOverflow, ReplyFailed,
    ReplyTimeout, SwitchboardError, TooLarge, Unauthorized, Unavailable,
)
from .frames import Event, Frame, FrameError, History, Position, Presence, PresenceDiff, decode_frame
from .publisher import MAX_BATCH, Envelope, Published, Publisher
from .subscription import Subscription

__all__ = [
    "Backoff", "BadRequest", "Consumer", "ConsumerStopped", "Envelope", "Event", "Forbidden", "Frame",
    "FrameError", "History", "HistoryFailed", "Item", "MAX_BATCH", "Position", "Presence", "PresenceDiff",
    "PresenceState", "PublishError", "Published", "Publisher", "QueueOverflow", "ReplyFailed", "ReplyTimeout",
    "ResyncReport", "Subscription", "SwitchboardError", "TooLarge", "Unauthorized", "Unavailable",
    "decode_frame",
]
