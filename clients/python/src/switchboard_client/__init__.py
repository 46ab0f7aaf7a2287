"""asyncio clients for switchboard servers.

- :class:`Publisher`: a backend publishes events (``POST /publish``): to a user, thread, run,
  room or tenant, in batches, with idempotency keys kept across retries and typed errors.
- :class:`Consumer`: a user's events over WebSocket, as an async iterator of :class:`Event`,
  resuming exactly after reconnects.
"""

from .backoff import Backoff
from .consumer import Consumer, ResyncReport
from .errors import (
    BadRequest, ConsumerStopped, Forbidden, PublishError, QueueOverflow, ReplyFailed, ReplyTimeout,
    SwitchboardError, TooLarge, Unauthorized, Unavailable,
)
from .frames import Event, Frame, FrameError, Position, decode_frame
from .publisher import MAX_BATCH, Envelope, Published, Publisher

__all__ = [
    "Backoff", "BadRequest", "Consumer", "ConsumerStopped", "Envelope", "Event", "Forbidden", "Frame",
    "FrameError", "MAX_BATCH", "Position", "PublishError", "Published", "Publisher", "QueueOverflow",
    "ReplyFailed", "ReplyTimeout", "ResyncReport", "SwitchboardError", "TooLarge", "Unauthorized",
    "Unavailable", "decode_frame",
]
