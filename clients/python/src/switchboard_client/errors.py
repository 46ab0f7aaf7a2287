"""Typed errors of the publisher and the consumer."""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base of every error this package raises."""


class PublishError(SwitchboardError):
    """The server refused a publish: ``status`` is the HTTP status, ``code`` the server's code."""

    retryable = False

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Unauthorized(PublishError):
    """401: the admin key is missing or wrong."""


class BadRequest(PublishError):
    """400: the envelope is invalid (no tenant, conflicting target fields, a bad key, ...)."""


class Forbidden(PublishError):
    """403: a global broadcast the server's configuration forbids."""


class TooLarge(PublishError):
    """413: the envelope is larger than any connection may be handed."""


class Unavailable(PublishError):
    """503 (retryable: the publisher retries it) or 502: the server or its bus cannot publish now."""

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 503


def error_for(status: int, body: dict, retry_after: float | None = None) -> PublishError:
    """The typed error for an answer with this status and JSON body."""
    code = str(body.get("error", status))
    message = str(body.get("message", ""))
    cls = {401: Unauthorized, 400: BadRequest, 403: Forbidden, 413: TooLarge, 502: Unavailable, 503: Unavailable}
    return cls.get(status, PublishError)(status, code, message, retry_after)


class ConsumerStopped(SwitchboardError):
    """The consumer stopped for good: a close code that forbids retrying, or a refused token."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"stopped: {reason} ({code})")
        self.code = code
        self.reason = reason


class ReplyTimeout(SwitchboardError):
    """No reply came within the timeout."""


class ReplyFailed(SwitchboardError):
    """The application answered a request with an error, or the server refused the request
    (``code`` the server's: ``rate_limited``, ``invalid_field``, ...)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class HistoryFailed(SwitchboardError):
    """A ``history`` request got no page: refused by the server (``code`` ``unknown_stream``,
    ``invalid_field``, ``history_busy``, ``rate_limited``), refused before sending
    (``invalid_field``), or unanswered (``timeout``)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class QueueOverflow(SwitchboardError):
    """The consumer's reader fell more events behind than the queue holds."""
