"""Full-jitter exponential backoff: each delay is uniform in [0, min(max, base * 2**attempt))."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Reconnect and retry timing, in seconds (the same defaults as the TypeScript client)."""

    base: float = 0.5
    max: float = 30.0
    #: A connection that stayed up this long resets the attempt count.
    stable_after: float = 10.0

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the window of attempt ``attempt`` (0-based)."""
        return min(self.max, self.base * 2 ** min(attempt, 62))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """A full-jitter delay for attempt ``attempt``."""
        return (rng or random).random() * self.ceiling(attempt)
