"""Domain errors of the run API; runs/api/errors.py maps each to its HTTP answer."""


class RunError(Exception):
    """Base class: ``message`` is safe to show to the API caller."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class RunNotFound(RunError):
    pass


class BatchNotFound(RunError):
    pass


class InvalidRequest(RunError):
    """The request is well-formed JSON but asks for something that cannot be done (400)."""


class IdempotencyKeyNotFound(RunError):
    pass


class ServiceUnavailable(RunError):
    """A store the answer depends on could not be reached; the SDK retries 503s."""


class BufferFull(RunError):
    """The organisation's buffer is at its cap: 429 with x-ratelimit-reset / Retry-After."""

    def __init__(self, message: str, *, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unprocessable(RunError):
    """Valid input the run cannot take now (422), e.g. more tags than a run may have."""


class TooLarge(RunError):
    """A value over its size limit (413)."""


class PacketNotFound(RunError):
    """No stored packet at that path for this caller (404)."""


class PacketAccessDenied(RunError):
    """A presigned packet URL with a wrong or expired signature (403), as an object store answers."""


class PacketInUse(RunError):
    """An upload to a packet that a trigger already named: a run's payload never changes (409)."""

    headers = {"x-should-retry": "false"}  # the SDK retries a bare 409; this one cannot succeed
